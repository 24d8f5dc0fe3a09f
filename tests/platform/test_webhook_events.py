"""Payments and checkout publish webhook events in the transaction of each state change, to
the tenants their parties belong to (``tenant_of``; here a stub mapping)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from puhui import ledger as L
from puhui.clock import ManualClock
from puhui.payments import (
    Checkout,
    Fulfilment,
    Operation,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    PaymentsOptions,
    SimulatedBank,
    merchant_qr,
)
from puhui.platform import PartyKind, Tenant, Tenants, WebhookEvent, Webhooks

from ..payments.conftest import ScriptedRisk

START_NS = 1_767_225_600 * 10**9
CNY = "CNY"


@dataclass
class Shop:
    engine: sa.Engine
    clock: ManualClock
    payments: Payments
    checkout: Checkout
    webhooks: Webhooks
    owners: dict[tuple[PartyKind, int], int]
    a: Tenant
    b: Tenant
    buyer: int
    card: int
    seller: int

    def types(self, tenant: Tenant) -> list[str]:
        return [e.type for e in self.webhooks.events(tenant.id)]

    def last(self, tenant: Tenant, event_type: str) -> WebhookEvent:
        return [e for e in self.webhooks.events(tenant.id) if e.type == event_type][-1]


@pytest.fixture
def shop(engine: sa.Engine, tmp_path: Path) -> Iterator[Shop]:
    clock = ManualClock(START_NS)
    ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state", clock=clock)
    payments = Payments(
        engine,
        ledger,
        clock=clock,
        bank=SimulatedBank(clock, seed=1),
        decide=ScriptedRisk(),
        options=PaymentsOptions(),
    )
    checkout = Checkout(payments)
    tenants = Tenants(engine, clock=clock)
    a, b = tenants.create("Bank A", "bank"), tenants.create("Acquirer B", "merchant_acquirer")
    owners: dict[tuple[PartyKind, int], int] = {}

    def tenant_of(conn: sa.Connection, kind: PartyKind, party_id: int) -> int | None:
        assert isinstance(conn, sa.Connection)  # read in the recording transaction
        return owners.get((kind, party_id))

    webhooks = Webhooks(engine, clock=clock)
    webhooks.watch_payments(payments, tenant_of)
    webhooks.watch_checkout(checkout, tenant_of)
    buyer = payments.register_customer("13800000001", "Buyer")
    payments.verify_identity(buyer.id, "ID1")
    card = payments.bind_card(buyer.id, "tok-1", "Rural Bank", "0001")
    payments.verify_full(buyer.id, biometric_passed=True)
    seller = payments.register_merchant("Tea Garden", "food", 60, "tok-seller")
    owners[(PartyKind.CUSTOMER, buyer.id)] = a.id
    owners[(PartyKind.MERCHANT, seller.id)] = b.id
    try:
        yield Shop(
            engine, clock, payments, checkout, webhooks, owners, a, b, buyer.id, card.id, seller.id
        )
    finally:
        ledger.close()


def _top_up(shop: Shop, amount: int, key: str) -> Operation:
    return shop.payments.top_up(shop.buyer, shop.card, amount, CNY, key=key)


def test_a_completed_top_up_is_an_event_of_the_customers_tenant(shop: Shop) -> None:
    op = _top_up(shop, 500_00, "t1")
    assert op.status is OperationStatus.COMPLETED
    assert shop.types(shop.a) == ["top_up.succeeded"]
    assert shop.types(shop.b) == []
    event = shop.last(shop.a, "top_up.succeeded")
    assert event.id.startswith("evt_") and len(event.id) == 36
    assert event.data == {
        "object": "operation",
        "operation_id": f"{op.id:032x}",
        "kind": "top_up",
        "status": "completed",
        "amount": "50000",
        "fee": "0",
        "currency": "CNY",
        "payer_customer_id": None,
        "payee_customer_id": shop.buyer,
        "merchant_id": None,
        "biller_id": None,
        "order_id": None,
        "failure_code": None,
    }
    # A retry of the same operation (same key) changes nothing and publishes nothing.
    _top_up(shop, 500_00, "t1")
    assert shop.types(shop.a) == ["top_up.succeeded"]


def test_a_party_of_no_tenant_produces_no_event(shop: Shop) -> None:
    p = shop.payments
    stranger = p.register_customer("13800000002", "Stranger")
    card = p.bind_card(stranger.id, "tok-2", "Rural Bank", "0002")
    assert p.top_up(stranger.id, card.id, 10_00, CNY, key="s").status is OperationStatus.COMPLETED
    assert shop.types(shop.a) == [] and shop.types(shop.b) == []
    # A transfer to a customer of tenant A is A's event, not the stranger's.
    p.verify_identity(stranger.id, "ID2")
    op = p.transfer(stranger.id, Payee(customer_id=shop.buyer), 5_00, CNY, key="p")
    assert op.status is OperationStatus.COMPLETED
    assert shop.types(shop.a) == ["transfer.succeeded"]


def test_an_order_is_reported_to_the_buyers_and_the_sellers_tenants(shop: Shop) -> None:
    _top_up(shop, 1_000_00, "fund")
    c = shop.checkout
    order = c.create_order(shop.buyer, shop.seller, 200_00, CNY, Fulfilment.EXPRESS, "Tea", key="o")
    c.pay_order(order.id, shop.buyer, key="pay")
    c.ship_order(order.id, shop.seller)
    c.confirm_receipt(order.id, shop.buyer)
    flow = ["payment.succeeded", "order.paid", "order.shipped", "order.finished"]
    assert sorted(shop.types(shop.a)) == sorted(["top_up.succeeded", *flow])
    assert sorted(shop.types(shop.b)) == sorted(flow)
    for tenant in (shop.a, shop.b):
        paid = shop.last(tenant, "order.paid")
        assert paid.data["order_id"] == f"{order.id:032x}"
        assert (paid.data["status"], paid.data["amount"]) == ("paid", "20000")
        assert shop.last(tenant, "order.finished").data["status"] == "finished"
    # One event per tenant: each has its own id (each tenant de-duplicates its own).
    assert shop.last(shop.a, "order.paid").id != shop.last(shop.b, "order.paid").id


def test_refunds_are_reported(shop: Shop) -> None:
    _top_up(shop, 1_000_00, "fund")
    c = shop.checkout
    order = c.create_order(shop.buyer, shop.seller, 200_00, CNY, Fulfilment.EXPRESS, "Tea", key="o")
    c.pay_order(order.id, shop.buyer, key="pay")
    refund = c.request_refund(order.id, shop.buyer, 200_00, "changed my mind", key="r")
    c.answer_refund(refund.id, shop.seller, approve=True)
    types = shop.types(shop.b)
    assert types[-3:] == ["refund.requested", "refund.refunded", "order.closed"]
    refunded = shop.last(shop.b, "refund.refunded")
    assert refunded.data["refund_id"] == f"{refund.id:032x}"
    assert (refunded.data["status"], refunded.data["refunded_amount"]) == ("refunded", "20000")
    assert shop.last(shop.b, "order.closed").data["close_reason"] == "refunded"


def test_a_state_change_that_rolls_back_leaves_no_event(shop: Shop) -> None:
    """The outbox row and the operation's outcome commit together: a failure later in the
    same transaction undoes both; recovery then finishes the operation and its event."""

    def fail(conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        if status is OperationStatus.COMPLETED:
            raise RuntimeError("the transaction fails after the event was written")

    shop.payments._finish_hooks["zz_fail"] = fail
    with pytest.raises(RuntimeError):
        _top_up(shop, 100_00, "t")
    with shop.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM platform_webhook_events")).scalar()
    assert events == 0
    [op] = shop.payments.operations()
    assert op.status is not OperationStatus.COMPLETED
    del shop.payments._finish_hooks["zz_fail"]
    shop.clock.advance((shop.payments.options.recovery_age_s + 1) * 10**9)
    shop.payments.recover()
    assert shop.payments.operation(op.id).status is OperationStatus.COMPLETED
    assert shop.types(shop.a) == ["top_up.succeeded"]


def test_batched_payments_publish_the_events_single_ones_do(shop: Shop) -> None:
    """``PaymentBatches`` (and the API's ``PaymentCoalescer`` on it) record the same events,
    in the batch's outcome transaction; a replayed batch records nothing more."""
    _top_up(shop, 1_000_00, "fund")
    p = shop.payments
    friend = p.register_customer("13800000003", "Friend")
    requests = [
        PaymentRequest(shop.buyer, 30_00, CNY, "b1", merchant_qr=merchant_qr(shop.seller)),
        PaymentRequest(shop.buyer, 5_00, CNY, "b2", payee=Payee(customer_id=friend.id)),
    ]
    batches = PaymentBatches(p)
    paid, sent = batches.pay_many(requests)
    assert isinstance(paid, Operation) and paid.status is OperationStatus.COMPLETED
    assert isinstance(sent, Operation) and sent.status is OperationStatus.COMPLETED
    assert shop.types(shop.a) == ["top_up.succeeded", "payment.succeeded", "transfer.succeeded"]
    assert shop.types(shop.b) == ["payment.succeeded"]
    assert shop.last(shop.b, "payment.succeeded").data["operation_id"] == f"{paid.id:032x}"
    batches.pay_many(requests)  # a retry: answered from the records
    assert len(shop.types(shop.a)) == 3 and len(shop.types(shop.b)) == 1


def test_a_batch_records_its_events_in_one_go_in_the_batch_order_with_their_deliveries(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's outcomes reach the webhooks in one ``record_many`` call: one event per
    tenant and operation, in the order of the batch (their ``seq`` ascend so), each with a
    delivery to every endpoint of its tenant that wants it."""
    _top_up(shop, 1_000_00, "fund")
    w = shop.webhooks
    public = dataclasses.replace(w.options, resolve=lambda host: ["93.184.215.14"])
    monkeypatch.setattr(w, "options", public)  # the endpoints' hosts: no DNS lookup
    for tenant in (shop.a, shop.b):
        w.create_endpoint(tenant.id, f"https://{tenant.id}.example/all", ["*"])
    w.create_endpoint(shop.a.id, "https://a.example/transfers", ["transfer.succeeded"])
    calls: list[int] = []
    record_many = w.record_many

    def counted(conn: sa.Connection, events: Any) -> list[str]:
        calls.append(len(events))
        return record_many(conn, events)

    monkeypatch.setattr(w, "record_many", counted)
    friend = shop.payments.register_customer("13800000004", "Friend")
    shop.owners[(PartyKind.CUSTOMER, friend.id)] = shop.a.id
    requests = [
        PaymentRequest(
            shop.buyer, (i + 1) * 1_00, CNY, f"m{i}", merchant_qr=merchant_qr(shop.seller)
        )
        if i % 2 == 0
        else PaymentRequest(
            shop.buyer, (i + 1) * 1_00, CNY, f"p{i}", payee=Payee(customer_id=friend.id)
        )
        for i in range(6)
    ]
    answers = PaymentBatches(shop.payments).pay_many(requests)
    ops = [a for a in answers if isinstance(a, Operation)]
    assert [op.status for op in ops] == [OperationStatus.COMPLETED] * 6
    assert calls == [9]  # 3 merchant payments for both tenants, 3 transfers for A: one call
    events_a = w.events(shop.a.id)[1:]  # after the top-up's
    assert [e.data["operation_id"] for e in events_a] == [f"{op.id:032x}" for op in ops]
    assert [e.type for e in events_a] == ["payment.succeeded", "transfer.succeeded"] * 3
    assert [e.data["operation_id"] for e in w.events(shop.b.id)] == [
        f"{op.id:032x}" for op in ops[::2]
    ]
    seqs = [e.seq for e in w.events(shop.a.id)]
    assert seqs == sorted(seqs)
    for event in events_a:
        wanted = 2 if event.type == "transfer.succeeded" else 1
        assert len(w.deliveries(shop.a.id, event.id)) == wanted
