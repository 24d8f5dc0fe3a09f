"""Utility bills (水电煤): bind a household account, query the bill, pay it, get a receipt.

The money is held (wallet → the biller's clearing account, pending) while the biller is
asked to write the bill off; the biller's confirmation posts it, a refusal voids it. Like a
bank, a biller is sent a payment reference once and afterwards only queried about it, so an
unknown outcome (a timeout) can never pay a bill twice. A bill is also paid at most once:
``payments_bill_payments`` is unique per (biller, bill id).
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa

from puhui import risk
from puhui.clock import Clock
from puhui.ledger import Account, AccountFlags
from puhui.money import currency
from puhui.store import payments as t

from ._errors import InvalidPayloadError, PaymentsError
from .model import (
    IDEMPOTENCY_KEY_CHARS_MAX,
    AccountCode,
    AccountKind,
    BillerKind,
    OperationKind,
    OperationStatus,
    account_id,
    check_amount,
    check_text,
    wallet_account_id,
)
from .service import _CREATED_OR_EXISTS, NO_CHANNEL, Balance, Channel, Operation, Payments, _hex

_S = OperationStatus


class BillerNotFoundError(PaymentsError):
    code = "biller_not_found"


class BindingNotFoundError(PaymentsError):
    """No such household account bound to this customer."""

    code = "bill_binding_not_found"


class NothingDueError(PaymentsError):
    """The household account has no unpaid bill."""

    code = "nothing_due"


class BillAlreadyPaidError(PaymentsError):
    """This bill was already paid (by this or another customer)."""

    code = "bill_already_paid"


class BillAmountChangedError(PaymentsError):
    """The bill due now asks another amount than the one the customer was shown."""

    code = "bill_amount_changed"


class ReceiptNotReadyError(PaymentsError):
    """The bill payment has not been written off by the biller (yet)."""

    code = "receipt_not_ready"


class BillerTimeoutError(PaymentsError):
    """The biller did not answer: the request may or may not have been done."""

    code = "biller_timeout"


class WriteOffStatus(StrEnum):
    WRITTEN_OFF = "written_off"
    """The biller marked the bill paid."""
    REFUSED = "refused"
    PROCESSING = "processing"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class Bill:
    """What a biller says a household owes."""

    bill_id: str
    household_account: str
    period: str
    """The billing period, e.g. ``2026-10``."""
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class Biller:
    id: int
    code: str
    name: str
    kind: BillerKind


@dataclass(frozen=True, slots=True)
class Binding:
    id: int
    customer_id: int
    biller_id: int
    household_account: str
    alias: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """The e-receipt of a bill payment the biller wrote off."""

    receipt_no: str
    operation_id: int
    biller_code: str
    household_account: str
    bill_id: str
    period: str
    amount: int
    currency: str
    written_off_at_ns: int


class BillerGateway(Protocol):
    """The port to billers. As with a bank (``BankGateway``), a gateway that can bound how
    long a write-off it sent may still take effect at the biller says so as
    ``submit_timeout_s``: ``Bills`` then checks that ``PaymentsOptions.recovery_age_s`` is
    longer, because recovery takes a reference the biller has not seen after
    ``recovery_age_s`` for one that never arrived (and gives the money back), and a write-off
    still on its way would then clear the bill unpaid."""

    def query_bill(self, biller_code: str, household_account: str) -> Bill | None:
        """The unpaid bill of a household (None when nothing is due)."""
        ...

    def write_off(
        self, biller_code: str, reference: str, bill_id: str, amount: int
    ) -> WriteOffStatus:
        """Pay a bill (sent once per reference); raises ``BillerTimeoutError`` when unsure."""
        ...

    def query_write_off(self, biller_code: str, reference: str) -> WriteOffStatus: ...


class SimulatedBiller:
    """Billers for tests, demos and the simulator: every household has one bill due per
    month, its amount a hash of (biller, account, month); deterministic for a seed. A
    write-off of another amount than the bill's is refused, as a real biller would."""

    submit_timeout_s: float = 5.0
    """A write-off takes effect at once here; a real biller's adapter states its deadline."""

    def __init__(
        self,
        clock: Clock,
        *,
        seed: int = 0,
        refusal_rate: float = 0.0,
        timeout_rate: float = 0.0,
        processing_rate: float = 0.0,
        currency_code: str = "CNY",
        amount: int | None = None,
    ) -> None:
        self.clock = clock
        self.amount = amount
        """Every bill's amount, when given (demos); otherwise a hash of the bill."""
        self.refusal_rate = refusal_rate
        self.timeout_rate = timeout_rate
        self.processing_rate = processing_rate
        self.currency = currency_code
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._paid: dict[tuple[str, str], str] = {}  # (biller, bill id) → reference
        self._write_offs: dict[tuple[str, str], WriteOffStatus] = {}  # (biller, ref) → status
        self.sends: dict[str, int] = {}

    def _period(self) -> str:
        days = self.clock.now_ns() // 86_400_000_000_000
        year, month = divmod(days * 12 // 365, 12)
        return f"{1970 + year:04d}-{month + 1:02d}"

    def query_bill(self, biller_code: str, household_account: str) -> Bill | None:
        period = self._period()
        bill_id = f"{biller_code}-{household_account}-{period}"
        with self._lock:
            if (biller_code, bill_id) in self._paid:
                return None
        return Bill(bill_id, household_account, period, self._amount(bill_id), self.currency)

    def _amount(self, bill_id: str) -> int:
        digest = hashlib.sha256(bill_id.encode()).digest()
        return self.amount or 20_00 + int.from_bytes(digest[:4], "little") % 480_00

    def write_off(
        self, biller_code: str, reference: str, bill_id: str, amount: int
    ) -> WriteOffStatus:
        with self._lock:
            self.sends[reference] = self.sends.get(reference, 0) + 1
            known = self._write_offs.get((biller_code, reference))
            if known is not None:
                return known
            if (
                (biller_code, bill_id) in self._paid
                or amount != self._amount(bill_id)  # not what the bill asks: refused
                or self._random.random() < self.refusal_rate
            ):
                status = WriteOffStatus.REFUSED
            else:
                status = WriteOffStatus.WRITTEN_OFF
                self._paid[(biller_code, bill_id)] = reference
            if (
                status is WriteOffStatus.WRITTEN_OFF
                and self._random.random() < self.processing_rate
            ):
                self._write_offs[(biller_code, reference)] = WriteOffStatus.PROCESSING
            else:
                self._write_offs[(biller_code, reference)] = status
            if self._random.random() < self.timeout_rate:
                raise BillerTimeoutError("the biller did not answer")
            return self._write_offs[(biller_code, reference)]

    def settle(self) -> None:
        """Confirm every write-off still processing (the biller's batch run)."""
        with self._lock:
            for key, status in self._write_offs.items():
                if status is WriteOffStatus.PROCESSING:
                    self._write_offs[key] = WriteOffStatus.WRITTEN_OFF

    def query_write_off(self, biller_code: str, reference: str) -> WriteOffStatus:
        with self._lock:
            return self._write_offs.get((biller_code, reference), WriteOffStatus.NOT_FOUND)


class Bills:
    """Bill payment on top of a ``Payments`` service."""

    def __init__(self, payments: Payments, billers: BillerGateway) -> None:
        submit_timeout_s = getattr(billers, "submit_timeout_s", None)
        recovery_age_s = payments.options.recovery_age_s
        if submit_timeout_s is not None and not recovery_age_s > submit_timeout_s:
            raise ValueError(
                f"recovery_age_s ({recovery_age_s} s) must be longer than the biller"
                f" gateway's submit_timeout_s ({submit_timeout_s} s)"
            )
        self.payments = payments
        self.engine = payments.engine
        self.clock = payments.clock
        self.billers = billers
        payments._drivers[OperationKind.BILL_PAYMENT] = self._drive
        payments._finish_hooks["bills"] = self._on_finished

    # --- billers and households -------------------------------------------------------------

    def register_biller(self, code: str, name: str, kind: BillerKind | str) -> Biller:
        code = check_text(code, "code", 32)
        name = check_text(name, "name", 64)
        try:
            biller_kind = BillerKind(kind)
        except ValueError:
            raise InvalidPayloadError(f"kind is one of {[str(k) for k in BillerKind]}") from None
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.billers).where(t.billers.c.code == code)).first()
            if row is None:
                conn.execute(
                    t.billers.insert().values(
                        code=code,
                        name=name,
                        kind=str(biller_kind),
                        created_at_ns=self.clock.now_ns(),
                    )
                )
        return self.biller(code)

    def biller(self, code: str) -> Biller:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.billers).where(t.billers.c.code == code)).first()
        if row is None:
            raise BillerNotFoundError(f"no biller {code!r}")
        return Biller(row.id, row.code, row.name, BillerKind(row.kind))

    def _biller_by_id(self, biller_id: int) -> Biller:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.billers).where(t.billers.c.id == biller_id)).one()
        return Biller(row.id, row.code, row.name, BillerKind(row.kind))

    def bind(
        self, customer_id: int, biller_code: str, household_account: str, alias: str = ""
    ) -> Binding:
        """Bind a household account number (户号) to the customer (idempotent)."""
        self.payments.customer(customer_id)
        biller = self.biller(biller_code)
        household_account = check_text(household_account, "household_account", 32)
        alias = check_text(alias, "alias", 32, empty=True)
        with self.engine.begin() as conn:
            where = (
                t.bill_bindings.c.customer_id == customer_id,
                t.bill_bindings.c.biller_id == biller.id,
                t.bill_bindings.c.household_account == household_account,
            )
            if conn.execute(sa.select(t.bill_bindings.c.id).where(*where)).first() is None:
                conn.execute(
                    t.bill_bindings.insert().values(
                        customer_id=customer_id,
                        biller_id=biller.id,
                        household_account=household_account,
                        alias=alias,
                        created_at_ns=self.clock.now_ns(),
                    )
                )
            row = conn.execute(sa.select(t.bill_bindings).where(*where)).one()
        return _binding(row)

    def binding(self, customer_id: int, binding_id: int) -> Binding:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.bill_bindings).where(
                    t.bill_bindings.c.id == binding_id,
                    t.bill_bindings.c.customer_id == customer_id,
                )
            ).first()
        if row is None:
            raise BindingNotFoundError("no such household account bound to this customer")
        return _binding(row)

    def query_bill(self, customer_id: int, binding_id: int) -> Bill | None:
        binding = self.binding(customer_id, binding_id)
        biller = self._biller_by_id(binding.biller_id)
        return self.billers.query_bill(biller.code, binding.household_account)

    def clearing_balance(self, biller_code: str, currency_code: str) -> Balance:
        """What the platform owes a biller for bill payments (the biller's clearing account)."""
        biller = self.biller(biller_code)
        cur = currency(currency_code)
        return self.payments._balance_of(account_id(AccountKind.BILLER, cur, biller.id))

    # --- paying ---------------------------------------------------------------------------------

    def pay(
        self,
        customer_id: int,
        binding_id: int,
        bill_id: str,
        *,
        key: str,
        amount: int | None = None,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """Pay the bill ``bill_id`` (as ``query_bill`` returned it) of a bound household.

        ``amount`` is what the customer was shown (minor units): when given, the payment is
        refused with ``bill_amount_changed`` (nothing moves) if the biller now asks another
        amount for that bill (a late fee added since the query, say). Without it the
        customer pays what the biller asks at the moment of payment."""
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
        bill_id = check_text(bill_id, "bill_id", 64)
        request: dict[str, object] = {"binding": binding_id, "bill": bill_id}
        if amount is not None:
            request["amount"] = check_amount(amount)
        payments = self.payments
        replay = payments._replay(f"c:{customer_id}", key, OperationKind.BILL_PAYMENT, request)
        if replay is not None:
            return replay
        binding = self.binding(customer_id, binding_id)
        biller = self._biller_by_id(binding.biller_id)
        bill = self.billers.query_bill(biller.code, binding.household_account)
        if bill is None:
            raise NothingDueError("the household has no unpaid bill")
        if bill.bill_id != bill_id:
            raise BillAlreadyPaidError("that bill is not the one due (paid already?)")
        if amount is not None and bill.amount != amount:
            raise BillAmountChangedError(
                f"the biller now asks {bill.amount} minor units for this bill, not {amount}"
            )
        cur = currency(bill.currency)
        customer = payments._active_customer(customer_id)
        payments._check_single(customer, cur, bill.amount)
        payments._check_funds(wallet_account_id(customer_id, cur), bill.amount)
        self._open_clearing(biller.id, cur.code)
        decision = payments._decide(
            risk.EventKind.PAYMENT,
            customer,
            bill.amount,
            cur,
            f"biller:{biller.code}",
            channel,
        )

        def remember(conn: sa.Connection, operation_id: int) -> None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        t.bill_payments.insert().values(
                            operation_id=_hex(operation_id),
                            binding_id=binding.id,
                            biller_id=biller.id,
                            household_account=binding.household_account,
                            bill_id=bill.bill_id,
                            period=bill.period,
                            receipt_no=None,
                            written_off_at_ns=None,
                        )
                    )
            except sa.exc.IntegrityError:
                raise BillAlreadyPaidError("a payment of this bill is already recorded") from None

        op = payments._record(
            OperationKind.BILL_PAYMENT,
            f"c:{customer_id}",
            key,
            request,
            decision,
            cur,
            bill.amount,
            payer=customer,
            biller_id=biller.id,
            within=None if decision.decision is risk.Decision.REJECT else remember,
        )
        return payments._drive(op)

    def receipt(self, operation_id: int) -> Receipt:
        """The e-receipt of a completed bill payment."""
        op = self.payments.operation(operation_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.bill_payments).where(
                    t.bill_payments.c.operation_id == _hex(operation_id)
                )
            ).first()
        if row is None or op.status is not _S.COMPLETED or row.receipt_no is None:
            raise ReceiptNotReadyError("no receipt: the bill payment is not completed")
        biller = self._biller_by_id(row.biller_id)
        return Receipt(
            receipt_no=row.receipt_no,
            operation_id=op.id,
            biller_code=biller.code,
            household_account=row.household_account,
            bill_id=row.bill_id,
            period=row.period,
            amount=op.amount,
            currency=op.currency,
            written_off_at_ns=row.written_off_at_ns,
        )

    # --- the flow -------------------------------------------------------------------------------

    def _open_clearing(self, biller_id: int, currency_code: str) -> None:
        cur = currency(currency_code)
        self.payments._ensure_platform(cur)
        self.payments._create_accounts(
            [
                Account(
                    id=account_id(AccountKind.BILLER, cur, biller_id),
                    ledger=cur.ledger,
                    code=AccountCode.BILLER_CLEARING,
                    user_data_64=biller_id,
                    flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
                )
            ]
        )

    def _drive(self, op: Operation) -> Operation:
        """Hold the money, send the write-off once, then post or void by the biller's word."""
        payments = self.payments
        if op.status is _S.AWAITING_BILLER or payments._sent(op):
            return self._query(op)
        status = payments._move(op, hold_s=0)
        if status not in _CREATED_OR_EXISTS:
            return payments._finish(op, _S.FAILED, error_code=payments._failure_code(status))
        if not payments._claim_send(op):
            return self._query(payments.operation(op.id))
        if payments._party_frozen(op):  # frozen since it was checked: never sent now
            return payments._fail_unsent(op)
        code, bill_id = self._bill_of(op)
        try:
            answer = self.billers.write_off(code, _hex(op.id), bill_id, op.amount)
        except BillerTimeoutError:
            return payments._finish(op, _S.AWAITING_BILLER, bank_status="timeout")
        return self._apply(op, answer)

    def _query(self, op: Operation) -> Operation:
        code, _ = self._bill_of(op)
        try:
            answer = self.billers.query_write_off(code, _hex(op.id))
        except BillerTimeoutError:
            return op
        if answer is WriteOffStatus.NOT_FOUND:
            # as for a bank (``Payments._query_bank``): judged by the row as it is now, not by
            # a copy read before another caller sent the write-off
            op = self.payments.operation(op.id)
            if op.final or self.payments._recent(op):
                return op
            if self.payments._party_frozen(op):  # never arrived, and must not now
                return self.payments._fail_unsent(op)
        return self._apply(op, answer)

    def _apply(self, op: Operation, answer: WriteOffStatus) -> Operation:
        payments = self.payments
        if answer is WriteOffStatus.PROCESSING:
            if op.status is not _S.AWAITING_BILLER:
                return payments._finish(op, _S.AWAITING_BILLER, bank_status=str(answer))
            return op
        post = answer is WriteOffStatus.WRITTEN_OFF
        status = payments._settle_hold(op, post=post)
        if status not in _CREATED_OR_EXISTS:
            raise RuntimeError(f"settling bill payment {op.id:#x} failed: {status.name}")
        if not post:
            failure = (
                "biller_not_reached" if answer is WriteOffStatus.NOT_FOUND else "biller_refused"
            )
            return payments._finish(op, _S.FAILED, error_code=failure, bank_status=str(answer))
        return payments._finish(op, _S.COMPLETED, bank_status=str(answer))

    def _on_finished(self, conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        """In the transaction recording a bill payment's outcome: issue the e-receipt, or
        free the bill for another attempt."""
        if op.kind is not OperationKind.BILL_PAYMENT:
            return
        row = t.bill_payments.c.operation_id == _hex(op.id)
        if status is _S.COMPLETED:
            conn.execute(
                t.bill_payments.update()
                .where(row, t.bill_payments.c.receipt_no.is_(None))
                .values(receipt_no=f"R{op.id:032X}", written_off_at_ns=self.clock.now_ns())
            )
        elif status in (_S.FAILED, _S.EXPIRED):
            conn.execute(t.bill_payments.delete().where(row))

    def _bill_of(self, op: Operation) -> tuple[str, str]:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.bill_payments.c.bill_id, t.billers.c.code)
                .join(t.billers, t.billers.c.id == t.bill_payments.c.biller_id)
                .where(t.bill_payments.c.operation_id == _hex(op.id))
            ).one()
        return str(row.code), str(row.bill_id)


def _binding(row: Any) -> Binding:
    return Binding(row.id, row.customer_id, row.biller_id, row.household_account, row.alias)
