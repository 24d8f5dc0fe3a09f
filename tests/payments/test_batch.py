"""Batched payments: the same rules and records as one at a time, each answer in its slot."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.money import UnknownCurrencyError
from puhui.payments import (
    AccountFrozenError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    KycLevel,
    KycLimitExceededError,
    Operation,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    SamePartyError,
    SimulatedBank,
    StoreLedgerMismatchError,
    merchant_qr,
)
from puhui.store import create_engine, migrate

from .conftest import START_NS, World

S = OperationStatus
CNY = "CNY"


def _customer(world: World, n: int, level: KycLevel = KycLevel.FULL, fund: int = 0) -> int:
    p = world.payments
    c = p.register_customer(f"1360000000{n}", f"C{n}")
    card = p.bind_card(c.id, f"tok{n}", "Bank", f"000{n}")
    if level >= KycLevel.BASIC:
        p.verify_identity(c.id, f"ID{n}")
    if level >= KycLevel.FULL:
        p.verify_full(c.id, biometric_passed=True)
    if fund:
        assert p.top_up(c.id, card.id, fund, CNY, key="fund").status is S.COMPLETED
    return c.id


def _ok(answer: Operation | PuhuiError) -> Operation:
    assert isinstance(answer, Operation), answer
    return answer


def test_a_batch_moves_the_same_money_as_one_at_a_time_and_refuses_per_slot(
    world: World,
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    frozen = _customer(world, 3)
    p.set_frozen(frozen, True)
    shop = p.register_merchant("Shop", "retail", 50, "tok-shop").id
    batches = PaymentBatches(p)
    answers = batches.pay_many(
        [
            PaymentRequest(alice, 100_00, CNY, "a", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 50_00, CNY, "b", payee=Payee(phone="13600000002"), note="rent"),
            PaymentRequest(alice, 25_00, CNY, "c", merchant_qr=merchant_qr(shop)),
            PaymentRequest(alice, 10_00, CNY, "d", payee=Payee(customer_id=frozen)),
            PaymentRequest(alice, 10_00, CNY, "e", payee=Payee(customer_id=alice)),
            PaymentRequest(alice, 0, CNY, "f", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 10_00, "XXX", "g", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 900_00, CNY, "h", payee=Payee(customer_id=bob)),  # too much now
        ]
    )
    assert [_ok(a).status for a in answers[:3]] == [S.COMPLETED] * 3
    assert isinstance(answers[3], AccountFrozenError)
    assert isinstance(answers[4], SamePartyError)
    assert isinstance(answers[5], PuhuiError) and answers[5].code == "amount_out_of_range"
    assert isinstance(answers[6], UnknownCurrencyError)
    assert isinstance(answers[7], InsufficientFundsError)  # 1,000 - 175 left, within the batch
    assert p.balance(alice, CNY).posted == 1_000_00 - 175_00
    assert p.balance(bob, CNY).posted == 150_00
    assert p.merchant_balance(shop, CNY).posted == 25_00
    assert p.operation(_ok(answers[1]).id).note == "rent"
    assert L.verify(world.ledger).ok


def test_replays_and_reused_keys_are_answered_from_the_records(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=500_00)
    bob = _customer(world, 2)
    batches = PaymentBatches(p)
    request = PaymentRequest(alice, 10_00, CNY, "k1", payee=Payee(customer_id=bob))
    [first] = batches.pay_many([request])
    again = batches.pay_many(
        [
            request,
            PaymentRequest(alice, 11_00, CNY, "k1", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 5_00, CNY, "k2", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 5_00, CNY, "k2", payee=Payee(customer_id=bob)),  # twice
            PaymentRequest(alice, 6_00, CNY, "k2", payee=Payee(customer_id=bob)),  # clash
        ]
    )
    assert _ok(again[0]).id == _ok(first).id and _ok(again[0]).status is S.COMPLETED
    assert isinstance(again[1], IdempotencyKeyReusedError)
    assert _ok(again[2]).id == _ok(again[3]).id
    assert isinstance(again[4], IdempotencyKeyReusedError)
    assert p.balance(bob, CNY).posted == 15_00
    # The single-operation path sees the same records.
    assert p.transfer(alice, Payee(customer_id=bob), 5_00, CNY, key="k2").id == _ok(again[2]).id


def test_limits_add_up_across_a_batch(world: World) -> None:
    p = world.payments
    small = _customer(world, 1, level=KycLevel.UNVERIFIED)  # single 200, daily 500, cap 1,000
    bob = _customer(world, 2, fund=2_000_00)
    batches = PaymentBatches(p)
    answers = batches.pay_many(
        [
            PaymentRequest(bob, 400_00, CNY, f"in{k}", payee=Payee(customer_id=small))
            for k in range(3)
        ]
    )
    assert [type(a).__name__ for a in answers] == [
        "Operation",
        "Operation",
        "KycLimitExceededError",
    ]
    assert (
        isinstance(answers[2], KycLimitExceededError)
        and answers[2].details["limit"] == "wallet_balance"
    )
    out = batches.pay_many(
        [
            PaymentRequest(small, 150_00, CNY, f"out{k}", payee=Payee(customer_id=bob))
            for k in range(4)
        ]
    )
    statuses = [
        a.details["limit"] if isinstance(a, KycLimitExceededError) else _ok(a).status for a in out
    ]
    assert statuses == [S.COMPLETED, S.COMPLETED, S.COMPLETED, "daily_outflow"]  # 450 of 500
    assert p.balance(small, CNY).posted == 800_00 - 450_00


def test_held_and_rejected_payments_in_a_batch(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2)
    world.risk.next = [risk.Decision.ACCEPT, risk.Decision.CHALLENGE, risk.Decision.REJECT]
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00 * (k + 1), CNY, f"r{k}", payee=Payee(customer_id=bob))
            for k in range(3)
        ]
    )
    done, held, rejected = (_ok(a) for a in answers)
    assert (done.status, held.status, rejected.status) == (S.COMPLETED, S.CHALLENGED, S.REJECTED)
    assert p.balance(alice, CNY).held == 20_00
    assert p.verify_challenge(held.id, passed=True).status is S.COMPLETED
    assert p.balance(bob, CNY).posted == 30_00
    assert p.operation(rejected.id).error_code == "risk_rejected"


def test_a_store_refuses_a_ledger_it_does_not_belong_to(world: World, tmp_path: Path) -> None:
    clock = ManualClock(START_NS)
    other = L.open(str(tmp_path / "other-ledger"), state_dir=tmp_path / "other-state", clock=clock)
    try:
        with pytest.raises(StoreLedgerMismatchError):
            Payments(world.engine, other, clock=clock, bank=SimulatedBank(clock))
    finally:
        other.close()
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    migrate(fresh)
    third = L.open(str(tmp_path / "third"), clock=clock)
    try:
        # A fresh store on a ledger that holds another store's wallets: refused.
        _customer(world, 1, fund=10_00)
        with pytest.raises(StoreLedgerMismatchError):
            Payments(fresh, world.ledger, clock=world.clock, bank=world.bank)
        Payments(fresh, third, clock=clock, bank=world.bank)  # a fresh pair is fine ...
        with pytest.raises(StoreLedgerMismatchError):  # ... and then belongs together
            Payments(fresh, world.ledger, clock=world.clock, bank=world.bank)
    finally:
        third.close()
        fresh.dispose()


def test_concurrent_single_payments_are_carried_out_together(world: World) -> None:
    import asyncio

    from puhui.payments import PaymentCoalescer

    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    coalescer = PaymentCoalescer(PaymentBatches(p))

    async def one(k: int) -> Operation | PuhuiError:
        amount = 0 if k == 7 else 1_00 + k  # one bad request among them
        try:
            return await coalescer.pay(
                PaymentRequest(alice, amount, CNY, f"c{k}", payee=Payee(customer_id=bob))
            )
        except PuhuiError as error:
            return error

    async def run() -> list[Operation | PuhuiError]:
        return list(await asyncio.gather(*(one(k) for k in range(40))))

    answers = asyncio.run(run())
    assert answers[7].code == "amount_out_of_range"  # type: ignore[union-attr]
    paid = [a for k, a in enumerate(answers) if k != 7]
    assert all(isinstance(a, Operation) and a.status is S.COMPLETED for a in paid)
    assert coalescer.batches_run < 40  # they went in groups
    total = sum(1_00 + k for k in range(40) if k != 7)
    assert p.balance(bob, CNY).posted == total
    assert p.balance(alice, CNY).posted == 1_000_00 - total


def test_a_batch_counts_top_ups_awaiting_the_bank_against_the_payee_cap(world: World) -> None:
    p = world.payments
    small = _customer(world, 1, level=KycLevel.UNVERIFIED)  # cap 1,000 CNY
    bob = _customer(world, 2, fund=2_000_00)
    card = p.bind_card(small, "tok-late", "Bank", "0009")
    world.bank.processing_rate = 1.0
    assert p.top_up(small, card.id, 700_00, CNY, key="late").status is S.AWAITING_BANK
    # 700 CNY on their way + 400 CNY more would be 1,100 CNY: above the cap, as one at a time.
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(bob, 400_00, CNY, "over", payee=Payee(customer_id=small)),
            PaymentRequest(bob, 300_00, CNY, "fits", payee=Payee(customer_id=small)),
        ]
    )
    assert isinstance(answers[0], KycLimitExceededError)
    assert answers[0].details["limit"] == "wallet_balance"
    assert _ok(answers[1]).status is S.COMPLETED
    assert p.balance(small, CNY).posted == 300_00
    assert p.balance(bob, CNY).posted == 1_700_00
