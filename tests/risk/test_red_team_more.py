"""Red team, second round: attack families the shipped ruleset was not tuned on (none of
``test_red_team.py``'s), each beside an honest customer who looks like it, driven through a
real ``RiskEngine`` on a fixed clock (``red_team.World``).

Each attack was written, and run against the ruleset of the day (``2026.11.28-4``), before any
rule was chosen for it; the two "after the rule" variants were written after. docs/risk.md
("Red team, second round") lists what got through then and what gets through now, and what
each honest look-alike gets. For an attack: the money the attackers try to move is stopped
(review or reject, or a challenge they cannot pass) before the bulk of it leaves. For an
honest look-alike: nothing is rejected, and what goes through is said exactly.
"""

from __future__ import annotations

import pytest

from puhui.risk import EventKind

from .red_team import (
    CARD,
    CASH_OUT,
    CHENGDU,
    DAY,
    HOUR,
    LOGIN,
    MINUTE,
    P2P,
    PAY,
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


@pytest.fixture
def world() -> World:
    return World(seed=23)


@pytest.fixture
def crowd(world: World) -> list[Person]:
    return world.crowd(24)


# --- 1. layering: a chain, not a circle ---------------------------------------------------------


def test_layering_chain_then_cash_out(world: World) -> None:
    """A stolen card's 950 CNY topped up into a 35-day-old account and passed on within
    minutes A -> B -> C (accounts of 35-50 days, past the 30-day young-payee rule, little
    history, each hop under the 1,000 CNY edge of the pass-through rule); C withdraws it to
    its own card. A hop is tried only if the money reached its sender. Stopped means: nothing
    cashed out (the money may be held on the platform at any hop)."""
    a, b, c = (thin(world, age_days=d) for d in (35, 40, 50))
    world.wait(2 * HOUR)
    t = Tally()
    arrived = world.act(t, TOP_UP, a, 950 * YUAN, "card:stolen-1").went_through
    for sender, receiver in ((a, b), (b, c)):
        world.wait(4 * MINUTE)
        if arrived:
            arrived = world.act(t, P2P, sender, 950 * YUAN, receiver.ref).went_through
    world.wait(4 * MINUTE)
    if arrived:
        world.act(t, WITHDRAW, c, 950 * YUAN, c.card)
    assert t.stopped(), f"\n{t}"
    assert t.out_through(CASH_OUT) == 0, f"\n{t}"


def test_honest_shop_owner_pays_suppliers_from_the_days_takings(
    world: World, crowd: list[Person]
) -> None:
    """A shop run from a personal account of two months' history: eight customers pay
    300-650 CNY over the afternoon, the owner pays two suppliers 1,500 CNY each (paid
    before) and withdraws the rest at night: money passing through, honestly."""
    owner, suppliers = crowd[0], crowd[1:3]
    world.wait(6 * HOUR)
    t_owner = Tally()
    for s in suppliers:  # the suppliers were paid last month too
        world.act(t_owner, P2P, owner, 900 * YUAN, s.ref)
    world.wait(HOUR)
    t = Tally()
    for k, customer in enumerate(crowd[5:13]):
        world.act(t, P2P, customer, (300 + 50 * k) * YUAN, owner.ref)
        world.wait(20 * MINUTE)
    for s in suppliers:
        world.act(t, P2P, owner, 1_500 * YUAN, s.ref)
    world.wait(5 * HOUR)
    world.act(t, WITHDRAW, owner, 1_000 * YUAN, owner.card)
    assert_not_rejected(t)
    assert t.decisions()[-3:] == ["accept"] * 3, f"\n{t}"


def test_honest_parent_student_landlord_chain(world: World, crowd: list[Person]) -> None:
    """A parent sends their student child's new account (45 days, rarely used) 500 CNY for the
    first time, and the student pays 300 CNY of it to the landlord within the hour; three days
    later 2,000 CNY, 1,800 CNY rent within the hour and 200 CNY withdrawn: the layering chain's
    shape (a first payment passed on by a quiet account; the engine cannot tell a parent's
    first transfer from a stranger's), but passed on to a person, not cashed out."""
    parent, landlord = crowd[3], crowd[4]
    student = thin(world, age_days=45, where=SHANGHAI)
    world.wait(HOUR)
    t = Tally()
    world.act(t, P2P, parent, 500 * YUAN, student.ref)
    world.act(t, P2P, student, 300 * YUAN, landlord.ref)
    world.wait(3 * DAY)
    world.act(t, P2P, parent, 2_000 * YUAN, student.ref, passes_step_up=True)
    world.wait(20 * MINUTE)
    world.act(t, P2P, student, 1_800 * YUAN, landlord.ref, passes_step_up=True)
    world.wait(10 * MINUTE)
    world.act(t, WITHDRAW, student, 200 * YUAN, student.card, passes_step_up=True)
    assert t.decisions() == ["accept"] * 5, f"\n{t}"


# --- 2. fan-in under every per-payment edge, to a mule past the young-account rules -------------


def test_many_victims_pay_small_sums_to_a_three_week_old_mule(
    world: World, crowd: list[Person]
) -> None:
    """Ten coached victims each pay 190 CNY (under every 200 CNY edge) to a 21-day-old
    account (past the one- and two-week rules), over three hours; the mule withdraws
    everything at once."""
    mule = thin(world, age_days=21)
    world.wait(2 * HOUR)
    t_victims = Tally()
    for victim in crowd[:10]:
        world.act(t_victims, P2P, victim, 190 * YUAN, mule.ref, passes_step_up=True)
        world.wait(18 * MINUTE)
    arrived = t_victims.out_through()
    t = Tally()
    world.act(t, WITHDRAW, mule, max(arrived, 190 * YUAN), mule.card)
    assert_bulk_stopped(t, share=0, kinds=CASH_OUT)


def test_three_week_old_mule_withdraws_in_small_parts(world: World, crowd: list[Person]) -> None:
    """The same mule, written after the rule: it takes the 1,900 CNY out in ten withdrawals
    of 190 CNY, one every five minutes."""
    mule = thin(world, age_days=21)
    world.wait(2 * HOUR)
    for victim in crowd[:10]:
        world.act(Tally(), P2P, victim, 190 * YUAN, mule.ref, passes_step_up=True)
        world.wait(18 * MINUTE)
    t = Tally()
    for _ in range(10):
        world.act(t, WITHDRAW, mule, 190 * YUAN, mule.card)
        world.wait(5 * MINUTE)
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_honest_class_fund_collected_on_a_new_account(world: World, crowd: list[Person]) -> None:
    """A class representative's three-week-old account collects 150 CNY from fifteen
    classmates over an evening and pays the travel agency (a merchant) the next morning."""
    rep = thin(world, age_days=21, where=SHANGHAI)
    world.wait(10 * HOUR)
    t = Tally()
    for mate in crowd[:15]:
        world.act(t, P2P, mate, 150 * YUAN, rep.ref)
        world.wait(6 * MINUTE)
    world.wait(12 * HOUR)
    world.act(t, PAY, rep, 2_250 * YUAN, "m:travel-9", passes_step_up=True)
    assert_not_rejected(t)
    assert t.decisions()[:15] == ["accept"] * 15, f"\n{t}"
    assert t.steps[-1].went_through, f"\n{t}"


# --- 3. a dormant account rented to a mule ring --------------------------------------------------


def test_dormant_account_wakes_up_as_a_mule() -> None:
    """A three-year-old account quiet for five months is rented to a ring with its phone (the
    owner's own, long-trusted device, taken to another city): eight victims pay it 450 CNY
    each (under the 500 CNY edge of the fan-in rule) over the afternoon, and it withdraws
    everything to its own card in two parts."""
    world = World(seed=29)
    dormant = world.person(age_days=1_100)
    world.history([dormant], days=90, friends=[dormant], ended_days_ago=150)
    crowd = world.crowd(12)
    world.wait(5 * HOUR)
    t = Tally()
    ring = {"ip": "10.77.3.3", "where": CHENGDU}
    world.act(t, LOGIN, dormant, **ring)  # type: ignore[arg-type]
    t_victims = Tally()
    for victim in crowd[:8]:
        world.wait(25 * MINUTE)
        world.act(t_victims, P2P, victim, 450 * YUAN, dormant.ref, passes_step_up=True)
    arrived = t_victims.out_through()
    world.wait(10 * MINUTE)
    world.act(t, WITHDRAW, dormant, arrived // 2, dormant.card, **ring)  # type: ignore[arg-type]
    world.act(t, WITHDRAW, dormant, arrived - arrived // 2, dormant.card, **ring)  # type: ignore[arg-type]
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_honest_customer_back_from_months_abroad_is_repaid_by_friends() -> None:
    """A customer back after five months away (no payments), on their own phone, is repaid a
    shared holiday by four friends (who paid them before) and withdraws 1,200 CNY."""
    world = World(seed=31)
    back = world.person(age_days=1_100)
    world.history([back], days=90, friends=[back], ended_days_ago=150)
    crowd = world.crowd(8)
    t_before = Tally()
    for friend in crowd[:4]:
        world.act(t_before, P2P, friend, 50 * YUAN, back.ref)
    world.wait(5 * HOUR)
    t = Tally()
    world.act(t, LOGIN, back)
    for friend in crowd[:4]:
        world.wait(30 * MINUTE)
        world.act(t, P2P, friend, 300 * YUAN, back.ref)
    world.act(t, WITHDRAW, back, 1_200 * YUAN, back.card)
    assert t.decisions() == ["accept"] * 6, f"\n{t}"


def test_honest_quiet_account_sells_a_bike_to_a_stranger(world: World, crowd: list[Person]) -> None:
    """A year-old account used once a month sells a used bike: a stranger pays 300 CNY, and
    the seller withdraws it the same evening (below the sums the pass-through rules read)."""
    seller = thin(world, age_days=365, where=SHANGHAI)
    world.wait(6 * HOUR)
    t = Tally()
    world.act(t, P2P, crowd[0], 300 * YUAN, seller.ref)
    world.wait(3 * HOUR)
    world.act(t, WITHDRAW, seller, 300 * YUAN, seller.card)
    assert t.decisions() == ["accept"] * 2, f"\n{t}"


# --- 4. a colluding merchant and stolen-card top-ups ----------------------------------------------


def test_colluding_merchant_cashes_out_stolen_cards_through_older_accounts(world: World) -> None:
    """Four accounts of 20-40 days (full KYC, little history: past the day-old collusion rule
    and the week-old young-account rules) each bind a stolen card, top it up 1,800 CNY and
    spend it at one merchant that opened this week."""
    fakes = [thin(world, age_days=20 + 6 * k, kyc=2) for k in range(4)]
    world.wait(HOUR)
    t_shop = Tally()
    world.act(t_shop, PAY, fakes[0], 12 * YUAN, "m:colluder")  # the shop's first sale, days ago
    world.wait(3 * DAY)
    t = Tally()
    for k, fake in enumerate(fakes):
        world.act(t, CARD, fake)
        world.act(t, TOP_UP, fake, 1_800 * YUAN, f"card:stolen-m{k}")
        world.wait(3 * MINUTE)
        world.act(t, PAY, fake, 1_800 * YUAN, "m:colluder")
        world.wait(25 * MINUTE)
    assert_bulk_stopped(t, kinds=SPENT)


def test_honest_new_furniture_shop_opening_week(world: World, crowd: list[Person]) -> None:
    """A furniture shop that opened this week: four customers of long standing each buy a
    piece for 1,500-4,000 CNY within two hours."""
    world.wait(HOUR)
    world.act(Tally(), PAY, crowd[20], 60 * YUAN, "m:furniture-new")  # its first sale, days ago
    world.wait(3 * DAY)
    t = Tally()
    for k, customer in enumerate(crowd[:4]):
        world.act(
            t, PAY, customer, (1_500 + 800 * k) * YUAN, "m:furniture-new", passes_step_up=True
        )
        world.wait(30 * MINUTE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


# --- 5. a promotion farm on one phone, slowly -----------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="not told from agent-assisted sign-up (next test) without the promotion's own data: "
    "many fresh accounts on one phone, each topping up a little and paying one shop, is what an "
    "agent signing villagers up on their own phone looks like too",
)
def test_bonus_farm_on_one_phone_one_account_an_hour(world: World) -> None:
    """Promotion abuse from one phone without rotating it: a fresh account every 70 minutes
    (never six money events on the phone in an hour), each tops up 50 CNY and spends it,
    with the 30 CNY sign-up bonus, at one shop: twelve accounts in a day."""
    world.wait(HOUR)
    t = Tally()
    for k in range(12):
        fake = world.person(age_days=0, kyc=0, device="farm-phone", ip=f"10.200.{k}.9")
        world.act(t, LOGIN, fake)
        world.act(t, TOP_UP, fake, 50 * YUAN, fake.card)
        world.act(t, PAY, fake, 80 * YUAN, "m:farm-shop")
        world.wait(70 * MINUTE)
    assert_bulk_stopped(t, kinds=SPENT)


def test_honest_agent_signs_villagers_up_on_their_phone(world: World) -> None:
    """Agent banking: an agent signs up a villager every hour on their own phone, each cashes
    in 50 CNY at the agent and buys 80 CNY of seed at the agent's shop (with the 30 CNY
    sign-up bonus): the bonus farm's shape, honestly."""
    world.wait(HOUR)
    t = Tally()
    for k in range(12):
        villager = world.person(age_days=0, kyc=1, device="agent-phone", ip=f"10.201.{k}.9")
        world.act(t, LOGIN, villager)
        world.act(t, TOP_UP, villager, 50 * YUAN, villager.card)
        world.act(t, PAY, villager, 80 * YUAN, "m:agent-shop")
        world.wait(70 * MINUTE)
    assert t.decisions() == ["accept"] * 36, f"\n{t}"


def test_honest_family_signs_grandparents_up_on_the_shared_tablet(
    world: World, crowd: list[Person]
) -> None:
    """A family's tablet: two members of long standing pay five bills from it in the day,
    then sign up both grandparents on it, who each top up and pay a shop."""
    a, b = crowd[6], crowd[7]
    world.wait(HOUR)
    tablet = {"device": "family-tablet-2", "passes_step_up": True}
    t = Tally()
    world.act(t, LOGIN, a, **tablet)  # type: ignore[arg-type]
    world.act(t, LOGIN, b, **tablet)  # type: ignore[arg-type]
    for k in range(5):
        world.act(t, PAY, a if k % 2 else b, (40 + 30 * k) * YUAN, f"m:{k + 1}", **tablet)  # type: ignore[arg-type]
        world.wait(40 * MINUTE)
    for _ in range(2):
        elder = world.person(age_days=0, kyc=1, device="family-tablet-2")
        world.act(t, LOGIN, elder)
        world.act(t, TOP_UP, elder, 200 * YUAN, elder.card)
        world.act(t, PAY, elder, 35 * YUAN, "m:3")
        world.wait(30 * MINUTE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


# --- 6. at night: a coached victim, a stolen phone ------------------------------------------------


def test_coached_victim_pays_a_safe_account_at_night(world: World, crowd: list[Person]) -> None:
    """A scammer on the phone at 01:30 coaches a victim into moving 2,800 CNY (under the
    3,000 CNY step-up) to a 'safe account' of 300 days the victim never paid, then another
    2,800 twenty minutes later."""
    victim = crowd[8]
    safe = thin(world, age_days=300)
    world.wait(17 * HOUR + 30 * MINUTE)  # 01:30 in Shanghai
    t = Tally()
    for _ in range(2):
        world.act(t, P2P, victim, 2_800 * YUAN, safe.ref, passes_step_up=True)
        world.wait(20 * MINUTE)
    assert_bulk_stopped(t)


def test_stolen_unlocked_phone_at_night(world: World, crowd: list[Person]) -> None:
    """A phone stolen unlocked at 02:00 (the owner's trusted device, in the owner's city; its
    SIM receives the step-up codes): 2,500 CNY to each of three accounts never paid."""
    victim = crowd[9]
    mules = [thin(world, age_days=200 + 50 * k) for k in range(3)]
    world.wait(18 * HOUR)  # 02:00 in Shanghai
    t = Tally()
    for mule in mules:
        world.act(t, P2P, victim, 2_500 * YUAN, mule.ref, passes_step_up=True)
        world.wait(4 * MINUTE)
    assert_bulk_stopped(t)


def test_honest_night_owls(world: World, crowd: list[Person]) -> None:
    """At night: a nurse pays a colleague never paid before 120 CNY at 03:00, a traveller
    books a 1,800 CNY hotel at 01:00, a tenant pays the usual landlord 3,000 CNY at 00:30
    (paid the same sum by day, 16 hours before)."""
    nurse, colleague, traveller, tenant, landlord = crowd[10:15]
    t_before = Tally()
    world.act(t_before, P2P, tenant, 3_000 * YUAN, landlord.ref)  # paid before, by day
    world.wait(16 * HOUR + 30 * MINUTE)  # 00:30 local
    t = Tally()
    world.act(t, P2P, tenant, 3_000 * YUAN, landlord.ref)
    world.wait(30 * MINUTE)
    world.act(t, PAY, traveller, 1_800 * YUAN, "m:hotel-2")
    world.wait(2 * HOUR)
    world.act(t, P2P, nurse, 120 * YUAN, colleague.ref)
    assert t.decisions() == ["accept"] * 3, f"\n{t}"


# --- 7. a scam paid in parts just under the per-part edge ----------------------------------------


def test_scam_paid_in_parts_just_under_500_cny(world: World, crowd: list[Person]) -> None:
    """One coached victim pays a 60-day-old account that received nothing this month ten
    parts of 480 CNY (each just under the 500 CNY edge of the paid-in-parts rule) over three
    hours."""
    victim = crowd[11]
    scammer = thin(world, age_days=60)
    world.wait(5 * HOUR)
    t = Tally()
    for _ in range(10):
        world.act(t, P2P, victim, 480 * YUAN, scammer.ref, passes_step_up=True)
        world.wait(18 * MINUTE)
    assert_bulk_stopped(t)


def test_honest_group_trip_paid_to_a_new_organiser(world: World, crowd: list[Person]) -> None:
    """Eight friends each pay a 60-day-old organiser's account 480 CNY for a group trip
    over an afternoon."""
    organiser = thin(world, age_days=60, where=SHANGHAI)
    world.wait(5 * HOUR)
    t = Tally()
    for friend in crowd[:8]:
        world.act(t, P2P, friend, 480 * YUAN, organiser.ref, passes_step_up=True)
        world.wait(20 * MINUTE)
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"


# --- 8. takeover fanning out to many payees, each under every edge ------------------------------


def test_takeover_fans_out_to_many_payees_under_200_cny(world: World, crowd: list[Person]) -> None:
    """A phished login code (passes the step-up) on the attacker's phone in the victim's city,
    then 190 CNY to each of twelve different recruited accounts (each a first payment under
    200 CNY, no payee paid twice) within the hour."""
    victim = crowd[12]
    mules = [thin(world, age_days=100 + 10 * k) for k in range(12)]
    world.wait(10 * HOUR)
    t = Tally()
    attacker = {"device": "emu-fan", "ip": "10.1.90.9", "where": SHANGHAI, "passes_step_up": True}
    world.act(t, LOGIN, victim, **attacker)  # type: ignore[arg-type]
    for mule in mules:
        world.wait(4 * MINUTE)
        world.act(t, P2P, victim, 190 * YUAN, mule.ref, **attacker)  # type: ignore[arg-type]
    assert_bulk_stopped(t)


def test_honest_new_phone_then_a_few_new_people_and_the_usual_ones(
    world: World, crowd: list[Person]
) -> None:
    """A new phone, then the evening: a dinner split to three people never paid (80, 60,
    120 CNY), and 150-180 CNY to four friends paid before."""
    p = crowd[13]
    news = [thin(world, age_days=400 + k, where=SHANGHAI) for k in range(3)]
    olds = crowd[14:18]
    world.wait(9 * HOUR)
    t_before = Tally()
    for friend in olds:
        world.act(t_before, P2P, p, 50 * YUAN, friend.ref)
    world.wait(HOUR)
    t = Tally()
    new_phone = {"device": "phone-new-13x", "passes_step_up": True}
    world.act(t, EventKind.DEVICE_CHANGE, p, **new_phone)  # type: ignore[arg-type]
    world.act(t, LOGIN, p, **new_phone)  # type: ignore[arg-type]
    for friend, amount in zip(news, (80, 60, 120), strict=True):
        world.wait(5 * MINUTE)
        world.act(t, P2P, p, amount * YUAN, friend.ref, **new_phone)  # type: ignore[arg-type]
    for k, friend in enumerate(olds):
        world.wait(5 * MINUTE)
        world.act(t, P2P, p, (150 + 10 * k) * YUAN, friend.ref, **new_phone)  # type: ignore[arg-type]
    assert_not_rejected(t)
    assert all(s.went_through for s in t.steps), f"\n{t}"
    assert t.decisions()[2:] == ["accept"] * 7, f"\n{t}"


# --- 9. card to wallet to card --------------------------------------------------------------------


def test_stolen_card_cycled_through_the_wallet_to_another_card(world: World) -> None:
    """A 20-day-old account (past the young-account rules, no card tests first) binds a
    stolen card, tops up 1,900 CNY from it and withdraws 1,900 CNY to a card it never used:
    card to wallet to card, twice in an evening."""
    fraudster = thin(world, age_days=20)
    world.wait(HOUR)
    t_spend = Tally()
    world.act(t_spend, PAY, fraudster, 30 * YUAN, "m:5")  # a little history
    world.wait(2 * DAY)
    t = Tally()
    for k in range(2):
        world.act(t, CARD, fraudster)
        world.act(t, TOP_UP, fraudster, 1_900 * YUAN, f"card:stolen-w{k}")
        world.wait(10 * MINUTE)
        world.act(t, WITHDRAW, fraudster, 1_900 * YUAN, f"card:cash-w{k}")
        world.wait(HOUR)
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_stolen_card_cycled_through_the_wallet_in_parts() -> None:
    """The same, written after the rule: 1,900 CNY topped up from a stolen card, withdrawn to
    one card never used in five parts of 380 CNY (each under the rule's 500 CNY)."""
    world = World(seed=37)
    fraudster = thin(world, age_days=20)
    world.wait(HOUR)
    world.act(Tally(), PAY, fraudster, 30 * YUAN, "m:5")
    world.wait(2 * DAY)
    t = Tally()
    world.act(t, CARD, fraudster)
    world.act(t, TOP_UP, fraudster, 1_900 * YUAN, "card:stolen-p")
    for _ in range(5):
        world.wait(6 * MINUTE)
        world.act(t, WITHDRAW, fraudster, 380 * YUAN, "card:cash-p")
    assert_bulk_stopped(t, kinds=CASH_OUT)


def test_honest_customer_moves_to_a_new_bank(world: World, crowd: list[Person]) -> None:
    """A customer of long standing binds their new bank's card, tops up 2,000 CNY from the
    old card and withdraws 2,000 CNY to the new one. Held for review, by a rule older than
    this file: ``cash.unusual_to_new_card`` (an unusual 1,000 CNY or more to a card never
    used; the bust-out's last step) - a cost this red team found, not one it added."""
    p = crowd[15]
    world.wait(9 * HOUR)
    t = Tally()
    world.act(t, CARD, p, passes_step_up=True)
    world.act(t, TOP_UP, p, 2_000 * YUAN, p.card, passes_step_up=True)
    world.wait(10 * MINUTE)
    world.act(t, WITHDRAW, p, 2_000 * YUAN, "card:newbank-15", passes_step_up=True)
    assert_not_rejected(t)
    assert t.decisions() == ["accept", "accept", "review"], f"\n{t}"
    assert t.reasons() == {"cash.unusual_to_new_card"}, f"\n{t}"
