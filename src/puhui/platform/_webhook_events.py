"""What payments and checkout changes become as webhook events: the type, the data, and the
tenants they go to (one event per tenant among the parties; none when no party has one).

Data carries ids and amounts only, never names, phone numbers or card details. Amounts are
decimal strings of minor units (as everywhere in the API: JSON numbers lose precision above
2**53), operation, order and refund ids 32 hex digits (as the payments service writes them).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from puhui.payments import (
    CheckoutChange,
    CheckoutHook,
    Operation,
    OperationKind,
    OperationStatus,
    Order,
    Refund,
)

from .model import EventType

if TYPE_CHECKING:
    from .webhooks import Webhooks


class PartyKind(enum.StrEnum):
    """Whose event it is: ``tenant_of`` maps a party to its tenant."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"
    BILLER = "biller"


TenantOf = Callable[[sa.Connection, PartyKind, int], int | None]
"""``tenant_of(conn, kind, party_id)``: the tenant a customer, merchant or biller belongs to
(None: nobody's), read in the transaction that records the event."""

_SUCCEEDED_FAILED: dict[OperationKind, tuple[EventType, EventType | None]] = {
    OperationKind.MERCHANT_PAYMENT: (EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_FAILED),
    OperationKind.ORDER_PAYMENT: (EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_FAILED),
    OperationKind.P2P: (EventType.TRANSFER_SUCCEEDED, EventType.TRANSFER_FAILED),
    OperationKind.TOP_UP: (EventType.TOP_UP_SUCCEEDED, EventType.TOP_UP_FAILED),
    OperationKind.WITHDRAWAL: (EventType.WITHDRAWAL_SUCCEEDED, EventType.WITHDRAWAL_FAILED),
    OperationKind.SETTLEMENT: (EventType.SETTLEMENT_SUCCEEDED, EventType.SETTLEMENT_FAILED),
    OperationKind.BILL_PAYMENT: (EventType.BILL_PAID, None),
}
"""Escrow releases and refunds are reported as ``order.*``/``refund.*`` by checkout."""

_FAILED = (OperationStatus.FAILED, OperationStatus.EXPIRED)


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:032x}"


def operation_event(op: Operation, status: OperationStatus) -> EventType | None:
    """The event an operation reaching ``status`` is reported as (None: not reported)."""
    pair = _SUCCEEDED_FAILED.get(op.kind)
    if pair is None:
        return None
    if status is OperationStatus.COMPLETED:
        return pair[0]
    if status in _FAILED:
        return pair[1]
    return None


def operation_data(op: Operation, status: OperationStatus) -> dict[str, Any]:
    return {
        "object": "operation",
        "operation_id": _hex(op.id),
        "kind": str(op.kind),
        "status": str(status),
        "amount": str(op.amount),
        "fee": str(op.fee),
        "currency": op.currency,
        "payer_customer_id": op.payer_customer_id,
        "payee_customer_id": op.payee_customer_id,
        "merchant_id": op.merchant_id,
        "biller_id": op.biller_id,
        "order_id": _hex(op.order_id),
        "failure_code": op.error_code if status in _FAILED else None,
    }


def _tenants(
    conn: sa.Connection, tenant_of: TenantOf, parties: list[tuple[PartyKind, int | None]]
) -> list[int]:
    found: list[int] = []
    for kind, party_id in parties:
        if party_id is None:
            continue
        tenant = tenant_of(conn, kind, party_id)
        if tenant is not None and tenant not in found:
            found.append(tenant)
    return found


class OperationHook:
    """The payments service's finish hook that records webhook events: called with one
    operation's outcome (``hook(conn, op, status)``), or with a batch's (``hook.many``, which
    the payments batch calls: one statement for all the batch's events)."""

    def __init__(self, webhooks: Webhooks, tenant_of: TenantOf) -> None:
        self.webhooks = webhooks
        self.tenant_of = tenant_of

    def __call__(self, conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        self.many(conn, [(op, status)])

    def many(
        self, conn: sa.Connection, outcomes: Sequence[tuple[Operation, OperationStatus]]
    ) -> None:
        """The events of ``outcomes`` (in their order), in the caller's transaction."""
        events: list[tuple[int, EventType, dict[str, Any]]] = []
        for op, status in outcomes:
            event_type = operation_event(op, status)
            if event_type is None:
                continue
            parties = [
                (PartyKind.CUSTOMER, op.payer_customer_id),
                (PartyKind.CUSTOMER, op.payee_customer_id),
                (PartyKind.MERCHANT, op.merchant_id),
                (PartyKind.BILLER, op.biller_id),
            ]
            data = operation_data(op, status)
            events.extend(
                (tenant, event_type, data) for tenant in _tenants(conn, self.tenant_of, parties)
            )
        self.webhooks.record_many(conn, events)


def operation_hook(webhooks: Webhooks, tenant_of: TenantOf) -> OperationHook:
    return OperationHook(webhooks, tenant_of)


def order_data(order: Order) -> dict[str, Any]:
    return {
        "object": "order",
        "order_id": _hex(order.id),
        "status": str(order.status),
        "buyer_customer_id": order.buyer_customer_id,
        "merchant_id": order.merchant_id,
        "amount": str(order.amount),
        "refunded": str(order.refunded),
        "currency": order.currency,
        "close_reason": order.close_reason,
    }


def refund_data(order: Order, refund: Refund) -> dict[str, Any]:
    return {
        "object": "refund",
        "refund_id": _hex(refund.id),
        "order_id": _hex(order.id),
        "status": str(refund.status),
        "amount": str(refund.amount),
        "refunded_amount": None if refund.buyer_amount is None else str(refund.buyer_amount),
        "currency": order.currency,
        "outcome": refund.outcome,
        "buyer_customer_id": order.buyer_customer_id,
        "merchant_id": order.merchant_id,
    }


def checkout_hook(webhooks: Webhooks, tenant_of: TenantOf) -> CheckoutHook:
    def on_change(
        conn: sa.Connection, change: CheckoutChange, order: Order, refund: Refund | None
    ) -> None:
        event_type = EventType(change.value)
        data = order_data(order) if refund is None else refund_data(order, refund)
        parties: list[tuple[PartyKind, int | None]] = [
            (PartyKind.CUSTOMER, order.buyer_customer_id),
            (PartyKind.MERCHANT, order.merchant_id),
        ]
        for tenant in _tenants(conn, tenant_of, parties):
            webhooks.record(conn, tenant, event_type, data)

    return on_change
