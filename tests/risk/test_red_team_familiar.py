"""Red team, third round, left open: a familiar-looking takeover. ``ato.fan_out_new_device``,
``ato.slow_drain_new_payee`` and ``ato.shop_spree_new_device`` spare a device that paid
someone the customer paid before (``device.familiar_payees_paid``): an owner's new phone
pays their usual shops and friends. An attacker on a phished or swapped session pays one of
the victim's usual payees a token sum first, then drains in parts those rules no longer see.
Each attack beside an honest look-alike whose new device is familiar, driven through a real
``RiskEngine`` on a fixed clock (``red_team.World``).

Each attack was written, and run against ruleset ``2026.11.28-6``, before the fix (all of
its money went through); since ``2026.11.28-7`` a payment to a usual payee on the device's
first day makes it familiar only from 50 CNY (``FAMILIAR_MIN_AMOUNT``). docs/risk.md ("A
familiar-looking takeover") lists what got through then and what gets through now. For an
attack: the bulk of the money the attackers try to move is stopped. For an honest
look-alike: nothing is rejected, and what goes through is said exactly.
"""

from __future__ import annotations

import pytest

from .red_team import (
    BEIJING,
    DAY,
    DEVICE_CHANGE,
    HOUR,
    LOGIN,
    MINUTE,
    P2P,
    PAY,
    RESET,
    SHANGHAI,
    SPENT,
    YUAN,
    Person,
    Tally,
    World,
    assert_bulk_stopped,
    assert_not_rejected,
    thin,
)

BREAKFAST = "m:breakfast-9"


@pytest.fixture
def world() -> World:
    return World(seed=43)


@pytest.fixture
def crowd(world: World) -> list[Person]:
    return world.crowd(24)


def usual_breakfast(world: World, p: Person, days: int = 5) -> None:
    """``p`` buys breakfast (8-14 CNY) at the same shop every morning for ``days`` days,
    from their own phone; the last one yesterday."""
    for k in range(days):
        world.act(Tally(), PAY, p, (8 + k) * YUAN, BREAKFAST)
        world.wait(DAY)


# --- attacks -------------------------------------------------------------------------------------


def test_phished_login_buys_breakfast_then_fans_out_190_cny(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code on the attacker's phone in the victim's city; 5 CNY at the
    victim's usual breakfast shop (the device now looks like the owner's new phone), then
    190 CNY to each of fifteen recruited accounts never paid, one every four minutes."""
    victim = crowd[3]
    usual_breakfast(world, victim)
    mules = [thin(world, age_days=100 + 10 * k, where=SHANGHAI) for k in range(15)]
    world.wait(2 * HOUR)
    t = Tally()
    attacker = {"device": "emu-fam", "ip": "10.1.93.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.wait(3 * MINUTE)
    world.act(t, PAY, victim, 5 * YUAN, BREAKFAST, **attacker)  # type: ignore[arg-type]
    for mule in mules:
        world.wait(4 * MINUTE)
        world.act(t, P2P, victim, 190 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_sim_swap_pays_the_usual_friend_5_cny_then_fans_out(
    world: World, crowd: list[Person]
) -> None:
    """A SIM swap: the attacker declares a new device, logs in and resets the password (the
    codes go to the swapped SIM), sends 5 CNY to a friend the victim pays now and then, then
    190 CNY to each of twelve accounts never paid, one every four minutes."""
    victim, friend = crowd[4], crowd[5]
    world.act(Tally(), P2P, victim, 120 * YUAN, friend.ref)  # from the victim's own phone
    mules = [thin(world, age_days=120 + 10 * k, where=SHANGHAI) for k in range(12)]
    world.wait(DAY)
    t = Tally()
    attacker = {"device": "x-sim-fam", "ip": "10.9.4.8", "where": BEIJING, "passes_step_up": True}
    for kind in (DEVICE_CHANGE, LOGIN, RESET):
        world.act(t, kind, victim, **attacker)  # type: ignore[arg-type]
    world.wait(10 * MINUTE)
    world.act(t, P2P, victim, 5 * YUAN, friend.ref, **attacker)  # type: ignore[arg-type]
    for mule in mules:
        world.wait(4 * MINUTE)
        world.act(t, P2P, victim, 190 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_phished_login_buys_breakfast_then_gift_cards_190_cny_at_a_time(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code; 5 CNY at the victim's usual breakfast shop, then twelve
    payments of 190 CNY at an electronics shop the victim never paid (gift cards), one every
    three minutes."""
    victim = crowd[6]
    usual_breakfast(world, victim)
    world.wait(2 * HOUR)
    t = Tally()
    attacker = {"device": "emu-famp", "ip": "10.1.94.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.wait(3 * MINUTE)
    world.act(t, PAY, victim, 5 * YUAN, BREAKFAST, **attacker)  # type: ignore[arg-type]
    for _ in range(12):
        world.wait(3 * MINUTE)
        world.act(t, PAY, victim, 190 * YUAN, "m:giftcards-fam", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t, kinds=SPENT)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "GAP, left open: 60 CNY to a usual friend is more than a token sum; the device is"
        " familiar and ato.fan_out_new_device does not read it (2,340 of 2,340 CNY through"
        " under -6 and -7)"
    ),
)
def test_sim_swap_pays_the_usual_friend_60_cny_then_fans_out(
    world: World, crowd: list[Person]
) -> None:
    """The same SIM swap, written after the fix: 60 CNY (over its 50 CNY) to the usual
    friend first, then 190 CNY to each of twelve accounts never paid."""
    victim, friend = crowd[4], crowd[5]
    world.act(Tally(), P2P, victim, 120 * YUAN, friend.ref)  # from the victim's own phone
    mules = [thin(world, age_days=120 + 10 * k, where=SHANGHAI) for k in range(12)]
    world.wait(DAY)
    t = Tally()
    attacker = {"device": "x-sim-fam", "ip": "10.9.4.8", "where": BEIJING, "passes_step_up": True}
    for kind in (DEVICE_CHANGE, LOGIN, RESET):
        world.act(t, kind, victim, **attacker)  # type: ignore[arg-type]
    world.wait(10 * MINUTE)
    world.act(t, P2P, victim, 60 * YUAN, friend.ref, **attacker)  # type: ignore[arg-type]
    for mule in mules:
        world.wait(4 * MINUTE)
        world.act(t, P2P, victim, 190 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "GAP, left open: a token sum a day after the login counts (an owner's usual 6 CNY"
        " breakfasts must); ato.slow_drain_new_payee does not read the device (1,505 of"
        " 1,505 CNY through under -6 and -7)"
    ),
)
def test_phished_login_waits_a_day_buys_breakfast_then_drains_slowly(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code; a day later 5 CNY at the victim's usual breakfast shop, then
    150 CNY a night for ten nights to one payee never paid (the slow drain of
    ``test_red_team.py``, after a token breakfast on the device's second day)."""
    victim = crowd[18]
    usual_breakfast(world, victim)
    mule = thin(world, age_days=120, where=SHANGHAI)
    world.wait(2 * HOUR)
    t = Tally()
    attacker = {"device": "emu-famd", "ip": "10.1.95.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.wait(DAY + HOUR)
    world.act(t, PAY, victim, 5 * YUAN, BREAKFAST, **attacker)  # type: ignore[arg-type]
    for _ in range(10):
        world.wait(DAY)
        world.act(t, P2P, victim, 150 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


# --- honest look-alikes --------------------------------------------------------------------------


def test_honest_new_phone_buys_breakfast_then_pays_friends_as_usual(
    world: World, crowd: list[Person]
) -> None:
    """The owner's new phone (device change and login challenged, the owner passes): 12 CNY
    at the usual breakfast shop, then 150-260 CNY to four friends paid before, through the
    day."""
    p, friends = crowd[7], crowd[8:12]
    usual_breakfast(world, p)
    for friend in friends:
        world.act(Tally(), P2P, p, 60 * YUAN, friend.ref)  # from the old phone
    world.wait(2 * HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-f7", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, PAY, p, 12 * YUAN, BREAKFAST, **new_phone)  # type: ignore[arg-type]
    for k, friend in enumerate(friends):
        world.wait(2 * HOUR)
        world.act(t, P2P, p, (150 + 30 * k) * YUAN, friend.ref, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[2:] == ["accept"] * 5, f"\n{t}"


def test_honest_new_phone_buys_breakfast_then_pays_a_new_colleague(
    world: World, crowd: list[Person]
) -> None:
    """A new phone, 10 CNY at the usual breakfast shop, then a first payment of 150 CNY to a
    new colleague (a shared gift), and lunch at a shop paid before."""
    p = crowd[12]
    colleague = world.introduce(world.person(age_days=700, where=SHANGHAI))  # never paid
    usual_breakfast(world, p)
    world.wait(HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-f12", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, PAY, p, 10 * YUAN, BREAKFAST, **new_phone)  # type: ignore[arg-type]
    world.wait(3 * HOUR)
    world.act(t, P2P, p, 150 * YUAN, colleague.ref, **new_phone)  # type: ignore[arg-type]
    world.wait(2 * HOUR)
    world.act(t, PAY, p, 45 * YUAN, BREAKFAST, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[2:] == ["accept"] * 3, f"\n{t}"


def test_honest_new_phone_then_small_new_shops_on_a_trip(world: World, crowd: list[Person]) -> None:
    """A new phone bought for a trip: breakfast at the usual shop (11 CNY) before leaving,
    then, in the afternoon and evening, seven shops never paid (taxi, museum, a meal,
    souvenirs, coffee, dinner, a hotel deposit: 40-190 CNY each, 830 CNY in all), 25 and
    40 minutes apart in turn."""
    p = crowd[14]
    usual_breakfast(world, p)
    world.wait(HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-f14", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, PAY, p, 11 * YUAN, BREAKFAST, **new_phone)  # type: ignore[arg-type]
    world.wait(5 * HOUR)
    shops = [("taxi", 60), ("museum", 80), ("noodles", 95), ("souvenirs", 190)]
    shops += [("coffee", 40), ("dinner", 175), ("hotel", 190)]
    for k, (shop, amount) in enumerate(shops):
        world.wait((40 if k % 2 else 25) * MINUTE)
        world.act(t, PAY, p, amount * YUAN, f"m:trip-{shop}", **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_family_member_adds_their_phone(world: World, crowd: list[Person]) -> None:
    """A retired customer's account is added to their daughter's phone (a login there,
    challenged, passed): the daughter pays the usual breakfast shop 9 CNY for her, 200 CNY to
    a grandchild paid before, and 120 CNY at a pharmacy never paid."""
    p, grandchild = crowd[15], crowd[16]
    usual_breakfast(world, p)
    world.act(Tally(), P2P, p, 100 * YUAN, grandchild.ref)  # from the customer's own phone
    world.wait(3 * HOUR)
    t = Tally()
    daughter = {"device": crowd[17].device, "ip": crowd[17].ip, "passes_step_up": True}
    world.act(t, LOGIN, p, **daughter)  # type: ignore[arg-type]
    world.act(t, PAY, p, 9 * YUAN, BREAKFAST, **daughter)  # type: ignore[arg-type]
    world.wait(HOUR)
    world.act(t, P2P, p, 200 * YUAN, grandchild.ref, **daughter)  # type: ignore[arg-type]
    world.wait(HOUR)
    world.act(t, PAY, p, 120 * YUAN, "m:pharmacy-fam", **daughter)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_new_phone_then_new_shops_every_12_minutes_is_held(
    world: World, crowd: list[Person]
) -> None:
    """The same trip, the seven shops 12 minutes apart: from the sixth, the customer's third
    or later money event in the hour takes the day's outflow past 500 CNY, and the new
    phone's only payment to a usual payee, 11 CNY on its first day, no longer counts
    (``2026.11.28-7``): held for review by ``ato.shop_spree_new_device`` - a cost of the fix,
    pinned here (not a rejection; under ``-6`` the 11 CNY breakfast let it through, and
    without it the same trip was held)."""
    p = crowd[14]
    usual_breakfast(world, p)
    world.wait(HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-f14", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, PAY, p, 11 * YUAN, BREAKFAST, **new_phone)  # type: ignore[arg-type]
    world.wait(5 * HOUR)
    shops = [("taxi", 60), ("museum", 80), ("noodles", 95), ("souvenirs", 190)]
    shops += [("coffee", 40), ("dinner", 175), ("hotel", 190)]
    for shop, amount in shops:
        world.wait(12 * MINUTE)
        world.act(t, PAY, p, amount * YUAN, f"m:trip-{shop}", **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert t.decisions()[2:] == ["accept"] * 6 + ["review"] * 2, f"\n{t}"
    assert t.reasons() == {"ato.device_change.untrusted", "ato.shop_spree_new_device"}, f"\n{t}"
