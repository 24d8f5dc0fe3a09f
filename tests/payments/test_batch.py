"""Batched payments: the same rules and records as one at a time, each answer in its slot."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.ledger import TransferFlags
from puhui.money import UnknownCurrencyError, currency
from puhui.payments import (
    AccountFrozenError,
    Channel,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidPayloadError,
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
from puhui.payments.batch import CHECK_PASSES_MAX
from puhui.payments.model import (
    TransferCode,
    merchant_account_id,
    transfer_id,
    wallet_account_id,
)
from puhui.store import create_engine, migrate
from puhui.store import payments as tables

from .._plans import plans_of
from .conftest import START_NS, World, pay_one

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


@pytest.mark.parametrize("key", ["é中文-key", 'quo"te\\back', "tab\tnewline\n", "k" * 255])
def test_a_retry_is_found_whatever_text_its_key_holds(world: World, key: str) -> None:
    """The batch looks keys up as one JSON array on SQLite: every key a caller may send is
    found again, exactly."""
    p = world.payments
    alice = _customer(world, 1, fund=500_00)
    bob = _customer(world, 2)
    batches = PaymentBatches(p)
    request = PaymentRequest(alice, 10_00, CNY, key, payee=Payee(customer_id=bob))
    near = PaymentRequest(alice, 10_00, CNY, key[:-1] + "?", payee=Payee(customer_id=bob))
    [first] = batches.pay_many([request])
    again, other, clash = batches.pay_many(
        [request, near, PaymentRequest(alice, 9_00, CNY, key, payee=Payee(customer_id=bob))]
    )
    assert _ok(again).id == _ok(first).id
    assert _ok(other).id != _ok(first).id
    assert isinstance(clash, IdempotencyKeyReusedError)
    assert p.balance(bob, CNY).posted == 20_00


def test_a_key_or_note_with_a_nul_is_refused_on_every_store(world: World) -> None:
    """PostgreSQL's text cannot hold a NUL (psycopg raised DataError, a 500 over HTTP): such
    text is bad input everywhere, refused before anything is recorded or moved."""
    p = world.payments
    alice = _customer(world, 1, fund=500_00)
    bob = _customer(world, 2)
    batches = PaymentBatches(p)
    by_key, by_note, fine = batches.pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "nul\x00key", payee=Payee(customer_id=bob)),
            PaymentRequest(
                alice, 10_00, CNY, "k-note", payee=Payee(customer_id=bob), note="a\x00b"
            ),
            PaymentRequest(alice, 10_00, CNY, "k-fine", payee=Payee(customer_id=bob)),
        ]
    )
    assert isinstance(by_key, InvalidPayloadError)
    assert isinstance(by_note, InvalidPayloadError)
    assert _ok(fine).amount == 10_00
    with pytest.raises(InvalidPayloadError):
        p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="single\x00key")
    assert p.balance(bob, CNY).posted == 10_00


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


def test_a_batch_tells_risk_what_one_at_a_time_does(world: World) -> None:
    """The batch builds its risk events itself (one clock reading for the batch): each is
    the event ``Payments.risk_event`` gives for that payment, field for field."""
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2, level=KycLevel.BASIC)
    shop = p.register_merchant("Shop", "retail", 50, "tok-shop").id
    channel = Channel(device_id="dev-1", ip="203.0.113.7", latitude=31.2, longitude=121.5)
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "p", payee=Payee(customer_id=bob), channel=channel),
            PaymentRequest(alice, 20_00, CNY, "m", merchant_qr=merchant_qr(shop)),
        ]
    )
    assert [_ok(a).status for a in answers] == [S.COMPLETED, S.COMPLETED]
    payer = p.customer(alice)
    cur = currency(CNY)
    expected = [
        p.risk_event(risk.EventKind.P2P, payer, 10_00, cur, f"c:{bob}", channel),
        p.risk_event(risk.EventKind.PAYMENT, payer, 20_00, cur, f"m:{shop}"),
    ]
    assert world.risk.seen[-2:] == expected  # the clock stood still: the same at_ns


def test_operation_ids_come_in_blocks_in_increasing_order(world: World) -> None:
    p = world.payments
    block = p.new_ids(3)
    assert len(block) == 3 and list(block) == sorted(set(block))
    assert block[-1] < p.new_id()
    counter = iter(range(100, 200))
    injected = Payments(
        world.engine,
        world.ledger,
        clock=world.clock,
        bank=world.bank,
        new_id=counter.__next__,
    )
    assert list(injected.new_ids(3)) == [100, 101, 102]  # an injected generator is used


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


def test_a_caller_who_gave_up_before_its_batch_began_pays_nothing(world: World) -> None:
    """Payments queued behind a running batch whose callers are cancelled meanwhile are not
    made; the others are, each once."""
    import asyncio

    from puhui.payments import PaymentCoalescer

    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    batches = PaymentBatches(p)
    started, release = threading.Event(), threading.Event()
    sizes: list[int] = []
    pay_many = batches.pay_many

    def slow(requests: Any) -> Any:  # the first batch waits until the others are queued
        sizes.append(len(requests))
        started.set()
        release.wait(10)
        return pay_many(requests)

    batches.pay_many = slow  # type: ignore[method-assign]
    coalescer = PaymentCoalescer(batches)

    def request(k: int) -> PaymentRequest:
        return PaymentRequest(alice, 1_00, CNY, f"g{k}", payee=Payee(customer_id=bob))

    async def run() -> tuple[Operation, list[Operation]]:
        first = asyncio.ensure_future(coalescer.pay(request(0)))
        while not started.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(coalescer.pay(request(k))) for k in range(1, 6)]
        await asyncio.sleep(0)
        for task in queued[:3]:
            task.cancel()  # these callers give up while the first batch runs
        await asyncio.sleep(0)
        release.set()
        kept = [await task for task in queued[3:]]
        return await first, kept

    first, kept = asyncio.run(run())
    assert first.status is S.COMPLETED and all(op.status is S.COMPLETED for op in kept)
    assert sizes == [1, 2]  # the second batch held only the two still waiting
    assert p.balance(bob, CNY).posted == 3 * 1_00
    keys = {op.id for op in [first, *kept]}
    assert len(keys) == 3


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


def test_a_batch_answer_is_its_record_and_its_transfer_is_the_single_paths(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2)
    shop = p.register_merchant("Shop", "retail", 50, "tok-shop").id
    world.risk.next = [risk.Decision.ACCEPT, risk.Decision.ACCEPT, risk.Decision.CHALLENGE]
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "t0", payee=Payee(customer_id=bob), note="tea"),
            PaymentRequest(alice, 20_00, CNY, "t1", merchant_qr=merchant_qr(shop)),
            PaymentRequest(alice, 30_00, CNY, "t2", payee=Payee(customer_id=bob)),
        ]
    )
    cur = currency(CNY)
    wanted = [
        (wallet_account_id(bob, cur), TransferCode.P2P, TransferFlags.NONE, 0),
        (merchant_account_id(shop, cur), TransferCode.MERCHANT_PAYMENT, TransferFlags.NONE, 0),
        (
            wallet_account_id(bob, cur),
            TransferCode.P2P,
            TransferFlags.PENDING,
            p.options.challenge_timeout_s,
        ),
    ]
    for answer, (credit, code, flags, timeout) in zip(answers, wanted, strict=True):
        op = _ok(answer)
        assert op == p.operation(op.id)
        [moved] = world.ledger.lookup_transfers([transfer_id(op.id, 0)])
        assert (
            moved.debit_account_id,
            moved.credit_account_id,
            moved.amount,
            moved.user_data_128,
            moved.ledger,
            moved.code,
            moved.flags,
            moved.timeout,
        ) == (
            wallet_account_id(alice, cur),
            credit,
            op.amount,
            op.id,
            cur.ledger,
            code,
            flags,
            timeout,
        )


def _outflow(world: World, customer_id: int) -> int:
    d = tables.daily_outflow.c
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.sum(d.amount)).where(d.customer_id == customer_id)
            ).scalar_one()
        )


def test_an_outcome_a_retry_recorded_meanwhile_stands(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry through the single path finishes one of the batch's payments between the
    batch's ledger call and its outcomes: the batch keeps that outcome (no second update,
    the reservation counted once) and records the others."""
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2)
    move = PaymentBatches._move

    def move_then_retry(self: PaymentBatches, items: list[Any]) -> None:
        move(self, items)
        world.clock.advance(10**9)
        retried = p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k0")
        assert retried.status is S.COMPLETED
        world.clock.advance(10**9)  # the batch records its outcomes later than the retry

    monkeypatch.setattr(PaymentBatches, "_move", move_then_retry)
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "k0", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 20_00, CNY, "k1", payee=Payee(customer_id=bob)),
        ]
    )
    first, second = (_ok(a) for a in answers)
    assert (first.status, second.status) == (S.COMPLETED, S.COMPLETED)
    assert first == p.operation(first.id) and second == p.operation(second.id)
    assert p.balance(bob, CNY).posted == 30_00
    assert _outflow(world, alice) == 30_00


def test_an_allowance_used_up_meanwhile_sends_the_batch_one_by_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another caller spends the day's allowance between the batch's check and its record:
    the conditional reservation refuses, nothing of the batch is recorded, and one request
    at a time gets what is left."""
    p = world.payments
    alice = _customer(world, 1, level=KycLevel.BASIC, fund=12_000_00)  # daily 10,000
    bob = _customer(world, 2)
    assert p.transfer(alice, Payee(customer_id=bob), 1_000_00, CNY, key="early").status is (
        S.COMPLETED
    )
    decide = PaymentBatches._decide

    def spend_then_decide(self: PaymentBatches, items: list[Any]) -> None:
        for key in ("m0", "m1"):  # 8,500 (at most 5,000 each: the single-payment limit)
            meanwhile = p.transfer(alice, Payee(customer_id=bob), 4_250_00, CNY, key=key)
            assert meanwhile.status is S.COMPLETED
        decide(self, items)

    monkeypatch.setattr(PaymentBatches, "_decide", spend_then_decide)
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 400_00, CNY, "b0", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 400_00, CNY, "b1", payee=Payee(customer_id=bob)),
        ]
    )
    assert _ok(answers[0]).status is S.COMPLETED
    assert isinstance(answers[1], KycLimitExceededError)
    assert answers[1].details["limit"] == "daily_outflow"
    assert _outflow(world, alice) == 9_900_00
    assert p.balance(bob, CNY).posted == 9_900_00
    ops = tables.operations.c
    with world.engine.connect() as conn:
        keys = conn.execute(
            sa.select(ops.idempotency_key).where(ops.payer_customer_id == alice)
        ).scalars()
        assert sorted(keys) == ["b0", "early", "m0", "m1"]


def test_a_batch_calls_the_finish_hooks_in_its_outcomes_transaction(world: World) -> None:
    """Webhooks (``platform.Webhooks.watch_payments``) and risk's cases hook into the
    transaction that records an operation's end; batched payments end there too."""
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2)
    seen: list[tuple[int, OperationStatus, str]] = []

    def hook(conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        stored = conn.execute(
            sa.select(tables.operations.c.status).where(tables.operations.c.id == f"{op.id:032x}")
        ).scalar_one()
        seen.append((op.id, status, stored))

    p._finish_hooks["test"] = hook
    world.risk.next = [risk.Decision.ACCEPT, risk.Decision.CHALLENGE, risk.Decision.REJECT]
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "h0", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 500_00, CNY, "h1", payee=Payee(customer_id=bob)),  # too much
            PaymentRequest(alice, 20_00, CNY, "h2", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 30_00, CNY, "h3", payee=Payee(customer_id=bob)),
        ]
    )
    done, held, rejected = _ok(answers[0]), _ok(answers[2]), _ok(answers[3])
    assert isinstance(answers[1], InsufficientFundsError)
    # Each outcome once, with the row already showing it; a rejection (recorded as such,
    # nothing moved) calls no hook, as one at a time.
    assert seen == [
        (done.id, S.COMPLETED, "completed"),
        (held.id, S.CHALLENGED, "challenged"),
    ]
    assert rejected.status is S.REJECTED
    single = p.transfer(alice, Payee(customer_id=bob), 5_00, CNY, key="one")
    assert seen[-1] == (single.id, S.COMPLETED, "completed")


def test_a_batch_reserves_within_the_allowance_without_going_one_by_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payers with and without an outflow row for the day: the batch reserves all of it in
    its own transaction (a wrong row count would silently send it one by one)."""
    p = world.payments
    alice = _customer(world, 1, fund=300_00)
    bob = _customer(world, 2, fund=300_00)
    carol = _customer(world, 3)
    assert p.transfer(alice, Payee(customer_id=carol), 1_00, CNY, key="row").status is (S.COMPLETED)

    def one_by_one(self: PaymentBatches, request: PaymentRequest) -> Operation | PuhuiError:
        raise AssertionError("the batch fell back to one request at a time")

    monkeypatch.setattr(PaymentBatches, "_one", one_by_one)
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 10_00, CNY, "a0", payee=Payee(customer_id=carol)),
            PaymentRequest(bob, 20_00, CNY, "b0", payee=Payee(customer_id=carol)),
            PaymentRequest(alice, 30_00, CNY, "a1", payee=Payee(customer_id=carol)),
        ]
    )
    assert [_ok(a).status for a in answers] == [S.COMPLETED] * 3
    assert (_outflow(world, alice), _outflow(world, bob)) == (41_00, 20_00)


def test_a_batch_finds_its_own_rows_by_their_ids(world: World) -> None:
    """On SQLite, the outcomes' statements reach the batch's rows through the primary key,
    not by walking every pending operation of the store."""
    if world.engine.dialect.name != "sqlite":
        return  # the plan is SQLite's
    p = world.payments
    alice, bob = _customer(world, 1, fund=100_00), _customer(world, 2)
    batches = PaymentBatches(p)

    def pay() -> None:
        answers = batches.pay_many(
            [
                PaymentRequest(alice, 1_00, CNY, f"k{i}", payee=Payee(customer_id=bob))
                for i in range(3)
            ]
        )
        assert all(_ok(a).status is S.COMPLETED for a in answers)

    found = plans_of(world.engine, ("payments_operations",), pay)
    [update] = [
        plan for sql, plan in found if sql.startswith("UPDATE payments_operations SET status")
    ]
    assert (
        update[0]
        == "SEARCH payments_operations USING INDEX sqlite_autoindex_payments_operations_1 (id=?)"
    )


def test_the_open_accounts_memory_is_bounded_and_a_forgotten_one_reopens(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from puhui.payments import service

    monkeypatch.setattr(service, "opened_cached_max", 2)
    p = world.payments
    ids = [_customer(world, n) for n in (1, 2, 3)]
    for customer in ids:
        p.open_wallet(customer, CNY)
    assert len(p._opened) <= 2
    assert wallet_account_id(ids[0], currency(CNY)) not in p._opened  # the oldest went
    account = p.open_wallet(ids[0], CNY)  # opened again: the ledger answers "exists"
    assert account == wallet_account_id(ids[0], currency(CNY))
    with world.engine.connect() as conn:
        wallets = conn.execute(
            sa.select(sa.func.count())
            .select_from(tables.wallets)
            .where(tables.wallets.c.customer_id == ids[0])
        ).scalar_one()
    assert wallets == 1
    assert len(p._opened) <= 2


def test_a_batchs_new_payees_and_merchants_are_opened_in_one_ledger_call(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    payees = [_customer(world, n) for n in (2, 3, 4)]  # verified, no wallet opened yet
    shops = [p.register_merchant(f"Shop{n}", "retail", 50, f"tok-{n}").id for n in range(4)]
    opened: list[list[int]] = []
    create_accounts = world.ledger.create_accounts

    def counting(accounts: list[L.Account]) -> list[L.CreateAccountResult]:
        opened.append([a.id for a in accounts])
        return create_accounts(accounts)

    monkeypatch.setattr(world.ledger, "create_accounts", counting)
    requests = [
        PaymentRequest(alice, 1_00, CNY, f"p{n}", payee=Payee(customer_id=payee))
        for n, payee in enumerate(payees + payees)  # each payee twice: opened once
    ] + [
        PaymentRequest(alice, 2_00, CNY, f"m{n}", merchant_qr=merchant_qr(shop))
        for n, shop in enumerate(shops)
    ]
    answers = PaymentBatches(p).pay_many(requests)
    assert [_ok(a).status for a in answers] == [S.COMPLETED] * len(requests)
    cny = currency(CNY)
    wanted = {wallet_account_id(c, cny) for c in payees} | {
        merchant_account_id(m, cny) for m in shops
    }
    assert len(opened) == 1 and sorted(opened[0]) == sorted(wanted)  # one call, each once
    for payee in payees:
        assert p.balance(payee, CNY).posted == 2_00
    for shop in shops:
        assert p.merchant_balance(shop, CNY).posted == 2_00
    with world.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tables.wallets.c.customer_id, tables.wallets.c.account_id).where(
                tables.wallets.c.customer_id.in_(payees)
            )
        ).all()
    assert sorted(rows) == sorted(
        (c, f"{wallet_account_id(c, cny):032x}") for c in payees
    )  # one row each
    # Open now: the next batch asks the ledger for nothing.
    again = PaymentBatches(p).pay_many(
        [PaymentRequest(alice, 1_00, CNY, "again", payee=Payee(customer_id=payees[0]))]
    )
    assert _ok(again[0]).status is S.COMPLETED
    assert len(opened) == 1
    assert L.verify(world.ledger).ok


def _held_batches(
    batches: PaymentBatches, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], threading.Event, threading.Event]:
    """Record the size of each batch carried out; the first one waits for ``release`` (and
    sets ``begun`` when it starts)."""
    sizes: list[int] = []
    begun, release = threading.Event(), threading.Event()
    carry_out = PaymentBatches._pay_many

    def held(self: PaymentBatches, requests: Any) -> Any:
        sizes.append(len(requests))
        if len(sizes) == 1:
            begun.set()
            assert release.wait(10)
        return carry_out(self, requests)

    monkeypatch.setattr(PaymentBatches, "_pay_many", held)
    return sizes, begun, release


def _queued(p: Payments, calls: list[tuple[Any, ...]], call: Any) -> list[threading.Thread]:
    """Start a thread per call (``call(*args)``), each once the one before is queued behind
    the batch being carried out, so they queue in this order."""
    combiner = PaymentBatches(p)._combiner
    threads = []
    for args in calls:
        threads.append(threading.Thread(target=call, args=args))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(combiner.queue) < len(threads):
            assert time.monotonic() < deadline
            time.sleep(0.005)
    return threads


def test_concurrent_batches_are_carried_out_together_each_answered_in_its_slots(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls arriving while a batch runs wait and then go as one batch (from any
    ``PaymentBatches`` over the same service), in the order they arrived; each caller gets
    its own answers in its own order, a refusal in its own slot, a key another caller of the
    batch sent first the first one's answer."""
    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    sizes, begun, release = _held_batches(PaymentBatches(p), monkeypatch)

    def request(key: str, amount: int) -> PaymentRequest:
        return PaymentRequest(alice, amount, CNY, key, payee=Payee(customer_id=bob))

    calls = {
        "first": [request("f", 1_00)],
        "a": [request("a1", 2_00), request("a2", 0), request("a3", 3_00)],
        "b": [request("b1", 4_00)],
        "c": [request("a1", 2_00), request("c2", 995_00), request("c3", 5_00)],
    }
    answers: dict[str, list[Operation | PuhuiError]] = {}

    def call(name: str) -> None:
        answers[name] = PaymentBatches(p).pay_many(calls[name])

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert begun.wait(10)
    others = _queued(p, [("a",), ("b",), ("c",)], call)  # behind the running batch
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert sizes == [1, 7]  # the three waiting calls went as one batch
    assert _ok(answers["first"][0]).status is S.COMPLETED
    a1, a2, a3 = answers["a"]
    assert _ok(a1).amount == 2_00 and _ok(a3).amount == 3_00
    assert isinstance(a2, PuhuiError) and a2.code == "amount_out_of_range"
    assert _ok(answers["b"][0]).amount == 4_00
    again, too_much, c3 = answers["c"]
    assert _ok(again).id == _ok(a1).id  # the same key: the first one's payment
    assert isinstance(too_much, InsufficientFundsError)
    assert _ok(c3).amount == 5_00
    assert p.balance(bob, CNY).posted == 1_00 + 2_00 + 3_00 + 4_00 + 5_00
    assert L.verify(world.ledger).ok


def test_combined_batches_keep_within_the_bound_and_share_a_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = world.payments
    monkeypatch.setattr(p, "options", dataclasses.replace(p.options, batch_operations_max=4))
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    sizes, begun, release = _held_batches(PaymentBatches(p), monkeypatch)

    def requests(tag: str, n: int) -> list[PaymentRequest]:
        return [
            PaymentRequest(alice, 1_00, CNY, f"{tag}{k}", payee=Payee(customer_id=bob))
            for k in range(n)
        ]

    results: dict[str, Any] = {}

    def call(name: str, n: int) -> None:
        try:
            results[name] = PaymentBatches(p).pay_many(requests(name, n))
        except Exception as error:
            results[name] = error

    threads = [threading.Thread(target=call, args=("first", 1))]
    threads[0].start()
    assert begun.wait(10)
    threads += _queued(p, [("a", 3), ("b", 2), ("c", 1)], call)
    release.set()
    for thread in threads:
        thread.join(10)
    assert sizes == [1, 3, 3]  # a alone (a + b = 5 > 4), then b and c together
    assert all(len(results[name]) == n for name, n in (("a", 3), ("b", 2), ("c", 1)))
    assert p.balance(bob, CNY).posted == 7 * 1_00

    # A fault while carrying out a combined batch reaches every caller of it.
    sizes, begun, release = _held_batches(PaymentBatches(p), monkeypatch)
    held = PaymentBatches._pay_many

    def broken(self: PaymentBatches, requests: Any) -> Any:
        if len(sizes) >= 1:  # after the held one: the combined batch fails
            sizes.append(len(requests))
            raise RuntimeError("the store went away")
        return held(self, requests)

    monkeypatch.setattr(PaymentBatches, "_pay_many", broken)
    results.clear()
    threads = [threading.Thread(target=call, args=("first", 1))]
    threads[0].start()
    assert begun.wait(10)
    threads += _queued(p, [("x", 1), ("y", 1)], call)
    release.set()
    for thread in threads:
        thread.join(10)
    assert sizes == [1, 2]  # x and y went together, and failed together
    assert all(isinstance(results[n], RuntimeError) for n in ("x", "y"))
    assert not PaymentBatches(p)._combiner.queue and not PaymentBatches(p)._combiner.running


def test_a_caller_interrupted_while_waiting_leaves_the_queue_and_pays_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2)
    sizes, begun, release = _held_batches(PaymentBatches(p), monkeypatch)
    combiner = PaymentBatches(p)._combiner
    wait = combiner.cond.wait

    def interrupted(timeout: float | None = None) -> bool:
        if threading.current_thread().name == "victim":
            raise KeyboardInterrupt
        return wait(timeout)

    monkeypatch.setattr(combiner.cond, "wait", interrupted)
    results: dict[str, Any] = {}

    def call(name: str) -> None:
        try:
            results[name] = PaymentBatches(p).pay_many(
                [PaymentRequest(alice, 1_00, CNY, name, payee=Payee(customer_id=bob))]
            )
        except BaseException as error:
            results[name] = error

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert begun.wait(10)
    victim = threading.Thread(target=call, args=("victim",), name="victim")
    victim.start()
    victim.join(10)
    assert isinstance(results["victim"], KeyboardInterrupt)
    assert not combiner.queue  # it left the queue
    release.set()
    first.join(10)
    later = PaymentBatches(p).pay_many(
        [PaymentRequest(alice, 1_00, CNY, "later", payee=Payee(customer_id=bob))]
    )
    assert _ok(later[0]).status is S.COMPLETED  # nobody waits for the one that left
    assert sizes == [1, 1]
    assert p.balance(bob, CNY).posted == 2 * 1_00  # the victim's payment was not made


def test_a_payers_allowance_in_each_currency_is_reserved_within_that_currencys_limit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch paying from one payer's wallets in two currencies reserves each currency's
    outflow within that currency's limit. (The reservation's limit was kept per payer, so
    the last payment's currency gave it: a yen allowance spent meanwhile was reserved again
    within the yuan limit, 50,000 units instead of 500, and the day's limit was passed.)"""
    p = world.payments
    alice = _customer(world, 1, level=KycLevel.UNVERIFIED)  # daily 500 of each currency
    bob = _customer(world, 2)
    card = p.cards(alice)[0].id
    assert p.top_up(alice, card, 100_00, CNY, key="cny").status is S.COMPLETED
    assert p.top_up(alice, card, 900, "JPY", key="jpy").status is S.COMPLETED
    early = p.transfer(alice, Payee(customer_id=bob), 200, "JPY", key="early")
    assert early.status is S.COMPLETED
    decide = PaymentBatches._decide

    def spend_then_decide(self: PaymentBatches, items: list[Any]) -> None:
        meanwhile = p.transfer(alice, Payee(customer_id=bob), 200, "JPY", key="meanwhile")
        assert meanwhile.status is S.COMPLETED
        decide(self, items)

    monkeypatch.setattr(PaymentBatches, "_decide", spend_then_decide)
    answers = PaymentBatches(p).pay_many(
        [
            PaymentRequest(alice, 200, "JPY", "yen", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 1_00, CNY, "yuan", payee=Payee(customer_id=bob)),
        ]
    )
    assert isinstance(answers[0], KycLimitExceededError), answers[0]
    assert answers[0].details["limit"] == "daily_outflow"
    assert _ok(answers[1]).status is S.COMPLETED
    d = tables.daily_outflow.c
    with world.engine.connect() as conn:
        spent = dict(
            conn.execute(sa.select(d.currency, d.amount).where(d.customer_id == alice)).all()
        )
    assert spent == {"JPY": 400, CNY: 1_00}
    assert p.balance(bob, "JPY").posted == 400


# --- parity with one at a time (found by tests/payments/test_batch_parity.py) --------------------


def test_a_request_with_several_faults_is_refused_for_the_one_the_single_path_finds_first(
    world: World,
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=100_00)
    bob = _customer(world, 2)
    frozen = _customer(world, 3, fund=100_00)
    p.set_frozen(frozen, True)
    batches = PaymentBatches(p)
    _ok(
        batches.pay_many([PaymentRequest(alice, 1_00, CNY, "used", payee=Payee(customer_id=bob))])[
            0
        ]
    )
    requests = [
        PaymentRequest(frozen, 1_00, CNY, "s", payee=Payee(customer_id=frozen)),
        PaymentRequest(frozen, 1_00, CNY, "u", payee=Payee(customer_id=999)),
        PaymentRequest(alice, 1_00, CNY, "used", payee=Payee(customer_id=999)),
        PaymentRequest(alice, 1_00, CNY, "", payee=Payee(customer_id=999)),
        PaymentRequest(alice, 1_00, "XXX", "q", merchant_qr="puhui://x/1"),
    ]
    answers = batches.pay_many(requests)
    # Were: AccountFrozen, AccountFrozen, IdempotencyKeyReused, InvalidPayload, UnknownCurrency.
    assert [type(a).__name__ for a in answers] == [
        "SamePartyError",
        "CustomerNotFoundError",
        "CustomerNotFoundError",
        "CustomerNotFoundError",
        "InvalidPayloadError",
    ]
    assert [type(pay_one(p, r)) for r in requests] == [type(a) for a in answers]


def test_a_payment_risk_rejects_uses_up_nothing_for_the_rest_of_the_batch(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=1_000_00)
    bob = _customer(world, 2, level=KycLevel.UNVERIFIED)  # wallet cap 1,000
    carol = _customer(world, 3, level=KycLevel.UNVERIFIED, fund=1_000_00)  # daily outflow 500
    dave = _customer(world, 4)
    batches = PaymentBatches(p)
    world.risk.next = [risk.Decision.REJECT]
    funds_and_cap = batches.pay_many(
        [
            PaymentRequest(alice, 900_00, CNY, "a", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 900_00, CNY, "b", payee=Payee(customer_id=bob)),
        ]
    )
    # Was: rejected, then insufficient funds (the rejected 900 counted as spent and received).
    assert [_ok(a).status for a in funds_and_cap] == [S.REJECTED, S.COMPLETED]
    world.risk.next = [risk.Decision.REJECT]
    outflow = batches.pay_many(
        [PaymentRequest(carol, 200_00, CNY, k, payee=Payee(customer_id=dave)) for k in "xyz"]
    )
    assert [_ok(a).status for a in outflow] == [S.REJECTED, S.COMPLETED, S.COMPLETED]
    assert p.balance(bob, CNY).posted == 900_00 and p.balance(dave, CNY).posted == 400_00


def test_money_a_batch_brings_in_can_be_spent_and_frees_room_later_in_it(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=100_00)
    bob = _customer(world, 2)
    carol = _customer(world, 3)
    dave = _customer(world, 4, level=KycLevel.UNVERIFIED, fund=1_000_00)  # at its cap
    batches = PaymentBatches(p)
    answers = batches.pay_many(
        [
            PaymentRequest(alice, 50_00, CNY, "a", payee=Payee(customer_id=bob)),
            PaymentRequest(bob, 30_00, CNY, "b", payee=Payee(customer_id=carol)),
            PaymentRequest(dave, 100_00, CNY, "c", payee=Payee(customer_id=carol)),
            PaymentRequest(alice, 50_00, CNY, "d", payee=Payee(customer_id=dave)),
        ]
    )
    # Were: insufficient funds (bob's 50 not counted) and wallet_balance (dave's 100 out not).
    assert [_ok(a).status for a in answers] == [S.COMPLETED] * 4
    assert p.balance(bob, CNY).posted == 20_00 and p.balance(dave, CNY).posted == 950_00


def test_the_days_outflow_is_checked_after_risk_and_after_the_payees_cap(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, level=KycLevel.UNVERIFIED, fund=600_00)
    bob = _customer(world, 2, level=KycLevel.UNVERIFIED, fund=950_00)
    carol = _customer(world, 3)
    batches = PaymentBatches(p)
    for k in "ab":
        _ok(
            batches.pay_many(
                [PaymentRequest(alice, 200_00, CNY, k, payee=Payee(customer_id=carol))]
            )[0]
        )
    world.risk.next = [risk.Decision.REJECT]
    over_the_day = PaymentRequest(alice, 200_00, CNY, "c", payee=Payee(customer_id=carol))
    over_both = PaymentRequest(alice, 100_00, CNY, "d", payee=Payee(customer_id=bob))
    rejected, refused = batches.pay_many([over_the_day, over_both])
    # Were: daily_outflow for both (one at a time risk is asked first; a rejected payment
    # reserves nothing, so it is never over the day's limit; the cap is checked first).
    assert _ok(rejected).status is S.REJECTED
    assert (
        isinstance(refused, KycLimitExceededError) and refused.details["limit"] == "wallet_balance"
    )
    refused_alone = pay_one(p, dataclasses.replace(over_both, key="e"))
    assert isinstance(refused_alone, KycLimitExceededError)
    assert refused_alone.details["limit"] == "wallet_balance"


def test_a_key_whose_first_use_in_the_batch_was_refused_is_free_for_the_next(
    world: World,
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=10_00)
    bob = _customer(world, 2)
    carol = _customer(world, 3, fund=100_00)
    batches = PaymentBatches(p)
    too_much = PaymentRequest(alice, 50_00, CNY, "k", payee=Payee(customer_id=bob))
    answers = batches.pay_many(
        [
            too_much,
            PaymentRequest(alice, 5_00, CNY, "k", payee=Payee(customer_id=bob)),
            PaymentRequest(alice, 60_00, CNY, "j", payee=Payee(customer_id=bob)),
            PaymentRequest(carol, 60_00, CNY, "c", payee=Payee(customer_id=alice)),
            PaymentRequest(alice, 60_00, CNY, "j", payee=Payee(customer_id=bob)),
        ]
    )
    # Were: idempotency_key_reused, and the first refusal repeated for the retry of "j".
    assert isinstance(answers[0], InsufficientFundsError)
    assert _ok(answers[1]).amount == 5_00
    assert isinstance(answers[2], InsufficientFundsError)
    assert _ok(answers[4]).status is S.COMPLETED
    assert p.balance(bob, CNY).posted == 65_00


def test_a_merchant_payment_in_a_batch_records_no_note(world: World) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=10_00)
    shop = p.register_merchant("Shop", "retail", 50, "tok-shop").id
    [answer] = PaymentBatches(p).pay_many(
        [PaymentRequest(alice, 1_00, CNY, "m", merchant_qr=merchant_qr(shop), note="x")]
    )
    # Was "x": ``pay_merchant`` takes no note (and the note is not part of the request's
    # fingerprint, so a retry with another note would have been answered with this one).
    assert _ok(answer).note == "" and p.operation(_ok(answer).id).note == ""


def test_a_retry_of_a_held_payment_is_answered_from_its_record_as_one_at_a_time(
    world: World,
) -> None:
    p = world.payments
    alice = _customer(world, 1, fund=10_00)
    bob = _customer(world, 2)
    batches = PaymentBatches(p)
    request = PaymentRequest(alice, 1_00, CNY, "h", payee=Payee(customer_id=bob))
    world.risk.next = [risk.Decision.CHALLENGE]
    [held] = batches.pay_many([request])
    assert _ok(held).status is S.CHALLENGED
    world.clock.advance((p.options.challenge_timeout_s + 1) * 10**9)
    world.ledger.tick()
    [again] = batches.pay_many([request])
    # Was: expired (the batch finished the lapse; a retry one at a time returns the record,
    # and ``recover()`` records the lapse).
    assert again == held == pay_one(p, request)


def test_a_long_chain_of_risk_answers_is_checked_in_bounded_passes_then_one_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rejection frees the money for the payer's next payment, which then reaches risk:
    checked pass after pass, a batch of n such payments would take n passes over the whole
    batch. After ``CHECK_PASSES_MAX`` passes the rest go one at a time, with the answers
    one at a time gives, risk asked once per payment."""
    p = world.payments
    alice = _customer(world, 1, fund=100_00)
    bob = _customer(world, 2)
    carol = _customer(world, 3, fund=100_00)
    n = 10
    world.risk.next = [risk.Decision.REJECT] * (n - 1)
    requests = [
        PaymentRequest(alice, 100_00, CNY, f"k{k}", payee=Payee(customer_id=bob)) for k in range(n)
    ]
    requests.insert(1, PaymentRequest(carol, 10_00, CNY, "c", payee=Payee(customer_id=bob)))
    asked = len(world.risk.seen)
    batches = PaymentBatches(p)
    passes = 0
    one_pass = batches._pass

    def counted(*args: Any) -> Any:
        nonlocal passes
        passes += 1
        return one_pass(*args)

    monkeypatch.setattr(batches, "_pass", counted)
    answers = batches.pay_many(requests)
    assert passes == CHECK_PASSES_MAX  # not one pass per payment of the chain
    # As one at a time: the rejections go to alice's first, carol's, then alice's next seven;
    # her ninth is accepted and takes the money; her tenth finds none (risk is not asked).
    assert [_ok(a).status for a in answers[:-1]] == [S.REJECTED] * (n - 1) + [S.COMPLETED]
    assert isinstance(answers[-1], InsufficientFundsError)
    assert len(world.risk.seen) - asked == n  # each payment that reached risk asked once
    assert n - 1 > CHECK_PASSES_MAX
    assert p.balance(alice, CNY).posted == 0 and p.balance(bob, CNY).posted == 100_00
