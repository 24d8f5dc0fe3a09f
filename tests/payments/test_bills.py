"""Utility bills: bind a household, query, pay once, receipt; unknown outcomes by query."""

from __future__ import annotations

import pytest

from puhui.payments import (
    Balance,
    BillAlreadyPaidError,
    BillAmountChangedError,
    BillerKind,
    BillerNotFoundError,
    BillerTimeoutError,
    Bills,
    BindingNotFoundError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    NothingDueError,
    Operation,
    OperationKind,
    OperationStatus,
    Payments,
    PaymentsOptions,
    ReceiptNotReadyError,
    SimulatedBiller,
    WriteOffStatus,
)

from .conftest import World

S = OperationStatus
CNY = "CNY"


class Household:
    def __init__(self, world: World) -> None:
        p = world.payments
        self.world = world
        self.p = p
        self.biller = SimulatedBiller(world.clock, seed=5)
        self.bills = Bills(p, self.biller)
        self.bills.register_biller("SH-WATER", "Shanghai Water", BillerKind.WATER)
        c = p.register_customer("13900000001", "Household")
        p.verify_identity(c.id, "ID-H")
        card = p.bind_card(c.id, "tok-h", "Rural Bank", "0001")
        p.verify_full(c.id, biometric_passed=True)
        assert p.top_up(c.id, card.id, 2_000_00, CNY, key="fund").status is S.COMPLETED
        self.customer = c.id
        self.binding = self.bills.bind(c.id, "SH-WATER", "3100012345", "home").id


@pytest.fixture
def home(world: World) -> Household:
    return Household(world)


def test_a_bill_is_queried_paid_written_off_and_receipted(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None and bill.amount > 0
    op = home.bills.pay(home.customer, home.binding, bill.bill_id, key="water-1")
    assert op.status is S.COMPLETED
    assert home.p.balance(home.customer, CNY).posted == 2_000_00 - bill.amount
    receipt = home.bills.receipt(op.id)
    assert (receipt.bill_id, receipt.amount, receipt.household_account) == (
        bill.bill_id,
        bill.amount,
        "3100012345",
    )
    assert home.bills.query_bill(home.customer, home.binding) is None  # nothing due now
    with pytest.raises(NothingDueError):
        home.bills.pay(home.customer, home.binding, bill.bill_id, key="water-2")
    # A retry of the first call returns it and moves nothing.
    assert home.bills.pay(home.customer, home.binding, bill.bill_id, key="water-1") == op
    assert home.p.balance(home.customer, CNY).posted == 2_000_00 - bill.amount


def test_an_unknown_outcome_is_resolved_by_query_never_by_paying_twice(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    home.biller.timeout_rate = 1.0  # written off at the biller, answer lost
    op = home.bills.pay(home.customer, home.binding, bill.bill_id, key="w")
    assert op.status is S.AWAITING_BILLER
    assert home.p.balance(home.customer, CNY).held == bill.amount
    with pytest.raises(ReceiptNotReadyError):
        home.bills.receipt(op.id)
    home.biller.timeout_rate = 0.0
    home.world.clock.advance(60 * 10**9)
    assert home.p.recover() == {"completed": 1}
    assert home.biller.sends[f"{op.id:032x}"] == 1
    assert home.p.balance(home.customer, CNY).posted == 2_000_00 - bill.amount
    assert home.bills.receipt(op.id).amount == bill.amount


def test_a_refused_write_off_gives_the_money_back_and_frees_the_bill(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    home.biller.refusal_rate = 1.0
    op = home.bills.pay(home.customer, home.binding, bill.bill_id, key="w1")
    assert (op.status, op.error_code) == (S.FAILED, "biller_refused")
    assert home.p.balance(home.customer, CNY).available == 2_000_00
    home.biller.refusal_rate = 0.0
    again = home.bills.pay(home.customer, home.binding, bill.bill_id, key="w2")
    assert again.status is S.COMPLETED


def test_processing_write_off_completes_when_the_biller_confirms(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    home.biller.processing_rate = 1.0
    op = home.bills.pay(home.customer, home.binding, bill.bill_id, key="w")
    assert op.status is S.AWAITING_BILLER
    home.biller.settle()
    home.world.clock.advance(60 * 10**9)
    home.p.recover()
    assert home.p.operation(op.id).status is S.COMPLETED


def test_the_same_bill_cannot_be_paid_by_two_people(home: Household, world: World) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    p = world.payments
    other = p.register_customer("13900000002", "Flatmate")
    p.verify_identity(other.id, "ID-F")
    card = p.bind_card(other.id, "tok-f", "Rural Bank", "0002")
    p.verify_full(other.id, biometric_passed=True)
    p.top_up(other.id, card.id, 1_000_00, CNY, key="fund")
    theirs = home.bills.bind(other.id, "SH-WATER", "3100012345").id
    assert home.bills.pay(home.customer, home.binding, bill.bill_id, key="a").status is S.COMPLETED
    with pytest.raises(NothingDueError):
        home.bills.pay(other.id, theirs, bill.bill_id, key="b")
    assert p.balance(other.id, CNY).posted == 1_000_00


def test_a_bill_whose_amount_changed_since_it_was_shown_is_not_paid(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    home.biller.amount = bill.amount + 5_00  # a late fee added after the customer looked
    with pytest.raises(BillAmountChangedError):
        home.bills.pay(home.customer, home.binding, bill.bill_id, key="shown", amount=bill.amount)
    assert home.p.balance(home.customer, CNY).posted == 2_000_00  # nothing moved
    assert [o for o in home.p.operations() if o.kind is OperationKind.BILL_PAYMENT] == []
    assert home.biller.sends == {}
    # Shown the new amount, the customer pays it; a retry with another amount is another request.
    op = home.bills.pay(
        home.customer, home.binding, bill.bill_id, key="shown", amount=bill.amount + 5_00
    )
    assert (op.status, op.amount) == (S.COMPLETED, bill.amount + 5_00)
    assert home.p.balance(home.customer, CNY).posted == 2_000_00 - bill.amount - 5_00
    with pytest.raises(IdempotencyKeyReusedError):
        home.bills.pay(home.customer, home.binding, bill.bill_id, key="shown", amount=bill.amount)


def test_wrong_inputs_are_refused_and_move_nothing(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    with pytest.raises(BillerNotFoundError):
        home.bills.bind(home.customer, "NOPE", "1")
    with pytest.raises(BindingNotFoundError):
        home.bills.pay(home.customer, home.binding + 99, bill.bill_id, key="x")
    with pytest.raises(BillAlreadyPaidError):
        home.bills.pay(home.customer, home.binding, "SH-WATER-3100012345-1999-01", key="y")
    home.p.withdraw(home.customer, home.p.cards(home.customer)[0].id, 2_000_00, CNY, key="all")
    with pytest.raises(InsufficientFundsError):
        home.bills.pay(home.customer, home.binding, bill.bill_id, key="z")
    assert home.p.operations(status=S.PENDING) == []


def _restarted_without_bills(home: Household) -> Payments:
    """The service as a process starts it before its bill flow is attached (the platform's
    ``serve`` recovers before the app builds ``Bills``): the same store and ledger."""
    w = home.world
    return Payments(w.engine, w.ledger, clock=w.clock, bank=w.bank, decide=w.risk)


def test_recovery_without_the_bill_flow_leaves_a_bill_payment_alone(home: Household) -> None:
    """A bill payment cut short before its hold, recovered by a service without ``Bills``:
    it used to be moved as a plain payment (wallet → biller clearing, posted, ``completed``)
    without the biller ever writing the bill off, so the bill stayed due and was paid again.
    Now it is left for a service with the flow, which pays it once."""
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None

    def crash(op: Operation) -> Operation:
        raise KeyboardInterrupt  # the process dies after the record, before the hold

    home.p._drivers[OperationKind.BILL_PAYMENT] = crash
    with pytest.raises(KeyboardInterrupt):
        home.bills.pay(home.customer, home.binding, bill.bill_id, key="w")
    [op] = home.p.operations(status=S.PENDING)
    home.world.clock.advance(60 * 10**9)
    bare = _restarted_without_bills(home)
    assert bare.recover() == {"stuck": 1}
    assert bare.operation(op.id).status is S.PENDING
    assert bare.balance(home.customer, CNY) == Balance(2_000_00, 0)
    assert home.biller.sends == {}
    # The service with the bill flow finishes it: written off once, paid once.
    Bills(bare, home.biller)
    assert bare.recover() == {"completed": 1}
    assert home.biller.sends == {f"{op.id:032x}": 1}
    assert bare.balance(home.customer, CNY) == Balance(2_000_00 - bill.amount, 0)
    assert home.bills.query_bill(home.customer, home.binding) is None


def test_recovery_without_the_bill_flow_keeps_a_write_off_awaited(home: Household) -> None:
    """A bill payment whose write-off timed out, recovered by a service without ``Bills``:
    it used to fail (``ledger_exists_with_different_flags``, its outflow given back) while
    its hold stayed in the wallet for ever and the biller had written the bill off."""
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    home.biller.timeout_rate = 1.0
    op = home.bills.pay(home.customer, home.binding, bill.bill_id, key="w")
    assert op.status is S.AWAITING_BILLER
    home.biller.timeout_rate = 0.0
    home.world.clock.advance(60 * 10**9)
    bare = _restarted_without_bills(home)
    assert bare.recover() == {"stuck": 1}
    assert bare.operation(op.id).status is S.AWAITING_BILLER
    assert home.p.recover() == {"completed": 1}
    assert bare.balance(home.customer, CNY) == Balance(2_000_00 - bill.amount, 0)
    assert home.bills.receipt(op.id).amount == bill.amount


class _SlowBiller(SimulatedBiller):
    """A biller whose write-offs time out on the way and take effect 45 s after they were
    sent (a real biller's adapter sends a deadline of 60 s with each)."""

    submit_timeout_s = 60.0

    def __init__(self, world: World) -> None:
        super().__init__(world.clock, amount=88_00)
        self.in_flight: list[tuple[int, tuple[str, str, str, int]]] = []

    def write_off(
        self, biller_code: str, reference: str, bill_id: str, amount: int
    ) -> WriteOffStatus:
        self.in_flight.append((self.clock.now_ns(), (biller_code, reference, bill_id, amount)))
        raise BillerTimeoutError("the biller did not answer")

    def query_write_off(self, biller_code: str, reference: str) -> WriteOffStatus:
        for sent_ns, request in list(self.in_flight):
            if self.clock.now_ns() >= sent_ns + 45 * 10**9:  # it lands now
                self.in_flight.remove((sent_ns, request))
                super().write_off(*request)
        return super().query_write_off(biller_code, reference)


def test_recovery_waits_longer_than_a_write_off_can_take_to_land(world: World) -> None:
    """Recovery takes a write-off the biller has not seen after ``recovery_age_s`` (30 s)
    for one that never arrived and gives the money back. With a biller whose write-offs may
    land later than that, the bill was then written off unpaid (the platform owes the biller
    money it never took). Such a biller is refused, as such a bank is; given a long enough
    recovery age, the bill is paid exactly once."""
    with pytest.raises(ValueError, match="submit_timeout_s"):
        Bills(world.payments, _SlowBiller(world))
    p = Payments(
        world.engine,
        world.ledger,
        clock=world.clock,
        bank=world.bank,
        decide=world.risk,
        options=PaymentsOptions(recovery_age_s=90),
    )
    biller = _SlowBiller(world)
    bills = Bills(p, biller)
    bills.register_biller("SH-POWER", "Shanghai Power", BillerKind.ELECTRICITY)
    c = p.register_customer("13900000002", "Household")
    p.verify_identity(c.id, "ID-S")
    card = p.bind_card(c.id, "tok-s", "Rural Bank", "0002")
    p.verify_full(c.id, biometric_passed=True)
    assert p.top_up(c.id, card.id, 100_00, CNY, key="fund").status is S.COMPLETED
    binding = bills.bind(c.id, "SH-POWER", "3100099999").id
    bill = bills.query_bill(c.id, binding)
    assert bill is not None
    op = bills.pay(c.id, binding, bill.bill_id, key="power")
    assert op.status is S.AWAITING_BILLER
    for _ in range(4):  # recovery every 31 s: the write-off lands at 45 s
        world.clock.advance(31 * 10**9)
        p.recover()
    assert p.operation(op.id).status is S.COMPLETED
    assert bills.receipt(op.id).amount == 88_00
    assert p.balance(c.id, CNY) == Balance(posted=12_00, held=0)
    assert bills.clearing_balance("SH-POWER", CNY).posted == 88_00


def test_the_simulated_biller_refuses_a_write_off_of_another_amount(home: Household) -> None:
    bill = home.bills.query_bill(home.customer, home.binding)
    assert bill is not None
    biller = home.biller
    wrong = biller.write_off("SH-WATER", "ref-1", bill.bill_id, bill.amount - 1)
    assert wrong is WriteOffStatus.REFUSED
    assert biller.write_off("SH-WATER", "ref-2", bill.bill_id, bill.amount) is (
        WriteOffStatus.WRITTEN_OFF
    )
