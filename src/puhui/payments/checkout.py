"""Guaranteed transactions (担保交易): the buyer's money waits in escrow until receipt.

An order goes CREATED → PAID (money in escrow) → SHIPPED → FINISHED (released to the seller
less the fee), or to CLOSED (cancelled, unpaid in time, refunded in full). Refunds and
disputes take money back out of escrow. Every money step is an ``Operation`` of the payments
service (``order_payment``, ``escrow_release``, ``refund``), recorded in the same SQL
transaction as the order or refund change that calls for it and finished by the same
machinery (``Payments.recover`` included); the order moves on in the transaction that
records the operation's outcome. So a crash anywhere leaves an order and its money agreeing,
once recovery has run.

Timers (auto-close, auto-confirm, refund answers, escalation windows) are run by
``run_timers()``, driven by the service's clock: safe to run at any time, any number of times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from puhui import risk
from puhui.money import currency
from puhui.store import payments as t

from ._errors import (
    AccountFrozenError,
    ExtensionLimitError,
    IdempotencyKeyReusedError,
    InvalidPayloadError,
    NotOrderPartyError,
    OrderAlreadyPaidError,
    OrderAlreadyShippedError,
    OrderClosedError,
    OrderFinishedError,
    OrderNotFoundError,
    OrderNotPaidError,
    OrderNotShippedError,
    RefundExceedsEscrowError,
    RefundNotFoundError,
    RefundOpenError,
    RefundStateError,
)
from .model import (
    IDEMPOTENCY_KEY_CHARS_MAX,
    NOTE_CHARS_MAX,
    Arbitration,
    CheckoutChange,
    Fulfilment,
    OperationKind,
    OperationStatus,
    OrderStatus,
    RefundStatus,
    check_amount,
    check_text,
    fee,
    request_fingerprint,
    wallet_account_id,
)
from .service import INTERNAL, NO_CHANNEL, Channel, Operation, Payments, _hex

_O = OrderStatus
_R = RefundStatus
_RELEASE_OUTCOMES = ("arbitrated_release", "arbitrated_split")
"""Rulings after which what is left in escrow belongs to the seller."""


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    buyer_customer_id: int
    merchant_id: int
    currency: str
    amount: int
    fee_bps: int
    fulfilment: Fulfilment
    title: str
    status: OrderStatus
    refunded: int
    pay_by_ns: int
    paid_at_ns: int | None
    shipped_at_ns: int | None
    confirm_by_ns: int | None
    """When receipt confirms itself (None before shipment; pushed back while a refund is
    open and by the seller's extensions)."""
    suspended_at_ns: int | None
    """Since when the confirmation timer is stopped by an open refund."""
    open_refund_id: int | None
    close_reason: str | None
    payment_operation_id: int | None
    """The buyer's payment (wallet → escrow), once one is under way."""
    release_operation_id: int | None
    """The release to the seller (escrow → merchant), once it is under way."""

    @property
    def in_escrow(self) -> int:
        """What escrow still holds for this order (paid, not yet released or refunded)."""
        if self.status in (_O.CREATED, _O.FINISHED) or self.paid_at_ns is None:
            return 0
        return self.amount - self.refunded


@dataclass(frozen=True, slots=True)
class Refund:
    id: int
    order_id: int
    amount: int
    reason: str
    status: RefundStatus
    after_shipment: bool
    answer_by_ns: int
    escalate_by_ns: int | None
    outcome: str | None
    buyer_amount: int | None


def _id(value: str | None) -> int | None:
    return None if value is None else int(value, 16)


def _order(row: Any) -> Order:
    return Order(
        id=int(row.id, 16),
        buyer_customer_id=row.buyer_customer_id,
        merchant_id=row.merchant_id,
        currency=row.currency,
        amount=row.amount,
        fee_bps=row.fee_bps,
        fulfilment=Fulfilment(row.fulfilment),
        title=row.title,
        status=OrderStatus(row.status),
        refunded=row.refunded,
        pay_by_ns=row.pay_by_ns,
        paid_at_ns=row.paid_at_ns,
        shipped_at_ns=row.shipped_at_ns,
        confirm_by_ns=row.confirm_by_ns,
        suspended_at_ns=row.suspended_at_ns,
        open_refund_id=_id(row.open_refund_id),
        close_reason=row.close_reason,
        payment_operation_id=_id(row.payment_operation_id),
        release_operation_id=_id(row.release_operation_id),
    )


def _refund(row: Any) -> Refund:
    return Refund(
        id=int(row.id, 16),
        order_id=int(row.order_id, 16),
        amount=row.amount,
        reason=row.reason,
        status=RefundStatus(row.status),
        after_shipment=row.after_shipment,
        answer_by_ns=row.answer_by_ns,
        escalate_by_ns=row.escalate_by_ns,
        outcome=row.outcome,
        buyer_amount=row.buyer_amount,
    )


CheckoutHook = Callable[[sa.Connection, CheckoutChange, Order, "Refund | None"], None]
"""``hook(conn, change, order, refund)``: called in the transaction that records ``change``,
with the order (and the refund, for refund changes) as that transaction sees them."""


class Checkout:
    """Guaranteed transactions on top of a ``Payments`` service (same engine, ledger, clock)."""

    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.engine = payments.engine
        self.clock = payments.clock
        self.options = payments.options
        self._change_hooks: dict[str, CheckoutHook] = {}
        payments._finish_hooks["checkout"] = self._on_finished

    def on_change(self, owner: str, hook: CheckoutHook) -> None:
        """Have ``hook`` called in the transaction of every change of an order or a refund
        (``CheckoutChange``): what it writes commits or rolls back with the change, and an
        error it raises undoes the change. Keyed by ``owner``: registering again replaces."""
        self._change_hooks[owner] = hook

    def _changed(
        self,
        conn: sa.Connection,
        change: CheckoutChange,
        order_id: int,
        refund_id: int | None = None,
    ) -> None:
        if not self._change_hooks:
            return
        order = _order(
            conn.execute(sa.select(t.orders).where(t.orders.c.id == _hex(order_id))).one()
        )
        refund = None
        if refund_id is not None:
            refund = _refund(
                conn.execute(sa.select(t.refunds).where(t.refunds.c.id == _hex(refund_id))).one()
            )
        for hook in list(self._change_hooks.values()):
            hook(conn, change, order, refund)

    # --- reading --------------------------------------------------------------------------------

    def order(self, order_id: int) -> Order:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.orders).where(t.orders.c.id == _hex(order_id))).first()
        if row is None:
            raise OrderNotFoundError(f"no order {order_id:#x}")
        return _order(row)

    def refund(self, refund_id: int) -> Refund:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.refunds).where(t.refunds.c.id == _hex(refund_id))
            ).first()
        if row is None:
            raise RefundNotFoundError(f"no refund {refund_id:#x}")
        return _refund(row)

    def refunds(self, order_id: int) -> list[Refund]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.refunds)
                .where(t.refunds.c.order_id == _hex(order_id))
                .order_by(t.refunds.c.created_at_ns)
            ).all()
        return [_refund(r) for r in rows]

    # --- the buyer and the seller ---------------------------------------------------------------

    def create_order(
        self,
        buyer_id: int,
        merchant_id: int,
        amount: int,
        currency_code: str,
        fulfilment: Fulfilment | str,
        title: str,
        *,
        key: str,
    ) -> Order:
        """An order from a buyer to a merchant (the seller); nothing moves until it is paid."""
        cur = currency(currency_code)
        amount = check_amount(amount)
        title = check_text(title, "title", 128)
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
        try:
            kind = Fulfilment(fulfilment)
        except ValueError:
            raise InvalidPayloadError(
                f"fulfilment is one of {[str(f) for f in Fulfilment]}"
            ) from None
        request = {
            "merchant": merchant_id,
            "amount": amount,
            "currency": cur.code,
            "fulfilment": str(kind),
            "title": title,
        }
        fingerprint = request_fingerprint(OperationKind.ORDER_PAYMENT, request)
        scope = f"c:{buyer_id}"
        existing = self._by_key(t.orders, scope, key, fingerprint)
        if existing is not None:
            return _order(existing)
        self.payments._active_customer(buyer_id)
        merchant = self.payments.merchant(merchant_id)
        if merchant.frozen:
            raise AccountFrozenError("the merchant is frozen")
        self.payments.open_wallet(buyer_id, cur.code)
        self.payments._open_merchant_account(merchant_id, cur)
        now = self.clock.now_ns()
        order_id = self.payments.new_id()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    t.orders.insert().values(
                        id=_hex(order_id),
                        scope=scope,
                        idempotency_key=key,
                        fingerprint=fingerprint,
                        buyer_customer_id=buyer_id,
                        merchant_id=merchant_id,
                        currency=cur.code,
                        amount=amount,
                        fee_bps=merchant.fee_bps,
                        fulfilment=str(kind),
                        title=title,
                        status=str(_O.CREATED),
                        refunded=0,
                        pay_by_ns=now + self.options.unpaid_close_s * 10**9,
                        paid_at_ns=None,
                        shipped_at_ns=None,
                        confirm_by_ns=None,
                        extended_s=0,
                        suspended_at_ns=None,
                        payment_operation_id=None,
                        release_operation_id=None,
                        open_refund_id=None,
                        close_reason=None,
                        created_at_ns=now,
                        updated_at_ns=now,
                    )
                )
        except sa.exc.IntegrityError:
            raced = self._by_key(t.orders, scope, key, fingerprint)
            if raced is None:
                raise
            return _order(raced)
        return self.order(order_id)

    def pay_order(
        self, order_id: int, buyer_id: int, *, key: str, channel: Channel = NO_CHANNEL
    ) -> Operation:
        """The buyer pays: wallet → escrow. The order is PAID once the money is in escrow
        (a payment held for a risk check pays the order when it is released)."""
        order = self.order(order_id)
        scope = f"c:{buyer_id}"
        request = {"order": _hex(order_id)}
        replay = self.payments._replay(scope, key, OperationKind.ORDER_PAYMENT, request)
        if replay is not None:
            return replay
        if order.buyer_customer_id != buyer_id:
            raise NotOrderPartyError("only the order's buyer can pay it")
        order = self._due(order)
        self._expect(order, _O.CREATED)
        with self.engine.connect() as conn:
            paying = conn.execute(
                sa.select(t.orders.c.payment_operation_id).where(t.orders.c.id == _hex(order_id))
            ).scalar_one()
        if paying is not None:
            raise OrderAlreadyPaidError("a payment of this order is already under way")
        payments = self.payments
        buyer = payments._active_customer(buyer_id)
        merchant = payments.merchant(order.merchant_id)
        if merchant.frozen:
            raise AccountFrozenError("the merchant is frozen")
        cur = currency(order.currency)
        payments._check_single(buyer, cur, order.amount)
        payments._check_funds(wallet_account_id(buyer_id, cur), order.amount)
        decision = payments._decide(
            risk.EventKind.PAYMENT, buyer, order.amount, cur, f"m:{order.merchant_id}", channel
        )

        def claim(conn: sa.Connection, operation_id: int) -> None:
            done = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order_id),
                    t.orders.c.status == str(_O.CREATED),
                    t.orders.c.payment_operation_id.is_(None),
                )
                .values(payment_operation_id=_hex(operation_id), updated_at_ns=self._now())
            )
            if done.rowcount != 1:
                raise OrderAlreadyPaidError("the order was paid or closed meanwhile")

        op = payments._record(
            OperationKind.ORDER_PAYMENT,
            scope,
            key,
            request,
            decision,
            cur,
            order.amount,
            payer=buyer,
            merchant_id=order.merchant_id,
            order_id=order_id,
            within=None if decision.decision is risk.Decision.REJECT else claim,
        )
        return payments._drive(op)

    def cancel_order(self, order_id: int, buyer_id: int) -> Order:
        """The buyer gives up an order not yet paid."""
        order = self.order(order_id)
        if order.buyer_customer_id != buyer_id:
            raise NotOrderPartyError("only the order's buyer can cancel it")
        self._expect(order, _O.CREATED)
        if not self._close_unpaid(order_id, "cancelled"):
            raise OrderAlreadyPaidError("a payment of this order is under way")
        return self.order(order_id)

    def ship_order(self, order_id: int, merchant_id: int) -> Order:
        """The seller ships: the auto-confirm timer starts (stopped while a refund is open)."""
        order = self.order(order_id)
        self._seller(order, merchant_id)
        if order.status is _O.SHIPPED:
            raise OrderAlreadyShippedError("the order is already shipped")
        self._expect(order, _O.PAID)
        self._not_releasing(order)
        now = self._now()
        confirm_by = now + self.options.auto_confirm_s[order.fulfilment] * 10**9
        with self.engine.begin() as conn:
            done = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order_id),
                    t.orders.c.status == str(_O.PAID),
                    t.orders.c.release_operation_id.is_(None),
                )
                .values(
                    status=str(_O.SHIPPED),
                    shipped_at_ns=now,
                    confirm_by_ns=confirm_by,
                    suspended_at_ns=sa.case(
                        (t.orders.c.open_refund_id.is_not(None), now), else_=None
                    ),
                    updated_at_ns=now,
                )
            )
            if done.rowcount == 1:
                self._changed(conn, CheckoutChange.ORDER_SHIPPED, order_id)
        if done.rowcount != 1:
            return self.ship_order(order_id, merchant_id)  # it changed meanwhile: say why
        return self.order(order_id)

    def extend_confirmation(self, order_id: int, merchant_id: int, extra_s: int) -> Order:
        """The seller gives the buyer more time before receipt confirms itself."""
        order = self._due(self.order(order_id))
        self._seller(order, merchant_id)
        self._still_open(order, _O.SHIPPED)
        if type(extra_s) is not int or extra_s <= 0:
            raise InvalidPayloadError("extra_s is a positive int of seconds")
        if extra_s > self.options.extension_max_s:  # also keeps it within the store's ints
            raise ExtensionLimitError(
                f"extensions may add up to {self.options.extension_max_s} s in all"
            )
        with self.engine.begin() as conn:
            done = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order_id),
                    t.orders.c.status == str(_O.SHIPPED),
                    t.orders.c.release_operation_id.is_(None),
                    t.orders.c.extended_s + extra_s <= self.options.extension_max_s,
                )
                .values(
                    confirm_by_ns=t.orders.c.confirm_by_ns + extra_s * 10**9,
                    extended_s=t.orders.c.extended_s + extra_s,
                    updated_at_ns=self._now(),
                )
            )
        if done.rowcount != 1:
            # finished by a timer or the buyer, or a release claimed meanwhile: say so
            self._still_open(self.order(order_id), _O.SHIPPED)
            raise ExtensionLimitError(
                f"extensions may add up to {self.options.extension_max_s} s in all"
            )
        return self.order(order_id)

    def confirm_receipt(self, order_id: int, buyer_id: int) -> Order:
        """The buyer confirms receipt: escrow → seller, less the fee; the order FINISHES."""
        order = self.order(order_id)
        if order.buyer_customer_id != buyer_id:
            raise NotOrderPartyError("only the order's buyer can confirm receipt")
        was = order.status
        order = self._due(order)
        if was is _O.SHIPPED and order.status is _O.FINISHED:
            return order  # its timer confirmed it a moment ago: the same outcome
        if order.status is _O.SHIPPED and order.release_operation_id is not None:
            # Its release is under way (a timer's, or a confirmation cut short): carry it
            # out, the same outcome as this confirmation's.
            self.payments._drive(self.payments.operation(order.release_operation_id))
            return self.order(order_id)
        if order.open_refund_id is not None:
            raise RefundOpenError("a refund of this order is open")
        self._not_releasing(order)  # a ruled release of an unshipped order
        self._expect(order, _O.SHIPPED)
        self._release(order)
        return self.order(order_id)

    # --- refunds and disputes -------------------------------------------------------------------

    def request_refund(
        self, order_id: int, buyer_id: int, amount: int, reason: str, *, key: str
    ) -> Refund:
        """The buyer asks for (part of) the money back. The seller has 24 h to answer before
        shipment and 36 h after it; silence approves the refund."""
        amount = check_amount(amount)
        reason = check_text(reason, "reason", NOTE_CHARS_MAX)
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
        request = {"order": _hex(order_id), "amount": amount, "reason": reason}
        fingerprint = request_fingerprint(OperationKind.REFUND, request)
        scope = f"c:{buyer_id}"
        existing = self._by_key(t.refunds, scope, key, fingerprint)
        if existing is not None:
            return _refund(existing)
        order = self.order(order_id)
        if order.buyer_customer_id != buyer_id:
            raise NotOrderPartyError("only the order's buyer can ask for a refund")
        order = self._due(order)
        self._still_open(order, _O.PAID, _O.SHIPPED)
        if order.open_refund_id is not None:
            raise RefundOpenError("a refund of this order is already open")
        if any(r.outcome in _RELEASE_OUTCOMES for r in self.refunds(order_id)):
            raise RefundStateError("the dispute was decided: what is left goes to the seller")
        if amount > order.in_escrow:
            raise RefundExceedsEscrowError(
                f"at most {order.in_escrow} is left in escrow for this order"
            )
        now = self._now()
        shipped = order.status is _O.SHIPPED
        window = (
            self.options.refund_answer_after_shipment_s
            if shipped
            else self.options.refund_answer_before_shipment_s
        )
        refund_id = self.payments.new_id()
        with self.engine.begin() as conn:
            conn.execute(
                t.refunds.insert().values(
                    id=_hex(refund_id),
                    order_id=_hex(order_id),
                    scope=scope,
                    idempotency_key=key,
                    fingerprint=fingerprint,
                    amount=amount,
                    reason=reason,
                    status=str(_R.REQUESTED),
                    after_shipment=shipped,
                    answer_by_ns=now + window * 10**9,
                    escalate_by_ns=None,
                    buyer_amount=None,
                    outcome=None,
                    refund_operation_id=None,
                    release_operation_id=None,
                    created_at_ns=now,
                    updated_at_ns=now,
                )
            )
            # The order as checked above: a refund settled meanwhile changed what escrow
            # holds for it (and a shipment meanwhile, the timer and the time to answer).
            done = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order_id),
                    t.orders.c.status == str(order.status),
                    t.orders.c.refunded == order.refunded,
                    t.orders.c.open_refund_id.is_(None),
                    t.orders.c.release_operation_id.is_(None),
                )
                .values(
                    open_refund_id=_hex(refund_id),
                    suspended_at_ns=now if shipped else None,
                    updated_at_ns=now,
                )
            )
            if done.rowcount != 1:
                # finished or closed, or a release claimed meanwhile: say so
                row = conn.execute(sa.select(t.orders).where(t.orders.c.id == _hex(order_id)))
                self._still_open(_order(row.one()), _O.PAID, _O.SHIPPED)
                raise RefundOpenError("the order changed meanwhile; look at it again")
            self._changed(conn, CheckoutChange.REFUND_REQUESTED, order_id, refund_id)
        return self.refund(refund_id)

    def answer_refund(self, refund_id: int, merchant_id: int, *, approve: bool) -> Refund:
        """The seller approves (the money goes back) or rejects (the buyer may escalate)."""
        refund = self.refund(refund_id)
        order = self.order(refund.order_id)
        self._seller(order, merchant_id)
        if refund.status is not _R.REQUESTED:
            raise RefundStateError(f"the refund is {refund.status}, not awaiting an answer")
        if self._now() >= refund.answer_by_ns:  # silence approved it; the timer is late
            self._pay_refund(refund, refund.amount, outcome="approved_unanswered")
            raise RefundStateError("the time to answer has passed: the refund was approved")
        if approve:
            self._pay_refund(refund, refund.amount, outcome="approved")
        else:
            now = self._now()
            with self.engine.begin() as conn:
                done = conn.execute(
                    t.refunds.update()
                    .where(
                        t.refunds.c.id == _hex(refund_id),
                        t.refunds.c.status == str(_R.REQUESTED),
                        t.refunds.c.refund_operation_id.is_(None),  # not approved meanwhile
                    )
                    .values(
                        status=str(_R.REJECTED),
                        escalate_by_ns=now + self.options.escalation_window_s * 10**9,
                        outcome="rejected",
                        updated_at_ns=now,
                    )
                )
                if done.rowcount == 1:
                    self._changed(conn, CheckoutChange.REFUND_REJECTED, order.id, refund_id)
            if done.rowcount != 1:
                raise RefundStateError("the refund was answered meanwhile")
        return self.refund(refund_id)

    def escalate_refund(self, refund_id: int, buyer_id: int) -> Refund:
        """The buyer takes a rejected refund to the platform's arbitration (within 5 days)."""
        refund = self.refund(refund_id)
        order = self.order(refund.order_id)
        if order.buyer_customer_id != buyer_id:
            raise NotOrderPartyError("only the order's buyer can escalate")
        if refund.status is not _R.REJECTED:
            raise RefundStateError(f"the refund is {refund.status}, not rejected")
        assert refund.escalate_by_ns is not None
        if self._now() >= refund.escalate_by_ns:
            self.run_timers()
            raise RefundStateError("the window to escalate has passed")
        with self.engine.begin() as conn:
            done = conn.execute(
                t.refunds.update()
                .where(t.refunds.c.id == _hex(refund_id), t.refunds.c.status == str(_R.REJECTED))
                .values(status=str(_R.ESCALATED), updated_at_ns=self._now())
            )
            if done.rowcount == 1:
                self._changed(conn, CheckoutChange.REFUND_ESCALATED, order.id, refund_id)
        return self.refund(refund_id)

    def arbitrate(
        self, refund_id: int, decision: Arbitration | str, *, buyer_amount: int | None = None
    ) -> Refund:
        """The platform operator decides an escalated dispute."""
        try:
            ruling = Arbitration(decision)
        except ValueError:
            raise InvalidPayloadError(
                f"decision is one of {[str(a) for a in Arbitration]}"
            ) from None
        refund = self.refund(refund_id)
        if refund.status is not _R.ESCALATED:
            raise RefundStateError(f"the refund is {refund.status}, not escalated")
        order = self.order(refund.order_id)
        if ruling is Arbitration.REFUND:
            if buyer_amount is not None:
                raise InvalidPayloadError("buyer_amount belongs to a split")
            self._pay_refund(refund, refund.amount, outcome="arbitrated_refund")
        elif ruling is Arbitration.RELEASE:
            if buyer_amount is not None:
                raise InvalidPayloadError("buyer_amount belongs to a split")
            if not self._deny(refund, outcome="arbitrated_release"):
                raise RefundStateError("the dispute was decided meanwhile")
            self._release(self.order(order.id))
        else:
            if buyer_amount is None:
                raise InvalidPayloadError("a split needs buyer_amount")
            amount = check_amount(buyer_amount)
            if amount >= order.in_escrow:
                raise RefundExceedsEscrowError(
                    "a split leaves the seller something: less than what is in escrow"
                )
            self._pay_refund(refund, amount, outcome="arbitrated_split")
            self._release(self.order(order.id))
        return self.refund(refund_id)

    # --- timers ---------------------------------------------------------------------------------

    def run_timers(self) -> dict[str, int]:
        """Do what the clock says is due: close unpaid orders, approve unanswered refunds,
        deny rejected refunds not escalated in time, confirm receipt of shipped orders.
        Returns how many of each it did."""
        now = self._now()
        done = {
            "closed": 0,
            "refunds_approved": 0,
            "refunds_denied": 0,
            "confirmed": 0,
            "released_after_arbitration": 0,
        }
        o, r = t.orders.c, t.refunds.c
        with self.engine.connect() as conn:
            unpaid = conn.execute(
                sa.select(o.id).where(
                    o.status == str(_O.CREATED),
                    o.pay_by_ns <= now,
                    o.payment_operation_id.is_(None),
                )
            ).all()
            unanswered = conn.execute(
                sa.select(t.refunds).where(r.status == str(_R.REQUESTED), r.answer_by_ns <= now)
            ).all()
            lapsed = conn.execute(
                sa.select(t.refunds).where(r.status == str(_R.REJECTED), r.escalate_by_ns <= now)
            ).all()
        for row in unpaid:
            done["closed"] += self._close_unpaid(int(row.id, 16), "unpaid")
        for row in unanswered:
            with contextlib.suppress(RefundStateError):  # answered meanwhile
                self._pay_refund(_refund(row), row.amount, outcome="approved_unanswered")
                done["refunds_approved"] += 1
        for row in lapsed:
            done["refunds_denied"] += self._deny(
                _refund(row), outcome="not_escalated", at=row.escalate_by_ns
            )
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(t.orders).where(
                    o.status == str(_O.SHIPPED),
                    o.confirm_by_ns <= now,
                    o.open_refund_id.is_(None),
                )
            ).all()
            # Arbitration decided that the seller gets the rest; a crash came in between.
            decided = conn.execute(
                sa.select(t.orders).where(
                    o.status.in_([str(_O.PAID), str(_O.SHIPPED)]),
                    o.release_operation_id.is_(None),
                    o.open_refund_id.is_(None),
                    sa.exists().where(r.order_id == o.id, r.outcome.in_(_RELEASE_OUTCOMES)),
                )
            ).all()
        for row in decided:
            with contextlib.suppress(RefundOpenError):
                self._release(_order(row))
                done["released_after_arbitration"] += 1
        for row in due:
            if row.release_operation_id is None:
                try:
                    self._release(_order(row))
                except RefundOpenError:  # a refund opened meanwhile: its timer runs instead
                    continue
            else:  # released before a crash cut it short: finish it
                self.payments._drive(self.payments.operation(int(row.release_operation_id, 16)))
            done["confirmed"] += 1
        return done

    # --- the steps ------------------------------------------------------------------------------

    def _now(self) -> int:
        return self.clock.now_ns()

    def _by_key(self, table: sa.Table, scope: str, key: str, fingerprint: str) -> Any:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(table).where(table.c.scope == scope, table.c.idempotency_key == key)
            ).first()
        if row is not None and row.fingerprint != fingerprint:
            raise IdempotencyKeyReusedError("this idempotency key was used for a different request")
        return row

    def _due(self, order: Order) -> Order:
        """Apply this order's own timers that are due before acting on it (``run_timers``
        may not have run yet): an unpaid order past its pay-by time closes; a shipped one
        past its confirmation time is released to the seller."""
        now = self._now()
        if order.status is _O.CREATED and now >= order.pay_by_ns:
            self._close_unpaid(order.id, "unpaid")
            return self.order(order.id)
        if (
            order.status is _O.SHIPPED
            and order.open_refund_id is None
            and order.confirm_by_ns is not None
            and now >= order.confirm_by_ns
        ):
            with contextlib.suppress(RefundOpenError):
                if order.release_operation_id is None:
                    self._release(order)
                else:
                    self.payments._drive(self.payments.operation(order.release_operation_id))
            return self.order(order.id)
        return order

    def _seller(self, order: Order, merchant_id: int) -> None:
        if order.merchant_id != merchant_id:
            raise NotOrderPartyError("only the order's seller can do this")

    def _still_open(self, order: Order, *statuses: OrderStatus) -> None:
        """Raise the specific error for an order not in one of ``statuses`` (the first is
        the one to name), or whose release to the seller is under way."""
        if order.status not in statuses:
            self._expect(order, statuses[0])
        self._not_releasing(order)

    def _not_releasing(self, order: Order) -> None:
        """Refuse a step on an order whose release to the seller is under way.

        The release was claimed (by the buyer, its timer or a ruling) and is always carried
        to the end: the order is as good as finished, and says so rather than answering
        with whatever check the claim happens to fail.
        """
        if order.release_operation_id is not None and order.status in (_O.PAID, _O.SHIPPED):
            raise OrderFinishedError("the order's release to the seller is under way")

    def _expect(self, order: Order, status: OrderStatus) -> None:
        """Raise the specific error for an order that is not in ``status``."""
        if order.status is status:
            return
        if order.status is _O.CLOSED:
            raise OrderClosedError(f"the order is closed ({order.close_reason})")
        if order.status is _O.FINISHED:
            raise OrderFinishedError("the order is finished")
        if status is _O.CREATED:
            raise OrderAlreadyPaidError("the order is already paid")
        if order.status is _O.CREATED:
            raise OrderNotPaidError("the order is not paid")
        if status is _O.SHIPPED:
            raise OrderNotShippedError("the order is not shipped")
        raise OrderAlreadyShippedError("the order is already shipped")

    def _close_unpaid(self, order_id: int, reason: str) -> int:
        with self.engine.begin() as conn:
            closed = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order_id),
                    t.orders.c.status == str(_O.CREATED),
                    t.orders.c.payment_operation_id.is_(None),
                )
                .values(status=str(_O.CLOSED), close_reason=reason, updated_at_ns=self._now())
            ).rowcount
            if closed == 1:
                self._changed(conn, CheckoutChange.ORDER_CLOSED, order_id)
            return closed

    def _release(self, order: Order) -> Operation:
        """Escrow → seller for everything the order still holds, less the fee."""
        amount = order.in_escrow
        cur = currency(order.currency)
        charge = fee(amount, order.fee_bps)

        def claim(conn: sa.Connection, operation_id: int) -> None:
            done = conn.execute(
                t.orders.update()
                .where(
                    t.orders.c.id == _hex(order.id),
                    t.orders.c.status.in_([str(_O.PAID), str(_O.SHIPPED)]),
                    t.orders.c.release_operation_id.is_(None),
                    t.orders.c.open_refund_id.is_(None),
                    t.orders.c.refunded == order.refunded,  # the amount is still right
                )
                .values(release_operation_id=_hex(operation_id), updated_at_ns=self._now())
            )
            if done.rowcount != 1:
                raise RefundOpenError("the order changed meanwhile; look at it again")

        op = self.payments._record(
            OperationKind.ESCROW_RELEASE,
            "order",
            f"{_hex(order.id)}:release",
            {"order": _hex(order.id), "amount": amount},
            INTERNAL,
            cur,
            amount,
            merchant_id=order.merchant_id,
            order_id=order.id,
            fee=charge,
            within=claim,
        )
        return self.payments._drive(op)

    def _pay_refund(self, refund: Refund, amount: int, *, outcome: str) -> Operation:
        """Escrow → buyer; the refund (and the order, when nothing is left) settle when the
        money has moved. Only while the refund is as ``refund`` says (a timer's approval of
        an unanswered refund is no ruling on one rejected and escalated meanwhile); the same
        outcome again carries out the payment already recorded, any other is refused."""
        order = self.order(refund.order_id)
        cur = currency(order.currency)

        def claim(conn: sa.Connection, operation_id: int) -> None:
            done = conn.execute(
                t.refunds.update()
                .where(
                    t.refunds.c.id == _hex(refund.id),
                    t.refunds.c.status == str(refund.status),
                    t.refunds.c.refund_operation_id.is_(None),
                )
                .values(
                    refund_operation_id=_hex(operation_id),
                    buyer_amount=amount,
                    outcome=outcome,
                    updated_at_ns=self._now(),
                )
            )
            if done.rowcount != 1:
                raise RefundStateError("the refund was settled meanwhile")

        try:
            op = self.payments._record(
                OperationKind.REFUND,
                "refund",
                _hex(refund.id),
                {"refund": _hex(refund.id), "amount": amount, "outcome": outcome},
                INTERNAL,
                cur,
                amount,
                payee_customer_id=order.buyer_customer_id,
                merchant_id=order.merchant_id,
                order_id=order.id,
                refund_id=refund.id,
                within=claim,
            )
        except IdempotencyKeyReusedError:  # another outcome's payment is recorded
            raise RefundStateError("the refund was settled meanwhile") from None
        return self.payments._drive(op)

    def _deny(self, refund: Refund, *, outcome: str, at: int | None = None) -> bool:
        """Close a refund without money: the order goes on, its timer restarts (from ``at``,
        the deadline that denied it, when a late scheduler carries it out). Whether it was
        denied here: not when it moved on (escalated, settled, its payment recorded) since
        ``refund`` was read (a refund whose payment a crash cut short still reads open;
        recovery pays it)."""
        now = self._now()
        with self.engine.begin() as conn:
            done = conn.execute(
                t.refunds.update()
                .where(
                    t.refunds.c.id == _hex(refund.id),
                    t.refunds.c.status == str(refund.status),  # not escalated meanwhile
                    t.refunds.c.refund_operation_id.is_(None),
                )
                .values(status=str(_R.DENIED), outcome=outcome, updated_at_ns=now)
            )
            if done.rowcount == 1:
                self._reopen_order(conn, refund.order_id, now, at)
                self._changed(conn, CheckoutChange.REFUND_DENIED, refund.order_id, refund.id)
        return bool(done.rowcount == 1)

    def _reopen_order(
        self, conn: sa.Connection, order_id: int, now: int, at: int | None = None
    ) -> None:
        """The order's refund is settled: it may be refunded or confirmed again, and its
        confirmation timer runs again from where it stopped. ``at``: when a deadline settled
        it (a late timer carries that out now), so the timer stood still only until then."""
        resumed = now if at is None else min(at, now)
        o = t.orders.c
        conn.execute(
            t.orders.update()
            .where(o.id == _hex(order_id))
            .values(
                open_refund_id=None,
                confirm_by_ns=sa.case(
                    (
                        o.suspended_at_ns < resumed,  # NULL (not suspended): no pause
                        o.confirm_by_ns + (resumed - o.suspended_at_ns),
                    ),
                    else_=o.confirm_by_ns,
                ),
                suspended_at_ns=None,
                updated_at_ns=now,
            )
        )

    def _on_finished(self, conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        """An operation of an order reached ``status``: move the order (same transaction)."""
        if op.order_id is None:
            return
        now = self._now()
        o = t.orders.c
        order_key = _hex(op.order_id)
        if op.kind is OperationKind.ORDER_PAYMENT:
            if status is OperationStatus.COMPLETED:
                paid = conn.execute(
                    t.orders.update()
                    .where(o.id == order_key, o.status == str(_O.CREATED))
                    .values(status=str(_O.PAID), paid_at_ns=now, updated_at_ns=now)
                )
                if paid.rowcount == 1:
                    self._changed(conn, CheckoutChange.ORDER_PAID, op.order_id)
            elif status in (OperationStatus.FAILED, OperationStatus.EXPIRED):
                # The buyer may pay again (another key); the order may close when unpaid.
                conn.execute(
                    t.orders.update()
                    .where(o.id == order_key, o.payment_operation_id == _hex(op.id))
                    .values(payment_operation_id=None, updated_at_ns=now)
                )
        elif op.kind is OperationKind.ESCROW_RELEASE and status is OperationStatus.COMPLETED:
            conn.execute(
                t.orders.update()
                .where(o.id == order_key)
                .values(status=str(_O.FINISHED), updated_at_ns=now)
            )
            self._changed(conn, CheckoutChange.ORDER_FINISHED, op.order_id)
        elif op.kind is OperationKind.REFUND and status is OperationStatus.COMPLETED:
            assert op.refund_id is not None
            conn.execute(
                t.refunds.update()
                .where(t.refunds.c.id == _hex(op.refund_id))
                .values(status=str(_R.REFUNDED), updated_at_ns=now)
            )
            conn.execute(
                t.orders.update()
                .where(o.id == order_key)
                .values(refunded=o.refunded + op.amount, updated_at_ns=now)
            )
            closed = conn.execute(
                t.orders.update()
                .where(o.id == order_key, o.refunded == o.amount)
                .values(status=str(_O.CLOSED), close_reason="refunded", open_refund_id=None)
            )
            refund = conn.execute(
                sa.select(t.refunds.c.outcome, t.refunds.c.answer_by_ns).where(
                    t.refunds.c.id == _hex(op.refund_id)
                )
            ).one()
            # approved by the seller's silence: at the end of the time to answer
            at = refund.answer_by_ns if refund.outcome == "approved_unanswered" else None
            self._reopen_order(conn, op.order_id, now, at)
            self._changed(conn, CheckoutChange.REFUND_REFUNDED, op.order_id, op.refund_id)
            if closed.rowcount == 1:
                self._changed(conn, CheckoutChange.ORDER_CLOSED, op.order_id)
        elif status is not OperationStatus.COMPLETED:
            # Escrow always holds what it releases or refunds: anything else is a bug.
            raise RuntimeError(f"escrow operation {op.id:#x} ended {status}: the books need a look")
