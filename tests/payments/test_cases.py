"""Review cases: a payment held for review opens a case in the same transaction as the hold; an
analyst's decision releases or returns the money, confirms a takeover by freezing the
account, and becomes a training label; a decision recorded but not carried out (a crash in
between) is carried out by ``resolve_pending``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from puhui import risk
from puhui.errors import InvalidInputError
from puhui.payments import (
    AccountFrozenError,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    PaymentsOptions,
)

from .._plans import plans_of
from .conftest import World, verified_customer

S = OperationStatus
CNY = "CNY"


@pytest.fixture
def cases_world(world: World) -> Iterator[tuple[World, risk.Cases]]:
    cases = risk.Cases(world.engine, world.clock)
    world.payments = Payments(
        world.engine,
        world.ledger,
        clock=world.clock,
        bank=world.bank,
        decide=world.risk,
        options=PaymentsOptions(),
        cases=cases,
    )
    yield world, cases


def test_a_held_payment_opens_one_case_and_approval_releases_it(
    cases_world: tuple[World, risk.Cases],
) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW]
    op = p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="k")
    assert op.status is S.CHALLENGED
    [case] = cases.cases(risk.CaseStatus.OPEN)
    assert (case.subject_kind, case.subject_id) == ("operation", f"{op.id:032x}")
    assert (case.customer_id, case.amount, case.currency, case.score) == (alice, 200_00, CNY, 900)
    assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="k").id == op.id  # replay
    assert len(cases.cases()) == 1
    decided = cases.decide(case.id, analyst="ana", outcome="approve", note="known payee")
    assert decided.status is risk.CaseStatus.APPROVED and decided.label == 0 and decided.resolved
    assert p.operation(op.id).status is S.COMPLETED
    assert p.balance(bob, CNY).posted == 200_00
    with pytest.raises(risk.CaseClosedError):
        cases.decide(case.id, analyst="ana", outcome="reject")
    assert [c.label for c in cases.labels()] == [0]


def test_a_rejection_returns_the_money_and_a_takeover_freezes_the_account(
    cases_world: tuple[World, risk.Cases],
) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW]
    op = p.transfer(alice, Payee(customer_id=bob), 300_00, CNY, key="drain")
    [case] = cases.cases()
    escalated = cases.decide(case.id, analyst="ana", outcome=risk.CaseOutcome.ESCALATE)
    assert escalated.status is risk.CaseStatus.ESCALATED and escalated.label is None
    assert p.operation(op.id).status is S.CHALLENGED  # still held
    with pytest.raises(risk.CaseClosedError):
        cases.decide(case.id, analyst="ana", outcome="escalate")
    done = cases.decide(case.id, analyst="lead", outcome="reject", account_takeover=True)
    assert done.status is risk.CaseStatus.REJECTED and done.label == 1 and done.account_takeover
    assert p.operation(op.id).status is not S.COMPLETED
    assert p.balance(alice, CNY).posted == 500_00 and p.balance(bob, CNY).posted == 0
    assert p.customer(alice).frozen
    with pytest.raises(AccountFrozenError):
        p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="after")


def test_bad_decisions_change_nothing(cases_world: tuple[World, risk.Cases]) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW]
    p.transfer(alice, Payee(customer_id=bob), 100_00, CNY, key="k")
    [case] = cases.cases()
    for bad in (
        {"analyst": "ana", "outcome": "maybe"},
        {"analyst": " ", "outcome": "approve"},
        {"analyst": "ana", "outcome": "approve", "account_takeover": True},
        {"analyst": "ana", "outcome": "reject", "note": "x" * 501},
    ):
        with pytest.raises(risk.InvalidCaseDecisionError):
            cases.decide(case.id, **bad)
    with pytest.raises(risk.CaseNotFoundError):
        cases.decide(case.id + 99, analyst="ana", outcome="approve")
    assert cases.case(case.id) == case


def test_a_decision_not_carried_out_is_carried_out_by_the_job(
    cases_world: tuple[World, risk.Cases],
) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW]
    op = p.transfer(alice, Payee(customer_id=bob), 100_00, CNY, key="k")
    [case] = cases.cases()
    orphan = risk.Cases(world.engine, world.clock)  # a process where payments is not wired
    decided = orphan.decide(case.id, analyst="ana", outcome="approve")
    assert decided.status is risk.CaseStatus.APPROVED and not decided.resolved
    assert p.operation(op.id).status is S.CHALLENGED
    assert cases.resolve_pending() == 1
    assert p.operation(op.id).status is S.COMPLETED and cases.case(case.id).resolved
    assert cases.resolve_pending() == 0
    if world.engine.dialect.name == "sqlite":  # the job reads the cases not carried out only
        [(_, plan)] = plans_of(world.engine, ("risk_cases",), cases.resolve_pending)
        assert plan == ["SEARCH risk_cases USING INDEX ix_risk_cases_resolved_id (resolved=?)"]


def test_one_decision_that_cannot_be_carried_out_does_not_hold_up_the_others(
    cases_world: tuple[World, risk.Cases],
) -> None:
    """``resolve_pending`` carried out the decisions in order and stopped at the first
    whose resolver raised: every later decided case stayed unresolved, its money held, at
    every run of the job. Now each is tried, and the first failure is raised at the end."""
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW, risk.Decision.REVIEW]
    first = p.transfer(alice, Payee(customer_id=bob), 100_00, CNY, key="k1")
    second = p.transfer(alice, Payee(customer_id=bob), 50_00, CNY, key="k2")
    orphan = risk.Cases(world.engine, world.clock)  # a process where payments is not wired
    for case in sorted(cases.cases(), key=lambda c: c.id):
        orphan.decide(case.id, analyst="ana", outcome="approve")
    carry_out = cases._resolvers["operation"]
    broken = RuntimeError("the first case's resolver fails")

    def failing_on_the_first(case: risk.Case) -> None:
        if int(case.subject_id, 16) == first.id:
            raise broken
        carry_out(case)

    cases.on_decided("operation", failing_on_the_first)
    with pytest.raises(RuntimeError) as raised:
        cases.resolve_pending()
    assert raised.value is broken
    assert p.operation(second.id).status is S.COMPLETED  # carried out despite the first
    assert p.operation(first.id).status is S.CHALLENGED
    cases.on_decided("operation", carry_out)
    assert cases.resolve_pending() == 1
    assert p.operation(first.id).status is S.COMPLETED
    assert all(c.resolved for c in cases.cases())


def test_held_payments_of_a_batch_open_cases_too(cases_world: tuple[World, risk.Cases]) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.ACCEPT, risk.Decision.REVIEW]
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "b1", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 20_00, CNY, "b2", payee=Payee(customer_id=bob)),
        ]
    )
    [case] = cases.cases()
    held = answers[1]
    assert not isinstance(held, Exception) and case.subject_id == f"{held.id:032x}"
    cases.decide(case.id, analyst="ana", outcome="reject")
    assert p.balance(bob, CNY).posted == 10_00


def test_case_listing_pages_by_cursor(cases_world: tuple[World, risk.Cases]) -> None:
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW] * 5
    for k in range(5):
        p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key=f"k{k}")
    first = cases.cases(limit=2)
    rest = cases.cases(after_id=first[-1].id, limit=10)
    assert len(first) == 2 and len(rest) == 3
    assert [c.id for c in first + rest] == sorted(c.id for c in first + rest)
    with pytest.raises(InvalidInputError):
        cases.cases(limit=0)


@pytest.mark.parametrize("frozen", ["payer", "payee"])
def test_an_approval_for_a_party_frozen_since_the_hold_returns_the_money(
    cases_world: tuple[World, risk.Cases], frozen: str
) -> None:
    """A payment held for review, then a party frozen, then the analyst approves the case.
    The decision was recorded (final) but carrying it out raised ``account_frozen``: the
    case stayed unresolved, the money held without a time limit, and ``resolve_pending``
    raised the same on every run (stopping at it, the cases after it never carried out).
    Now the approval is carried out as a passed check is for a party frozen since: the hold
    is voided and the payment ``failed`` with ``account_frozen``."""
    world, cases = cases_world
    p = world.payments
    alice, bob = verified_customer(world, 1, fund=500_00), verified_customer(world, 2)
    world.risk.next = [risk.Decision.REVIEW]
    op = p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="k")
    [case] = cases.cases()
    p.set_frozen(alice if frozen == "payer" else bob, True)
    with pytest.raises(AccountFrozenError):  # the analyst's own call is refused, as before
        p.decide_review(op.id, approve=True)
    assert p.operation(op.id).status is S.CHALLENGED
    decided = cases.decide(case.id, analyst="ana", outcome="approve")
    assert decided.status is risk.CaseStatus.APPROVED and decided.resolved
    done = p.operation(op.id)
    assert (done.status, done.error_code) == (S.FAILED, "account_frozen")
    paid = p.balance(alice, CNY)
    assert (paid.posted, paid.held, p.balance(bob, CNY).posted) == (500_00, 0, 0)
    assert cases.resolve_pending() == 0


def test_an_approved_withdrawal_of_a_customer_frozen_since_is_not_sent(
    cases_world: tuple[World, risk.Cases],
) -> None:
    """The same for a withdrawal held for review: the approval, carried out, does not send the
    payout of a customer frozen since; the hold is voided, ``failed`` with ``account_frozen``."""
    world, cases = cases_world
    p = world.payments
    alice = verified_customer(world, 1, fund=500_00)
    [card] = p.cards(alice)
    world.risk.next = [risk.Decision.REVIEW]
    op = p.withdraw(alice, card.id, 200_00, CNY, key="w")
    [case] = cases.cases()
    p.set_frozen(alice, True)
    assert cases.decide(case.id, analyst="ana", outcome="approve").resolved
    done = p.operation(op.id)
    assert (done.status, done.error_code) == (S.FAILED, "account_frozen")
    assert f"{op.id:032x}" not in world.bank.sends
    paid = p.balance(alice, CNY)
    assert (paid.posted, paid.held) == (500_00, 0)
