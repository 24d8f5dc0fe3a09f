"""The payments operations end to end: wallets, bank, P2P, merchants, holds, idempotency."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from puhui import risk
from puhui.payments import (
    AccountCode,
    BankStatus,
    Channel,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    KycLevel,
    KycLimitExceededError,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    customer_qr,
    merchant_qr,
)
from puhui.store import payments as tables

from .conftest import World

S = OperationStatus


def _customer(world: World, phone: str, *, level: KycLevel = KycLevel.FULL) -> int:
    p = world.payments
    c = p.register_customer(phone, f"Customer {phone[-4:]}")
    if level >= KycLevel.BASIC:
        p.verify_identity(c.id, f"ID{phone}")
    card = p.bind_card(c.id, f"tok-{phone}", "Rural Bank", phone[-4:])
    if level >= KycLevel.FULL:
        p.verify_full(c.id, biometric_passed=True)
    assert card.customer_id == c.id
    return c.id


def _card(world: World, customer_id: int) -> int:
    return world.payments.cards(customer_id)[0].id


def _fund(world: World, customer_id: int, amount: int, key: str = "fund") -> None:
    op = world.payments.top_up(customer_id, _card(world, customer_id), amount, "CNY", key=key)
    assert op.status is S.COMPLETED, op


def test_top_up_p2p_and_merchant_payment_move_exactly_the_money(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = p.register_merchant("Noodle Shop", "food", 60, "tok-shop")
    _fund(world, alice, 100_00)
    assert p.balance(alice, "CNY").posted == 100_00

    sent = p.transfer(alice, Payee(phone="13800000002"), 30_00, "CNY", key="k1", note="lunch")
    assert sent.status is S.COMPLETED and sent.payee_customer_id == bob
    by_qr = p.transfer(alice, Payee(qr=customer_qr(bob)), 5_00, "CNY", key="k2")
    assert by_qr.status is S.COMPLETED
    paid = p.pay_merchant(alice, merchant_qr(shop.id), 12_34, "CNY", key="k3")
    assert paid.status is S.COMPLETED

    assert p.balance(alice, "CNY").posted == 100_00 - 30_00 - 5_00 - 12_34
    assert p.balance(bob, "CNY").posted == 35_00
    assert p.merchant_balance(shop.id, "CNY").posted == 12_34
    # Double entry: the bank settlement account carries the other side of every top-up.
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, "CNY").posted == -100_00


def test_a_retry_returns_the_first_result_and_moves_nothing_twice(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 50_00)
    first = p.transfer(alice, Payee(customer_id=bob), 10_00, "CNY", key="same")
    again = p.transfer(alice, Payee(customer_id=bob), 10_00, "CNY", key="same")
    assert again == first
    assert p.balance(bob, "CNY").posted == 10_00
    with pytest.raises(IdempotencyKeyReusedError):
        p.transfer(alice, Payee(customer_id=bob), 11_00, "CNY", key="same")
    assert p.balance(bob, "CNY").posted == 10_00


def test_insufficient_funds_and_kyc_limits_move_no_money(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.BASIC)
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    with pytest.raises(InsufficientFundsError):
        p.transfer(alice, Payee(customer_id=bob), 200_00, "CNY", key="big")
    with pytest.raises(KycLimitExceededError) as caught:
        p.transfer(alice, Payee(customer_id=bob), 5_000_01, "CNY", key="over")
    assert caught.value.details["limit"] == "single_payment"
    assert p.balance(alice, "CNY").posted == 100_00
    assert p.balance(bob, "CNY").posted == 0
    assert p.operations(status=S.PENDING) == []


def test_withdrawal_holds_then_posts_on_bank_success(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 80_00)
    op = p.withdraw(alice, _card(world, alice), 30_00, "CNY", key="w1")
    assert op.status is S.COMPLETED
    assert p.balance(alice, "CNY") == type(p.balance(alice, "CNY"))(50_00, 0)
    assert world.bank.sends[f"{op.id:032x}"] == 1


def test_declined_withdrawal_voids_the_hold(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 80_00)
    world.bank.failure_rate = 1.0
    op = p.withdraw(alice, _card(world, alice), 30_00, "CNY", key="w1")
    assert (op.status, op.error_code) == (S.FAILED, "bank_declined")
    assert p.balance(alice, "CNY").available == 80_00


def test_bank_timeout_is_resolved_by_query_never_by_sending_again(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 80_00)
    world.bank.timeout_rate = 1.0  # done at the bank, answer lost
    op = p.withdraw(alice, _card(world, alice), 30_00, "CNY", key="w1")
    assert op.status is S.AWAITING_BANK
    assert p.balance(alice, "CNY").held == 30_00
    world.bank.timeout_rate = 0.0
    world.clock.advance(60 * 10**9)
    assert p.recover() == {"completed": 1}
    assert p.operation(op.id).status is S.COMPLETED
    assert p.balance(alice, "CNY") == type(p.balance(alice, "CNY"))(50_00, 0)
    assert world.bank.sends[f"{op.id:032x}"] == 1


def test_recovery_must_wait_longer_than_a_sent_request_can_take_at_the_bank(
    world: World,
) -> None:
    """Recovery takes a reference the bank has not seen after ``recovery_age_s`` for one that
    never arrived, and gives the money back: with a gateway whose requests may take effect
    later than that (its ``submit_timeout_s``), a slow payout would be paid by the bank as
    well. Such a pairing is refused when the service is built."""
    from puhui.payments import Payments, PaymentsOptions, SimulatedBank

    class SlowBank(SimulatedBank):
        submit_timeout_s = 45.0

    slow = SlowBank(world.clock)
    with pytest.raises(ValueError, match="recovery_age_s"):
        Payments(world.engine, world.ledger, clock=world.clock, bank=slow)  # 30 s: too short
    options = PaymentsOptions(recovery_age_s=60)
    assert Payments(world.engine, world.ledger, clock=world.clock, bank=slow, options=options)


def test_processing_top_up_completes_on_the_banks_confirmation(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.bank.processing_rate = 1.0
    op = p.top_up(alice, _card(world, alice), 20_00, "CNY", key="t1")
    assert op.status is S.AWAITING_BANK and p.balance(alice, "CNY").posted == 0
    world.clock.advance(10 * 10**9)
    confirmed = world.bank.query(f"{op.id:032x}")
    assert confirmed.status is BankStatus.SUCCEEDED
    assert p.on_bank_result(confirmed).status is S.COMPLETED
    assert p.balance(alice, "CNY").posted == 20_00
    assert p.on_bank_result(confirmed).status is S.COMPLETED  # a repeated notice: no effect
    assert p.balance(alice, "CNY").posted == 20_00


def test_challenge_holds_the_money_until_verified(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 50_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.transfer(alice, Payee(customer_id=bob), 20_00, "CNY", key="c1")
    assert op.status is S.CHALLENGED
    assert p.balance(alice, "CNY").available == 30_00 and p.balance(bob, "CNY").posted == 0
    done = p.verify_challenge(op.id, passed=True)
    assert done.status is S.COMPLETED
    assert p.balance(bob, "CNY").posted == 20_00 and p.balance(alice, "CNY").held == 0


def test_rejected_payment_moves_nothing_and_is_recorded(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 50_00)
    world.risk.next = [risk.Decision.REJECT]
    op = p.transfer(alice, Payee(customer_id=bob), 20_00, "CNY", key="r1")
    assert (op.status, op.error_code, op.decision) == (S.REJECTED, "risk_rejected", "reject")
    assert p.balance(alice, "CNY").posted == 50_00 and p.balance(bob, "CNY").posted == 0


def test_every_money_operation_tells_risk_where_the_request_came_from(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = p.register_merchant("Noodle Shop", "food", 60, "tok-shop")
    phone = Channel(device_id="dev-alice", ip="10.0.0.7")
    card = _card(world, alice)
    p.top_up(alice, card, 100_00, "CNY", key="t", channel=phone)
    p.transfer(alice, Payee(customer_id=bob), 1_00, "CNY", key="p", channel=phone)
    p.pay_merchant(alice, merchant_qr(shop.id), 1_00, "CNY", key="m", channel=phone)
    p.collect(shop.id, p.issue_payment_code(alice), 1_00, "CNY", key="c", channel=phone)
    p.withdraw(alice, card, 1_00, "CNY", key="w", channel=phone)
    PaymentBatches(p).pay_many(
        [PaymentRequest(alice, 1_00, "CNY", "b", payee=Payee(customer_id=bob), channel=phone)]
    )
    p.transfer(alice, Payee(customer_id=bob), 1_00, "CNY", key="none")
    seen = [(e.kind, e.device_id, e.ip) for e in world.risk.seen if e.customer_id == alice]
    assert seen == [
        (risk.EventKind.TOP_UP, "dev-alice", "10.0.0.7"),
        (risk.EventKind.P2P, "dev-alice", "10.0.0.7"),
        (risk.EventKind.PAYMENT, "dev-alice", "10.0.0.7"),
        (risk.EventKind.PAYMENT, "dev-alice", "10.0.0.7"),
        (risk.EventKind.WITHDRAWAL, "dev-alice", "10.0.0.7"),
        (risk.EventKind.P2P, "dev-alice", "10.0.0.7"),
        (risk.EventKind.P2P, "", ""),
    ]


def test_single_answers_are_their_records_and_a_lapsed_hold_gives_its_outflow_back(
    world: World,
) -> None:
    """A single payment's answer is built from the row it wrote (not read back): equal to
    what ``operation(id)`` reads, at every step. A hold that lapses gives back the day's
    outflow it reserved (the day read from the row only then)."""
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = p.register_merchant("Noodle Shop", "food", 60, "tok-shop")
    _fund(world, alice, 100_00)
    sent = p.transfer(alice, Payee(customer_id=bob), 30_00, "CNY", key="k1", note="lunch")
    paid = p.pay_merchant(alice, merchant_qr(shop.id), 10_00, "CNY", key="k2")
    world.risk.next = [risk.Decision.CHALLENGE]
    held = p.transfer(alice, Payee(customer_id=bob), 20_00, "CNY", key="k3")
    for op in (sent, paid, held):
        assert op == p.operation(op.id)
    assert held.status is S.CHALLENGED and p.balance(alice, "CNY").held == 20_00
    d = tables.daily_outflow.c
    with world.engine.connect() as conn:
        before = conn.execute(sa.select(d.amount).where(d.customer_id == alice)).scalar_one()
    assert before == 60_00
    world.clock.advance(p.options.challenge_timeout_s * 10**9 + 1)
    lapsed = p.recover()
    assert lapsed and p.operation(held.id).status is S.EXPIRED
    assert p.balance(alice, "CNY").held == 0
    with world.engine.connect() as conn:
        reserved = conn.execute(sa.select(d.amount).where(d.customer_id == alice)).scalar_one()
    assert reserved == 40_00  # the lapsed 20.00 given back
