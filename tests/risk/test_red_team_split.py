"""Red team, third round: structuring. Several rules of the shipped ruleset read a *single*
payment at or above an edge (1,000 CNY at night, 1,000 CNY at a new merchant, 200 CNY from a
device trusted less than a day, 500 CNY to a young payee); an attacker who knows the edge
splits the money into parts under it. Each attack here is such a split, beside an honest
customer whose payments are split too, driven through a real ``RiskEngine`` on a fixed
clock (``red_team.World``).

Each attack was written, and run against ruleset ``2026.11.28-5``, before any rule was chosen
for it. docs/risk.md ("Red team, third round") lists what got through then and what gets
through now, and what each honest look-alike gets. For an attack: the bulk of the money the
attackers try to move is stopped (review or reject, or a challenge they cannot pass). For an
honest look-alike: nothing is rejected, and what goes through is said exactly.
"""

from __future__ import annotations

import pytest

from .red_team import (
    BEIJING,
    CARD,
    CASH_OUT,
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
    TOP_UP,
    WITHDRAW,
    YUAN,
    Person,
    Tally,
    World,
    assert_bulk_stopped,
    assert_not_rejected,
    thin,
)

NIGHT = 17 * HOUR + 30 * MINUTE
"""From ``START`` (08:00 in Shanghai) to 01:30 the next night."""


@pytest.fixture
def world() -> World:
    return World(seed=41)


@pytest.fixture
def crowd(world: World) -> list[Person]:
    return world.crowd(24)


# --- 1. at night, under the 1,000 CNY of scam.night_unusual_payee --------------------------------


def test_coached_victim_sends_999_cny_at_a_time_at_night(world: World, crowd: list[Person]) -> None:
    """A scammer posing as the police calls at 01:30 and coaches a victim into moving their
    savings to a 'safe account' (a 300-day-old account the victim never paid) 999 CNY at a
    time, one part every five minutes, six parts: each under the 1,000 CNY the night rule
    reads."""
    victim = crowd[2]
    safe = thin(world, age_days=300)
    world.wait(NIGHT)
    t = Tally()
    for _ in range(6):
        world.act(t, P2P, victim, 999 * YUAN, safe.ref, passes_step_up=True)
        world.wait(5 * MINUTE)
    assert_bulk_stopped(t)


def test_stolen_unlocked_phone_pays_many_accounts_under_1000_cny_at_night(
    world: World, crowd: list[Person]
) -> None:
    """A phone stolen unlocked at 02:00 (the owner's trusted phone, at home; its SIM gets the
    step-up codes): 990 CNY to each of six accounts never paid, one every three minutes
    (each a first payment under the night rule's 1,000 CNY, no payee paid twice)."""
    victim = crowd[3]
    mules = [thin(world, age_days=150 + 40 * k) for k in range(6)]
    world.wait(NIGHT + 30 * MINUTE)
    t = Tally()
    for mule in mules:
        world.act(t, P2P, victim, 990 * YUAN, mule.ref, passes_step_up=True)
        world.wait(3 * MINUTE)
    assert_bulk_stopped(t)


def test_honest_night_shift_worker_pays_rent_in_two_parts(
    world: World, crowd: list[Person]
) -> None:
    """A night-shift nurse pays the usual landlord (paid by day a month ago, and again
    yesterday for the deposit) the rent in two parts of 950 CNY at 00:40, from a top-up,
    then buys 60 CNY of food at a night shop."""
    nurse, landlord = crowd[4], crowd[5]
    world.act(Tally(), P2P, nurse, 1_900 * YUAN, landlord.ref)  # last month's rent, by day
    world.wait(30 * DAY)
    world.act(Tally(), P2P, nurse, 500 * YUAN, landlord.ref)  # the deposit, yesterday by day
    world.wait(NIGHT - 50 * MINUTE)  # 00:40
    t = Tally()
    world.act(t, TOP_UP, nurse, 1_000 * YUAN, nurse.card)
    world.act(t, P2P, nurse, 950 * YUAN, landlord.ref)
    world.wait(4 * MINUTE)
    world.act(t, P2P, nurse, 950 * YUAN, landlord.ref)
    world.wait(20 * MINUTE)
    world.act(t, PAY, nurse, 60 * YUAN, "m:night-7")
    assert t.decisions() == ["accept"] * 4, f"\n{t}"


def test_honest_first_rent_at_night_in_parts_the_day_after_the_deposit_is_held(
    world: World, crowd: list[Person]
) -> None:
    """A nurse who moved in yesterday paid the new landlord a 500 CNY deposit by day (the
    first payment to them) and pays the first rent at 00:40 in two parts of 950 CNY: to the
    engine a payee first paid today, so the second part is held for review by
    ``scam.night_split_payments`` - a cost of this red team's rule, pinned here (not a
    rejection; an analyst approves it)."""
    nurse = crowd[4]
    landlord = thin(world, age_days=900, where=SHANGHAI)
    world.act(Tally(), P2P, nurse, 500 * YUAN, landlord.ref)  # the deposit, by day
    world.wait(NIGHT - 50 * MINUTE)  # 00:40
    t = Tally()
    world.act(t, TOP_UP, nurse, 1_000 * YUAN, nurse.card)
    world.act(t, P2P, nurse, 950 * YUAN, landlord.ref)
    world.wait(4 * MINUTE)
    world.act(t, P2P, nurse, 950 * YUAN, landlord.ref)
    assert_not_rejected(t)
    assert t.decisions() == ["accept", "accept", "review"], f"\n{t}"
    assert t.reasons() == {"scam.night_split_payments"}, f"\n{t}"


def test_honest_night_rent_in_parts_to_a_landlord_with_one_tenant(
    world: World, crowd: list[Person]
) -> None:
    """A night-shift nurse tops up twice (1,000 CNY at a time, the card's limit) at 00:40 and
    pays the rent, 2,400 CNY, in three parts of 800 to a landlord whose only tenant they are
    (last month's rent, 31 days ago, is out of every window of the store's: the landlord's
    account looks quiet). Held for review by ``scam.night_split_payments`` as first written
    (it read a quiet payee); since the engine knows which payees were first paid today, rent
    to a landlord paid last month is not money to someone new."""
    nurse = crowd[4]
    landlord = thin(world, age_days=900, where=SHANGHAI)
    world.act(Tally(), P2P, nurse, 2_400 * YUAN, landlord.ref)  # last month's rent, by day
    world.wait(31 * DAY + NIGHT - 50 * MINUTE)  # 00:40, a month later
    t = Tally()
    for _ in range(2):
        world.act(t, TOP_UP, nurse, 1_000 * YUAN, nurse.card)
    for _ in range(3):
        world.act(t, P2P, nurse, 800 * YUAN, landlord.ref)
        world.wait(3 * MINUTE)
    assert t.decisions() == ["accept"] * 5, f"\n{t}"


def test_honest_restaurant_bill_split_at_night(world: World, crowd: list[Person]) -> None:
    """After a late dinner the host pays the restaurant 1,260 CNY at 00:20; six friends (two
    of whom never paid the host before) each send their share of 210 CNY within twenty
    minutes, and one sends 60 CNY more for the taxi."""
    host, friends = crowd[6], crowd[7:13]
    world.act(Tally(), P2P, friends[0], 50 * YUAN, host.ref)  # some paid the host before
    world.act(Tally(), P2P, friends[1], 80 * YUAN, host.ref)
    world.wait(NIGHT - 70 * MINUTE)  # 00:20
    t = Tally()
    world.act(t, PAY, host, 1_260 * YUAN, "m:restaurant-3")
    for friend in friends:
        world.wait(3 * MINUTE)
        world.act(t, P2P, friend, 210 * YUAN, host.ref)
    world.act(t, P2P, friends[0], 60 * YUAN, host.ref)
    assert t.decisions() == ["accept"] * 8, f"\n{t}"


# --- 2. a colluding merchant, under the 1,000 CNY of merchant.thin_payers_converge ---------------


def test_colluding_merchant_takes_stolen_cards_in_parts_of_990_cny(world: World) -> None:
    """Four accounts of 20-40 days (full KYC, little history) each bind a stolen card, top up
    1,980 CNY and spend it at one merchant that opened this week in two parts of 990 CNY
    (each under the 1,000 CNY the collusion rule reads)."""
    fakes = [thin(world, age_days=20 + 6 * k, kyc=2) for k in range(4)]
    world.wait(HOUR)
    world.act(Tally(), PAY, fakes[0], 15 * YUAN, "m:colluder-2")  # the shop's first sale
    world.wait(3 * DAY)
    t = Tally()
    for k, fake in enumerate(fakes):
        world.act(t, CARD, fake)
        world.act(t, TOP_UP, fake, 1_980 * YUAN, f"card:stolen-s{k}")
        for _ in range(2):
            world.wait(3 * MINUTE)
            world.act(t, PAY, fake, 990 * YUAN, "m:colluder-2")
        world.wait(25 * MINUTE)
    assert_bulk_stopped(t, kinds=SPENT)


def test_honest_new_canteen_paid_small_sums_by_new_students(world: World) -> None:
    """A canteen that opened this week beside a vocational school: eight students with
    accounts of 20-60 days and little history each pay three meals a day (12-35 CNY), one
    also a 150 CNY meal card."""
    students = [thin(world, age_days=20 + 5 * k, where=SHANGHAI) for k in range(8)]
    world.wait(HOUR)
    world.act(Tally(), PAY, students[0], 20 * YUAN, "m:canteen-new")  # its first sale
    world.wait(2 * DAY)
    t = Tally()
    for meal in range(3):
        for k, student in enumerate(students):
            world.act(t, PAY, student, (12 + 3 * k + meal) * YUAN, "m:canteen-new")
            world.wait(2 * MINUTE)
        world.wait(4 * HOUR)
    world.act(t, PAY, students[3], 150 * YUAN, "m:canteen-new")
    assert t.decisions() == ["accept"] * 25, f"\n{t}"


# --- 3. a takeover cashing out under the 200 CNY of the newly-trusted-device rules ----------------


def test_phished_login_then_withdrawals_of_199_cny_to_a_new_card(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code (passes the step-up) on the attacker's phone in the victim's
    city, no password reset, no card bound (the withdrawal names the attacker's bank card):
    fifteen withdrawals of 199 CNY, one every three minutes (each under the 200 CNY of
    ato.money_out_on_new_device and ato.new_card_cash_out)."""
    victim = crowd[8]
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-w", "ip": "10.1.91.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    for _ in range(15):
        world.wait(3 * MINUTE)
        world.act(t, WITHDRAW, victim, 199 * YUAN, "card:attacker-w", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_sim_swap_and_reset_then_withdrawals_of_199_cny_to_a_new_card(
    world: World, crowd: list[Person]
) -> None:
    """A SIM swap: the attacker declares a new device, logs in and resets the password (the
    codes go to the swapped SIM), waits two hours, then withdraws 199 CNY at a time to a
    card the victim never used, one every four minutes, fifteen times (each under the
    200 CNY of ato.money_out_after_reset and ato.new_card_cash_out)."""
    victim = crowd[9]
    world.wait(12 * HOUR)
    t = Tally()
    attacker = {"device": "x-sim-w", "ip": "10.9.3.8", "where": BEIJING, "passes_step_up": True}
    for kind in (DEVICE_CHANGE, LOGIN, RESET):
        world.act(t, kind, victim, **attacker)  # type: ignore[arg-type]
    world.wait(2 * HOUR)
    for _ in range(15):
        world.act(t, WITHDRAW, victim, 199 * YUAN, "card:attacker-sim", **attacker)  # type: ignore[arg-type]
        world.wait(4 * MINUTE)
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_phished_login_then_a_shop_paid_190_cny_at_a_time(
    world: World, crowd: list[Person]
) -> None:
    """A phished login code on the attacker's phone in the victim's city, then twelve
    payments of 190 CNY, one every three minutes, at an electronics shop the victim never
    paid (gift cards and phone top-up codes, resold), each under the 200 CNY of
    ato.money_out_on_new_device."""
    victim = crowd[10]
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-p", "ip": "10.1.92.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    for _ in range(12):
        world.wait(3 * MINUTE)
        world.act(t, PAY, victim, 190 * YUAN, "m:giftcards-8", **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t, kinds=SPENT)


def test_honest_new_phone_then_withdrawals_to_the_usual_card(
    world: World, crowd: list[Person]
) -> None:
    """A new phone (the device change and the login on it challenged, the owner passes),
    then three withdrawals of 150 CNY to the card the owner always uses, an afternoon of
    small sums, and the usual shops."""
    p = crowd[11]
    world.wait(9 * HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-w11", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    for _ in range(3):
        world.wait(40 * MINUTE)
        world.act(t, WITHDRAW, p, 150 * YUAN, p.card, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert t.decisions()[2:] == ["accept"] * 3, f"\n{t}"


def test_honest_new_phone_then_an_afternoon_at_the_mall(world: World, crowd: list[Person]) -> None:
    """A new phone, then within an hour: the usual supermarket (m:3, m:7, paid before from
    the old phone), a new bakery 35 CNY, a new bookshop 120 CNY and a new clothes shop
    180 CNY (each new shop under 200 CNY)."""
    p = crowd[12]
    world.wait(9 * HOUR)
    t_before = Tally()
    for shop in ("m:3", "m:7"):
        world.act(t_before, PAY, p, 40 * YUAN, shop)
    world.wait(3 * HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-m12", "passes_step_up": True}
    world.act(t, DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    for shop, amount in (("m:3", 160), ("m:bakery-1", 35), ("m:7", 90), ("m:books-2", 120)):
        world.wait(8 * MINUTE)
        world.act(t, PAY, p, amount * YUAN, shop, **new_phone)  # type: ignore[arg-type]
    world.wait(8 * MINUTE)
    world.act(t, PAY, p, 180 * YUAN, "m:clothes-5", **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert t.decisions()[2:] == ["accept"] * 5, f"\n{t}"


# --- 4. a scam paid over days to a young account, under the 500 CNY edges -------------------------


def test_investment_scam_paid_490_cny_twice_a_day_for_six_days(
    world: World, crowd: list[Person]
) -> None:
    """'Pig butchering': a victim groomed for weeks 'invests' on a fake trading platform by
    paying the scammer's 25-day-old account 490 CNY each morning and each evening for six
    days (each part under the 500 CNY of scam.unusual_to_young_payee; two a day, under the
    third part and the 1,000 CNY a day of scam.quiet_payee_paid_repeatedly)."""
    victim = crowd[13]
    scammer = thin(world, age_days=25)
    world.wait(HOUR)
    t = Tally()
    for _ in range(6):
        world.act(t, P2P, victim, 490 * YUAN, scammer.ref, passes_step_up=True)
        world.wait(11 * HOUR)
        world.act(t, P2P, victim, 490 * YUAN, scammer.ref, passes_step_up=True)
        world.wait(13 * HOUR)
    assert_bulk_stopped(t)


def test_honest_family_sends_a_new_relative_small_sums(world: World, crowd: list[Person]) -> None:
    """A cousin arrives in the city for a first job: their 40-day-old account gets 300 CNY
    from an aunt on the first day, 200 CNY from a grandmother and 400 CNY from the aunt
    again over the week, and 150 CNY from an uncle."""
    cousin = thin(world, age_days=40, where=SHANGHAI)
    aunt, grandmother, uncle = crowd[14], crowd[15], crowd[16]
    world.wait(HOUR)
    t = Tally()
    for payer, amount, wait in (
        (aunt, 300, DAY),
        (grandmother, 200, 2 * DAY),
        (aunt, 400, HOUR),
        (uncle, 150, DAY),
    ):
        world.act(t, P2P, payer, amount * YUAN, cousin.ref)
        world.wait(wait)
    assert t.decisions() == ["accept"] * 4, f"\n{t}"


def test_honest_parent_pays_a_students_new_account_every_few_days(
    world: World, crowd: list[Person]
) -> None:
    """A parent pays their child's new university account (35 days old) 450 CNY of living
    money every other day for a week and a half: six parts, 2,700 CNY."""
    parent = crowd[17]
    student = thin(world, age_days=35, where=SHANGHAI)
    world.wait(2 * HOUR)
    t = Tally()
    for _ in range(6):
        world.act(t, P2P, parent, 450 * YUAN, student.ref)
        world.wait(2 * DAY)
    assert t.decisions() == ["accept"] * 6, f"\n{t}"


def test_honest_freelancer_paid_by_several_clients(world: World, crowd: list[Person]) -> None:
    """A designer's two-year-old account, on their own phone: four clients send 800-2,400 CNY
    over a week, and the designer withdraws 990 CNY three times to their usual card. (Four
    clients paying on one day are held from the second by the older
    ``mule.fan_in_first_payments``: 500 CNY or more to a payee two or more others paid
    1,000 CNY today, found here, as under ``2026.11.28-5``.)"""
    designer = crowd[18]
    clients = crowd[19:23]
    world.wait(HOUR)
    t = Tally()
    for client, amount in zip(clients, (800, 1_500, 2_400, 1_200), strict=True):
        world.act(t, P2P, client, amount * YUAN, designer.ref, passes_step_up=True)
        world.wait(2 * DAY)
    for _ in range(3):
        world.act(t, WITHDRAW, designer, 990 * YUAN, designer.card)
        world.wait(30 * MINUTE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[4:] == ["accept"] * 3, f"\n{t}"
