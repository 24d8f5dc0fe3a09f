"""Money in and out through banks: the ``BankGateway`` port and a simulator adapter.

Every request carries the operation's reference, which the bank keeps: asking about a
reference (``query``) is always safe, sending it again is not (a real bank may pay twice).
So the service sends a reference once and afterwards only queries it.
"""

from __future__ import annotations

import csv
import io
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from puhui.clock import Clock

from ._errors import PaymentsError

STATEMENT_COLUMNS = ("reference", "direction", "amount", "currency", "status")
"""The columns of a bank's daily statement file (CSV, one line per reference)."""


def statement_csv(lines: Sequence[tuple[str, str, int, str, str]]) -> bytes:
    """A statement file's bytes from (reference, direction, amount, currency, status) lines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(STATEMENT_COLUMNS)
    for line in lines:
        writer.writerow(line)
    return buffer.getvalue().encode()


class BankStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PROCESSING = "processing"
    """Accepted; the outcome comes later (query again)."""
    NOT_FOUND = "not_found"
    """The bank never received this reference (only ``query`` says so)."""


class BankDirection(StrEnum):
    CHARGE = "charge"
    """Pull money from the customer's card into the platform's settlement account (top-up)."""
    PAYOUT = "payout"
    """Push money from the settlement account to the customer's card (withdrawal)."""


@dataclass(frozen=True, slots=True)
class BankResult:
    reference: str
    status: BankStatus
    reason: str = ""


class BankTimeoutError(PaymentsError):
    """The bank did not answer in time: the request may or may not have been done."""

    code = "bank_timeout"


class BankGateway(Protocol):
    """The port to a bank. A gateway that can bound how long a request it sent may still
    take effect at the bank (a deadline it sends with the request, past which the bank
    refuses it) says so as ``submit_timeout_s``: ``Payments`` then checks that
    ``PaymentsOptions.recovery_age_s`` is longer, because recovery takes a reference the bank
    has not seen after ``recovery_age_s`` for one that never arrived (and gives the money
    back), and a request still on its way would then be paid as well."""

    def submit(
        self, direction: BankDirection, reference: str, card_token: str, amount: int, currency: str
    ) -> BankResult:
        """Send a charge or a payout once; raises ``BankTimeoutError`` when the outcome is
        unknown."""
        ...

    def query(self, reference: str) -> BankResult:
        """The current state of a reference (``NOT_FOUND`` if it never arrived)."""
        ...


@dataclass(slots=True)
class _BankRecord:
    direction: BankDirection
    card_token: str
    amount: int
    currency: str
    status: BankStatus
    settles_at_ns: int
    final_status: BankStatus
    reason: str


class SimulatedBank:
    """A bank for tests, demos and the simulator: deterministic for a seed.

    ``failure_rate`` of requests fail (card declined), ``timeout_rate`` are done at the bank
    but the answer is lost (``BankTimeoutError``), ``lost_rate`` never reach the bank and
    also time out, ``processing_rate`` answer ``PROCESSING`` and settle ``confirm_delay_s``
    later (by the given clock). ``sends`` counts how often each reference was sent.
    """

    submit_timeout_s: float = 5.0
    """A request takes effect at once or never (a lost one never arrives): well within it."""

    def __init__(
        self,
        clock: Clock,
        *,
        seed: int = 0,
        failure_rate: float = 0.0,
        timeout_rate: float = 0.0,
        lost_rate: float = 0.0,
        processing_rate: float = 0.0,
        confirm_delay_s: float = 5.0,
    ) -> None:
        self.clock = clock
        self.failure_rate = failure_rate
        self.timeout_rate = timeout_rate
        self.lost_rate = lost_rate
        self.processing_rate = processing_rate
        self.confirm_delay_s = confirm_delay_s
        self._random = random.Random(seed)
        self._records: dict[str, _BankRecord] = {}
        self._lock = threading.Lock()
        self.sends: dict[str, int] = {}

    def submit(
        self, direction: BankDirection, reference: str, card_token: str, amount: int, currency: str
    ) -> BankResult:
        with self._lock:
            self.sends[reference] = self.sends.get(reference, 0) + 1
            existing = self._records.get(reference)
            if existing is not None:  # a real bank might do it twice; this one tells
                return BankResult(reference, self._settle(existing), "duplicate reference")
            roll = self._random.random()
            if roll < self.lost_rate:
                raise BankTimeoutError("the bank did not answer")
            now = self.clock.now_ns()
            failed = self._random.random() < self.failure_rate
            final = BankStatus.FAILED if failed else BankStatus.SUCCEEDED
            processing = self._random.random() < self.processing_rate
            record = _BankRecord(
                direction=direction,
                card_token=card_token,
                amount=amount,
                currency=currency,
                status=BankStatus.PROCESSING if processing else final,
                settles_at_ns=now + int(self.confirm_delay_s * 1e9) if processing else now,
                final_status=final,
                reason="card declined" if failed else "",
            )
            self._records[reference] = record
            if self._random.random() < self.timeout_rate:
                raise BankTimeoutError("the bank did not answer")
            return BankResult(reference, record.status, record.reason)

    def query(self, reference: str) -> BankResult:
        with self._lock:
            record = self._records.get(reference)
            if record is None:
                return BankResult(reference, BankStatus.NOT_FOUND)
            return BankResult(reference, self._settle(record), record.reason)

    def _settle(self, record: _BankRecord) -> BankStatus:
        if record.status is BankStatus.PROCESSING and self.clock.now_ns() >= record.settles_at_ns:
            record.status = record.final_status
        return record.status

    def statement(
        self,
        day: int,
        *,
        day_offset_s: int = 8 * 3600,
        drop: int = 0,
        add: int = 0,
        alter: int = 0,
        seed: int = 0,
    ) -> bytes:
        """The statement file of business day ``day`` (days since 1970-01-01 at UTC +
        ``day_offset_s``), with discrepancies injected for reconciliation tests: ``drop``
        succeeded lines left out, ``add`` lines for references that do not exist, ``alter``
        amounts changed by one minor unit.

        The bank books a reference on the day its outcome became final: one answered at
        once on the day it arrived, one that was ``PROCESSING`` on the day it settled (a
        payout sent at 23:59:59 and confirmed after midnight is the next day's)."""
        with self._lock:
            lines = [
                (ref, str(r.direction), r.amount, r.currency, str(self._settle(r)))
                for ref, r in self._records.items()
                if (r.settles_at_ns // 1_000_000_000 + day_offset_s) // 86_400 == day
            ]
        rng = random.Random(seed)
        succeeded = [i for i, line in enumerate(lines) if line[4] == BankStatus.SUCCEEDED]
        picked = rng.sample(succeeded, min(len(succeeded), drop + alter))
        dropped, altered = set(picked[:drop]), set(picked[drop:])
        out = []
        for i, (ref, direction, amount, code, status) in enumerate(lines):
            if i in dropped:
                continue
            out.append((ref, direction, amount + 1 if i in altered else amount, code, status))
        for _ in range(add):
            ref = f"{rng.getrandbits(128):032x}"
            out.append((ref, str(BankDirection.CHARGE), rng.randint(1, 100_00), "CNY", "succeeded"))
        return statement_csv(out)

    def records(self) -> list[tuple[str, BankDirection, int, str, BankStatus]]:
        """What the bank did: (reference, direction, amount, currency, status) in order."""
        with self._lock:
            return [
                (ref, r.direction, r.amount, r.currency, self._settle(r))
                for ref, r in self._records.items()
            ]
