"""Merchant settlement (T+1) and reconciliation with the bank's statement.

**Settlement.** ``settle(day)`` pays each merchant, per currency, what became due before
business day ``day``: its merchant payments (less the fee, taken now, one rounding per
settlement) and its escrow releases (their fee was taken at release), plus anything an
earlier payout failed to pay. The payout is a held transfer (merchant receivable → bank
settlement) sent to the bank like a withdrawal: posted when the bank pays, voided (the money
stays owed) when it does not. One settlement per merchant, currency and day — running the
job again, or after a crash half-way, finishes what is there and pays nothing twice.

**Reconciliation.** ``reconcile(day, statement)`` compares the bank's statement file of a
business day with what our records say moved through the bank (completed top-ups,
withdrawals and settlement payouts), keyed by the day the bank booked each reference — the
statement it is on, which may be a day after the operation's own — and records every
difference: missing at the bank, extra at the bank, amount differs, money moved the wrong
way or in another currency. It changes no money: differences are for people to look at.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa

from puhui.ledger import CreateTransferStatus, Transfer
from puhui.money import currency
from puhui.store import payments as t

from ._errors import InvalidPayloadError, PaymentsError
from .funding import STATEMENT_COLUMNS, BankDirection, BankStatus
from .model import (
    AMOUNT_MAX,
    AccountCode,
    OperationKind,
    TransferCode,
    business_day,
    fee,
    merchant_account_id,
    platform_account_id,
    transfer_id,
)
from .service import INTERNAL, Operation, Payments, _hex

log = logging.getLogger(__name__)

_DUE_KINDS = (str(OperationKind.MERCHANT_PAYMENT), str(OperationKind.ESCROW_RELEASE))
_UNSETTLED_INDEX: Final = "ix_payments_operations_unsettled"
_DECLINED_INDEX: Final = "ix_payments_operations_declined_payouts"
_UNBOOKED_INDEX: Final = "ix_payments_operations_unbooked"


def _from(conn: sa.Connection, index: str) -> str:
    """The operations table, on SQLite read by the partial index ``index``: its planner,
    without statistics, would take an equality on ``status`` by the (status, created_at_ns)
    index — every completed operation ever — over a walk of the small partial index (and
    says so, an error rather than a slow walk, should a change of the terms make the index
    unusable). PostgreSQL's planner knows the partial indexes' sizes."""
    name = t.operations.name
    return f"{name} INDEXED BY {index}" if conn.dialect.name == "sqlite" else name


def _owed(conn: sa.Connection, index: str, terms: tuple[str, ...]) -> sa.TextClause:
    """The (merchant, currency) pairs with rows of a partial index (its condition's
    ``terms``, verbatim) before ``:day``: a walk of what is owed, not of the history."""
    return sa.text(
        f"SELECT merchant_id, currency FROM {_from(conn, index)}"
        f" WHERE {' AND '.join(terms)} AND day < :day GROUP BY merchant_id, currency"
    )


def _merchants(conn: sa.Connection, index: str, terms: tuple[str, ...]) -> sa.TextClause:
    """One merchant's rows (``:merchant``, ``:currency``) of a partial index before ``:day``."""
    return sa.text(
        f"SELECT id, kind, amount, fee, day FROM {_from(conn, index)}"
        f" WHERE merchant_id = :merchant AND currency = :currency"
        f" AND {' AND '.join(terms)} AND day < :day"
    )


def _unbooked(conn: sa.Connection) -> sa.TextClause:
    """The completed bank operations no statement has booked, recorded on ``:day`` or
    before: a walk of the partial index of what is not booked yet, not of the history."""
    return sa.text(
        f"SELECT id, kind, amount, currency, updated_at_ns FROM {_from(conn, _UNBOOKED_INDEX)}"
        f" WHERE {' AND '.join(t.UNBOOKED_TERMS)} AND day <= :day"
    )


_BOOKED_IDS_PER_UPDATE_MAX: Final = 1_000
"""Most operation ids one statement marks booked (a day's statement is marked in parts)."""
_LEG_FEE: Final = 2
FEE_LOOKBACK_DAYS: Final = 7
"""How many days back a settlement run finishes the fees of settlements without a payout
that a crash cut short (the job runs daily: the next day's run is enough)."""
"""The leg of a settlement's own fee when it has no payout (its transfer id is the settlement
id's, as an operation's fee leg is the operation's)."""


class StatementInvalidError(InvalidPayloadError):
    """The bank's statement file cannot be read (columns, amounts)."""

    code = "statement_invalid"


class SettlementNotFoundError(PaymentsError):
    code = "settlement_not_found"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One item of a merchant's settlement statement."""

    operation_id: int
    kind: OperationKind
    day: int
    amount: int
    """Gross amount of the payment or release."""
    fee: int
    """Fee already taken (escrow releases); merchant payments' fee is the settlement's."""


@dataclass(frozen=True, slots=True)
class SettlementStatement:
    merchant_id: int
    currency: str
    day: int
    """The business day the settlement ran (it covers items of earlier days)."""
    lines: tuple[StatementLine, ...]
    gross: int
    fee: int
    """All fees on these items: taken at release, plus the settlement's own."""
    payout: int
    """What was sent to the merchant's bank account (includes carry-over of failed payouts)."""
    operation: Operation | None
    """The payout operation (its status says whether the bank paid)."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    reference: str
    kind: str
    """``missing_at_bank``, ``extra_at_bank`` (also a reference the bank booked on an earlier
    day already), ``amount_differs``, ``wrong_direction`` (the bank charged where we paid
    out, or the reverse) or ``wrong_currency``."""
    ours: int | None
    bank: int | None


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    day: int
    matched: int
    mismatches: tuple[Mismatch, ...]
    statement_sha256: str

    @property
    def clean(self) -> bool:
        return not self.mismatches


class Settlement:
    """Settlement and reconciliation jobs over a ``Payments`` service."""

    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.engine = payments.engine
        self.clock = payments.clock

    def today(self) -> int:
        return business_day(self.clock.now_ns(), self.payments.options)

    # --- settlement -----------------------------------------------------------------------------

    def settle(self, day: int | None = None) -> list[SettlementStatement]:
        """Settle every merchant for business day ``day`` (default: today): pay out what was
        completed before it. Returns the statements of the settlements this day has.

        A merchant whose settlement fails (a race with another run, a partner or store
        fault) does not keep the others from theirs: each failure is logged, the run goes on,
        and the first failure is raised at the end (the rerun of the day, safe at any time,
        settles what is left)."""
        day = self.today() if day is None else day
        with self.engine.connect() as conn:
            # what is owed: the partial indexes' own rows (their conditions' terms verbatim),
            # which hold only takings not settled yet and payouts declined and not carried
            # yet — the walk follows what is owed, not the history
            at = {"day": day}
            due = conn.execute(_owed(conn, _UNSETTLED_INDEX, t.UNSETTLED_TERMS), at).all()
            # payouts the bank declined: the money is owed even when the merchant has sold
            # nothing since
            declined = conn.execute(_owed(conn, _DECLINED_INDEX, t.DECLINED_TERMS), at).all()
            done = conn.execute(
                sa.select(t.settlements.c.merchant_id, t.settlements.c.currency).where(
                    t.settlements.c.day == day
                )
            ).all()
            # settlements of the days before without a payout (their fee is taken after they
            # are recorded): a crash in between, then no rerun of that day, would leave their
            # fee untaken for ever; a run takes it (once: its transfer id is the settlement's)
            unpaid = conn.execute(
                sa.select(t.settlements).where(
                    t.settlements.c.day >= day - FEE_LOOKBACK_DAYS,
                    t.settlements.c.day < day,
                    t.settlements.c.operation_id.is_(None),
                    t.settlements.c.fee > 0,
                )
            ).all()
        if unpaid:  # those whose fee transfer is there already: nothing to write
            fee_ids = [transfer_id(int(r.id, 16), _LEG_FEE) for r in unpaid]
            taken = {found.id for found in self.payments.ledger.lookup_transfers(fee_ids)}
            for settlement, fee_id in zip(unpaid, fee_ids, strict=True):
                if fee_id not in taken:
                    self._take_fee(settlement)
        owed = {(r[0], r[1]) for r in due} | {(r[0], r[1]) for r in declined}
        failed: list[Exception] = []
        for merchant_id, code in sorted(owed | {(r[0], r[1]) for r in done}):
            try:
                self._settle_one(int(merchant_id), code, day)
            except Exception as error:
                log.exception(
                    "settlement of merchant %s (%s) for day %s failed", merchant_id, code, day
                )
                failed.append(error)
        if failed:
            raise failed[0]
        return [self.statement(m, c, day) for m, c in self._settled(day)]

    def _settled(self, day: int) -> list[tuple[int, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.settlements.c.merchant_id, t.settlements.c.currency)
                .where(t.settlements.c.day == day)
                .order_by(t.settlements.c.merchant_id, t.settlements.c.currency)
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def _recorded(self, merchant_id: int, currency_code: str, day: int) -> sa.Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(t.settlements).where(
                    t.settlements.c.merchant_id == merchant_id,
                    t.settlements.c.currency == currency_code,
                    t.settlements.c.day == day,
                )
            ).first()

    def _finish_recorded(self, recorded: sa.Row[Any]) -> None:
        """Finish a recorded settlement (a crash may have cut it short, another run may be
        finishing it): drive its payout, or take its own fee when it has none."""
        if recorded.operation_id is not None:
            payments = self.payments
            payments._drive(payments.operation(int(recorded.operation_id, 16)))
        else:
            self._take_fee(recorded)

    def _settle_one(self, merchant_id: int, currency_code: str, day: int) -> None:
        payments = self.payments
        existing = self._recorded(merchant_id, currency_code, day)
        if existing is not None:  # recorded before: finish what a crash cut short
            self._finish_recorded(existing)
            return
        merchant = payments.merchant(merchant_id)
        if merchant.frozen:
            # Frozen (an investigation, say): nothing is paid out. What it is owed stays owed
            # (the walk's rows are untouched) and is settled by the first run after it thaws.
            return
        cur = currency(currency_code)
        o = t.operations.c
        with self.engine.connect() as conn:
            # this merchant's own rows of the partial indexes (not its whole history): its
            # takings completed before ``day`` and not settled yet, and the payouts the bank
            # declined (final, their hold voided before they were recorded failed), carried
            # into this one. A taking still on its way (its money moved, its record not
            # completed yet) is not among them, and is not paid out: the payout is what
            # exactly these rows add up to, and these rows are what ``record`` marks settled.
            mine = {"merchant": merchant_id, "currency": cur.code, "day": day}
            declined = conn.execute(_merchants(conn, _DECLINED_INDEX, t.DECLINED_TERMS), mine).all()
            due = conn.execute(_merchants(conn, _UNSETTLED_INDEX, t.UNSETTLED_TERMS), mine).all()
        if not due and not declined:  # settled by a run of another day meanwhile
            return
        gross_payments = sum(r.amount for r in due if r.kind == OperationKind.MERCHANT_PAYMENT)
        settlement_fee = fee(gross_payments, merchant.fee_bps)
        # each item's net (releases: their fee was taken at release), less the settlement's
        # fee, plus what the declined payouts left owed (their fee went with them)
        payout = (
            sum(r.amount - r.fee for r in due) - settlement_fee + sum(r.amount for r in declined)
        )
        if payout < 0:  # a fee is at most its amount: a bug, not a state of the books
            raise RuntimeError(f"settlement of merchant {merchant_id} on {day}: payout {payout}")
        settlement_id = payments.new_id()
        now = self.clock.now_ns()

        def record(conn: sa.Connection, operation_id: int | None) -> None:
            conn.execute(
                t.settlements.insert().values(
                    id=_hex(settlement_id),
                    merchant_id=merchant_id,
                    currency=cur.code,
                    day=day,
                    gross=sum(r.amount for r in due),
                    fee=settlement_fee + sum(r.fee for r in due),
                    payout=payout,
                    items=len(due),
                    operation_id=None if operation_id is None else _hex(operation_id),
                    created_at_ns=now,
                )
            )
            marked = conn.execute(
                t.operations.update()
                .where(o.id.in_([r.id for r in due]), o.settlement_id.is_(None))
                .values(settlement_id=_hex(settlement_id))
            ).rowcount
            carried = (
                conn.execute(
                    t.operations.update()
                    .where(o.id.in_([r.id for r in declined]), o.settlement_id.is_(None))
                    .values(settlement_id=_hex(settlement_id))
                ).rowcount
                if declined
                else 0
            )
            if marked != len(due) or carried != len(declined):
                raise PaymentsError("settlement raced with another run; run it again")

        # Another run of the day (another server) may record its settlement between our
        # read and our write, from other rows (a taking completed in between): there is one
        # per merchant, currency and day, so ours is refused (the unique key) and the loser
        # finishes the winner's, whatever either computed — its payout, or its own fee when
        # it has none, never both. A taking the winner did not read waits for the next
        # day's run.
        op: Operation | None = None
        try:
            if payout == 0:  # nothing to send (the fees took it all: a fee rounded up to
                # the whole of a tiny sale): recorded, then its own fee taken (no payout)
                with self.engine.begin() as conn:
                    record(conn, None)
            else:  # (two runs with a payout each meet on the operation's key: the loser's
                # answer is the winner's operation)
                op = payments._record(
                    OperationKind.SETTLEMENT,
                    "settlement",
                    f"{merchant_id}:{cur.code}:{day}",
                    {"merchant": merchant_id, "currency": cur.code, "day": day},
                    INTERNAL,
                    cur,
                    payout,
                    merchant_id=merchant_id,
                    fee=settlement_fee,
                    within=record,
                )
        except sa.exc.IntegrityError:
            if self._recorded(merchant_id, cur.code, day) is None:
                raise  # not this settlement's key: not the race above
        if op is not None:
            payments._drive(op)
            return
        recorded = self._recorded(merchant_id, cur.code, day)
        assert recorded is not None  # ours or the winner's, just read
        self._finish_recorded(recorded)

    def _take_fee(self, settlement: sa.Row[Any]) -> None:
        """Take the own fee of a settlement without a payout (its fee less the fees its items
        had taken at release): merchant receivable → fee revenue, under a transfer id of the
        settlement's, so a rerun takes it once. A payout carries its fee in its own chain."""
        o = t.operations.c
        with self.engine.connect() as conn:
            item_fees = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(o.fee), 0)).where(
                    o.settlement_id == settlement.id, o.kind.in_(_DUE_KINDS)
                )
            ).scalar_one()
        own = int(settlement.fee) - int(item_fees)
        if own <= 0:
            return
        cur = currency(str(settlement.currency))
        [result] = self.payments.ledger.create_transfers(
            [
                Transfer(
                    id=transfer_id(int(settlement.id, 16), _LEG_FEE),
                    debit_account_id=merchant_account_id(int(settlement.merchant_id), cur),
                    credit_account_id=platform_account_id(AccountCode.FEE_REVENUE, cur),
                    amount=own,
                    user_data_128=int(settlement.id, 16),
                    ledger=cur.ledger,
                    code=TransferCode.SETTLEMENT_FEE,
                )
            ]
        )
        if result.status not in (CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS):
            raise PaymentsError(
                f"the fee of settlement {settlement.id} could not be taken:"
                f" {result.status.name.lower()}"
            )

    def statement(self, merchant_id: int, currency_code: str, day: int) -> SettlementStatement:
        """The statement of a merchant's settlement on ``day``: its items and its payout."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.settlements).where(
                    t.settlements.c.merchant_id == merchant_id,
                    t.settlements.c.currency == currency_code,
                    t.settlements.c.day == day,
                )
            ).first()
            if row is None:
                raise SettlementNotFoundError(f"no settlement of merchant {merchant_id} on {day}")
            items = conn.execute(
                sa.select(t.operations)
                .where(  # the merchant too: the (merchant_id, settlement_id) index
                    t.operations.c.merchant_id == merchant_id,
                    t.operations.c.settlement_id == row.id,
                    # not the declined payouts this settlement carried over
                    t.operations.c.kind.in_(_DUE_KINDS),
                )
                .order_by(t.operations.c.created_at_ns)
            ).all()
        lines = tuple(
            StatementLine(int(r.id, 16), OperationKind(r.kind), r.day, r.amount, r.fee)
            for r in items
        )
        op = (
            None if row.operation_id is None else self.payments.operation(int(row.operation_id, 16))
        )
        return SettlementStatement(
            merchant_id, currency_code, day, lines, row.gross, row.fee, row.payout, op
        )

    # --- reconciliation ---------------------------------------------------------------------------

    def reconcile(self, day: int, statement: Path | str | bytes) -> ReconciliationReport:
        """Compare the bank's statement of business day ``day`` with the money our records say
        moved through the bank.

        ``statement`` is a CSV file (or its bytes) with the columns of
        ``STATEMENT_COLUMNS``; lines whose status is not ``succeeded`` are ignored. Running it
        again with the same statement returns the same report; with a corrected statement it
        replaces the report (and what the first one booked).

        The key is the day the bank booked a reference — the statement it is on — not the
        day its operation was recorded: a payout sent before midnight and confirmed after it
        is on the next day's statement. The statement is compared with the completed bank
        operations no other day's statement has booked, recorded on ``day`` or before; those
        it lists are booked on ``day`` (``bank_day``). One it does not list is
        ``missing_at_bank`` when its outcome reached us on ``day``: the bank books a
        reference no later than it answers for it. One answered on a later day may still be
        on that day's statement: in transit, not a difference yet. So a day is reconciled
        once it has ended (its statement is whole then), after ``recover()`` has asked the
        bank about what it had not answered.
        """
        data = statement if isinstance(statement, bytes) else Path(statement).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self.engine.connect() as conn:
            existing = conn.execute(
                sa.select(t.reconciliations).where(t.reconciliations.c.day == day)
            ).first()
        if existing is not None and existing.statement_sha256 == digest:
            return self.report(day)
        bank = _read_statement(data)
        o = t.operations.c
        options = self.payments.options
        with self.engine.begin() as conn:
            # this day's statement read before (another file): what it booked is unbooked
            conn.execute(t.operations.update().where(o.bank_day == day).values(bank_day=None))
            rows = conn.execute(_unbooked(conn), {"day": day}).all()
            ours = {
                r.id: _BankLine(
                    int(r.amount),
                    str(
                        BankDirection.CHARGE
                        if r.kind == OperationKind.TOP_UP
                        else BankDirection.PAYOUT
                    ),
                    str(r.currency),
                )
                for r in rows
            }
            # a completed operation is not written again: updated_at_ns is when it completed,
            # when the bank's answer reached us
            answered = {r.id: business_day(int(r.updated_at_ns), options) for r in rows}
            matched, mismatches = _compare(ours, bank, answered, day)
            booked = sorted(set(ours) & set(bank))
            for start in range(0, len(booked), _BOOKED_IDS_PER_UPDATE_MAX):
                conn.execute(
                    t.operations.update()
                    .where(o.id.in_(booked[start : start + _BOOKED_IDS_PER_UPDATE_MAX]))
                    .values(bank_day=day)
                )
            conn.execute(t.reconciliation_items.delete().where(t.reconciliation_items.c.day == day))
            conn.execute(t.reconciliations.delete().where(t.reconciliations.c.day == day))
            conn.execute(
                t.reconciliations.insert().values(
                    day=day,
                    statement_sha256=digest,
                    matched=matched,
                    mismatches=len(mismatches),
                    created_at_ns=self.clock.now_ns(),
                )
            )
            if mismatches:
                conn.execute(
                    t.reconciliation_items.insert(),
                    [
                        {
                            "day": day,
                            "reference": m.reference,
                            "kind": m.kind,
                            "ours": m.ours,
                            "bank": m.bank,
                        }
                        for m in mismatches
                    ],
                )
        return self.report(day)

    def report(self, day: int) -> ReconciliationReport:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.reconciliations).where(t.reconciliations.c.day == day)
            ).first()
            if row is None:
                raise SettlementNotFoundError(f"no reconciliation of day {day}")
            items = conn.execute(
                sa.select(t.reconciliation_items)
                .where(t.reconciliation_items.c.day == day)
                .order_by(t.reconciliation_items.c.reference)
            ).all()
        return ReconciliationReport(
            day,
            row.matched,
            tuple(Mismatch(i.reference, i.kind, i.ours, i.bank) for i in items),
            row.statement_sha256,
        )


@dataclass(frozen=True, slots=True)
class _BankLine:
    """What moved for one reference: its amount, direction and currency (a reference on
    two lines of different directions or currencies has neither: ``""``)."""

    amount: int
    direction: str
    currency: str


def _compare(
    ours: dict[str, _BankLine], bank: dict[str, _BankLine], answered: dict[str, int], day: int
) -> tuple[int, list[Mismatch]]:
    """Day ``day``'s statement (``bank``) against the operations it may book (``ours``, each
    answered by the bank on business day ``answered[reference]``): how many match, and the
    differences. An operation of ours the statement does not list is missing only if it was
    answered on ``day``: one answered later may be on a later statement, one answered
    earlier was missing on its own day."""
    mismatches: list[Mismatch] = []
    matched = 0
    for reference in sorted(set(ours) | set(bank)):
        mine, theirs = ours.get(reference), bank.get(reference)
        if theirs is None:
            if mine is not None and answered[reference] == day:
                mismatches.append(Mismatch(reference, "missing_at_bank", mine.amount, None))
        elif mine is None:
            mismatches.append(Mismatch(reference, "extra_at_bank", None, theirs.amount))
        elif mine.direction != theirs.direction:
            mismatches.append(Mismatch(reference, "wrong_direction", mine.amount, theirs.amount))
        elif mine.currency != theirs.currency:
            mismatches.append(Mismatch(reference, "wrong_currency", mine.amount, theirs.amount))
        elif mine.amount != theirs.amount:
            mismatches.append(Mismatch(reference, "amount_differs", mine.amount, theirs.amount))
        else:
            matched += 1
    return matched, mismatches


def _read_statement(data: bytes) -> dict[str, _BankLine]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
        if tuple(reader.fieldnames or ()) != STATEMENT_COLUMNS:
            raise StatementInvalidError(f"a statement's columns are {', '.join(STATEMENT_COLUMNS)}")
        out: dict[str, _BankLine] = {}
        statuses = tuple(BankStatus)
        for line in reader:
            # a line cut short (its missing fields None) or too long (its extra ones under
            # None), or with a status no bank answers, is not a line that did not succeed
            if None in line or None in line.values() or line["status"] not in statuses:
                raise StatementInvalidError(f"a statement line that cannot be read: {line!r}")
            if line["status"] != BankStatus.SUCCEEDED:
                continue
            spelt, reference = line["amount"], line["reference"]
            # ASCII digits only (``int`` also reads fullwidth digits and "7_00"), and an amount an
            # operation can have: the store keeps what the bank booked in 64 bits
            amount = int(spelt) if spelt.isascii() and spelt.isdigit() else 0
            if (
                not 0 < amount <= AMOUNT_MAX
                or len(reference) != 32
                or line["direction"] not in tuple(BankDirection)
            ):
                raise StatementInvalidError(f"bad statement line for {reference!r}")
            seen = out.get(reference)
            if seen is None:
                out[reference] = _BankLine(amount, line["direction"], line["currency"])
            else:  # the same reference again: the bank moved money for it twice
                if seen.amount + amount > AMOUNT_MAX:
                    raise StatementInvalidError(f"the lines for {reference!r} add up too much")
                out[reference] = _BankLine(
                    seen.amount + amount,
                    seen.direction if seen.direction == line["direction"] else "",
                    seen.currency if seen.currency == line["currency"] else "",
                )
        return out
    except (UnicodeDecodeError, ValueError, KeyError, csv.Error) as error:
        raise StatementInvalidError(f"the statement cannot be read: {error}") from None
