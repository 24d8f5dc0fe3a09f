"""Step-up feeds risk control: a payment challenged by the real engine and verified on the
customer's device makes that device theirs (a later login from it is not challenged); a
failed verification teaches nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from puhui import ledger as L
from puhui.clock import ManualClock
from puhui.money import currency
from puhui.payments import Channel, OperationStatus, Payee, Payments, SimulatedBank
from puhui.risk import Decision, EventKind, RiskLists, load_ruleset
from puhui.risk._engine import DEFAULT_RULES, RiskEngine, engine_schema
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9
DAY = 86_400 * 10**9


@dataclass
class StepUpWorld:
    payments: Payments
    risk: RiskEngine
    clock: ManualClock


@pytest.fixture
def world(tmp_path: Path) -> Iterator[StepUpWorld]:
    clock = ManualClock(START_NS)
    engine = create_engine(f"sqlite:///{tmp_path / 'puhui.sqlite'}")
    migrate(engine)
    risk = RiskEngine(load_ruleset(DEFAULT_RULES, engine_schema()), lists=RiskLists(clock))
    with L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state", clock=clock) as ledger:
        payments = Payments(engine, ledger, clock=clock, bank=SimulatedBank(clock), decide=risk)
        yield StepUpWorld(payments, risk, clock)
    engine.dispose()


def _established(world: StepUpWorld, n: int) -> tuple[int, int]:
    """A fully verified customer with 10,000 CNY, registered 40 days ago, and a verified
    payee."""
    p = world.payments
    c = p.register_customer(f"+86137000000{n}", f"C{n}").id
    payee = p.register_customer(f"+86137100000{n}", f"P{n}").id
    p.verify_identity(payee, f"ID-P{n}")
    # The payee logs in: risk has seen the account (and its age) before it is paid.
    payee_phone = Channel(device_id=f"payee-{n}-phone")
    login = p.risk_event(EventKind.LOGIN, p.customer(payee), 0, currency("CNY"), "", payee_phone)
    world.risk([login])
    world.clock.advance(40 * DAY)
    card = p.bind_card(c, f"tok-{n}", "ICBC", "0001")
    p.verify_identity(c, f"ID-{n}")
    p.verify_full(c, biometric_passed=True)
    for k, amount in enumerate((1_000_00, 2_000_00, 3_000_00, 4_000_00)):  # some history
        world.clock.advance(DAY)
        assert p.top_up(c, card.id, amount, "CNY", key=f"fund-{k}").status.value == "completed"
    return c, payee


def _login_decision(world: StepUpWorld, customer_id: int, device: str) -> Decision:
    p = world.payments
    event = p.risk_event(
        EventKind.LOGIN,
        p.customer(customer_id),
        0,
        currency("CNY"),
        "",
        Channel(device_id=device),
    )
    [decision] = world.risk([event])
    return decision.decision


@pytest.mark.parametrize("passed", [True, False])
def test_a_passed_step_up_makes_the_device_the_customers(world: StepUpWorld, passed: bool) -> None:
    alice, payee = _established(world, 1)
    phone = Channel(device_id="alice-new-phone", ip="10.0.0.7")
    op = world.payments.transfer(
        alice, Payee(customer_id=payee), 3_000_00, "CNY", key="big", channel=phone
    )
    assert (op.status, op.decision) == (OperationStatus.CHALLENGED, Decision.CHALLENGE)
    done = world.payments.verify_challenge(op.id, passed=passed, channel=phone)
    assert done.status is (OperationStatus.COMPLETED if passed else OperationStatus.FAILED)
    world.clock.advance(60 * 10**9)
    after = _login_decision(world, alice, "alice-new-phone")
    # Passed: the phone is hers now. Failed: still a new device, challenged at login.
    assert after is (Decision.ACCEPT if passed else Decision.CHALLENGE)
