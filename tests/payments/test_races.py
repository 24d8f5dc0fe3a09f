"""Races and crash windows a review found, replayed step by step with the service's own
internal steps in the order two threads (or a process killed half-way) would reach them."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import sqlalchemy as sa

from puhui import risk
from puhui.errors import PuhuiError
from puhui.payments import (
    AccountCode,
    Arbitration,
    BillerKind,
    Bills,
    Checkout,
    Operation,
    OperationStatus,
    Order,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    RefundExceedsEscrowError,
    RefundOpenError,
    RefundStateError,
    SimulatedBiller,
    _outflow,
    merchant_qr,
)
from puhui.payments.model import business_day
from puhui.store import payments as tables

from .conftest import World

S = OperationStatus
CNY = "CNY"
SECOND_NS = 10**9


def _customer(world: World, n: int, fund: int = 0) -> tuple[int, int]:
    p = world.payments
    c = p.register_customer(f"1350000000{n}", f"C{n}")
    p.verify_identity(c.id, f"ID{n}")
    card = p.bind_card(c.id, f"tok{n}", "Bank", f"000{n}")
    p.verify_full(c.id, biometric_passed=True)
    if fund:
        assert p.top_up(c.id, card.id, fund, CNY, key="fund").status is S.COMPLETED
    return c.id, card.id


def _paid_order(world: World) -> tuple[Payments, int, int, Checkout, Order]:
    """A buyer with 1,000.00, a shop without fee, and an order of 100.00 paid into escrow."""
    p = world.payments
    buyer, _ = _customer(world, 1, fund=1_000_00)
    shop = p.register_merchant("Shop", "retail", 0, "tok-m").id
    checkout = Checkout(p)
    order = checkout.create_order(buyer, shop, 100_00, CNY, "express", "t", key="o")
    checkout.pay_order(order.id, buyer, key="p")
    return p, buyer, shop, checkout, order


def test_a_challenge_lapsing_while_it_is_answered_pays_nothing_out(world: World) -> None:
    p = world.payments
    customer, card = _customer(world, 1, fund=1_000_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.withdraw(customer, card, 300_00, CNY, key="w")
    answering = p.operation(op.id)  # the customer's call read it before the deadline ...
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    assert p.recover() == {"expired": 1}  # ... recovery claimed the lapse first
    late = p._check_done(answering, passed=True, failure="challenge_failed")
    assert late.status is S.EXPIRED
    assert f"{op.id:032x}" not in world.bank.sends
    assert p.balance(customer, CNY).available == 1_000_00


def test_an_answer_claimed_first_wins_over_the_lapse(world: World) -> None:
    p = world.payments
    customer, card = _customer(world, 1, fund=1_000_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.withdraw(customer, card, 300_00, CNY, key="w")
    claimed = p._finish(op, S.PENDING, error_code="check_passed", expect=S.CHALLENGED)
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    # The answering call died right after its claim. The lapse cannot claim the operation
    # any more: it carries out the answer that won (the payout), once.
    assert p._expire_hold(op).status is S.COMPLETED
    assert p.recover() == {}
    assert world.bank.sends[f"{claimed.id:032x}"] == 1
    assert p.balance(customer, CNY).posted == 700_00


@pytest.mark.parametrize("frozen", ["payer", "payee", "merchant"])
def test_a_passed_check_cut_short_does_not_move_money_of_a_party_frozen_since(
    world: World, frozen: str
) -> None:
    """The customer passed the check (the claim recorded), then the call died before the
    hold was posted, then a party was frozen. Recovery used to post the hold: money left a
    frozen wallet, or reached one, or a frozen merchant — what ``verify_challenge`` itself
    refuses. Now the hold is voided: ``failed`` with ``account_frozen``."""
    p = world.payments
    payer, _ = _customer(world, 1, fund=1_000_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    if frozen == "merchant":
        shop = p.register_merchant("Shop", "retail", 0, "tok-m").id
        op = p.pay_merchant(payer, merchant_qr(shop), 300_00, CNY, key="x")
    else:
        payee, _ = _customer(world, 2)
        op = p.transfer(payer, Payee(customer_id=payee), 300_00, CNY, key="x")
    assert op.status is S.CHALLENGED
    p._finish(op, S.PENDING, error_code="check_passed", expect=S.CHALLENGED)  # then died
    if frozen == "merchant":
        p.set_merchant_frozen(shop, True)
    else:
        p.set_frozen(payer if frozen == "payer" else payee, True)
    world.clock.advance(60 * SECOND_NS)

    assert p.recover() == {"failed": 1}
    done = p.operation(op.id)
    assert (done.status, done.error_code) == (S.FAILED, "account_frozen")
    balance = p.balance(payer, CNY)
    assert (balance.posted, balance.held) == (1_000_00, 0)
    received = (
        p.merchant_balance(shop, CNY) if frozen == "merchant" else p.balance(payee, CNY)
    ).posted
    assert received == 0


@pytest.mark.parametrize("first", ["caller", "recovery"])
def test_a_passed_check_settled_both_ways_at_once_is_recorded_as_the_ledger_settled_it(
    world: World, first: str
) -> None:
    """The race the rule above opens: the call that claimed the passed check posts the hold
    (it read the parties before the freeze) while recovery, seeing the payer frozen since,
    voids it. The ledger takes one of the two (the same transfer id); the other caller
    follows it instead of failing ("stuck" for ever if the winner died before recording)."""
    p = world.payments
    payer, _ = _customer(world, 1, fund=1_000_00)
    payee, _ = _customer(world, 2)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.transfer(payer, Payee(customer_id=payee), 300_00, CNY, key="x")
    claimed = p._finish(op, S.PENDING, error_code="check_passed", expect=S.CHALLENGED)
    if first == "caller":  # it posts, then dies before recording it
        assert p._settle_hold(claimed, post=True).name == "CREATED"
    p.set_frozen(payer, True)
    world.clock.advance(60 * SECOND_NS)
    if first == "caller":
        assert p.recover() == {"completed": 1}  # the money moved: recorded as it did
        moved = 300_00
    else:
        assert p.recover() == {"failed": 1}
        late = p._release_hold(claimed, post=True, failure="challenge_failed")
        assert (late.status, late.error_code) == (S.FAILED, "account_frozen")
        moved = 0
    assert p.balance(payee, CNY).posted == moved
    balance = p.balance(payer, CNY)
    assert (balance.posted, balance.held) == (1_000_00 - moved, 0)


def test_a_bill_payment_passed_by_a_check_is_written_off_by_the_biller(world: World) -> None:
    p = world.payments
    customer, _ = _customer(world, 1, fund=1_000_00)
    biller = SimulatedBiller(world.clock, amount=103_07)
    bills = Bills(p, biller)
    bills.register_biller("W", "Water", BillerKind.WATER)
    binding = bills.bind(customer, "W", "42").id
    bill = bills.query_bill(customer, binding)
    assert bill is not None
    world.risk.next = [risk.Decision.CHALLENGE]
    op = bills.pay(customer, binding, bill.bill_id, key="b")
    assert op.status is S.CHALLENGED and biller.sends == {}
    assert p.verify_challenge(op.id, passed=True).status is S.COMPLETED
    assert biller.sends == {f"{op.id:032x}": 1}
    assert bills.query_bill(customer, binding) is None
    assert bills.receipt(op.id).amount == 103_07


def test_a_release_with_a_stale_amount_is_refused(world: World) -> None:
    p, buyer, shop, checkout, order = _paid_order(world)
    checkout.ship_order(order.id, shop)
    stale = checkout.order(order.id)  # a confirmation read the order ...
    refund = checkout.request_refund(order.id, buyer, 50_00, "half", key="r")
    checkout.answer_refund(refund.id, shop, approve=True)  # ... then half was refunded
    try:
        checkout._release(stale)
        raise AssertionError("a stale release went through")
    except RefundOpenError:
        pass
    checkout.confirm_receipt(order.id, buyer)
    assert p.merchant_balance(shop, CNY).posted == 50_00
    assert p.balance(buyer, CNY).posted == 950_00


def test_an_arbitrated_split_cut_short_by_a_crash_is_finished_by_the_timers(
    world: World,
) -> None:
    p, buyer, shop, checkout, order = _paid_order(world)
    refund = checkout.request_refund(order.id, buyer, 100_00, "never came", key="r")
    checkout.answer_refund(refund.id, shop, approve=False)
    checkout.escalate_refund(refund.id, buyer)
    # arbitrate(split): the buyer's part is paid, then the process dies before the release.
    checkout._pay_refund(
        checkout.refund(refund.id), 30_00, outcome=f"arbitrated_{Arbitration.SPLIT}"
    )
    assert checkout.run_timers()["released_after_arbitration"] == 1
    assert checkout.order(order.id).status == "finished"
    assert p.merchant_balance(shop, CNY).posted == 70_00
    assert p.balance(buyer, CNY).posted == 930_00


def test_a_batch_gives_back_only_the_allowance_it_still_owns(world: World) -> None:
    p = world.payments
    payer, _ = _customer(world, 1, fund=2_000_00)
    payee, _ = _customer(world, 2)

    def outflow() -> int:
        with world.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.sum(tables.daily_outflow.c.amount)).where(
                        tables.daily_outflow.c.customer_id == payer
                    )
                ).scalar_one()
                or 0
            )

    batches = PaymentBatches(p)
    requests = [PaymentRequest(payer, 800_00, CNY, "bk", payee=Payee(customer_id=payee))]
    answers: list[object] = [None]
    items = batches._parse(requests, answers)  # type: ignore[arg-type]
    items = batches._replays(items, answers)  # type: ignore[arg-type]
    items, later = batches._check(items, answers)  # type: ignore[arg-type]  # risk decides too
    assert later == []
    batches._record(items)
    p.transfer(payer, Payee(customer_id=payee), 1_500_00, CNY, key="other")  # drains it
    batches._move(items)
    assert items[0].status is S.FAILED
    retry = p.transfer(payer, Payee(customer_id=payee), 800_00, CNY, key="bk")  # finishes it
    assert retry.status is S.FAILED
    batches._finish(items)
    assert outflow() == 1_500_00  # the failed 800 given back once, not twice


def test_one_operation_recovery_cannot_finish_does_not_hold_up_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = world.payments
    customer, card = _customer(world, 1)
    world.bank.timeout_rate = 1.0  # both top-ups await the bank
    first = p.top_up(customer, card, 10_00, CNY, key="t1")
    second = p.top_up(customer, card, 20_00, CNY, key="t2")
    assert (first.status, second.status) == (S.AWAITING_BANK, S.AWAITING_BANK)
    world.bank.timeout_rate = 0.0
    world.clock.advance(60 * SECOND_NS)
    real_query = world.bank.query

    def broken_for_the_first(reference: str) -> object:
        if reference == f"{first.id:032x}":
            raise RuntimeError("the bank's answer cannot be read")
        return real_query(reference)

    monkeypatch.setattr(world.bank, "query", broken_for_the_first)
    assert p.recover() == {"stuck": 1, "completed": 1}
    assert "could not finish operation" in caplog.text
    assert p.operation(second.id).status is S.COMPLETED
    monkeypatch.setattr(world.bank, "query", real_query)
    assert p.recover() == {"completed": 1}
    assert p.balance(customer, CNY).posted == 30_00


def test_a_payers_first_outflow_of_the_day_recorded_by_two_callers_at_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch read "no outflow yet today" for its payer; before it records, another
    caller's single payment records the payer's first outflow of the day. The batch adds to
    that row instead of meeting a unique violation (which used to send every payment of
    the batch down the one-at-a-time path, and on PostgreSQL failed a single payment)."""
    p = world.payments
    payer, _ = _customer(world, 1, fund=1_000_00)
    payee, _ = _customer(world, 2)
    batches = PaymentBatches(p)
    read_facts = batches._facts

    def facts_then_another_callers_payment(*args: object, **kwargs: object) -> object:
        facts = read_facts(*args, **kwargs)  # type: ignore[arg-type]
        single = p.transfer(payer, Payee(customer_id=payee), 10_00, CNY, key="single")
        assert single.status is S.COMPLETED
        return facts

    def no_fallback(request: PaymentRequest) -> object:
        raise AssertionError(f"{request.key} went one at a time")

    monkeypatch.setattr(batches, "_facts", facts_then_another_callers_payment)
    monkeypatch.setattr(batches, "_one", no_fallback)
    [op] = batches.pay_many(
        [PaymentRequest(payer, 20_00, CNY, "batch", payee=Payee(customer_id=payee))]
    )
    assert not isinstance(op, Exception) and op.status is S.COMPLETED
    d = tables.daily_outflow
    with world.engine.connect() as conn:
        reserved = conn.execute(sa.select(d.c.amount).where(d.c.customer_id == payer)).all()
    assert [row.amount for row in reserved] == [30_00]
    assert p.balance(payer, CNY).available == 970_00


@pytest.mark.parametrize("path", ["single", "batch"])
def test_a_payers_first_outflow_of_the_day_in_two_transactions_at_once(
    world: World, path: str
) -> None:
    """Another transaction has recorded the payer's first outflow of the day and not yet
    committed when a payment of the same payer records its own. On PostgreSQL the payment
    waits for that transaction and adds to its row; it used to insert a row of its own and
    fail on the unique key once the other committed (a single payment raised, a batch went
    one at a time). On SQLite the two transactions take turns."""
    p = world.payments
    payer, _ = _customer(world, 1, fund=1_000_00)
    payee, _ = _customer(world, 2)
    day = business_day(world.clock.now_ns(), p.options)
    batches = PaymentBatches(p)
    fell_back: list[str] = []
    one = batches._one

    def one_at_a_time(request: PaymentRequest) -> Operation | PuhuiError:
        fell_back.append(request.key)
        return one(request)

    batches._one = one_at_a_time  # type: ignore[method-assign]
    answers: list[object] = []

    def pay() -> None:
        try:
            if path == "single":
                answers.append(p.transfer(payer, Payee(customer_id=payee), 20_00, CNY, key="k"))
            else:
                request = PaymentRequest(payer, 20_00, CNY, "k", payee=Payee(customer_id=payee))
                answers.extend(batches.pay_many([request]))
        except Exception as error:  # the answer under test
            answers.append(error)

    payment = threading.Thread(target=pay)
    with world.engine.begin() as conn:
        assert _outflow.reserve(conn, [(payer, day, CNY, 10_00, 2_000_000_00)]) == 1
        payment.start()
        time.sleep(0.5)  # the payment reaches its own reservation and waits on this one
    payment.join(30)
    [op] = answers
    assert not isinstance(op, Exception), op
    assert op.status is S.COMPLETED  # type: ignore[attr-defined]
    assert fell_back == []
    d = tables.daily_outflow
    with world.engine.connect() as conn:
        reserved = conn.execute(sa.select(d.c.amount).where(d.c.customer_id == payer)).all()
    assert [row.amount for row in reserved] == [30_00]


@pytest.mark.parametrize("first", [Arbitration.SPLIT, Arbitration.REFUND])
def test_a_ruling_whose_refund_a_crash_cut_short_cannot_be_overruled(
    world: World, monkeypatch: pytest.MonkeyPatch, first: Arbitration
) -> None:
    """The operator's first ruling records its refund, then the process dies before the
    money moves: the refund still reads ``escalated``. A second ruling (release) used to
    deny it and release the whole order to the seller; recovery then paid the first
    ruling's refund too — out of other orders' escrow."""
    p, buyer, shop, checkout, order = _paid_order(world)
    other = checkout.create_order(buyer, shop, 300_00, CNY, "express", "t2", key="o2")
    checkout.pay_order(other.id, buyer, key="p2")  # escrow holds more than the dispute
    refund = checkout.request_refund(order.id, buyer, 100_00, "never came", key="r")
    checkout.answer_refund(refund.id, shop, approve=False)
    checkout.escalate_refund(refund.id, buyer)
    drive = p._drive
    monkeypatch.setattr(p, "_drive", lambda op: op)  # recorded, then the process dies
    with contextlib.suppress(RefundOpenError):  # a split's release finds the refund open
        checkout.arbitrate(refund.id, first, buyer_amount=30_00 if first == "split" else None)
    monkeypatch.setattr(p, "_drive", drive)
    with pytest.raises(RefundStateError):
        checkout.arbitrate(refund.id, Arbitration.RELEASE)
    world.clock.advance(60 * SECOND_NS)
    p.recover()
    checkout.run_timers()
    buyer_gets = 30_00 if first is Arbitration.SPLIT else 100_00
    assert p.balance(buyer, CNY).posted == 600_00 + buyer_gets
    assert p.merchant_balance(shop, CNY).posted == 100_00 - buyer_gets
    escrow = p.platform_balance(AccountCode.ESCROW, CNY).posted
    assert escrow == checkout.order(other.id).in_escrow == 300_00


def test_an_approval_a_crash_cut_short_cannot_be_turned_into_a_rejection(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seller approves, the refund's payment is recorded, the process dies: the refund
    still reads ``requested``. Rejecting it then used to be accepted (and the buyer could
    escalate a refund whose money was on its way back)."""
    p, buyer, shop, checkout, order = _paid_order(world)
    refund = checkout.request_refund(order.id, buyer, 40_00, "too much", key="r")
    drive = p._drive
    monkeypatch.setattr(p, "_drive", lambda op: op)  # recorded, then the process dies
    checkout.answer_refund(refund.id, shop, approve=True)
    monkeypatch.setattr(p, "_drive", drive)
    with pytest.raises(RefundStateError):
        checkout.answer_refund(refund.id, shop, approve=False)
    world.clock.advance(60 * SECOND_NS)
    assert p.recover() == {"completed": 1}
    assert checkout.refund(refund.id).status == "refunded"
    assert checkout.order(order.id).in_escrow == 60_00
    assert p.balance(buyer, CNY).posted == 940_00


def test_a_refund_asked_for_while_another_is_paid_cannot_take_more_than_the_order(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buyer's second request checked the order (100.00 in escrow) while a first refund
    of 70.00 was being paid. It used to be accepted for 60.00: its payment took 30.00 of
    another order's escrow, then could not be recorded (the order's refunds would pass its
    amount) and stayed pending for ever."""
    p, buyer, shop, checkout, order = _paid_order(world)
    other = checkout.create_order(buyer, shop, 300_00, CNY, "express", "t2", key="o2")
    checkout.pay_order(other.id, buyer, key="p2")
    checked = checkout._due

    def meanwhile(read: Order) -> Order:
        monkeypatch.setattr(checkout, "_due", checked)
        stale = checked(read)  # the second request read the order; then the first is paid
        first = checkout.request_refund(order.id, buyer, 70_00, "one box", key="r1")
        checkout.answer_refund(first.id, shop, approve=True)
        return stale

    monkeypatch.setattr(checkout, "_due", meanwhile)
    with pytest.raises(RefundOpenError):
        checkout.request_refund(order.id, buyer, 60_00, "the rest", key="r2")
    assert checkout.order(order.id).in_escrow == 30_00
    assert [r.amount for r in checkout.refunds(order.id)] == [70_00]
    with pytest.raises(RefundExceedsEscrowError):  # asked again, it is checked afresh
        checkout.request_refund(order.id, buyer, 60_00, "the rest", key="r3")
    escrow = p.platform_balance(AccountCode.ESCROW, CNY).posted
    assert escrow == 30_00 + checkout.order(other.id).in_escrow == 330_00
    assert p.balance(buyer, CNY).posted == 1_000_00 - 400_00 + 70_00


@pytest.mark.parametrize("deadline", ["answer", "escalation"])
def test_a_timer_does_not_settle_a_refund_that_moved_on_after_it_was_read(
    world: World, deadline: str
) -> None:
    """``run_timers`` read a refund still waiting at its deadline; the seller's rejection and
    the buyer's escalation, each checked just in time, were recorded before the timer acted
    on what it read. The timer used to approve the rejected refund anyway (the seller's
    answer lost) or deny the escalated one as not escalated (the dispute lost)."""
    p, buyer, shop, checkout, order = _paid_order(world)
    refund = checkout.request_refund(order.id, buyer, 40_00, "late", key="r")
    if deadline == "escalation":
        checkout.answer_refund(refund.id, shop, approve=False)
    read_by_timer = checkout.refund(refund.id)
    if deadline == "answer":
        checkout.answer_refund(refund.id, shop, approve=False)
    checkout.escalate_refund(refund.id, buyer)
    if deadline == "answer":
        with pytest.raises(RefundStateError):
            checkout._pay_refund(read_by_timer, 40_00, outcome="approved_unanswered")
    else:
        escalate_by = read_by_timer.escalate_by_ns
        assert not checkout._deny(read_by_timer, outcome="not_escalated", at=escalate_by)
    assert checkout.refund(refund.id).status == "escalated"
    assert checkout.order(order.id).open_refund_id == refund.id
    assert p.balance(buyer, CNY).posted == 900_00
    checkout.arbitrate(refund.id, Arbitration.RELEASE)  # the dispute is still the operator's
    assert p.merchant_balance(shop, CNY).posted == 100_00


@pytest.mark.parametrize("second", [Arbitration.REFUND, Arbitration.SPLIT])
def test_a_second_ruling_with_another_amount_is_refused_as_such(
    world: World, monkeypatch: pytest.MonkeyPatch, second: Arbitration
) -> None:
    """A split's refund was recorded, then the process died. A second ruling paying another
    amount used to answer ``idempotency_key_reused`` (the operator gives no key); it is
    ``refund_state_invalid``, like a second release, and moves nothing."""
    p, buyer, shop, checkout, order = _paid_order(world)
    refund = checkout.request_refund(order.id, buyer, 100_00, "never came", key="r")
    checkout.answer_refund(refund.id, shop, approve=False)
    checkout.escalate_refund(refund.id, buyer)
    drive = p._drive
    monkeypatch.setattr(p, "_drive", lambda op: op)  # recorded, then the process dies
    with contextlib.suppress(RefundOpenError):
        checkout.arbitrate(refund.id, Arbitration.SPLIT, buyer_amount=30_00)
    monkeypatch.setattr(p, "_drive", drive)
    with pytest.raises(RefundStateError):
        checkout.arbitrate(
            refund.id, second, buyer_amount=40_00 if second is Arbitration.SPLIT else None
        )
    world.clock.advance(60 * SECOND_NS)
    p.recover()
    checkout.run_timers()
    assert p.balance(buyer, CNY).posted == 930_00
    assert p.merchant_balance(shop, CNY).posted == 70_00
    assert p.platform_balance(AccountCode.ESCROW, CNY).posted == 0


def test_a_release_a_refund_stopped_after_the_timers_read_it_is_not_counted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_timers`` read an order due for auto-confirmation; the buyer opened a refund
    before the release. The release is refused (the money stays in escrow for the refund)
    and the job's report used to count it confirmed all the same."""
    p, buyer, shop, checkout, order = _paid_order(world)
    checkout.ship_order(order.id, shop)
    world.clock.advance(11 * 24 * 3600 * SECOND_NS)  # past the express auto-confirm time
    release = checkout._release

    def refund_first(read: Order) -> None:
        monkeypatch.setattr(checkout, "_release", release)
        # the buyer's request checked the order just before its deadline (then its timer
        # was not due yet): recorded now, after the timers read the order
        with monkeypatch.context() as before_the_deadline:
            before_the_deadline.setattr(checkout, "_due", lambda o: o)
            checkout.request_refund(order.id, buyer, 10_00, "late", key="r")
        release(read)

    monkeypatch.setattr(checkout, "_release", refund_first)
    assert checkout.run_timers()["confirmed"] == 0
    assert checkout.order(order.id).in_escrow == 100_00
    assert p.merchant_balance(shop, CNY).posted == 0
