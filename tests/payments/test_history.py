"""A customer's operations, a page at a time: every one once, in order, read through indexes."""

from __future__ import annotations

from puhui.payments import (
    Operation,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    merchant_qr,
)

from .._plans import plans_of
from .conftest import World, verified_customer

S = OperationStatus
CNY = "CNY"


def _history(world: World, customer: int, page: int) -> list[Operation]:
    seen: list[Operation] = []
    after: tuple[int, int] | None = None
    while True:
        got = world.payments.customer_operations(customer, after=after, limit=page)
        assert len(got) <= page
        seen.extend(got)
        if len(got) < page:
            return seen
        after = (got[-1].created_at_ns, got[-1].id)


def test_pages_hold_every_operation_of_the_customer_once_in_order(world: World) -> None:
    """Paying and paid, top-ups (no payer) and withdrawals (no payee), a batch whose rows
    share one creation time: the pages, at any size, are the brute-force list in order."""
    p = world.payments
    alice = verified_customer(world, 1, fund=10_000_00)
    bob = verified_customer(world, 2, fund=10_000_00)
    carol = verified_customer(world, 3)
    shop = p.register_merchant("Shop", "retail", 50, "tok-shop")
    requests = []
    for i in range(12):  # one batch: one creation time for all its rows
        payer, payee = (alice, bob) if i % 3 else (bob, alice)
        requests.append(
            PaymentRequest(payer, 1_00 + i, CNY, f"b{i}", payee=Payee(customer_id=payee))
        )
    requests.append(PaymentRequest(alice, 2_00, CNY, "shop", merchant_qr=merchant_qr(shop.id)))
    requests.append(PaymentRequest(bob, 3_00, CNY, "carol", payee=Payee(customer_id=carol)))
    answers = PaymentBatches(p).pay_many(requests)
    assert all(isinstance(a, Operation) and a.status is S.COMPLETED for a in answers)
    world.clock.advance(10**9)
    p.transfer(bob, Payee(customer_id=alice), 5_00, CNY, key="single")
    card = p.bind_card(alice, "tok-w", "Bank", "9999")
    p.withdraw(alice, card.id, 1_00, CNY, key="out")

    every = sorted(
        (op for op in p.operations(limit=1000)),
        key=lambda op: (op.created_at_ns, op.id),
    )
    for customer in (alice, bob, carol):
        expected = [
            op.id for op in every if customer in (op.payer_customer_id, op.payee_customer_id)
        ]
        assert expected  # each customer has a history to page through
        for page in (1, 2, 5, 100):
            assert [op.id for op in _history(world, customer, page)] == expected
    assert len([op for op in every if alice in (op.payer_customer_id, op.payee_customer_id)]) == 16


def test_a_page_of_history_is_read_through_indexes_not_a_scan(world: World) -> None:
    """On SQLite, each statement the history read runs is an index search of the operations
    table: no full scan, and no sort but of the rows created in one instant (one batch's)."""
    if world.engine.dialect.name != "sqlite":
        return  # the plan is SQLite's; PostgreSQL has the same indexes
    p = world.payments
    alice = verified_customer(world, 1, fund=100_00)
    bob = verified_customer(world, 2)
    p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k")

    def two_pages() -> None:
        first = p.customer_operations(bob, limit=1)
        p.customer_operations(bob, after=(first[0].created_at_ns, first[0].id), limit=1)

    found = plans_of(world.engine, ("payments_operations",), two_pages)
    assert len(found) == 4  # payer side and payee side, two pages
    for n, (_, plan) in enumerate(found):
        side = "payer" if n % 2 == 0 else "payee"
        search = plan[0]
        assert search.startswith(
            f"SEARCH payments_operations USING INDEX ix_payments_operations_{side}_"
        ), plan
        if n >= 2:  # a later page starts at the cursor, not at the customer's first row
            assert "created_at_ns>?" in search, plan
        assert plan[1:] in ([], ["USE TEMP B-TREE FOR RIGHT PART OF ORDER BY"]), plan
