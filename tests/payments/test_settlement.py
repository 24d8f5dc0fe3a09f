"""T+1 merchant settlement and reconciliation against the bank's statement."""

from __future__ import annotations

import csv
import io
import threading
from typing import Any

import pytest

from puhui.ledger import QueryFilter, QueryFilterFlags
from puhui.money import currency
from puhui.payments import (
    AccountCode,
    Checkout,
    Fulfilment,
    Operation,
    OperationKind,
    OperationStatus,
    PaymentsError,
    Settlement,
    SettlementStatement,
    StatementInvalidError,
    TransferCode,
    merchant_qr,
    statement_csv,
)
from puhui.payments.model import fee
from puhui.risk import Decision

from .._plans import plans_of
from .conftest import World

S = OperationStatus
CNY = "CNY"
DAY_NS = 86_400 * 10**9


class Market:
    def __init__(self, world: World) -> None:
        p = world.payments
        self.world = world
        self.p = p
        self.settlement = Settlement(p)
        self.checkout = Checkout(p)
        c = p.register_customer("13700000001", "Shopper")
        p.verify_identity(c.id, "ID-S")
        self.card = p.bind_card(c.id, "tok-s", "Rural Bank", "0001").id
        p.verify_full(c.id, biometric_passed=True)
        assert p.top_up(c.id, self.card, 5_000_00, CNY, key="fund").status is S.COMPLETED
        self.customer = c.id
        self.shop = p.register_merchant("Dumplings", "food", 100, "tok-dumplings").id  # 1 %

    def pay(self, amount: int, key: str) -> None:
        op = self.p.pay_merchant(self.customer, merchant_qr(self.shop), amount, CNY, key=key)
        assert op.status is S.COMPLETED

    def receivable(self) -> int:
        return self.p.merchant_balance(self.shop, CNY).posted


@pytest.fixture
def market(world: World) -> Market:
    return Market(world)


def test_settlement_pays_yesterdays_takings_less_the_fee_and_only_once(market: Market) -> None:
    market.pay(100_00, "a")
    market.pay(50_55, "b")
    today = market.settlement.today()
    assert market.settlement.settle(today) == []  # T+1: nothing of today is due today
    market.world.clock.advance(DAY_NS)
    market.pay(10_00, "c")  # today's: not due
    [statement] = market.settlement.settle()
    assert statement.gross == 150_55 and statement.fee == 1_51  # 1 % of 150.55, rounded
    assert statement.payout == 150_55 - 1_51
    assert len(statement.lines) == 2
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert market.receivable() == 10_00
    assert market.p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1_51
    again = market.settlement.settle()
    assert again == [statement]  # idempotent per business day
    assert market.receivable() == 10_00
    assert market.world.bank.sends[f"{statement.operation.id:032x}"] == 1


def test_a_frozen_merchant_is_paid_nothing_until_it_thaws(market: Market) -> None:
    """A merchant frozen (under investigation) used to be paid out by the daily job all the
    same; now what it is owed waits, and the first run after it thaws pays all of it."""
    market.pay(100_00, "a")
    market.world.clock.advance(DAY_NS)
    market.p.set_merchant_frozen(market.shop, True)
    assert market.settlement.settle() == []
    assert _paid_out(market) == 0 and market.receivable() == 100_00
    market.world.clock.advance(DAY_NS)
    assert market.settlement.settle() == []  # still frozen the next day
    market.p.set_merchant_frozen(market.shop, False)
    market.world.clock.advance(DAY_NS)
    [statement] = market.settlement.settle()
    assert (statement.gross, statement.fee, statement.payout) == (100_00, 1_00, 99_00)
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert _paid_out(market) == 99_00 and market.receivable() == 0


@pytest.mark.parametrize("rerun", ["settle", "recover"])
def test_a_payout_cut_short_before_the_bank_is_not_sent_once_the_merchant_is_frozen(
    market: Market, monkeypatch: pytest.MonkeyPatch, rerun: str
) -> None:
    """The payout was recorded and held, then a crash before the bank had it; then the
    merchant was frozen. The rerun of the day (or recovery) used to send it all the same. Now
    it is stopped — ``failed`` with ``account_frozen``, its hold voided, nothing at the bank —
    and stays owed like a declined payout: the first run after the merchant thaws pays it."""
    market.pay(100_00, "a")
    market.world.clock.advance(DAY_NS)
    p = market.p
    with monkeypatch.context() as m:
        m.setattr(p, "_send_to_bank", lambda op, direction: op)
        [cut] = market.settlement.settle()
    assert cut.operation is not None and cut.operation.status is S.PENDING
    p.set_merchant_frozen(market.shop, True)
    market.world.clock.advance(60 * 10**9)
    if rerun == "settle":
        [again] = market.settlement.settle()
    else:
        assert p.recover() == {"failed": 1}
        again = market.settlement.statement(market.shop, CNY, cut.day)
    assert again.operation is not None
    assert (again.operation.status, again.operation.error_code) == (S.FAILED, "account_frozen")
    assert f"{again.operation.id:032x}" not in market.world.bank.sends
    assert _paid_out(market) == 0 and market.receivable() == 100_00 - 1_00  # the fee went
    market.world.clock.advance(DAY_NS)
    assert market.settlement.settle() == []  # frozen: owed, not paid
    p.set_merchant_frozen(market.shop, False)
    market.world.clock.advance(DAY_NS)
    [thawed] = market.settlement.settle()
    assert thawed.payout == 99_00
    assert thawed.operation is not None and thawed.operation.status is S.COMPLETED
    assert _paid_out(market) == 99_00 and market.receivable() == 0


def test_a_failed_payout_stays_owed_and_is_paid_next_time(market: Market) -> None:
    market.pay(80_00, "a")
    market.world.clock.advance(DAY_NS)
    market.world.bank.failure_rate = 1.0
    [first] = market.settlement.settle()
    assert first.operation is not None and first.operation.status is S.FAILED
    assert market.receivable() == 80_00 - 80  # the fee was taken; the payout was not
    market.world.bank.failure_rate = 0.0
    market.world.clock.advance(DAY_NS)
    market.pay(20_00, "b")
    market.world.clock.advance(DAY_NS)
    [second] = market.settlement.settle()
    assert second.payout == (80_00 - 80) + (20_00 - 20)  # the carry-over and the new takings
    assert market.receivable() == 0


def test_a_failed_payout_is_paid_next_time_even_without_new_takings(market: Market) -> None:
    """The money of a payout the bank declined stays owed. It used to go out only with a
    settlement of new takings: a merchant that sold nothing more was never paid it."""
    market.pay(80_00, "a")
    market.world.clock.advance(DAY_NS)
    market.world.bank.failure_rate = 1.0
    [first] = market.settlement.settle()
    assert first.operation is not None and first.operation.status is S.FAILED
    market.world.bank.failure_rate = 0.0
    market.world.clock.advance(DAY_NS)
    [second] = market.settlement.settle()  # nothing new was sold
    assert (second.gross, second.fee, second.payout, second.lines) == (0, 0, 80_00 - 80, ())
    assert second.operation is not None and second.operation.status is S.COMPLETED
    assert market.receivable() == 0
    market.world.clock.advance(DAY_NS)
    assert market.settlement.settle() == []  # carried over once, not again


def test_a_payout_declined_after_the_next_settlement_ran_is_paid_by_the_one_after(
    market: Market,
) -> None:
    market.pay(50_00, "a")
    market.world.clock.advance(DAY_NS)
    market.world.bank.processing_rate = 1.0  # the bank answers later ...
    market.world.bank.failure_rate = 1.0  # ... and declines
    [first] = market.settlement.settle()
    assert first.operation is not None and first.operation.status is S.AWAITING_BANK
    market.world.bank.processing_rate = market.world.bank.failure_rate = 0.0
    market.pay(10_00, "b")
    market.world.clock.advance(DAY_NS)
    [second] = market.settlement.settle()  # the first payout is still held: not in this one
    assert second.payout == 10_00 - 10
    assert market.p.recover() == {"failed": 1}  # now the bank's decline is known
    market.world.clock.advance(DAY_NS)
    [third] = market.settlement.settle()
    assert third.payout == 50_00 - 50
    assert market.receivable() == 0


def test_escrow_releases_are_settled_net_of_their_fee(market: Market) -> None:
    c = market.checkout
    order = c.create_order(
        market.customer, market.shop, 300_00, CNY, Fulfilment.INSTANT, "Tea", key="o"
    )
    c.pay_order(order.id, market.customer, key="p")
    c.ship_order(order.id, market.shop)
    c.confirm_receipt(order.id, market.customer)
    assert market.receivable() == 300_00 - 3_00
    market.world.clock.advance(DAY_NS)
    [statement] = market.settlement.settle()
    assert (statement.gross, statement.fee, statement.payout) == (300_00, 3_00, 297_00)
    assert market.receivable() == 0


def test_reconciliation_reports_each_difference_and_fixes_nothing(market: Market) -> None:
    market.pay(10_00, "a")
    for k in range(3):
        market.p.top_up(market.customer, market.card, 10_00 + k, CNY, key=f"t{k}")
    market.p.withdraw(market.customer, market.card, 7_00, CNY, key="w")
    day = market.settlement.today()
    clean = market.settlement.reconcile(day, market.world.bank.statement(day))
    assert clean.clean and clean.matched == 5  # the seed top-up, three top-ups, a withdrawal
    books = market.p.balance(market.customer, CNY)
    faulty = market.world.bank.statement(day, drop=1, add=1, alter=1, seed=3)
    report = market.settlement.reconcile(day, faulty)
    kinds = sorted(m.kind for m in report.mismatches)
    assert kinds == ["amount_differs", "extra_at_bank", "missing_at_bank"]
    differs = next(m for m in report.mismatches if m.kind == "amount_differs")
    assert differs.bank == (differs.ours or 0) + 1
    assert report.matched == 3
    assert market.p.balance(market.customer, CNY) == books  # nothing was "fixed"
    assert market.settlement.reconcile(day, faulty) == report  # same statement, same report


def test_reconciliation_reports_money_that_moved_the_wrong_way_or_in_another_currency(
    market: Market,
) -> None:
    """The bank's line for a reference may carry the right amount and still not be what we
    did: a payout the bank booked as a charge (the money went the other way), or another
    currency. Both used to count as matched."""
    for k in range(2):
        market.p.top_up(market.customer, market.card, 10_00 + k, CNY, key=f"t{k}")
    withdrawal = market.p.withdraw(market.customer, market.card, 7_00, CNY, key="w")
    day = market.settlement.today()
    lines = list(csv.reader(io.StringIO(market.world.bank.statement(day).decode())))[1:]
    assert len(lines) == 4  # the seed top-up, two top-ups, the withdrawal
    top_up = next(line for line in lines if line[1] == "charge" and line[2] == "1000")
    assert top_up[0] != f"{withdrawal.id:032x}"
    edited = []
    for reference, direction, amount, code, status in lines:
        wrong_way = reference == f"{withdrawal.id:032x}"  # booked the other way round
        other_currency = reference == top_up[0]
        edited.append(
            (
                reference,
                "charge" if wrong_way else direction,
                int(amount),
                "USD" if other_currency else code,
                status,
            )
        )
    report = market.settlement.reconcile(day, statement_csv(edited))
    assert sorted((m.reference, m.kind, m.ours, m.bank) for m in report.mismatches) == sorted(
        [
            (f"{withdrawal.id:032x}", "wrong_direction", 7_00, 7_00),
            (top_up[0], "wrong_currency", 10_00, 10_00),
        ]
    )
    assert report.matched == 2
    mixed = statement_csv(
        [(f"{withdrawal.id:032x}", "payout", 7_00, "CNY", "succeeded")] * 2
    )  # one payout, paid twice
    twice = market.settlement.reconcile(day, mixed)
    assert (f"{withdrawal.id:032x}", "amount_differs", 7_00, 14_00) in [
        (m.reference, m.kind, m.ours, m.bank) for m in twice.mismatches
    ]
    with pytest.raises(StatementInvalidError):
        market.settlement.reconcile(
            day, statement_csv([("a" * 32, "refund", 5, "CNY", "succeeded")])
        )


def test_an_unreadable_statement_is_refused(market: Market) -> None:
    day = market.settlement.today()
    with pytest.raises(StatementInvalidError):
        market.settlement.reconcile(day, b"ref,amount\nx,1\n")
    bad = statement_csv([("a" * 32, "charge", -5, "CNY", "succeeded")])
    with pytest.raises(StatementInvalidError):
        market.settlement.reconcile(day, bad)


def test_a_statement_with_a_line_that_cannot_be_read_is_refused_as_such(market: Market) -> None:
    """Odd lines of a bank's file: an amount no operation can have (above 2**63 - 1, or a
    reference's lines adding up beyond it) crashed the job with the store's overflow error, a
    line cut short (no status) or with a status no bank answers was taken for a line that
    did not succeed (its operation reported missing at the bank), and an amount spelt in
    fullwidth digits or as ``7_00`` was read as 700. Each is ``statement_invalid``; nothing
    is booked."""
    withdrawal = market.p.withdraw(market.customer, market.card, 7_00, CNY, key="w")
    ref = f"{withdrawal.id:032x}"
    day = market.settlement.today()
    header = ",".join(("reference", "direction", "amount", "currency", "status"))
    odd = [
        statement_csv([(ref, "payout", 2**63, CNY, "succeeded")]),
        statement_csv([("b" * 32, "charge", 2**64, CNY, "succeeded")]),
        statement_csv([(ref, "payout", 2**62, CNY, "succeeded")] * 2),
        f"{header}\n{ref},payout,700\n".encode(),
        f"{header}\n{ref},payout,700,CNY,succeeded,again\n".encode(),
        f"{header}\n{ref},payout,700,CNY,SUCCEEDED\n".encode(),
        f"{header}\n{ref},payout,\uff17\uff10\uff10,CNY,succeeded\n".encode(),
        f"{header}\n{ref},payout,7_00,CNY,succeeded\n".encode(),
    ]
    for statement in odd:
        with pytest.raises(StatementInvalidError):
            market.settlement.reconcile(day, statement)
    report = market.settlement.reconcile(day, market.world.bank.statement(day))
    assert report.clean and report.matched == 2  # the seed top-up and the withdrawal


def test_a_settlement_that_dies_half_way_is_finished_by_running_it_again(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    market.pay(60_00, "a")
    market.world.clock.advance(DAY_NS)
    p = market.p
    real_drive = p._drive

    def crash(op: object) -> object:
        raise SystemExit("killed after recording the settlement, before its payout")

    monkeypatch.setattr(p, "_drive", crash)
    with pytest.raises(SystemExit):
        market.settlement.settle()
    monkeypatch.setattr(p, "_drive", real_drive)
    assert market.receivable() == 60_00  # recorded, nothing paid yet
    [statement] = market.settlement.settle()  # the same business day, run again
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert statement.payout == 60_00 - 60
    assert market.receivable() == 0
    assert market.world.bank.sends[f"{statement.operation.id:032x}"] == 1


def test_timers_that_die_half_way_are_finished_by_running_them_again(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = market.checkout
    orders = []
    for k in range(3):
        order = c.create_order(
            market.customer, market.shop, 100_00, CNY, Fulfilment.INSTANT, "Tea", key=f"o{k}"
        )
        c.pay_order(order.id, market.customer, key=f"p{k}")
        c.ship_order(order.id, market.shop)
        orders.append(order.id)
    p = market.p
    real_drive = p._drive
    calls = {"n": 0}

    def crash_on_second(op: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("killed during the second release")
        return real_drive(op)  # type: ignore[arg-type]

    monkeypatch.setattr(p, "_drive", crash_on_second)
    with pytest.raises(SystemExit):
        c.run_timers()
    monkeypatch.setattr(p, "_drive", real_drive)
    p.recover()  # what start-up does: the second release was recorded, not moved
    c.run_timers()
    assert [c.order(o).status for o in orders] == ["finished"] * 3
    assert market.receivable() == 3 * (100_00 - 1_00)
    assert c.run_timers()["confirmed"] == 0


def test_the_daily_jobs_read_through_indexes_not_whole_tables(market: Market) -> None:
    """On SQLite, settling a day (what is due, what was settled, each statement) and
    reconciling it read operations and settlements by index: their cost follows the day's
    rows, not every row the store ever kept."""
    world = market.world
    if world.engine.dialect.name != "sqlite":
        return  # the plans are SQLite's; PostgreSQL has the same indexes
    market.pay(10_00, "a")
    market.p.top_up(market.customer, market.card, 5_00, CNY, key="t")
    day = market.settlement.today()
    world.clock.advance(DAY_NS)
    tables = ("payments_operations", "payments_settlements")

    def jobs() -> None:
        [statement] = market.settlement.settle()
        assert statement.gross == 10_00
        report = market.settlement.reconcile(day, world.bank.statement(day))
        assert report.clean

    found = plans_of(world.engine, tables, jobs)
    # The only walks: of the two partial indexes, which hold only what is owed (takings not
    # settled yet, payouts declined and not carried yet; see the test below).
    owed_indexes = (
        "ix_payments_operations_unsettled",
        "ix_payments_operations_declined_payouts",
    )
    scans = [line for _, lines in found for line in lines if line.startswith("SCAN ")]
    assert sorted(scans) == sorted(
        f"SCAN payments_operations USING INDEX {index}" for index in owed_indexes
    )
    # what is due, and payouts declined: walks of those indexes
    owed = [lines for sql, lines in found if "settlement_id IS NULL" in sql and "GROUP BY" in sql]
    assert sorted(lines[0] for lines in owed) == sorted(scans)
    # one merchant's due rows and declined payouts: its own rows of them
    mine = [lines for sql, lines in found if "merchant_id = ? AND" in sql and "IS NULL" in sql]
    assert sorted(lines[0] for lines in mine) == [
        "SEARCH payments_operations USING INDEX ix_payments_operations_declined_payouts"
        " (merchant_id=? AND currency=? AND day<?)",
        "SEARCH payments_operations USING INDEX ix_payments_operations_unsettled"
        " (merchant_id=? AND currency=? AND day<?)",
    ]
    # reconciliation: what the day's statement booked before (undone), what no statement has
    # booked yet (the partial index's rows up to the day), then what this one books, by id
    booked = [lines for sql, lines in found if "SET bank_day" in sql or "bank_day IS NULL" in sql]
    assert sorted(lines[0] for lines in booked) == sorted(
        [
            "SEARCH payments_operations USING INDEX ix_payments_operations_booked (bank_day=?)",
            "SEARCH payments_operations USING INDEX ix_payments_operations_unbooked (day<?)",
            "SEARCH payments_operations USING INDEX sqlite_autoindex_payments_operations_1 (id=?)",
        ]
    )


def test_the_settlement_walk_holds_only_what_is_owed(market: Market) -> None:
    """The partial indexes the daily job walks hold a row only while it is owed: settled
    takings leave; an order's payment, a refund and a completed payout never enter; a
    declined payout stays until a later settlement carries it. (The old ``unsettled`` index
    held every merchant operation without a settlement id — orders' payments, refunds,
    completed payouts — for ever: the walk read the whole history every day.)"""
    world = market.world
    if world.engine.dialect.name != "sqlite":
        return  # counted through SQLite's INDEXED BY; PostgreSQL has the same indexes
    from puhui.store import payments as tables

    def held(index: str, terms: tuple[str, ...]) -> int:
        with world.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    f"SELECT count(*) FROM payments_operations INDEXED BY {index}"
                    f" WHERE {' AND '.join(terms)}"
                ).scalar_one()
            )

    def owed() -> tuple[int, int]:
        return (
            held("ix_payments_operations_unsettled", tables.UNSETTLED_TERMS),
            held("ix_payments_operations_declined_payouts", tables.DECLINED_TERMS),
        )

    market.pay(20_00, "a")
    order = market.checkout.create_order(
        market.customer, market.shop, 30_00, CNY, Fulfilment.INSTANT, "tea", key="o"
    )
    market.checkout.pay_order(order.id, market.customer, key="po")
    refunded = market.checkout.create_order(
        market.customer, market.shop, 5_00, CNY, Fulfilment.EXPRESS, "cup", key="o2"
    )
    market.checkout.pay_order(refunded.id, market.customer, key="po2")
    refund = market.checkout.request_refund(refunded.id, market.customer, 5_00, "broken", key="r")
    market.checkout.answer_refund(refund.id, market.shop, approve=True)
    assert owed() == (1, 0)  # the merchant payment; not the orders' payments nor the refund
    world.clock.advance(DAY_NS)
    [statement] = market.settlement.settle()
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert owed() == (0, 0)  # settled; the completed payout never entered
    with world.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM payments_operations").scalar_one()
    assert total >= 6  # the history is there, but not in the walk

    market.pay(7_00, "b")
    world.clock.advance(DAY_NS)
    world.bank.failure_rate = 1.0
    [statement] = market.settlement.settle()
    assert statement.operation is not None and statement.operation.status is S.FAILED
    assert owed() == (0, 1)  # the declined payout, until carried
    world.bank.failure_rate = 0.0
    world.clock.advance(DAY_NS)
    [statement] = market.settlement.settle()
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert statement.payout == 7_00 - 7  # carried: paid (its fee was taken with it)
    assert owed() == (0, 0)


def test_a_settlement_whose_fee_takes_it_all_still_takes_the_fee_and_only_once(
    market: Market,
) -> None:
    """Half a fen's fee on one fen rounds up to the whole fen: nothing is paid out, but the
    fee must still move to fee revenue (before, the settlement only recorded it, and the next
    day's payout paid the merchant that money)."""
    p = market.p
    stall = p.register_merchant("Stall", "food", 5_000, "tok-stall").id  # 50 %
    op = p.pay_merchant(market.customer, merchant_qr(stall), 1, CNY, key="one-fen")
    assert op.status is S.COMPLETED
    market.world.clock.advance(DAY_NS)
    statements = market.settlement.settle()
    [statement] = [s for s in statements if s.merchant_id == stall]
    assert statement.fee == 1 and statement.payout == 0 and statement.operation is None
    assert p.merchant_balance(stall, CNY).posted == 0
    assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1
    assert market.settlement.settle() == statements  # a rerun takes nothing twice
    assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1
    market.world.clock.advance(DAY_NS)
    later = [s for s in market.settlement.settle() if s.merchant_id == stall]
    assert later == []  # nothing owed is left over for the next day
    assert p.merchant_balance(stall, CNY).posted == 0


# --- settlement racing payments, releases and refunds --------------------------------------------


def _settle_while(
    market: Market, monkeypatch: pytest.MonkeyPatch, kind: OperationKind
) -> list[SettlementStatement]:
    """Arrange for the settlement job to run while an operation of ``kind`` is half done: its
    money has moved in the ledger, its record is not ``completed`` yet (the job runs in
    another process; this is the interleaving, made deterministic). Returns what it paid."""
    p = market.p
    real_finish = p._finish
    ran: list[SettlementStatement] = []

    def finish(op: Operation, status: OperationStatus, **kwargs: Any) -> Operation:
        if op.kind is kind and status is S.COMPLETED and not ran:
            ran.extend(market.settlement.settle())
        return real_finish(op, status, **kwargs)

    monkeypatch.setattr(p, "_finish", finish)
    return ran


def _paid_out(market: Market) -> int:
    """What the bank paid to merchants' settlement accounts."""
    return sum(
        amount
        for _, direction, amount, _, status in market.world.bank.records()
        if direction == "payout" and status == "succeeded"
    )


@pytest.mark.parametrize("first", ["zero", "positive"])
def test_two_runs_of_a_day_one_with_nothing_to_pay_out_one_with_a_payout(
    market: Market, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Two runs of the same day (two servers) for a merchant whose only taking is one fen,
    all of it fee: run A reads it (nothing to pay out); then a payment of yesterday, held for
    review, is approved; then run B reads both (a payout). Whichever records first, the other
    used to go wrong: B after A raised a raw ``IntegrityError`` out of ``settle()``, and A
    after B took the fee of B's settlement a second time (B's payout had taken it). The loser
    now finishes the winner's settlement; the late payment is paid by whichever read it —
    B's settlement if it won, the next day's run if A's did. Nothing is paid twice, no fee is
    taken twice, nothing is lost."""
    p = market.p
    stall = p.register_merchant("Stall", "food", 5_000, "tok-stall").id  # 50 %
    qr = merchant_qr(stall)
    assert p.pay_merchant(market.customer, qr, 1, CNY, key="one-fen").status is S.COMPLETED
    market.world.risk.next = [Decision.REVIEW]
    late = p.pay_merchant(market.customer, qr, 100_00, CNY, key="late")
    assert late.status is S.CHALLENGED
    market.world.clock.advance(DAY_NS)
    day = market.settlement.today()
    run_a, run_b = Settlement(p), Settlement(p)
    a_read, a_go = threading.Event(), threading.Event()
    a_thread: list[threading.Thread] = []
    real_new_id = p.new_id
    paused: set[str] = set()

    def new_id() -> int:
        """Called by a run once it has read what it owes, before it records it."""
        me = threading.current_thread().name
        if me not in paused:
            paused.add(me)
            if me == "run-a":
                a_read.set()
                assert a_go.wait(30)
            elif first == "zero":  # run B, having read: let A record first
                a_go.set()
                a_thread[0].join(30)
        return real_new_id()

    monkeypatch.setattr(p, "new_id", new_id)
    failures: list[BaseException] = []

    def run(settlement: Settlement) -> None:
        try:
            settlement.settle(day)
        except BaseException as error:  # the thread's outcome, for the test to see
            failures.append(error)

    a_thread.append(threading.Thread(target=run, args=(run_a,), name="run-a"))
    a_thread[0].start()
    assert a_read.wait(30)
    assert p.decide_review(late.id, approve=True).status is S.COMPLETED  # completes now
    run(run_b)  # B reads both
    a_go.set()  # B recorded first ("positive"): now A records
    a_thread[0].join(30)
    assert not a_thread[0].is_alive()
    assert failures == []
    monkeypatch.setattr(p, "new_id", real_new_id)

    [statement] = [s for s in market.settlement.settle(day) if s.merchant_id == stall]
    if first == "zero":
        assert (statement.gross, statement.payout, statement.operation) == (1, 0, None)
    else:
        assert (statement.gross, statement.payout) == (100_01, 100_01 - fee(100_01, 5_000))
    market.world.clock.advance(DAY_NS)
    later = [s for s in market.settlement.settle() if s.merchant_id == stall]
    statements = [statement, *later]
    if first == "zero":  # the late payment waited for the next day's run
        assert [line.operation_id for line in later[0].lines] == [late.id]
    else:
        assert later == []
    assert p.merchant_balance(stall, CNY).posted == 0
    fees = p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted
    assert fees == sum(s.fee for s in statements)
    assert _paid_out(market) == sum(s.payout for s in statements) == 100_01 - fees
    assert all(n == 1 for n in market.world.bank.sends.values())


def test_a_payment_completing_during_the_settlement_is_not_paid_out_with_it(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's payment whose money reached the merchant's account while the job ran (its
    record not completed yet) is not due: the payout is what the settled items add up to.
    The payout used to be the account's balance less what the job had read as not due, so
    the money of a payment in flight went out a day early, its fee never taken."""
    market.pay(100_00, "a")
    market.world.clock.advance(DAY_NS)
    ran = _settle_while(market, monkeypatch, OperationKind.MERCHANT_PAYMENT)
    market.pay(50_00, "b")  # today's; the job runs while it completes
    [statement] = ran
    assert [line.amount for line in statement.lines] == [100_00]
    assert (statement.gross, statement.fee, statement.payout) == (100_00, 1_00, 99_00)
    assert statement.operation is not None and statement.operation.status is S.COMPLETED
    assert _paid_out(market) == 99_00
    assert market.receivable() == 50_00  # today's payment, whole, for tomorrow
    market.world.clock.advance(DAY_NS)
    [tomorrow] = market.settlement.settle()
    assert (tomorrow.gross, tomorrow.fee, tomorrow.payout) == (50_00, 50, 49_50)
    assert _paid_out(market) == 99_00 + 49_50
    assert market.p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1_50
    assert market.receivable() == 0


def test_a_due_payment_completing_during_the_settlement_waits_for_the_next_one(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Yesterday's payment held for a challenge, passed while the job runs: the job read it
    as not completed, so it is not in this settlement — and neither is its money."""
    market.pay(100_00, "a")
    clock = market.world.clock
    day = market.settlement.today()
    assert _to_end_of_day(market, 120) == day  # 23:58 of the business day
    market.world.risk.next = [Decision.CHALLENGE]
    held = market.p.pay_merchant(market.customer, merchant_qr(market.shop), 40_00, CNY, key="b")
    assert held.status is S.CHALLENGED
    clock.advance(180 * 10**9)  # passed at 00:01, well within the time to answer
    assert market.settlement.today() == day + 1
    ran = _settle_while(market, monkeypatch, OperationKind.MERCHANT_PAYMENT)
    assert market.p.verify_challenge(held.id, passed=True).status is S.COMPLETED
    [statement] = ran
    assert (statement.gross, statement.fee, statement.payout) == (100_00, 1_00, 99_00)
    assert market.receivable() == 40_00
    assert market.settlement.settle() == ran  # the same day again: nothing more
    market.world.clock.advance(DAY_NS)
    [tomorrow] = market.settlement.settle()
    assert [line.operation_id for line in tomorrow.lines] == [held.id]
    assert (tomorrow.gross, tomorrow.fee, tomorrow.payout) == (40_00, 40, 39_60)
    assert _paid_out(market) == 99_00 + 39_60
    assert market.p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1_40
    assert market.receivable() == 0


def test_a_release_completing_during_the_settlement_is_not_paid_out_with_it(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    market.pay(100_00, "a")
    c = market.checkout
    order = c.create_order(
        market.customer, market.shop, 300_00, CNY, Fulfilment.INSTANT, "Tea", key="o"
    )
    c.pay_order(order.id, market.customer, key="p")
    c.ship_order(order.id, market.shop)
    market.world.clock.advance(DAY_NS)
    ran = _settle_while(market, monkeypatch, OperationKind.ESCROW_RELEASE)
    c.confirm_receipt(order.id, market.customer)  # escrow → merchant while the job runs
    [statement] = ran
    assert (statement.gross, statement.fee, statement.payout) == (100_00, 1_00, 99_00)
    assert market.receivable() == 300_00 - 3_00
    market.world.clock.advance(DAY_NS)
    [tomorrow] = market.settlement.settle()
    assert (tomorrow.gross, tomorrow.fee, tomorrow.payout) == (300_00, 3_00, 297_00)
    assert _paid_out(market) == 99_00 + 297_00
    assert market.receivable() == 0


def test_a_refund_during_the_settlement_leaves_it_alone(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refunds come out of escrow, never out of the merchant's receivable: one paid while the
    job runs changes neither what is settled nor what is paid out."""
    market.pay(100_00, "a")
    c = market.checkout
    order = c.create_order(
        market.customer, market.shop, 30_00, CNY, Fulfilment.EXPRESS, "Cup", key="o"
    )
    c.pay_order(order.id, market.customer, key="p")
    market.world.clock.advance(DAY_NS)
    refund = c.request_refund(order.id, market.customer, 30_00, "broken", key="r")
    ran = _settle_while(market, monkeypatch, OperationKind.REFUND)
    c.answer_refund(refund.id, market.shop, approve=True)
    [statement] = ran
    assert (statement.gross, statement.fee, statement.payout) == (100_00, 1_00, 99_00)
    assert c.order(order.id).status == "closed"
    assert market.receivable() == 0
    assert market.p.platform_balance(AccountCode.ESCROW, CNY).posted == 0


# --- the settlement's own fee ---------------------------------------------------------------------


def _settlement_fees(market: Market) -> list[int]:
    """The amounts of every settlement-fee transfer the ledger holds."""
    found = market.world.ledger.query_transfers(
        QueryFilter(
            user_data_128=0,
            user_data_64=0,
            user_data_32=0,
            ledger=currency(CNY).ledger,
            code=TransferCode.SETTLEMENT_FEE,
            timestamp_min=0,
            timestamp_max=0,
            limit=100,
            flags=QueryFilterFlags.NONE,
        )
    )
    return sorted(t.amount for t in found)


def test_a_settlement_without_a_fee_of_its_own_moves_no_fee(market: Market) -> None:
    """No settlement writes a fee transfer of nothing: not one whose merchant pays no fee
    (a payout without a fee leg), nor one whose items' fees were all taken at release and
    whose payout is nothing (the fee was the whole sale)."""
    p, c = market.p, market.checkout
    free = p.register_merchant("Free", "food", 0, "tok-free").id
    assert p.pay_merchant(market.customer, merchant_qr(free), 10_00, CNY, key="f").status is (
        S.COMPLETED
    )
    whole = p.register_merchant("Whole", "food", 10_000, "tok-whole").id  # 100 %
    order = c.create_order(market.customer, whole, 2_00, CNY, Fulfilment.INSTANT, "Tea", key="o")
    c.pay_order(order.id, market.customer, key="p")
    c.ship_order(order.id, whole)
    c.confirm_receipt(order.id, market.customer)
    assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 2_00  # at release
    market.world.clock.advance(DAY_NS)
    statements = {s.merchant_id: s for s in market.settlement.settle()}
    paid = statements[free]
    assert (paid.gross, paid.fee, paid.payout) == (10_00, 0, 10_00)
    assert paid.operation is not None and paid.operation.status is S.COMPLETED
    nothing = statements[whole]
    assert (nothing.gross, nothing.fee, nothing.payout, nothing.operation) == (2_00, 2_00, 0, None)
    assert market.settlement.settle() == list(statements.values())
    assert _settlement_fees(market) == []
    assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 2_00
    assert p.merchant_balance(free, CNY).posted == p.merchant_balance(whole, CNY).posted == 0


def test_a_settlement_cut_short_before_its_own_fee_takes_it_once_when_run_again(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settlement with nothing to pay out is recorded, then its fee is taken: a crash in
    between is finished by running the job for the same day again — once, however often."""
    p = market.p
    stall = p.register_merchant("Stall", "food", 5_000, "tok-stall").id  # 50 %
    assert p.pay_merchant(market.customer, merchant_qr(stall), 1, CNY, key="one").status is (
        S.COMPLETED
    )
    market.world.clock.advance(DAY_NS)
    real_take_fee = Settlement._take_fee

    def crash(self: Settlement, settlement: object) -> None:
        raise SystemExit("killed after recording the settlement, before its fee")

    monkeypatch.setattr(Settlement, "_take_fee", crash)
    with pytest.raises(SystemExit):
        market.settlement.settle()
    monkeypatch.setattr(Settlement, "_take_fee", real_take_fee)
    assert p.merchant_balance(stall, CNY).posted == 1  # recorded, its fee not taken yet
    for _ in range(3):
        [statement] = [s for s in market.settlement.settle() if s.merchant_id == stall]
        assert (statement.fee, statement.payout, statement.operation) == (1, 0, None)
    assert _settlement_fees(market) == [1]
    assert p.merchant_balance(stall, CNY).posted == 0
    assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1


def test_a_settlement_cut_short_before_its_own_fee_is_finished_by_the_next_days_run(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crash, but the job is not run again for that day: the next day's run (which
    has nothing else to settle for the merchant) takes the fee, once."""
    p = market.p
    stall = p.register_merchant("Stall", "food", 5_000, "tok-stall").id  # 50 %
    assert p.pay_merchant(market.customer, merchant_qr(stall), 1, CNY, key="one").status is (
        S.COMPLETED
    )
    market.world.clock.advance(DAY_NS)
    with monkeypatch.context() as killed:
        killed.setattr(Settlement, "_take_fee", _killed_before_the_fee)
        with pytest.raises(SystemExit):
            market.settlement.settle()
    assert p.merchant_balance(stall, CNY).posted == 1  # recorded, its fee not taken yet
    taken: list[Any] = []
    take_fee = Settlement._take_fee

    def counted(self: Settlement, settlement: Any) -> None:
        taken.append(settlement)
        take_fee(self, settlement)

    monkeypatch.setattr(Settlement, "_take_fee", counted)
    for _ in range(2):
        market.world.clock.advance(DAY_NS)
        assert [s for s in market.settlement.settle() if s.merchant_id == stall] == []
        assert _settlement_fees(market) == [1]
        assert p.merchant_balance(stall, CNY).posted == 0
        assert p.platform_balance(AccountCode.FEE_REVENUE, CNY).posted == 1
    assert len(taken) == 1  # the second day finds the fee there: nothing written again


def _killed_before_the_fee(self: Settlement, settlement: object) -> None:
    raise SystemExit("killed after recording the settlement, before its fee")


# --- reconciliation by the day the bank booked it ---------------------------------------------


def _to_end_of_day(market: Market, seconds_left: int) -> int:
    """Move the clock to ``seconds_left`` before the end of its business day; that day."""
    clock = market.world.clock
    local_ns = clock.now_ns() + market.p.options.day_offset_s * 10**9
    clock.advance(DAY_NS - seconds_left * 10**9 - local_ns % DAY_NS)
    return market.settlement.today()


def _lines(statement: bytes) -> list[tuple[str, str, int, str, str]]:
    rows = list(csv.reader(io.StringIO(statement.decode())))[1:]
    return [
        (ref, direction, int(amount), code, status) for ref, direction, amount, code, status in rows
    ]


def test_a_payout_straddling_midnight_reconciles_on_the_day_the_bank_booked_it(
    market: Market,
) -> None:
    """A withdrawal and a settlement payout sent at 23:59:59 and confirmed by the bank after
    midnight are on the next day's statement. Reconciliation keyed our side by the day the
    operations were recorded: both were missing at the bank on the first day and extra at
    the bank on the second."""
    world, p = market.world, market.p
    market.pay(100_00, "a")
    world.clock.advance(DAY_NS)
    noon = p.withdraw(market.customer, market.card, 3_00, CNY, key="noon")
    assert noon.status is S.COMPLETED
    day = _to_end_of_day(market, 1)
    world.bank.processing_rate = 1.0  # the bank confirms 5 s later: after midnight
    withdrawal = p.withdraw(market.customer, market.card, 7_00, CNY, key="w")
    [statement] = market.settlement.settle()
    world.bank.processing_rate = 0.0
    payout = statement.operation
    assert payout is not None
    assert withdrawal.status is payout.status is S.AWAITING_BANK
    world.clock.advance(60 * 10**9)
    assert market.settlement.today() == day + 1
    assert p.recover() == {"completed": 2}
    first = market.settlement.reconcile(day, world.bank.statement(day))
    assert (first.mismatches, first.matched) == ((), 1)  # the noon withdrawal
    second = market.settlement.reconcile(day + 1, world.bank.statement(day + 1))
    assert (second.mismatches, second.matched) == ((), 2)  # the two sent before midnight


def test_a_withdrawal_sent_days_after_it_was_recorded_reconciles_on_the_day_the_bank_booked_it(
    market: Market,
) -> None:
    """A withdrawal held for an analyst goes to the bank the day it is approved; it was
    missing at the bank on the day it was recorded and extra on the day the bank paid it."""
    world, p = market.world, market.p
    day = market.settlement.today()
    world.risk.next = [Decision.REVIEW]
    held = p.withdraw(market.customer, market.card, 7_00, CNY, key="w")
    assert held.status is S.CHALLENGED
    world.clock.advance(2 * DAY_NS)
    assert p.decide_review(held.id, approve=True).status is S.COMPLETED
    reports = [
        market.settlement.reconcile(d, world.bank.statement(d)) for d in (day, day + 1, day + 2)
    ]
    assert [(r.mismatches, r.matched) for r in reports] == [((), 1), ((), 0), ((), 1)]


def test_reconciliation_by_the_bank_day_still_reports_what_the_bank_did_not_book(
    market: Market,
) -> None:
    """Waiting for the statement that books a payout confirmed after midnight hides nothing:
    left off that statement too, it is missing there (the day its outcome reached us); a
    corrected file replaces the report; booked again on a later day, it is extra there; and
    a withdrawal answered at once and left off its own day's statement is missing that day."""
    world, p = market.world, market.p
    day = _to_end_of_day(market, 1)
    world.bank.processing_rate = 1.0
    late = p.withdraw(market.customer, market.card, 7_00, CNY, key="late")
    world.bank.processing_rate = 0.0
    world.clock.advance(60 * 10**9)
    assert p.recover() == {"completed": 1}
    assert p.withdraw(market.customer, market.card, 2_00, CNY, key="next").status is S.COMPLETED
    reconcile, statement = market.settlement.reconcile, world.bank.statement
    first = reconcile(day, statement(day))
    assert (first.mismatches, first.matched) == ((), 1)  # the top-up that funded the shopper
    ref = f"{late.id:032x}"
    without = statement_csv([line for line in _lines(statement(day + 1)) if line[0] != ref])
    report = reconcile(day + 1, without)
    assert [(m.reference, m.kind, m.ours, m.bank) for m in report.mismatches] == [
        (ref, "missing_at_bank", 7_00, None)
    ]
    assert report.matched == 1
    fixed = reconcile(day + 1, statement(day + 1))
    assert (fixed.mismatches, fixed.matched) == ((), 2)
    world.clock.advance(DAY_NS)
    gone = p.withdraw(market.customer, market.card, 1_00, CNY, key="gone")
    assert gone.status is S.COMPLETED and market.settlement.today() == day + 2
    today = reconcile(day + 2, statement(day + 2, drop=1))
    assert [(m.reference, m.kind) for m in today.mismatches] == [
        (f"{gone.id:032x}", "missing_at_bank")
    ]
    again = reconcile(day + 3, statement_csv([(ref, "payout", 7_00, CNY, "succeeded")]))
    assert [(m.reference, m.kind) for m in again.mismatches] == [(ref, "extra_at_bank")]


def test_one_merchant_whose_settlement_fails_does_not_keep_the_others_from_theirs(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first merchant's settlement fails (a race with another day's run, say): the run
    used to stop there, leaving every merchant after it unpaid until a rerun. Now the others
    are settled, the failure is logged and raised at the end, and the rerun settles it."""
    p = market.p
    first = market.shop
    second = p.register_merchant("Noodles", "food", 100, "tok-noodles").id
    assert first < second  # the run goes in merchant order: the failing one first
    market.pay(100_00, "a")
    op = p.pay_merchant(market.customer, merchant_qr(second), 40_00, CNY, key="b")
    assert op.status is S.COMPLETED
    market.world.clock.advance(DAY_NS)
    settle_one = Settlement._settle_one

    def fail_the_first(self: Settlement, merchant_id: int, code: str, day: int) -> None:
        if merchant_id == first:
            raise PaymentsError("settlement raced with another run; run it again")
        settle_one(self, merchant_id, code, day)

    with monkeypatch.context() as m:
        m.setattr(Settlement, "_settle_one", fail_the_first)
        with pytest.raises(PaymentsError, match="raced"):
            market.settlement.settle()
    assert "settlement of merchant" in caplog.text
    assert p.merchant_balance(second, CNY).posted == 0  # paid out: 40.00 less its fee
    assert market.receivable() == 100_00  # the failed one still owed
    statements = market.settlement.settle()  # the rerun
    assert sorted((s.merchant_id, s.payout) for s in statements) == [
        (first, 99_00),
        (second, 39_60),
    ]
    assert market.receivable() == 0
