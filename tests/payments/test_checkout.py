"""Guaranteed transactions: escrow, auto-confirm, refunds, disputes and their timers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from puhui import risk
from puhui.payments import (
    AccountCode,
    Arbitration,
    Checkout,
    Fulfilment,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    NotOrderPartyError,
    OperationStatus,
    OrderAlreadyPaidError,
    OrderAlreadyShippedError,
    OrderClosedError,
    OrderFinishedError,
    OrderNotPaidError,
    OrderNotShippedError,
    OrderStatus,
    RefundExceedsEscrowError,
    RefundOpenError,
    RefundStateError,
    RefundStatus,
)

from .conftest import World

OS = OrderStatus
R = RefundStatus
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS
CNY = "CNY"


class Shop:
    """A buyer with 1,000 CNY, a seller (fee 0.6 %) and the checkout."""

    def __init__(self, world: World) -> None:
        self.world = world
        p = world.payments
        self.p = p
        self.checkout = Checkout(p)
        buyer = p.register_customer("13800000001", "Buyer")
        p.verify_identity(buyer.id, "ID1")
        card = p.bind_card(buyer.id, "tok-1", "Rural Bank", "0001")
        p.verify_full(buyer.id, biometric_passed=True)
        assert p.top_up(buyer.id, card.id, 1_000_00, CNY, key="fund").status == "completed"
        self.buyer = buyer.id
        self.seller = p.register_merchant("Tea Garden", "food", 60, "tok-seller").id

    def order(self, amount: int = 200_00, fulfilment: Fulfilment = Fulfilment.EXPRESS) -> int:
        return self.checkout.create_order(
            self.buyer,
            self.seller,
            amount,
            CNY,
            fulfilment,
            "Longjing tea",
            key=f"o{amount}{fulfilment}",
        ).id

    def paid(self, amount: int = 200_00, fulfilment: Fulfilment = Fulfilment.EXPRESS) -> int:
        order_id = self.order(amount, fulfilment)
        op = self.checkout.pay_order(order_id, self.buyer, key=f"pay-{order_id}")
        assert op.status is OperationStatus.COMPLETED, op
        return order_id

    def shipped(self, amount: int = 200_00, fulfilment: Fulfilment = Fulfilment.EXPRESS) -> int:
        order_id = self.paid(amount, fulfilment)
        self.checkout.ship_order(order_id, self.seller)
        return order_id

    def wallet(self) -> int:
        return self.p.balance(self.buyer, CNY).posted

    def seller_gets(self) -> int:
        return self.p.merchant_balance(self.seller, CNY).posted

    def escrow(self) -> int:
        return self.p.platform_balance(AccountCode.ESCROW, CNY).posted

    def fees(self) -> int:
        return self.p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted

    def later(self, ns: int) -> dict[str, int]:
        self.world.clock.advance(ns)
        self.world.ledger.tick()
        return self.checkout.run_timers()


@pytest.fixture
def shop(world: World) -> Shop:
    return Shop(world)


def test_paid_order_money_waits_in_escrow_until_receipt_is_confirmed(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.order()
    assert c.order(order_id).status is OS.CREATED and shop.escrow() == 0
    c.pay_order(order_id, shop.buyer, key="pay")
    assert c.order(order_id).status is OS.PAID
    assert (shop.wallet(), shop.escrow(), shop.seller_gets()) == (800_00, 200_00, 0)
    c.ship_order(order_id, shop.seller)
    assert c.order(order_id).status is OS.SHIPPED
    c.confirm_receipt(order_id, shop.buyer)
    order = c.order(order_id)
    assert order.status is OS.FINISHED and order.in_escrow == 0
    # Released less the 0.6 % fee: 200.00 → 198.80 to the seller, 1.20 to the platform.
    assert (shop.escrow(), shop.seller_gets(), shop.fees()) == (0, 198_80, 1_20)


def test_receipt_confirms_itself_when_the_fulfilment_timer_runs_out(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.shipped(fulfilment=Fulfilment.EXPRESS)  # 10 days
    assert shop.later(10 * DAY_NS - 10**9)["confirmed"] == 0
    assert c.order(order_id).status is OS.SHIPPED
    assert shop.later(10**9)["confirmed"] == 1
    assert c.order(order_id).status is OS.FINISHED
    assert shop.seller_gets() == 198_80
    assert shop.later(DAY_NS)["confirmed"] == 0  # nothing twice
    assert shop.seller_gets() == 198_80


@pytest.mark.parametrize(
    ("fulfilment", "days"),
    [
        (Fulfilment.INSTANT, 0),
        (Fulfilment.AUTO_DELIVERY, 1),
        (Fulfilment.VIRTUAL, 3),
        (Fulfilment.EXPRESS, 10),
        (Fulfilment.SURFACE_MAIL, 30),
    ],
)
def test_each_fulfilment_has_its_own_timer(shop: Shop, fulfilment: Fulfilment, days: int) -> None:
    order_id = shop.shipped(fulfilment=fulfilment)
    order = shop.checkout.order(order_id)
    assert order.shipped_at_ns is not None
    assert order.confirm_by_ns == order.shipped_at_ns + days * DAY_NS


def test_the_seller_can_extend_the_timer_within_the_limit(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.shipped()
    before = c.order(order_id).confirm_by_ns
    assert before is not None
    c.extend_confirmation(order_id, shop.seller, 3 * 86_400)
    assert c.order(order_id).confirm_by_ns == before + 3 * DAY_NS
    from puhui.payments import ExtensionLimitError

    with pytest.raises(ExtensionLimitError):
        c.extend_confirmation(order_id, shop.seller, 28 * 86_400)  # 31 days in all
    assert c.order(order_id).confirm_by_ns == before + 3 * DAY_NS


@pytest.mark.parametrize("extra_s", [2**63, 10**30])
def test_an_extension_beyond_any_limit_is_refused_not_a_crash(shop: Shop, extra_s: int) -> None:
    """Seconds past what the store can hold used to reach it and crash (``OverflowError``
    on SQLite, a numeric error on PostgreSQL): a 500 instead of the limit's own error."""
    from puhui.payments import ExtensionLimitError

    c = shop.checkout
    order_id = shop.shipped()
    before = c.order(order_id).confirm_by_ns
    with pytest.raises(ExtensionLimitError):
        c.extend_confirmation(order_id, shop.seller, extra_s)
    assert c.order(order_id).confirm_by_ns == before


def test_an_unpaid_order_closes_by_itself(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.order()
    assert shop.later(DAY_NS)["closed"] == 1
    order = c.order(order_id)
    assert (order.status, order.close_reason) == (OS.CLOSED, "unpaid")
    with pytest.raises(OrderClosedError):
        c.pay_order(order_id, shop.buyer, key="late")
    assert shop.wallet() == 1_000_00


def test_wrong_steps_give_specific_errors_and_move_no_money(shop: Shop) -> None:
    c = shop.checkout
    created = shop.order(100_00)
    with pytest.raises(OrderNotPaidError):
        c.ship_order(created, shop.seller)
    with pytest.raises(OrderNotPaidError):
        c.confirm_receipt(created, shop.buyer)
    paid = shop.paid(150_00)
    with pytest.raises(OrderAlreadyPaidError):
        c.pay_order(paid, shop.buyer, key="again")
    with pytest.raises(OrderNotShippedError):
        c.confirm_receipt(paid, shop.buyer)
    with pytest.raises(NotOrderPartyError):
        c.ship_order(paid, shop.seller + 1)
    c.ship_order(paid, shop.seller)
    with pytest.raises(OrderAlreadyShippedError):
        c.ship_order(paid, shop.seller)
    with pytest.raises(NotOrderPartyError):
        c.confirm_receipt(paid, shop.buyer + 1)
    c.confirm_receipt(paid, shop.buyer)
    books = (shop.wallet(), shop.escrow(), shop.seller_gets(), shop.fees())
    with pytest.raises(OrderFinishedError):
        c.confirm_receipt(paid, shop.buyer)  # confirm twice
    with pytest.raises(OrderFinishedError):
        c.request_refund(paid, shop.buyer, 10_00, "broken", key="late refund")
    c.cancel_order(created, shop.buyer)
    with pytest.raises(OrderClosedError):
        c.ship_order(created, shop.seller)  # ship a closed order
    assert (shop.wallet(), shop.escrow(), shop.seller_gets(), shop.fees()) == books


def test_paying_more_than_the_wallet_holds_is_refused(shop: Shop) -> None:
    order_id = shop.order(2_000_00)
    with pytest.raises(InsufficientFundsError):
        shop.checkout.pay_order(order_id, shop.buyer, key="pay")
    assert shop.checkout.order(order_id).status is OS.CREATED
    assert shop.wallet() == 1_000_00


def test_a_challenged_order_payment_pays_the_order_when_verified(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.order()
    shop.world.risk.next = [risk.Decision.CHALLENGE]
    op = c.pay_order(order_id, shop.buyer, key="pay")
    assert op.status is OperationStatus.CHALLENGED and c.order(order_id).status is OS.CREATED
    assert shop.later(2 * DAY_NS)["closed"] == 0  # a payment under way keeps it open
    # ... but the challenge itself lapsed (10 min): the money went back, the order stays
    # unpaid and may close now.
    shop.p.recover()
    assert shop.p.operation(op.id).status is OperationStatus.EXPIRED
    assert shop.wallet() == 1_000_00
    assert shop.later(1)["closed"] == 1
    again = shop.order(300_00)
    shop.world.risk.next = [risk.Decision.CHALLENGE]
    op = c.pay_order(again, shop.buyer, key="pay2")
    shop.p.verify_challenge(op.id, passed=True)
    assert c.order(again).status is OS.PAID and shop.escrow() == 300_00


def test_a_full_refund_before_shipment_closes_the_order(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.paid()
    refund = c.request_refund(order_id, shop.buyer, 200_00, "changed my mind", key="r")
    assert refund.status is R.REQUESTED and not refund.after_shipment
    with pytest.raises(RefundOpenError):
        c.request_refund(order_id, shop.buyer, 10_00, "again", key="r2")
    c.answer_refund(refund.id, shop.seller, approve=True)
    assert c.refund(refund.id).status is R.REFUNDED
    order = c.order(order_id)
    assert (order.status, order.close_reason, order.refunded) == (OS.CLOSED, "refunded", 200_00)
    assert (shop.wallet(), shop.escrow(), shop.seller_gets()) == (1_000_00, 0, 0)
    # The same request again (a retry) returns it; with other details it is refused.
    assert (
        c.request_refund(order_id, shop.buyer, 200_00, "changed my mind", key="r").id == refund.id
    )
    with pytest.raises(IdempotencyKeyReusedError):
        c.request_refund(order_id, shop.buyer, 100_00, "changed my mind", key="r")


def test_a_partial_refund_after_shipment_pauses_the_timer_and_the_rest_is_released(
    shop: Shop,
) -> None:
    c = shop.checkout
    order_id = shop.shipped()
    confirm_by = c.order(order_id).confirm_by_ns
    assert confirm_by is not None
    shop.later(2 * DAY_NS)
    refund = c.request_refund(order_id, shop.buyer, 50_00, "one box damaged", key="r")
    assert refund.after_shipment
    with pytest.raises(RefundOpenError):
        c.confirm_receipt(order_id, shop.buyer)
    small = shop.paid(5_00)
    with pytest.raises(RefundExceedsEscrowError):
        c.request_refund(small, shop.buyer, 6_00, "more than paid", key="r3")
    shop.later(DAY_NS)  # one day with the refund open: the timer stands still
    c.answer_refund(refund.id, shop.seller, approve=True)
    order = c.order(order_id)
    assert order.status is OS.SHIPPED and order.refunded == 50_00 and order.in_escrow == 150_00
    assert order.confirm_by_ns == confirm_by + DAY_NS
    assert shop.later(8 * DAY_NS)["confirmed"] == 1
    assert c.order(order_id).status is OS.FINISHED
    # 150.00 released less 0.6 %: 149.10 to the seller, 0.90 fee.
    assert (shop.seller_gets(), shop.fees()) == (149_10, 90)


def test_a_refund_the_seller_does_not_answer_is_approved_by_itself(shop: Shop) -> None:
    c = shop.checkout
    before = shop.paid(100_00)
    r1 = c.request_refund(before, shop.buyer, 100_00, "never sent", key="r1")
    after = shop.shipped(300_00)
    r2 = c.request_refund(after, shop.buyer, 300_00, "not as described", key="r2")
    assert shop.later(24 * HOUR_NS)["refunds_approved"] == 1  # before shipment: 24 h
    assert c.refund(r1.id).status is R.REFUNDED and c.refund(r2.id).status is R.REQUESTED
    assert shop.later(12 * HOUR_NS)["refunds_approved"] == 1  # after shipment: 36 h
    assert c.refund(r2.id).status is R.REFUNDED
    assert shop.wallet() == 1_000_00 and shop.escrow() == 0


def test_a_rejected_refund_not_escalated_in_time_is_denied(shop: Shop) -> None:
    c = shop.checkout
    order_id = shop.shipped()
    refund = c.request_refund(order_id, shop.buyer, 200_00, "late", key="r")
    c.answer_refund(refund.id, shop.seller, approve=False)
    with pytest.raises(RefundStateError):
        c.answer_refund(refund.id, shop.seller, approve=True)  # answered already
    assert shop.later(5 * DAY_NS)["refunds_denied"] == 1
    assert c.refund(refund.id).status is R.DENIED
    with pytest.raises(RefundStateError):
        c.escalate_refund(refund.id, shop.buyer)
    # The order goes on; the timer resumed after 5 days of pause: 10 + 5 days from shipment.
    assert shop.later(10 * DAY_NS)["confirmed"] == 1
    assert shop.seller_gets() == 198_80


@pytest.mark.parametrize(
    ("ruling", "buyer_amount", "buyer_gets", "seller_gets", "status"),
    [
        (Arbitration.REFUND, None, 200_00, 0, OS.CLOSED),
        (Arbitration.RELEASE, None, 0, 198_80, OS.FINISHED),
        (Arbitration.SPLIT, 80_00, 80_00, 119_28, OS.FINISHED),
    ],
)
def test_arbitration_refunds_releases_or_splits(
    shop: Shop,
    ruling: Arbitration,
    buyer_amount: int | None,
    buyer_gets: int,
    seller_gets: int,
    status: OrderStatus,
) -> None:
    c = shop.checkout
    order_id = shop.shipped()
    refund = c.request_refund(order_id, shop.buyer, 200_00, "fake goods", key="r")
    c.answer_refund(refund.id, shop.seller, approve=False)
    shop.later(4 * DAY_NS)
    assert c.escalate_refund(refund.id, shop.buyer).status is R.ESCALATED
    c.arbitrate(refund.id, ruling, buyer_amount=buyer_amount)
    assert shop.wallet() == 800_00 + buyer_gets
    assert shop.seller_gets() == seller_gets
    assert shop.escrow() == 0
    assert c.order(order_id).status is status
    with pytest.raises(RefundStateError):
        c.arbitrate(refund.id, ruling, buyer_amount=buyer_amount)  # decided once


def test_escrow_always_holds_exactly_what_open_orders_hold(shop: Shop) -> None:
    c = shop.checkout
    orders = [shop.paid(10_00 * k) for k in range(1, 6)]
    c.ship_order(orders[0], shop.seller)
    c.confirm_receipt(orders[0], shop.buyer)
    r = c.request_refund(orders[1], shop.buyer, 5_00, "half", key="h")
    c.answer_refund(r.id, shop.seller, approve=True)
    c.request_refund(orders[2], shop.buyer, 30_00, "all", key="a")
    shop.later(DAY_NS)
    held = sum(c.order(o).in_escrow for o in orders)
    assert shop.escrow() == held == (20_00 - 5_00) + 40_00 + 50_00


def test_recovery_without_the_checkout_leaves_an_orders_payment_alone(shop: Shop) -> None:
    """An order's payment cut short before its money moved, recovered by a service without
    ``Checkout`` attached (its finish hook moves the order): it used to be carried out as a
    plain payment — the money in escrow, the order still unpaid, to be closed as unpaid
    later with the money stuck. Now it is left for a service with the checkout, which pays
    the order once."""
    from puhui.payments import Operation, OperationKind, Payments

    order_id = shop.order(100_00)

    def crash(op: Operation) -> Operation:
        raise KeyboardInterrupt  # the process dies after the record, before the money moves

    shop.p._drivers[OperationKind.ORDER_PAYMENT] = crash
    with pytest.raises(KeyboardInterrupt):
        shop.checkout.pay_order(order_id, shop.buyer, key="pay")
    [op] = shop.p.operations(status=OperationStatus.PENDING)
    shop.world.clock.advance(60 * 10**9)
    w = shop.world
    bare = Payments(w.engine, w.ledger, clock=w.clock, bank=w.bank, decide=w.risk)
    assert bare.recover() == {"stuck": 1}
    assert bare.operation(op.id).status is OperationStatus.PENDING
    assert bare.platform_balance(AccountCode.ESCROW, CNY).posted == 0
    assert shop.checkout.order(order_id).status is OS.CREATED
    # The service with the checkout attached finishes it: the money in escrow, the order paid.
    checkout = Checkout(bare)
    assert bare.recover() == {"completed": 1}
    assert bare.platform_balance(AccountCode.ESCROW, CNY).posted == 100_00
    assert checkout.order(order_id).status is OS.PAID


def _release_cut_short(shop: Shop, start: Callable[[], object]) -> None:
    """Run ``start`` with the process dying after the release's claim, before its money moves."""
    from puhui.payments import Operation, OperationKind

    kind = OperationKind.ESCROW_RELEASE
    before = shop.p._drivers.get(kind)

    def crash(op: Operation) -> Operation:
        raise KeyboardInterrupt

    shop.p._drivers[kind] = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            start()
    finally:
        if before is None:
            del shop.p._drivers[kind]
        else:
            shop.p._drivers[kind] = before


def test_steps_on_an_order_whose_release_is_under_way_say_so_and_move_nothing(
    shop: Shop,
) -> None:
    """A release claimed but not carried out yet (a crash, or another caller mid-way): the
    seller's extension used to be refused as ``extension_limit_exceeded`` and the buyer's
    refund as ``refund_open``; both are ``order_finished`` now, and the buyer's confirmation
    carries the release out (once)."""
    c = shop.checkout
    order_id = shop.shipped(100_00)
    _release_cut_short(shop, lambda: c.confirm_receipt(order_id, shop.buyer))
    order = c.order(order_id)
    assert order.status is OS.SHIPPED and order.release_operation_id is not None
    money = (shop.wallet(), shop.seller_gets(), shop.escrow())
    for step in (
        lambda: c.extend_confirmation(order_id, shop.seller, 3600),
        lambda: c.request_refund(order_id, shop.buyer, 10_00, "late", key="r-late"),
    ):
        with pytest.raises(OrderFinishedError, match="under way"):
            step()
    assert (shop.wallet(), shop.seller_gets(), shop.escrow()) == money
    assert c.refunds(order_id) == []
    assert c.order(order_id).confirm_by_ns == order.confirm_by_ns
    # The buyer confirms again: the release claimed before is carried out, once.
    assert c.confirm_receipt(order_id, shop.buyer).status is OS.FINISHED
    with pytest.raises(OrderFinishedError):  # confirmed twice
        c.confirm_receipt(order_id, shop.buyer)
    assert shop.seller_gets() == money[1] + 100_00 - 60
    assert shop.escrow() == money[2] - 100_00


def test_an_unshipped_order_whose_ruled_release_is_under_way_cannot_be_shipped(
    shop: Shop,
) -> None:
    """Arbitration released a paid, unshipped order to the seller and the release was cut
    short: shipping it (a timer started, an ``order.shipped`` event) is ``order_finished``."""
    c = shop.checkout
    order_id = shop.paid(100_00)
    refund = c.request_refund(order_id, shop.buyer, 100_00, "changed my mind", key="r")
    c.answer_refund(refund.id, shop.seller, approve=False)
    assert c.escalate_refund(refund.id, shop.buyer).status is R.ESCALATED
    _release_cut_short(shop, lambda: c.arbitrate(refund.id, Arbitration.RELEASE))
    order = c.order(order_id)
    assert order.status is OS.PAID and order.release_operation_id is not None
    with pytest.raises(OrderFinishedError, match="under way"):
        c.ship_order(order_id, shop.seller)
    assert c.order(order_id).shipped_at_ns is None
    # Recovery carries the ruling out.
    shop.world.clock.advance(600 * 10**9)
    shop.p.recover()
    assert c.order(order_id).status is OS.FINISHED
    assert shop.seller_gets() == 100_00 - 60


def test_confirming_an_unshipped_order_whose_ruled_release_is_under_way_is_order_finished(
    shop: Shop,
) -> None:
    """Arbitration released a paid, unshipped order and the release was cut short: the
    buyer's confirmation said ``order_not_shipped`` (as if the order still waited for its
    seller), though the ruling finished it; it is ``order_finished`` like the other steps,
    and moves nothing."""
    c = shop.checkout
    order_id = shop.paid(100_00)
    refund = c.request_refund(order_id, shop.buyer, 100_00, "changed my mind", key="r")
    c.answer_refund(refund.id, shop.seller, approve=False)
    c.escalate_refund(refund.id, shop.buyer)
    _release_cut_short(shop, lambda: c.arbitrate(refund.id, Arbitration.RELEASE))
    order = c.order(order_id)
    assert order.status is OS.PAID and order.release_operation_id is not None
    money = (shop.wallet(), shop.seller_gets(), shop.escrow())
    with pytest.raises(OrderFinishedError, match="under way"):
        c.confirm_receipt(order_id, shop.buyer)
    assert (shop.wallet(), shop.seller_gets(), shop.escrow()) == money
    shop.world.clock.advance(600 * 10**9)
    shop.p.recover()
    assert c.order(order_id).status is OS.FINISHED
    assert shop.seller_gets() == money[1] + 100_00 - 60


@pytest.mark.parametrize("cut_short", [True, False], ids=["under_way", "finished"])
def test_a_refund_asked_while_the_release_is_claimed_is_order_finished(
    shop: Shop, cut_short: bool
) -> None:
    """The buyer asks for a refund; between its checks and its write the order's release is
    claimed (the buyer's other device confirmed receipt, say), and carried out or not yet.
    The refund was refused as ``refund_open`` ("the order changed meanwhile") though no
    refund was open: it is ``order_finished``, as when the release came first, and nothing
    is recorded."""
    c = shop.checkout
    order_id = shop.shipped(100_00)
    new_id = shop.p.new_id
    claimed: list[bool] = []

    def confirm() -> object:
        return c.confirm_receipt(order_id, shop.buyer)

    def new_id_after_a_claim() -> int:
        if not claimed:  # the refund's id: the checks are done, its write comes next
            claimed.append(True)
            if cut_short:
                _release_cut_short(shop, confirm)
            else:
                confirm()
        return new_id()

    shop.p.new_id = new_id_after_a_claim
    try:
        with pytest.raises(OrderFinishedError, match="under way" if cut_short else "finished"):
            c.request_refund(order_id, shop.buyer, 10_00, "late", key="r-race")
    finally:
        shop.p.new_id = new_id
    assert claimed
    assert c.refunds(order_id) == []
    assert c.order(order_id).open_refund_id is None
    if cut_short:
        assert c.confirm_receipt(order_id, shop.buyer).status is OS.FINISHED
    assert c.order(order_id).status is OS.FINISHED
    assert shop.seller_gets() == 100_00 - 60
