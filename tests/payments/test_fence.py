"""An accepted P2P or merchant payment cut short after its record, before its ledger transfer,
for a party frozen since: recovery (or a retry) must not move the money, and the original
call, should it still be alive, must not move it afterwards either.

The crash is replayed in-process: the call is stopped where ``crash_child.py``'s
``kill-after-record`` modes kill the process (its row written, the ledger not called), and
the original call's remaining steps are run later by hand, as a process that was only slow
(not dead) would run them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.ledger import verify
from puhui.payments import (
    AccountCode,
    Checkout,
    Operation,
    OperationStatus,
    OrderStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    merchant_qr,
)
from puhui.payments.model import transfer_id
from puhui.store import payments as tables

from .conftest import World, verified_customer

S = OperationStatus
CNY = "CNY"
FUND = 1_000_00
AMOUNT = 300_00
SECOND_NS = 10**9


class CrashedError(Exception):
    """Where the process died (in-process: the call stops here, its row written)."""


@dataclass
class CutShort:
    """A payment recorded ``pending`` whose call stopped before the ledger."""

    op: Operation
    resume: Callable[[], Operation]
    """The original call's remaining steps (the ledger transfer, the outcome), its answer."""
    payer: int
    payee: int | None
    shop: int | None


def _cut_short(world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str) -> CutShort:
    p = world.payments
    payer = verified_customer(world, 1, fund=FUND)
    payee = shop = None
    if kind == "p2p":
        payee = verified_customer(world, 2)
        request = PaymentRequest(payer, AMOUNT, CNY, "x", payee=Payee(customer_id=payee))
    else:
        shop = p.register_merchant("Shop", "retail", 0, "tok-m").id
        request = PaymentRequest(payer, AMOUNT, CNY, "x", merchant_qr=merchant_qr(shop))
    seen: list[Any] = []
    batches = PaymentBatches(p)
    if path == "single":
        drive = Payments._drive

        def crash(self: Payments, op: Operation, **kwargs: Any) -> Operation:
            seen.append(op)
            raise CrashedError

        monkeypatch.setattr(Payments, "_drive", crash)
        with pytest.raises(CrashedError):
            if kind == "p2p":
                assert request.payee is not None
                p.transfer(payer, request.payee, AMOUNT, CNY, key="x")
            else:
                assert request.merchant_qr is not None
                p.pay_merchant(payer, request.merchant_qr, AMOUNT, CNY, key="x")
        monkeypatch.undo()
        [op] = seen

        def resume() -> Operation:
            return drive(p, op)

    else:
        move = PaymentBatches._move

        def crash_in_batch(self: PaymentBatches, items: list[Any]) -> None:
            seen.append(items)
            raise CrashedError

        monkeypatch.setattr(PaymentBatches, "_move", crash_in_batch)
        with pytest.raises(CrashedError):
            batches.pay_many([request])
        monkeypatch.undo()
        [items] = seen
        op = p.operation(items[0].operation_id)

        def resume() -> Operation:
            move(batches, items)
            batches._finish(items)
            return batches._operation(items[0])

    assert op.status is S.PENDING and p.operation(op.id).status is S.PENDING
    return CutShort(op, resume, payer, payee, shop)


def _freeze(world: World, cut: CutShort, frozen: str) -> None:
    p = world.payments
    if frozen == "payer":
        p.set_frozen(cut.payer, True)
    elif cut.payee is not None:
        p.set_frozen(cut.payee, True)
    else:
        assert cut.shop is not None
        p.set_merchant_frozen(cut.shop, True)


def _outflow(world: World, customer_id: int) -> int:
    d = tables.daily_outflow.c
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(d.amount), 0)).where(
                    d.customer_id == customer_id
                )
            ).scalar_one()
        )


def _moved(world: World, cut: CutShort) -> int:
    """What reached the payee (or the merchant); checks the payer's side matches it and holds
    nothing, and that the books balance."""
    p = world.payments
    if cut.payee is not None:
        received = p.balance(cut.payee, CNY)
    else:
        assert cut.shop is not None
        received = p.merchant_balance(cut.shop, CNY)
    paid = p.balance(cut.payer, CNY)
    assert (paid.posted, paid.held, received.held) == (FUND - received.posted, 0, 0)
    assert verify(world.ledger).ok
    return received.posted


def _assert_stopped(world: World, cut: CutShort, answer: Operation) -> None:
    assert (answer.id, answer.status, answer.error_code) == (cut.op.id, S.FAILED, "account_frozen")
    assert world.payments.operation(cut.op.id) == answer
    assert _moved(world, cut) == 0
    assert _outflow(world, cut.payer) == 0  # the day's reservation given back


PATHS = ["single", "batch"]
KINDS = ["p2p", "merchant"]


@pytest.mark.parametrize("frozen", ["payer", "payee"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_recovery_does_not_make_a_payment_for_a_party_frozen_since_it_was_cut_short(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str, frozen: str
) -> None:
    """Recorded ``pending``, cut short before the ledger, then the payer or the payee (the
    merchant) frozen: recovery used to make the transfer anyway. It now ends the payment
    ``failed`` with ``account_frozen``, moves nothing and gives the outflow back; a retry,
    even after the thaw, answers the same."""
    p = world.payments
    cut = _cut_short(world, monkeypatch, path, kind)
    assert _outflow(world, cut.payer) == AMOUNT
    _freeze(world, cut, frozen)
    world.clock.advance(60 * SECOND_NS)
    assert p.recover() == {"failed": 1}
    _assert_stopped(world, cut, p.operation(cut.op.id))
    assert p.recover() == {}
    p.set_frozen(cut.payer, False)
    if cut.payee is not None:
        p.set_frozen(cut.payee, False)
        again = p.transfer(cut.payer, Payee(customer_id=cut.payee), AMOUNT, CNY, key="x")
    else:
        assert cut.shop is not None
        p.set_merchant_frozen(cut.shop, False)
        again = p.pay_merchant(cut.payer, merchant_qr(cut.shop), AMOUNT, CNY, key="x")
    _assert_stopped(world, cut, again)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_a_retry_of_a_payment_cut_short_does_not_make_it_for_a_payer_frozen_since(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str
) -> None:
    """The caller's retry under the same key finishes a payment a crash left ``pending``, as
    recovery does: for a payer frozen since, it stops it the same way."""
    p = world.payments
    cut = _cut_short(world, monkeypatch, path, kind)
    _freeze(world, cut, "payer")
    if path == "single":
        if cut.payee is not None:
            again = p.transfer(cut.payer, Payee(customer_id=cut.payee), AMOUNT, CNY, key="x")
        else:
            assert cut.shop is not None
            again = p.pay_merchant(cut.payer, merchant_qr(cut.shop), AMOUNT, CNY, key="x")
    else:
        payee = None if cut.payee is None else Payee(customer_id=cut.payee)
        qr = None if cut.shop is None else merchant_qr(cut.shop)
        [answer] = PaymentBatches(p).pay_many(
            [PaymentRequest(cut.payer, AMOUNT, CNY, "x", payee=payee, merchant_qr=qr)]
        )
        assert isinstance(answer, Operation)
        again = answer
    _assert_stopped(world, cut, again)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_the_original_call_resuming_after_recovery_stopped_its_payment_moves_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str
) -> None:
    """The race: the original call was slow, not dead. Recovery, seeing the payer frozen,
    stopped the payment; then the original makes its ledger transfer. The ledger refuses it
    (recovery's fence holds leg 0's id) and the original's answer is the failure."""
    p = world.payments
    cut = _cut_short(world, monkeypatch, path, kind)
    _freeze(world, cut, "payer")
    world.clock.advance(60 * SECOND_NS)
    assert p.recover() == {"failed": 1}
    _assert_stopped(world, cut, cut.resume())
    assert p.recover() == {}
    _assert_stopped(world, cut, p.operation(cut.op.id))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_a_fence_whose_recovery_died_is_followed_by_the_original_call(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str
) -> None:
    """Recovery fenced leg 0's id, then died before voiding the fence and recording the
    failure; the original call then makes its transfer. The ledger took the fence: the
    original voids it and records the failure itself (not a ledger error code), and a later
    recovery finds nothing to do."""
    p = world.payments
    cut = _cut_short(world, monkeypatch, path, kind)
    _freeze(world, cut, "payer")
    world.clock.advance(60 * SECOND_NS)

    def die(self: Payments, op: Operation) -> Operation:
        raise CrashedError

    monkeypatch.setattr(Payments, "_fail_unsent", die)
    assert p.recover() == {"stuck": 1}
    monkeypatch.undo()
    [fence] = world.ledger.lookup_transfers([transfer_id(cut.op.id, 0)])
    assert fence.amount == 0  # recovery's fence holds the id
    assert p.operation(cut.op.id).status is S.PENDING
    _assert_stopped(world, cut, cut.resume())
    assert p.recover() == {}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_a_payment_made_before_the_freeze_is_recorded_as_the_ledger_made_it(
    world: World, monkeypatch: pytest.MonkeyPatch, path: str, kind: str
) -> None:
    """The other order of the race: the original made the transfer (then died, or is slow)
    before the payer was frozen. Recovery's fence finds leg 0 taken: the money moved, and the
    record follows the ledger (``completed``); the original's answer is the same."""
    p = world.payments
    cut = _cut_short(world, monkeypatch, path, kind)
    if path == "single":
        assert p._move(cut.op, hold_s=None).name == "CREATED"  # then died
    else:
        monkeypatch.setattr(PaymentBatches, "_finish", lambda self, items: None)
        cut.resume()  # the ledger call made, the outcome not recorded
        monkeypatch.undo()
    _freeze(world, cut, "payer")
    world.clock.advance(60 * SECOND_NS)
    assert p.recover() == {"completed": 1}
    done = p.operation(cut.op.id)
    assert (done.status, done.error_code) == (S.COMPLETED, None)
    assert _moved(world, cut) == AMOUNT
    assert _outflow(world, cut.payer) == AMOUNT
    if path == "single":
        assert cut.resume() == done


@pytest.mark.parametrize("frozen", ["buyer", "seller"])
def test_recovery_does_not_pay_an_order_for_a_party_frozen_since_it_was_cut_short(
    world: World, monkeypatch: pytest.MonkeyPatch, frozen: str
) -> None:
    """The same for an order's payment (wallet → escrow), which ``pay_order`` refuses for a
    frozen buyer or seller: recovery used to put the frozen buyer's money in escrow (the
    order paid). Now the payment fails with ``account_frozen``, the order stays unpaid (the
    buyer may pay it again once thawed), and the original call's late transfer is refused."""
    p = world.payments
    buyer = verified_customer(world, 1, fund=FUND)
    shop = p.register_merchant("Shop", "retail", 0, "tok-m").id
    checkout = Checkout(p)
    order = checkout.create_order(buyer, shop, AMOUNT, CNY, "express", "t", key="o")
    seen: list[Operation] = []
    drive = Payments._drive

    def crash(self: Payments, op: Operation, **kwargs: Any) -> Operation:
        seen.append(op)
        raise CrashedError

    monkeypatch.setattr(Payments, "_drive", crash)
    with pytest.raises(CrashedError):
        checkout.pay_order(order.id, buyer, key="p")
    monkeypatch.undo()
    [op] = seen
    if frozen == "buyer":
        p.set_frozen(buyer, True)
    else:
        p.set_merchant_frozen(shop, True)
    world.clock.advance(60 * SECOND_NS)
    assert p.recover() == {"failed": 1}
    late = drive(p, op)  # the original call, only slow
    assert (late.status, late.error_code) == (S.FAILED, "account_frozen")
    assert p.operation(op.id) == late
    paid = p.balance(buyer, CNY)
    assert (paid.posted, paid.held) == (FUND, 0)
    assert p.platform_balance(AccountCode.ESCROW, CNY).posted == 0
    assert _outflow(world, buyer) == 0
    again = checkout.order(order.id)
    assert (again.status, again.payment_operation_id) == (OrderStatus.CREATED, None)
    assert verify(world.ledger).ok
