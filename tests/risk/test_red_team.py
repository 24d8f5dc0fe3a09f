"""Red team: attacks the shipped ruleset was not tuned on, and honest customers who look
like them, driven through a real ``RiskEngine`` on a fixed clock (``red_team.World``).

For an attack: the money the attackers try to take out is stopped (review or reject, or a
challenge they cannot pass) before the bulk of it leaves. For an honest look-alike: nothing
is rejected; where a step is truly risky-looking, a challenge (or a review) is accepted and
the test says so.
"""

from __future__ import annotations

import pytest

from puhui.risk import Decision, EventKind

from .red_team import (
    BEIJING,
    CARD,
    CHENGDU,
    DAY,
    DEVICE_CHANGE,
    HOUR,
    LOGIN,
    MANILA,
    MINUTE,
    P2P,
    PAY,
    RESET,
    SHANGHAI,
    SINGAPORE,
    TOP_UP,
    WITHDRAW,
    YUAN,
    Person,
    Tally,
    World,
    assert_bulk_stopped,
    assert_not_rejected,
)

STOLEN_CARD_MONEY = frozenset({EventKind.TOP_UP, EventKind.PAYMENT})
"""What card testing is after: money charged to stolen cards, and spent."""


@pytest.fixture
def world() -> World:
    return World(seed=11)


@pytest.fixture
def crowd(world: World) -> list[Person]:
    return world.crowd(24)


# --- account takeover variants ---------------------------------------------------------------


def test_takeover_with_a_phished_code_and_no_password_reset(
    world: World, crowd: list[Person]
) -> None:
    """Fewer steps: the attacker phishes the login code (passes the step-up) from abroad,
    never resets the password, and sends the balance to an old recruited account."""
    victim = crowd[0]
    mule = world.introduce(world.person(age_days=200, where=BEIJING))
    world.wait(10 * HOUR)  # the victim was last seen at home 10 hours ago: no impossible travel
    t = Tally()
    attacker = {"device": "emu-1", "ip": "203.0.113.7", "where": SINGAPORE}
    world.act(t, LOGIN, victim, passes_step_up=True, **attacker)  # type: ignore[arg-type]
    for amount in (2_800, 2_800, 2_800):
        world.wait(3 * MINUTE)
        world.act(t, P2P, victim, amount * YUAN, mule.ref, passes_step_up=True, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_sim_swap_drain_split_just_below_the_threshold(world: World, crowd: list[Person]) -> None:
    """SIM swap, then the balance sent in 199 CNY parts (each under the 200 CNY edge of the
    post-takeover rule) to one account, a part every 90 seconds."""
    victim = crowd[1]
    mule = world.introduce(world.person(age_days=60, where=CHENGDU))
    world.wait(12 * HOUR)
    t = Tally()
    attacker = {"device": "x-sim", "ip": "10.9.3.4", "where": BEIJING, "passes_step_up": True}
    for kind in (DEVICE_CHANGE, LOGIN, RESET):
        world.act(t, kind, victim, **attacker)  # type: ignore[arg-type]
    for _ in range(20):
        world.wait(90 * 10**9)
        world.act(t, P2P, victim, 199 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_takeover_waits_a_day_then_withdraws_to_a_new_card(
    world: World, crowd: list[Person]
) -> None:
    """Delay between steps: SIM swap and password reset, then 26 hours of nothing (past the
    rules' one-day window), then a new card bound and everything withdrawn to it."""
    victim = crowd[2]
    world.wait(12 * HOUR)
    t = Tally()
    attacker = {"device": "x-sim-2", "ip": "10.9.7.1", "where": BEIJING, "passes_step_up": True}
    for kind in (DEVICE_CHANGE, LOGIN, RESET):
        world.act(t, kind, victim, **attacker)  # type: ignore[arg-type]
    world.wait(26 * HOUR)
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.act(t, CARD, victim, **attacker)  # type: ignore[arg-type]
    world.wait(MINUTE)
    world.act(t, WITHDRAW, victim, 5_000 * YUAN, "card:x-9", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def _cloned_device_attack(world: World, victim: Person) -> Tally:
    """Impossible travel on a device the engine trusts: the attacker replays the victim's
    device id (an emulator) from 1,650 km away half an hour after the victim paid at home,
    and sends money in parts under the step-up threshold."""
    mule = world.introduce(world.person(age_days=300, where=CHENGDU))
    world.wait(5 * HOUR)
    t_owner = Tally()
    world.act(t_owner, PAY, victim, 38 * YUAN, "m:3")  # the victim, at home
    assert t_owner.steps[0].went_through
    world.wait(30 * MINUTE)
    t = Tally()
    for _ in range(3):
        world.act(t, P2P, victim, 1_500 * YUAN, mule.ref, where=CHENGDU, ip="10.77.0.3")
        world.wait(2 * MINUTE)
    return t


def test_cloned_device_id_from_another_city_the_bulk_is_stopped(
    world: World, crowd: list[Person]
) -> None:
    assert_bulk_stopped(_cloned_device_attack(world, crowd[3]))


def test_slow_drain_over_days_after_a_takeover(world: World, crowd: list[Person]) -> None:
    """A slow drain: after a phished login, 150 CNY a night for ten nights to one payee."""
    victim = crowd[4]
    mule = world.introduce(world.person(age_days=120, where=CHENGDU))
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-5", "ip": "203.0.113.50", "where": MANILA, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    for _ in range(10):
        world.wait(DAY)
        world.act(t, P2P, victim, 150 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


# New variants of those two gaps, written before the rules that close them were tuned (the
# first two tests above were what the rules were written against; these were not looked at
# while choosing the rules' edges).


def test_cloned_device_id_in_beijing_pays_an_online_shop(world: World, crowd: list[Person]) -> None:
    """A cloned device id 1,070 km away 50 minutes after the owner paid at home: four
    800 CNY payments at an online shop (a merchant, not a person; no login first)."""
    victim = crowd[6]
    world.wait(4 * HOUR)
    t_owner = Tally()
    world.act(t_owner, PAY, victim, 25 * YUAN, "m:12")  # the owner, at home in Shanghai
    world.wait(50 * MINUTE)
    t = Tally()
    for _ in range(4):
        world.act(t, PAY, victim, 800 * YUAN, "m:777", where=BEIJING, ip="10.66.1.9")
        world.wait(4 * MINUTE)
    assert_bulk_stopped(t)


def test_sim_swap_then_a_slow_drain_to_two_mules_after_three_days(
    world: World, crowd: list[Person]
) -> None:
    """SIM swap (device change and login, no reset), three quiet days (past the one-day
    rules), then 120 CNY every night to one of two mules in turn, for twelve nights."""
    victim = crowd[7]
    mules = [world.introduce(world.person(age_days=150 + 40 * k, where=CHENGDU)) for k in (0, 1)]
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "x-sim-7", "ip": "10.9.8.7", "where": CHENGDU, "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, victim, **attacker)  # type: ignore[arg-type]
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.wait(3 * DAY)
    for night in range(12):
        world.wait(DAY)
        mule = mules[night % 2]
        world.act(t, P2P, victim, 120 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


@pytest.mark.xfail(
    strict=True,
    reason="known gap (a variant not tuned on): the payee is first paid from a device trusted "
    "eight days, beyond the week (NEW_DEVICE_S) after which a new payee is no longer followed",
)
def test_phished_login_then_a_slow_drain_after_eight_quiet_days(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code, then eight quiet days (past every week-long rule) before 150
    CNY a night for ten nights to one payee."""
    victim = crowd[8]
    mule = world.introduce(world.person(age_days=200, where=CHENGDU))
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-8", "ip": "203.0.113.80", "where": MANILA, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    world.wait(8 * DAY)
    for _ in range(10):
        world.wait(DAY)
        world.act(t, P2P, victim, 150 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_credential_stuffing_from_one_device(world: World, crowd: list[Person]) -> None:
    """One device and IP try the logins of twelve customers; the codes of three were phished
    (their step-ups pass); from those three, 900 CNY each to one account."""
    mule = world.introduce(world.person(age_days=100, where=CHENGDU))
    world.wait(10 * HOUR)
    t = Tally()
    bot = {"device": "bot-1", "ip": "198.51.100.9", "where": SINGAPORE}
    taken = []
    for k, victim in enumerate(crowd[5:17]):
        step = world.act(t, LOGIN, victim, passes_step_up=k % 4 == 0, **bot)  # type: ignore[arg-type]
        if step.went_through:
            taken.append(victim)
        world.wait(20 * 10**9)
    assert [s.decision.decision for s in t.steps] == [Decision.CHALLENGE] * 12
    assert len(taken) == 3
    for victim in taken:
        world.wait(MINUTE)
        world.act(t, P2P, victim, 900 * YUAN, mule.ref, passes_step_up=True, **bot)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


# An attacker's device the customer never trusted, and no login first (the services' sessions
# are the only thing that keeps such an attacker out; the engine must not rely on them).


def test_never_trusted_device_abroad_pays_a_merchant(world: World, crowd: list[Person]) -> None:
    """From an emulator in Singapore, ten hours after the victim was last seen at home (no
    impossible travel), no login: three 500 CNY payments at a shop. Challenged (the
    attacker cannot pass), not rejected: the owner abroad on a new phone would pass."""
    victim = crowd[0]
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-20", "ip": "203.0.113.20", "where": SINGAPORE}
    for _ in range(3):
        world.act(t, PAY, victim, 500 * YUAN, "m:880", **attacker)  # type: ignore[arg-type]
        world.wait(2 * MINUTE)
    assert t.decisions() == ["challenge"] * 3, f"\n{t}"
    assert t.out_through() == 0, f"\n{t}"


def test_never_trusted_device_right_after_the_owner_paid_at_home_is_rejected(
    world: World, crowd: list[Person]
) -> None:
    """The same from Singapore half an hour after the owner paid at home: impossible travel
    on a device never trusted is clearly hostile."""
    victim = crowd[1]
    world.wait(8 * HOUR)
    world.act(Tally(), PAY, victim, 30 * YUAN, "m:3")
    world.wait(30 * MINUTE)
    t = Tally()
    world.act(t, PAY, victim, 500 * YUAN, "m:880", device="emu-21", where=SINGAPORE)
    assert t.decisions() == ["reject"], f"\n{t}"


def test_never_trusted_device_at_home_withdraws_to_a_card(
    world: World, crowd: list[Person]
) -> None:
    """In the victim's own city, no login: 3,000 CNY withdrawn to the attacker's card, then
    the rest in 800 CNY parts."""
    victim = crowd[2]
    world.wait(9 * HOUR)
    t = Tally()
    attacker = {"device": "x-22", "ip": "10.1.40.9", "where": SHANGHAI}
    world.act(t, WITHDRAW, victim, 3_000 * YUAN, "card:x-22", **attacker)  # type: ignore[arg-type]
    for _ in range(4):
        world.wait(5 * MINUTE)
        world.act(t, WITHDRAW, victim, 800 * YUAN, "card:x-22", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t, share=0)


def test_never_trusted_device_drains_by_p2p_in_small_steps(
    world: World, crowd: list[Person]
) -> None:
    """At home, no login: 45 CNY to a recruited account every two minutes, thirty times
    (under every amount edge of the rules on new or newly trusted devices)."""
    victim = crowd[3]
    mule = world.introduce(world.person(age_days=200, where=CHENGDU))
    world.wait(9 * HOUR)
    t = Tally()
    attacker = {"device": "x-23", "ip": "10.1.41.3", "where": SHANGHAI}
    for _ in range(30):
        world.act(t, P2P, victim, 45 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
        world.wait(2 * MINUTE)
    assert_bulk_stopped(t, share=0)


def test_never_trusted_device_spends_20_cny_first_then_shops_in_parts(
    world: World, crowd: list[Person]
) -> None:
    """At home, no login: 20 CNY at a shop (accepted, but a payment does not make a device
    trusted: only a login, a device change or a passed step-up does), then eight payments of
    199 CNY at another shop."""
    victim = crowd[5]
    world.wait(9 * HOUR)
    t = Tally()
    attacker = {"device": "x-25", "ip": "10.1.43.5", "where": SHANGHAI}
    world.act(t, PAY, victim, 20 * YUAN, "m:882", **attacker)  # type: ignore[arg-type]
    for _ in range(8):
        world.wait(3 * MINUTE)
        world.act(t, PAY, victim, 199 * YUAN, "m:883", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_never_trusted_device_spends_20_cny_at_a_time(world: World, crowd: list[Person]) -> None:
    """At home, no login: 20 CNY at a time at three shops, every four minutes, 25 times
    (each at most what a never-trusted device may spend unasked, none making it trusted)."""
    victim = crowd[6]
    world.wait(9 * HOUR)
    t = Tally()
    attacker = {"device": "x-26", "ip": "10.1.44.5", "where": SHANGHAI}
    for k in range(25):
        world.act(t, PAY, victim, 20 * YUAN, f"m:{890 + k % 3}", **attacker)  # type: ignore[arg-type]
        world.wait(4 * MINUTE)
    assert_bulk_stopped(t)


def test_device_change_from_a_never_trusted_device_then_shopping(
    world: World, crowd: list[Person]
) -> None:
    """No login: the attacker declares their own phone the account's new device (the step-up
    code goes to the owner), then pays 400 CNY four times at a shop."""
    victim = crowd[4]
    world.wait(9 * HOUR)
    t = Tally()
    attacker = {"device": "x-24", "ip": "10.1.42.7", "where": SHANGHAI}
    world.act(t, DEVICE_CHANGE, victim, **attacker)  # type: ignore[arg-type]
    for _ in range(4):
        world.wait(3 * MINUTE)
        world.act(t, PAY, victim, 400 * YUAN, "m:881", **attacker)  # type: ignore[arg-type]
    assert t.decisions()[0] == "challenge", f"\n{t}"
    assert_bulk_stopped(t, share=0)


# --- scams and mules ------------------------------------------------------------------------------


def test_many_victims_pay_one_old_mule(world: World, crowd: list[Person]) -> None:
    """Six coached victims, from their own phones, each pay 1,200 CNY to one recruited
    account three months old, twenty minutes apart; the mule then takes it out."""
    mule = world.introduce(world.person(age_days=90, where=CHENGDU))
    world.wait(6 * HOUR)
    t = Tally()
    for victim in crowd[5:11]:
        world.act(t, P2P, victim, 1_200 * YUAN, mule.ref, passes_step_up=True)
        world.wait(20 * MINUTE)
    assert_bulk_stopped(t)


def test_scam_paid_in_parts_to_an_older_scammer_account(world: World, crowd: list[Person]) -> None:
    """One victim, coached, tops up from their own card and pays 9,500 CNY in five parts of
    1,900 (under the 3,000 CNY step-up) to a 45-day-old account, over two hours."""
    victim = crowd[11]
    scammer = world.introduce(world.person(age_days=45, kyc=1, where=CHENGDU))
    world.wait(6 * HOUR)
    t = Tally()
    world.act(t, TOP_UP, victim, 9_500 * YUAN, victim.card, passes_step_up=True)
    for _ in range(5):
        world.wait(25 * MINUTE)
        world.act(t, P2P, victim, 1_900 * YUAN, scammer.ref, passes_step_up=True)
    assert_bulk_stopped(t)


def test_laundering_ring_with_circular_transfers(world: World) -> None:
    """Four accounts of 40-90 days with little history pass 3,000 CNY round a circle, hour
    after hour, then one withdraws: layering."""
    ring = [world.introduce(world.person(age_days=40 + 15 * k, kyc=1)) for k in range(4)]
    world.wait(HOUR)
    t = Tally()
    world.act(t, TOP_UP, ring[0], 3_000 * YUAN, ring[0].card)
    for _ in range(4):
        for k, member in enumerate(ring):
            world.wait(10 * MINUTE)
            world.act(t, P2P, member, 3_000 * YUAN, ring[(k + 1) % 4].ref)
    world.act(t, WITHDRAW, ring[0], 3_000 * YUAN, ring[0].card)
    assert_bulk_stopped(t)


def test_mule_takes_out_a_victims_money_in_parts(world: World, crowd: list[Person]) -> None:
    """A ten-day-old mule receives 2,000 CNY (whether or not that is held) and withdraws it
    in 199 CNY parts, under the young-cash-out edge."""
    victim = crowd[12]
    mule = world.introduce(world.person(age_days=10, kyc=1, where=CHENGDU))
    world.wait(HOUR)
    t_victim = Tally()
    world.act(t_victim, P2P, victim, 2_000 * YUAN, mule.ref, passes_step_up=True)
    t = Tally()
    for _ in range(10):
        world.wait(3 * MINUTE)
        world.act(t, WITHDRAW, mule, 199 * YUAN, mule.card)
    assert_bulk_stopped(t)


# --- cards, bust-out, farming -------------------------------------------------------------------


def test_card_testing_just_above_the_tiny_amount_from_a_dormant_account(world: World) -> None:
    """A ten-day-old dormant account (past the young-account rules) tests eight stolen cards
    with 12-19 CNY top-ups over 40 minutes, then charges the one that worked 2,000 CNY and
    spends it online."""
    fraudster = world.introduce(world.person(age_days=10, kyc=1, where=CHENGDU))
    world.wait(HOUR)
    t = Tally()
    working = ""
    for k in range(8):
        if world.act(t, CARD, fraudster).went_through:
            world.act(t, TOP_UP, fraudster, (12 + k) * YUAN, f"card:s{k}")
            working = f"card:s{k}"
        world.wait(5 * MINUTE)
    if world.act(t, TOP_UP, fraudster, 2_000 * YUAN, working).went_through:
        world.act(t, PAY, fraudster, 2_000 * YUAN, "m:91")
    assert_bulk_stopped(t, kinds=STOLEN_CARD_MONEY)


def test_slow_card_testing_rotating_devices(world: World) -> None:
    """One attacker, a new device for every try, one IP: 5 CNY top-ups from different cards
    every 25 minutes (never three in an hour), then 1,500 CNY charged and spent."""
    fraudster = world.introduce(world.person(age_days=9, kyc=1, where=CHENGDU))
    world.wait(HOUR)
    t = Tally()
    working = ""
    for k in range(6):
        device = f"rot-{k}"
        if world.act(t, CARD, fraudster, device=device).went_through:
            world.act(t, TOP_UP, fraudster, 5 * YUAN, f"card:r{k}", device=device)
            working = f"card:r{k}"
        world.wait(25 * MINUTE)
    if world.act(t, TOP_UP, fraudster, 1_500 * YUAN, working, device="rot-6").went_through:
        world.act(t, PAY, fraudster, 1_500 * YUAN, "m:92", device="rot-6")
    assert_bulk_stopped(t, kinds=STOLEN_CARD_MONEY)


def test_bust_out_after_a_long_honest_history(world: World, crowd: list[Person]) -> None:
    """First-party fraud: a customer with a long honest history binds three new cards in an
    evening, charges each 4,000 CNY and withdraws 12,000 CNY to yet another new card."""
    customer = crowd[13]
    world.wait(11 * HOUR)  # 19:00 local
    t = Tally()
    for k in range(3):
        world.act(t, CARD, customer, passes_step_up=True)
        world.act(t, TOP_UP, customer, 4_000 * YUAN, f"card:b{k}", passes_step_up=True)
        world.wait(10 * MINUTE)
    world.act(t, CARD, customer, passes_step_up=True)
    world.act(t, WITHDRAW, customer, 12_000 * YUAN, "card:b9", passes_step_up=True)
    assert_bulk_stopped(t)


def test_bonus_farm_rotating_devices_behind_one_ip(world: World) -> None:
    """Promotion abuse, one attacker rotating devices: eight fresh accounts, each its own
    device but one IP, each pays 10 CNY at a shop (for the bonus) and passes 20 CNY on to a
    two-month-old collector, who withdraws what arrived. What is at stake is the bonus
    passed on and cashed out (the fakes' shop payments are their own money)."""
    collector = world.introduce(world.person(age_days=60, kyc=1, ip="198.51.100.77"))
    world.wait(HOUR)
    t = Tally()
    for k in range(8):
        fake = world.person(age_days=0, kyc=0, device=f"farm-{k}", ip="198.51.100.77")
        world.act(t, LOGIN, fake)
        world.act(t, TOP_UP, fake, 20 * YUAN, fake.card)
        world.act(t, PAY, fake, 10 * YUAN, "m:5")
        world.act(t, P2P, fake, 20 * YUAN, collector.ref)
        world.wait(4 * MINUTE)
    arrived = t.out_through(frozenset({P2P}))
    world.act(t, WITHDRAW, collector, arrived, collector.card)
    assert_bulk_stopped(t, kinds=frozenset({P2P, WITHDRAW}))


# --- honest look-alikes ---------------------------------------------------------------------------


def test_honest_traveller_flies_to_singapore(world: World, crowd: list[Person]) -> None:
    """Same phone, a six-hour trip, then a taxi, a hotel and 300 CNY to a friend abroad."""
    traveller, friend = crowd[14], crowd[15]
    world.wait(7 * HOUR)
    t = Tally()
    world.act(t, PAY, traveller, 60 * YUAN, "m:2")  # coffee at the airport
    world.wait(6 * HOUR)
    world.act(t, LOGIN, traveller, ip="203.0.113.200", where=SINGAPORE, passes_step_up=True)
    world.act(t, PAY, traveller, 90 * YUAN, "m:300", ip="203.0.113.200", where=SINGAPORE)
    world.act(t, PAY, traveller, 1_800 * YUAN, "m:301", ip="203.0.113.200", where=SINGAPORE)
    world.act(t, P2P, traveller, 300 * YUAN, friend.ref, ip="203.0.113.200", where=SINGAPORE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_new_phone_then_rent_and_shopping(world: World, crowd: list[Person]) -> None:
    """A new phone (the login on it is challenged: acceptable, the owner passes), then rent to
    the landlord they always pay, groceries, and 250 CNY to a friend paid before."""
    p, landlord = crowd[16], crowd[17]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, P2P, p, 3_200 * YUAN, landlord.ref)  # last month's rent, from the old phone
    world.wait(DAY)
    new_phone = {"device": "phone-new-16", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, P2P, p, 200 * YUAN, landlord.ref, **new_phone)  # type: ignore[arg-type]
    world.wait(DAY)
    world.act(t, P2P, p, 3_200 * YUAN, landlord.ref, **new_phone)  # type: ignore[arg-type]
    world.act(t, PAY, p, 120 * YUAN, "m:4", **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps[3:]), f"\n{t}"


def test_honest_rent_to_a_new_landlord(world: World, crowd: list[Person]) -> None:
    """4,500 CNY to a landlord never paid before (a two-year-old account): the step-up for a
    large first payment is acceptable; no reject, no hold."""
    tenant = crowd[18]
    landlord = world.introduce(world.person(age_days=730, where=SHANGHAI))
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, TOP_UP, tenant, 5_000 * YUAN, tenant.card)
    world.act(t, P2P, tenant, 4_500 * YUAN, landlord.ref, passes_step_up=True)
    assert_not_rejected(t)
    assert t.steps[1].decision.decision in (Decision.ACCEPT, Decision.CHALLENGE), f"\n{t}"


def test_honest_dinner_bill_split_among_many_friends(world: World, crowd: list[Person]) -> None:
    """Eight friends each pay the organiser 85 CNY within half an hour."""
    organiser = crowd[19]
    world.wait(13 * HOUR)
    t = Tally()
    for friend in crowd[:8]:
        world.act(t, P2P, friend, 85 * YUAN, organiser.ref)
        world.wait(3 * MINUTE)
    assert t.decisions() == ["accept"] * 8, f"\n{t}"


def test_honest_small_shop_paid_by_many_customers(world: World, crowd: list[Person]) -> None:
    """A street vendor on a personal account (a year old): twenty customers, most never paid
    them before, pay 15-60 CNY over a day; the vendor withdraws the takings at night."""
    vendor = world.introduce(world.person(age_days=365, where=SHANGHAI))
    world.wait(8 * HOUR)
    t = Tally()
    for k, customer in enumerate(crowd[:20]):
        world.act(t, P2P, customer, (15 + 2 * k) * YUAN, vendor.ref)
        world.wait(30 * MINUTE)
    world.act(t, WITHDRAW, vendor, 700 * YUAN, vendor.card)
    assert t.decisions() == ["accept"] * 21, f"\n{t}"


def test_honest_payday_spike(world: World, crowd: list[Person]) -> None:
    """Payday: a large salary top-up, then rent to the usual landlord, a big purchase, and a
    withdrawal to their own card."""
    p, landlord = crowd[20], crowd[21]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, TOP_UP, p, 15_000 * YUAN, p.card)
    world.act(t, P2P, p, 300 * YUAN, landlord.ref)
    world.wait(HOUR)
    world.act(t, P2P, p, 3_500 * YUAN, landlord.ref)
    world.act(t, PAY, p, 2_400 * YUAN, "m:7")
    world.act(t, WITHDRAW, p, 5_000 * YUAN, p.card)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_family_sharing_a_tablet(world: World, crowd: list[Person]) -> None:
    """Two members of a family pay bills and each other from one tablet within the hour (each
    login on the tablet is challenged: acceptable, both pass)."""
    a, b = crowd[22], crowd[23]
    world.wait(10 * HOUR)
    t = Tally()
    tablet = {"device": "family-tablet", "passes_step_up": True}
    world.act(t, LOGIN, a, **tablet)  # type: ignore[arg-type]
    world.act(t, PAY, a, 260 * YUAN, "m:8", **tablet)  # type: ignore[arg-type]
    world.act(t, P2P, a, 500 * YUAN, b.ref, **tablet)  # type: ignore[arg-type]
    world.act(t, LOGIN, b, **tablet)  # type: ignore[arg-type]
    world.act(t, PAY, b, 180 * YUAN, "m:9", **tablet)  # type: ignore[arg-type]
    world.act(t, PAY, b, 75 * YUAN, "m:10", **tablet)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_newcomer_first_week(world: World) -> None:
    """A newcomer signs up, tops up 300 CNY and pays small sums at shops over a week."""
    p = world.person(age_days=0, kyc=1)
    t = Tally()
    world.act(t, LOGIN, p)
    world.act(t, TOP_UP, p, 300 * YUAN, p.card)
    for day in range(7):
        world.act(t, PAY, p, (20 + 5 * day) * YUAN, f"m:{day + 1}")
        world.wait(DAY)
    assert t.decisions() == ["accept"] * 9, f"\n{t}"


def test_honest_traveller_flies_to_beijing_and_pays_on_landing(
    world: World, crowd: list[Person]
) -> None:
    """Same phone: coffee at Shanghai's airport, a 2 h 10 min flight, a taxi and a hotel in
    Beijing within the hour after landing (1,070 km in 2 h 40 min: no impossible travel)."""
    p = crowd[9]
    world.wait(6 * HOUR)
    t = Tally()
    world.act(t, PAY, p, 38 * YUAN, "m:2")
    world.wait(2 * HOUR + 40 * MINUTE)
    world.act(t, PAY, p, 95 * YUAN, "m:310", ip="10.55.0.8", where=BEIJING)
    world.wait(40 * MINUTE)
    world.act(t, PAY, p, 900 * YUAN, "m:311", ip="10.55.0.8", where=BEIJING)
    assert t.decisions() == ["accept"] * 3, f"\n{t}"


def test_honest_owner_pays_at_home_after_a_failed_takeover_from_abroad(
    world: World, crowd: list[Person]
) -> None:
    """An attacker in Singapore tries the owner's login and a password reset from their own
    device and fails both step-ups; twenty minutes later the owner pays at home from their
    phone: nothing of the failed attempt may make the owner look like the one who
    travelled."""
    owner, friend = crowd[10], crowd[11]
    world.wait(8 * HOUR)
    t = Tally()
    world.act(t, P2P, owner, 200 * YUAN, friend.ref)  # at home, before the attempt
    world.wait(HOUR)
    t_attacker = Tally()
    for kind in (LOGIN, RESET):
        world.act(t_attacker, kind, owner, device="emu-x", ip="203.0.113.9", where=SINGAPORE)
    assert not any(s.went_through for s in t_attacker.steps), f"\n{t_attacker}"
    world.wait(20 * MINUTE)
    world.act(t, PAY, owner, 45 * YUAN, "m:4")
    world.act(t, P2P, owner, 200 * YUAN, friend.ref)
    assert t.decisions() == ["accept"] * 3, f"\n{t}"


def test_honest_owner_pays_someone_new_after_a_failed_reset_by_someone_else(
    world: World, crowd: list[Person]
) -> None:
    """Someone abroad tries to reset the owner's password and fails the step-up: the reset
    never took effect, so the owner's 200 CNY to a friend of years they never paid before,
    twenty minutes later, is not held as money out after a reset."""
    owner = crowd[10]
    friend = world.introduce(world.person(age_days=1_100))
    world.wait(8 * HOUR)
    t_attacker = Tally()
    world.act(t_attacker, RESET, owner, device="emu-x", ip="203.0.113.9", where=SINGAPORE)
    assert not t_attacker.steps[0].went_through
    world.wait(20 * MINUTE)
    t = Tally()
    world.act(t, P2P, owner, 200 * YUAN, friend.ref)  # someone never paid before
    assert t.decisions() == ["accept"], f"\n{t}"


def test_honest_phone_located_abroad_by_its_vpn(world: World, crowd: list[Person]) -> None:
    """The owner's own phone, ten minutes after paying at home, appears in Singapore (a VPN
    exit): one challenge is acceptable (the owner passes it); after it, the next payments
    from there go through without another."""
    p = crowd[12]
    world.wait(8 * HOUR)
    t = Tally()
    world.act(t, PAY, p, 30 * YUAN, "m:3")
    world.wait(10 * MINUTE)
    vpn = {"ip": "203.0.113.250", "where": SINGAPORE, "passes_step_up": True}
    for amount in (60, 80, 45):
        world.act(t, PAY, p, amount * YUAN, "m:400", **vpn)  # type: ignore[arg-type]
        world.wait(5 * MINUTE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[2:] == ["accept"] * 2, f"\n{t}"


def test_honest_new_phone_then_usual_payees_every_night(world: World, crowd: list[Person]) -> None:
    """A new phone, then every night for ten nights 150 CNY to a friend paid before the
    phone changed (the slow drain's shape, to a payee of long standing)."""
    p, friend = crowd[13], crowd[14]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, P2P, p, 150 * YUAN, friend.ref)  # from the old phone
    world.wait(HOUR)
    new_phone = {"device": "phone-new-13", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    for _ in range(10):
        world.wait(DAY)
        world.act(t, P2P, p, 150 * YUAN, friend.ref, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[-10:] == ["accept"] * 10, f"\n{t}"


def test_honest_new_phone_and_a_new_canteen_paid_every_day(
    world: World, crowd: list[Person]
) -> None:
    """A new phone, and from the next day lunch at a new canteen run from a personal
    account: 28 CNY every day for three weeks."""
    p = crowd[15]
    canteen = world.introduce(world.person(age_days=500, where=SHANGHAI))
    world.wait(9 * HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-15", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    for _ in range(21):
        world.wait(DAY)
        world.act(t, P2P, p, 28 * YUAN, canteen.ref, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert t.decisions()[-21:] == ["accept"] * 21, f"\n{t}"


def test_honest_new_phone_pays_before_any_login(world: World, crowd: list[Person]) -> None:
    """A new phone whose first event is a 120 CNY payment at a shop (the app kept the
    session): challenged once, the owner passes; the shopping after it is accepted."""
    p = crowd[16]
    world.wait(9 * HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-16b", "passes_step_up": True}
    world.act(t, PAY, p, 120 * YUAN, "m:4", **new_phone)  # type: ignore[arg-type]
    world.wait(HOUR)
    for amount, shop in ((300, "m:5"), (85, "m:6"), (640, "m:7")):
        world.act(t, PAY, p, amount * YUAN, shop, **new_phone)  # type: ignore[arg-type]
    assert t.decisions() == ["challenge"] + ["accept"] * 3, f"\n{t}"
    assert all(s.went_through for s in t.steps), f"\n{t}"


def test_honest_small_first_payment_on_a_new_phone_at_home(
    world: World, crowd: list[Person]
) -> None:
    """A new phone's first event is 20 CNY at a shop, at home: accepted, no step-up."""
    p = crowd[18]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, PAY, p, 20 * YUAN, "m:6", device="phone-new-18")
    assert t.decisions() == ["accept"], f"\n{t}"


def test_honest_usual_phone_is_unaffected(world: World, crowd: list[Person]) -> None:
    """The customer's own phone, no login: a 500 CNY shop payment, 200 CNY to a friend and
    1,000 CNY withdrawn to their card."""
    p, friend = crowd[19], crowd[20]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, PAY, p, 500 * YUAN, "m:7")
    world.act(t, P2P, p, 200 * YUAN, friend.ref)
    world.act(t, WITHDRAW, p, 1_000 * YUAN, p.card)
    assert t.decisions() == ["accept"] * 3, f"\n{t}"
