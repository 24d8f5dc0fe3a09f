"""Funding (bank top-ups and withdrawals) and bills under a flaky partner and racing jobs:
cases a hunt for defects found."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from puhui.payments import (
    BankDirection,
    BankResult,
    BankStatus,
    BillerKind,
    Bills,
    OperationStatus,
    Payments,
    SimulatedBank,
    SimulatedBiller,
    WriteOffStatus,
)

from .conftest import World, verified_customer

S = OperationStatus


class _Gate:
    """A partner's first query blocks until released; callbacks run at the start of a send,
    before the partner has the request."""

    def __init__(self) -> None:
        self.query_blocked = threading.Event()
        self.query_go = threading.Event()
        self.before_send: list[Callable[[], None]] = []
        self._first_query = True

    def at_query(self) -> None:
        if self._first_query:
            self._first_query = False
            self.query_blocked.set()
            assert self.query_go.wait(30)

    def at_send(self) -> None:
        while self.before_send:
            self.before_send.pop(0)()


def _two_recoveries(p: Payments, gate: _Gate) -> None:
    """Two ``recover()`` runs, interleaved: the second reads the operations [Y, X] and waits
    in the partner's answer about Y; the first finishes Y, claims X, and lets the second go
    on from inside its send of X (before the partner has it)."""
    runner = threading.Thread(target=p.recover)
    runner.start()
    assert gate.query_blocked.wait(30)

    def let_the_second_run_go_on() -> None:
        gate.query_go.set()
        runner.join(30)
        assert not runner.is_alive()

    gate.before_send.append(let_the_second_run_go_on)
    p.recover()


class _GatedBank(SimulatedBank):
    def __init__(self, world: World) -> None:
        super().__init__(world.clock, seed=1)
        self.gate = _Gate()

    def query(self, reference: str) -> BankResult:
        self.gate.at_query()
        return super().query(reference)

    def submit(
        self, direction: BankDirection, reference: str, card_token: str, amount: int, currency: str
    ) -> BankResult:
        self.gate.at_send()
        return super().submit(direction, reference, card_token, amount, currency)


@pytest.mark.parametrize("kind", ["withdrawal", "top_up"])
def test_a_recovery_that_read_the_row_before_another_sent_it_does_not_give_the_money_back(
    world: World, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two recovery runs (two servers) read the same operation, left unsent by a crash. The
    first sends it; the second, holding the row it read before the send, finds it sent,
    asks the bank, hears ``not_found`` (the request is still on its way) and must not take
    that for a request that never arrived: it was sent a moment ago, not long ago."""
    p = world.payments
    bank = _GatedBank(world)
    p.bank = bank
    alice = verified_customer(world, 1)
    card = p.cards(alice)[0].id
    # funded straight at the bank: a top-up (kept out of the recovery runs below)
    assert p.top_up(alice, card, 500_00, "CNY", key="fund").status is S.COMPLETED
    # Y: a withdrawal the bank did but whose answer was lost (awaiting the bank)
    bank.timeout_rate = 1.0
    first = p.withdraw(alice, card, 10_00, "CNY", key="y")
    assert first.status is S.AWAITING_BANK
    bank.timeout_rate = 0.0
    # X: recorded, then a crash before anything was sent
    with monkeypatch.context() as m:
        m.setattr(p, "_drive", lambda op: op)
        if kind == "withdrawal":
            x = p.withdraw(alice, card, 30_00, "CNY", key="x")
        else:
            x = p.top_up(alice, card, 30_00, "CNY", key="x")
    assert x.status is S.PENDING
    world.clock.advance(60 * 10**9)

    _two_recoveries(p, bank.gate)
    reference = f"{x.id:032x}"
    [(_, direction, amount, _, status)] = [r for r in bank.records() if r[0] == reference]
    expected = BankDirection.PAYOUT if kind == "withdrawal" else BankDirection.CHARGE
    assert (direction, amount, status) == (expected, 30_00, BankStatus.SUCCEEDED)
    # the bank moved the money: so must the books, and the record must say so
    assert p.operation(x.id).status is S.COMPLETED
    balance = p.balance(alice, "CNY")
    moved = -30_00 if kind == "withdrawal" else 30_00
    assert (balance.posted, balance.held) == (500_00 - 10_00 + moved, 0)
    assert bank.sends[reference] == 1


class _GatedBiller(SimulatedBiller):
    def __init__(self, world: World) -> None:
        super().__init__(world.clock, seed=5)
        self.gate = _Gate()

    def query_write_off(self, biller_code: str, reference: str) -> WriteOffStatus:
        self.gate.at_query()
        return super().query_write_off(biller_code, reference)

    def write_off(
        self, biller_code: str, reference: str, bill_id: str, amount: int
    ) -> WriteOffStatus:
        self.gate.at_send()
        return super().write_off(biller_code, reference, bill_id, amount)


def test_a_recovery_that_read_a_bill_payment_before_another_sent_it_does_not_refund_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with a bank: the second of two recovery runs, holding the row it read before the
    first sent the write-off, must not take the biller's ``not_found`` (the write-off still on
    its way) for one that never arrived and give the money back for a bill the biller then
    writes off."""
    p = world.payments
    biller = _GatedBiller(world)
    bills = Bills(p, biller)
    bills.register_biller("SH-WATER", "Shanghai Water", BillerKind.WATER)
    alice = verified_customer(world, 1, fund=2_000_00)
    homes = [bills.bind(alice, "SH-WATER", f"310001234{n}").id for n in (1, 2)]
    due = [bills.query_bill(alice, home) for home in homes]
    assert due[0] is not None and due[1] is not None
    # Y: written off at the biller, the answer lost (awaiting the biller)
    biller.timeout_rate = 1.0
    first = bills.pay(alice, homes[0], due[0].bill_id, key="y")
    assert first.status is S.AWAITING_BILLER
    biller.timeout_rate = 0.0
    # X: recorded, then a crash before anything was held or sent
    with monkeypatch.context() as m:
        m.setattr(p, "_drive", lambda op: op)
        x = bills.pay(alice, homes[1], due[1].bill_id, key="x")
    assert x.status is S.PENDING
    world.clock.advance(60 * 10**9)

    _two_recoveries(p, biller.gate)
    assert biller.query_write_off("SH-WATER", f"{x.id:032x}") is WriteOffStatus.WRITTEN_OFF
    assert p.operation(x.id).status is S.COMPLETED
    assert bills.receipt(x.id).amount == due[1].amount
    balance = p.balance(alice, "CNY")
    assert (balance.posted, balance.held) == (2_000_00 - due[0].amount - due[1].amount, 0)
    assert biller.sends[f"{x.id:032x}"] == 1


class _CrashError(Exception):
    """The process dies here (the test's stand-in for a kill)."""


def _crash(*args: object) -> Any:
    raise _CrashError


@pytest.mark.parametrize("kind", ["withdrawal", "top_up"])
@pytest.mark.parametrize("crash", ["before_the_mark", "after_the_mark"])
def test_a_request_cut_short_before_the_bank_is_not_sent_for_a_customer_frozen_since(
    world: World, kind: str, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the hold (a withdrawal's) and before the bank has the request; then the
    customer is frozen; then recovery. Recovery used to send the request as if nothing had
    happened (before the mark ``bank_sent``), so a frozen customer's money left. It must stop
    it instead: the hold voided, ``failed`` with ``account_frozen``, nothing at the bank —
    also when the crash came after the mark (the bank answers ``not_found``)."""
    p = world.payments
    alice = verified_customer(world, 1, fund=500_00)
    card = p.cards(alice)[0].id
    with monkeypatch.context() as m:
        if crash == "before_the_mark":
            m.setattr(p, "_send_to_bank", lambda op, direction: op)
        else:
            m.setattr(world.bank, "submit", _crash)
        try:
            if kind == "withdrawal":
                p.withdraw(alice, card, 30_00, "CNY", key="x")
            else:
                p.top_up(alice, card, 30_00, "CNY", key="x")
        except _CrashError:
            pass
    [x] = p.operations(status=S.PENDING)
    if kind == "withdrawal":
        assert p.balance(alice, "CNY").held == 30_00  # the hold is there
    p.set_frozen(alice, True)
    world.clock.advance(60 * 10**9)

    assert p.recover() == {"failed": 1}
    done = p.operation(x.id)
    assert (done.status, done.error_code) == (S.FAILED, "account_frozen")
    reference = f"{x.id:032x}"
    assert reference not in world.bank.sends
    balance = p.balance(alice, "CNY")
    assert (balance.posted, balance.held) == (500_00, 0)
    assert p.recover() == {}  # finished: nothing left for the next run


@pytest.mark.parametrize("answer", ["succeeded", "processing"])
def test_a_withdrawal_the_bank_has_seen_follows_the_bank_though_the_customer_was_frozen(
    world: World, answer: str
) -> None:
    """The other side of the rule above: once the bank has the request, the money is out of
    our hands, and recovery records what the bank did, frozen customer or not."""
    p = world.payments
    alice = verified_customer(world, 1, fund=500_00)
    card = p.cards(alice)[0].id
    world.bank.processing_rate = 1.0 if answer == "processing" else 0.0
    world.bank.timeout_rate = 1.0 if answer == "succeeded" else 0.0
    x = p.withdraw(alice, card, 30_00, "CNY", key="x")
    assert x.status is S.AWAITING_BANK
    p.set_frozen(alice, True)
    world.clock.advance(60 * 10**9)

    assert p.recover() == {"completed": 1}
    assert world.bank.sends[f"{x.id:032x}"] == 1
    balance = p.balance(alice, "CNY")
    assert (balance.posted, balance.held) == (500_00 - 30_00, 0)


@pytest.mark.parametrize("crash", ["before_the_mark", "after_the_mark"])
def test_a_bill_payment_cut_short_before_the_biller_is_not_sent_for_a_customer_frozen_since(
    world: World, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a bank: a bill payment held, then a crash before the biller had the write-off,
    then the customer frozen. Recovery used to send the write-off (the frozen customer's
    money left); now it voids the hold and records ``failed`` with ``account_frozen``, and
    the bill is free to be paid again."""
    p = world.payments
    biller = SimulatedBiller(world.clock, seed=5)
    bills = Bills(p, biller)
    bills.register_biller("SH-WATER", "Shanghai Water", BillerKind.WATER)
    alice = verified_customer(world, 1, fund=2_000_00)
    home = bills.bind(alice, "SH-WATER", "3100012341").id
    due = bills.query_bill(alice, home)
    assert due is not None
    with monkeypatch.context() as m:
        if crash == "before_the_mark":
            m.setattr(p, "_claim_send", _crash)
        else:
            m.setattr(biller, "write_off", _crash)
        with pytest.raises(_CrashError):
            bills.pay(alice, home, due.bill_id, key="x")
    [x] = p.operations(status=S.PENDING)
    assert p.balance(alice, "CNY").held == due.amount
    p.set_frozen(alice, True)
    world.clock.advance(60 * 10**9)

    assert p.recover() == {"failed": 1}
    done = p.operation(x.id)
    assert (done.status, done.error_code) == (S.FAILED, "account_frozen")
    assert f"{x.id:032x}" not in biller.sends
    balance = p.balance(alice, "CNY")
    assert (balance.posted, balance.held) == (2_000_00, 0)
    p.set_frozen(alice, False)
    assert bills.pay(alice, home, due.bill_id, key="y").status is S.COMPLETED
