"""A small, slow, obviously-correct reference model of the TigerBeetle 0.17 ledger.

This is a line-by-line port of the Zig ``StateMachineReferenceType`` (TigerBeetle's reference
model of its state machine), used as a test oracle for Puhui's fast engine. Speed does not
matter here: state is kept in plain lists and every lookup is a linear scan.

Differences from the Zig model, all forced by the Python client's API:

- there is no ``reserved`` field, so ``RESERVED_FIELD`` is never produced; a "padding" flag is
  any bit outside the defined flags and gives ``RESERVED_FLAG``;
- ``pulse``/``advance`` and the query methods are public and take the client's filter types.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from puhui.ledger._types import (
    AMOUNT_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)

TIMESTAMP_MAX = 2**64 - 2
"""``maxInt(u64) - 1``: the clock must stay below this."""

TIMESTAMP_VALID_MAX = 2**63 - 1
"""The server's ``TimestampRange.timestamp_max`` (``maxInt(u63)``: the top bit of a timestamp is
the LSM tombstone flag). An imported timestamp or a filter bound above it is invalid; the Zig
model bounds them by ``TIMESTAMP_MAX`` instead."""

ID_MAX = AMOUNT_MAX
"""``maxInt(u128)``: not a valid account, transfer or pending id."""

NS_PER_S = 1_000_000_000
QUERY_LIMIT_MAX = 8189
"""The most results one query may ask for; the client raises ``TooMuchDataError`` above it."""

_ACCOUNT_FLAGS_DEFINED = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
    | AccountFlags.IMPORTED
    | AccountFlags.CLOSED
)
_TRANSFER_FLAGS_DEFINED = int(
    TransferFlags.LINKED
    | TransferFlags.PENDING
    | TransferFlags.POST_PENDING_TRANSFER
    | TransferFlags.VOID_PENDING_TRANSFER
    | TransferFlags.BALANCING_DEBIT
    | TransferFlags.BALANCING_CREDIT
    | TransferFlags.CLOSING_DEBIT
    | TransferFlags.CLOSING_CREDIT
    | TransferFlags.IMPORTED
)
_ACCOUNT_FILTER_FLAGS_DEFINED = int(
    AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED
)
_QUERY_FILTER_FLAGS_DEFINED = int(QueryFilterFlags.REVERSED)

# Failures that make a transfer id unusable for ever (Zig ``transient_failure``).
_BURNING_TRANSFER_STATUSES = frozenset(
    {
        CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND,
        CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND,
        CreateTransferStatus.PENDING_TRANSFER_NOT_FOUND,
        CreateTransferStatus.EXCEEDS_CREDITS,
        CreateTransferStatus.EXCEEDS_DEBITS,
        CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED,
        CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED,
    }
)


class InvalidTimeError(Exception):
    """The clock would reach ``TIMESTAMP_MAX`` (Zig ``error.InvalidTime``)."""


class PendingState(enum.Enum):
    NONE = "none"
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


class ChangeKind(enum.Enum):
    SINGLE_PHASE = "single_phase"
    TWO_PHASE_PENDING = "two_phase_pending"
    TWO_PHASE_POSTED = "two_phase_posted"
    TWO_PHASE_VOIDED = "two_phase_voided"
    TWO_PHASE_EXPIRED = "two_phase_expired"


@dataclass
class TransferEntry:
    transfer: Transfer
    pending_state: PendingState


@dataclass
class ChangeEvent:
    """One balance change: a created transfer or an expiry, with both accounts just after it."""

    timestamp: int
    kind: ChangeKind
    transfer: Transfer
    debit_account: Account
    credit_account: Account


@dataclass
class _Snapshot:
    accounts: list[Account]
    transfers: list[TransferEntry]
    retired_ids: list[int]
    journal: list[ChangeEvent]


_Event = TypeVar("_Event", Account, Transfer)
_Status = TypeVar("_Status", CreateAccountStatus, CreateTransferStatus)


def _is_linked(event: Account | Transfer) -> bool:
    # LINKED is bit 0 for both accounts and transfers.
    return bool(int(event.flags) & int(AccountFlags.LINKED))


def _is_imported(event: Account | Transfer) -> bool:
    if isinstance(event, Account):
        return bool(int(event.flags) & int(AccountFlags.IMPORTED))
    return bool(int(event.flags) & int(TransferFlags.IMPORTED))


def _deadline(transfer: Transfer) -> int:
    return transfer.timestamp + transfer.timeout * NS_PER_S


def _valid_range(minimum: int, maximum: int) -> bool:
    return (
        minimum <= TIMESTAMP_VALID_MAX
        and maximum <= TIMESTAMP_VALID_MAX
        and (maximum == 0 or minimum <= maximum)
    )


def _in_range(timestamp: int, minimum: int, maximum: int) -> bool:
    return timestamp >= minimum and (maximum == 0 or timestamp <= maximum)


def _time_valid(
    statuses: type[_Status], imported: bool, timestamp: int, cutoff: int
) -> _Status | None:
    if not imported:
        return None if timestamp == 0 else statuses["TIMESTAMP_MUST_BE_ZERO"]
    if timestamp == 0 or timestamp > TIMESTAMP_VALID_MAX:
        return statuses["IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE"]
    if timestamp > cutoff:
        return statuses["IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE"]
    return None


def _resolution_amount(transfer: Transfer, pending: Transfer) -> int:
    """The amount a post or void moves: AMOUNT_MAX posts and 0 voids the full pending amount."""
    flags = int(transfer.flags)
    post = bool(flags & TransferFlags.POST_PENDING_TRANSFER)
    void = bool(flags & TransferFlags.VOID_PENDING_TRANSFER)
    assert post or void
    if (post and transfer.amount == AMOUNT_MAX) or (void and transfer.amount == 0):
        return pending.amount
    return transfer.amount


def _release_pending(debit: Account, credit: Account, pending: Transfer) -> None:
    assert int(pending.flags) & TransferFlags.PENDING
    debit.debits_pending -= pending.amount
    credit.credits_pending -= pending.amount


def _set_closed(account: Account, closed: bool) -> None:
    flags = int(account.flags) & ~int(AccountFlags.CLOSED)
    if closed:
        flags |= int(AccountFlags.CLOSED)
    account.flags = AccountFlags(flags)


def _check_query_limit(limit: int) -> None:
    if limit > QUERY_LIMIT_MAX:
        raise ValueError("too_much_data")


class ReferenceLedger:
    """The TigerBeetle 0.17 ledger state machine, as a plain-Python test oracle."""

    def __init__(self, now: int = 0) -> None:
        if not 0 <= now < TIMESTAMP_MAX:
            raise InvalidTimeError(now)
        self._now = now
        self.accounts: list[Account] = []
        self.transfers: list[TransferEntry] = []
        self.retired_ids: list[int] = []
        self.journal: list[ChangeEvent] = []

    # --- Clock --------------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self._now

    def advance(self, elapsed_ns: int) -> None:
        if elapsed_ns < 0 or self._now + elapsed_ns >= TIMESTAMP_MAX:
            raise InvalidTimeError(self._now + elapsed_ns)
        self._now += elapsed_ns

    def watermark(self) -> int:
        """The newest timestamp in the journal (transfer or expiry), or 0."""
        return max((e.timestamp for e in self.journal), default=0)

    def newest_transfer_timestamp(self) -> int:
        """The server's ``transfers.objects.key_range.key_max``: the newest transfer's
        timestamp, or 0. Expiries write no transfer, so they do not count."""
        return self.transfers[-1].transfer.timestamp if self.transfers else 0

    # --- Expiry -------------------------------------------------------------------------------

    def pulse(self, limit: int = 2**32) -> int:
        """Expire at most ``limit`` due pending transfers, by deadline then creation time.

        Expiry ``i`` of ``count`` gets timestamp ``now - count + i + 1``: the last one has the
        pulse's timestamp. Returns the number expired.
        """
        due = [
            entry
            for entry in self.transfers
            if entry.pending_state is PendingState.PENDING
            and entry.transfer.timeout != 0
            and _deadline(entry.transfer) <= self._now
        ]
        due.sort(key=lambda entry: (_deadline(entry.transfer), entry.transfer.timestamp))
        due = due[: max(limit, 0)]
        count = len(due)
        if count == 0:
            return 0
        assert self._now >= count and self._now - count >= self.watermark()
        for i, entry in enumerate(due):
            pending = entry.transfer
            debit = self._account(pending.debit_account_id)
            credit = self._account(pending.credit_account_id)
            assert debit is not None and credit is not None
            _release_pending(debit, credit, pending)
            if int(pending.flags) & TransferFlags.CLOSING_DEBIT:
                _set_closed(debit, False)
            if int(pending.flags) & TransferFlags.CLOSING_CREDIT:
                _set_closed(credit, False)
            entry.pending_state = PendingState.EXPIRED
            self._record(pending, self._now - count + i + 1, expired=True)
        return count

    # --- Batches ------------------------------------------------------------------------------

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        results = self._execute(
            accounts,
            CreateAccountStatus,
            self._create_account,
            self._exists_account_timestamp,
            burning=frozenset(),
        )
        return [CreateAccountResult(timestamp=ts, status=status) for status, ts in results]

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        results = self._execute(
            transfers,
            CreateTransferStatus,
            self._create_transfer,
            self._exists_transfer_timestamp,
            burning=_BURNING_TRANSFER_STATUSES,
        )
        return [CreateTransferResult(timestamp=ts, status=status) for status, ts in results]

    def _execute(
        self,
        events: Sequence[_Event],
        statuses: type[_Status],
        create: Callable[[_Event, int, int], _Status],
        exists_timestamp: Callable[[int], int],
        burning: frozenset[CreateTransferStatus],
    ) -> list[tuple[_Status, int]]:
        """Zig ``execute``: run linked chains, rolling each back as a whole if one event fails."""
        if len(events) == 0:
            return []
        if self._now + len(events) >= TIMESTAMP_MAX:
            raise InvalidTimeError(self._now + len(events))
        # One batch has one import cutoff, even though validation timestamps advance.
        import_cutoff = self._now + len(events) - 1
        batch_imported = _is_imported(events[0])
        created = statuses["CREATED"]
        linked_event_failed = statuses["LINKED_EVENT_FAILED"]

        results: list[tuple[_Status, int]] = []
        chain_start = 0
        while chain_start < len(events):
            chain_end = chain_start + 1  # Exclusive.
            while chain_end < len(events) and _is_linked(events[chain_end - 1]):
                chain_end += 1

            checkpoint = self._snapshot()
            chain_failed: int | None = None
            for index in range(chain_start, chain_end):
                event = events[index]
                # Each event is validated one tick after the previous one.
                timestamp = self._now + index + 1
                status: _Status
                if index == len(events) - 1 and _is_linked(event):
                    status = statuses["LINKED_EVENT_CHAIN_OPEN"]
                elif chain_failed is not None:
                    status = linked_event_failed
                elif batch_imported and not _is_imported(event):
                    status = statuses["IMPORTED_EVENT_EXPECTED"]
                elif not batch_imported and _is_imported(event):
                    status = statuses["IMPORTED_EVENT_NOT_EXPECTED"]
                else:
                    status = create(event, timestamp, import_cutoff)

                if status == created:
                    result_timestamp = event.timestamp if _is_imported(event) else timestamp
                elif status == statuses["EXISTS"]:
                    result_timestamp = exists_timestamp(event.id)
                else:
                    result_timestamp = timestamp
                results.append((status, result_timestamp))

                if status != created and chain_failed is None:
                    chain_failed = index

            if chain_failed is not None:
                self._restore(checkpoint)
                # Earlier events keep their result timestamps; later ones already failed.
                for index in range(chain_start, chain_failed):
                    results[index] = (linked_event_failed, results[index][1])
                if results[chain_failed][0] in burning:
                    self.retired_ids.append(events[chain_failed].id)
            chain_start = chain_end

        self.advance(len(events))
        return results

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            accounts=copy.deepcopy(self.accounts),
            transfers=copy.deepcopy(self.transfers),
            retired_ids=list(self.retired_ids),
            journal=list(self.journal),  # Append-only: its entries are never changed.
        )

    def _restore(self, saved: _Snapshot) -> None:
        self.accounts = saved.accounts
        self.transfers = saved.transfers
        self.retired_ids = saved.retired_ids
        self.journal = saved.journal

    def _exists_account_timestamp(self, id_: int) -> int:
        account = self._account(id_)
        assert account is not None
        return account.timestamp

    def _exists_transfer_timestamp(self, id_: int) -> int:
        entry = self._transfer_entry(id_)
        assert entry is not None
        return entry.transfer.timestamp

    # --- Accounts -----------------------------------------------------------------------------

    def _account(self, id_: int) -> Account | None:
        for account in self.accounts:
            if account.id == id_:
                return account
        return None

    def _create_account(
        self, event: Account, timestamp: int, import_cutoff: int
    ) -> CreateAccountStatus:
        account = copy.copy(event)
        flags = int(account.flags)
        imported = bool(flags & AccountFlags.IMPORTED)

        status = _time_valid(CreateAccountStatus, imported, account.timestamp, import_cutoff)
        if status is not None:
            return status
        if flags & ~_ACCOUNT_FLAGS_DEFINED:
            return CreateAccountStatus.RESERVED_FLAG
        if account.id == 0:
            return CreateAccountStatus.ID_MUST_NOT_BE_ZERO
        if account.id == ID_MAX:
            return CreateAccountStatus.ID_MUST_NOT_BE_INT_MAX

        old = self._account(account.id)
        if old is not None:
            if flags != int(old.flags):
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_FLAGS
            if account.user_data_128 != old.user_data_128:
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_USER_DATA_128
            if account.user_data_64 != old.user_data_64:
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_USER_DATA_64
            if account.user_data_32 != old.user_data_32:
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_USER_DATA_32
            if account.ledger != old.ledger:
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_LEDGER
            if account.code != old.code:
                return CreateAccountStatus.EXISTS_WITH_DIFFERENT_CODE
            return CreateAccountStatus.EXISTS

        if flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS and (
            flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
        ):
            return CreateAccountStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if account.debits_pending != 0:
            return CreateAccountStatus.DEBITS_PENDING_MUST_BE_ZERO
        if account.debits_posted != 0:
            return CreateAccountStatus.DEBITS_POSTED_MUST_BE_ZERO
        if account.credits_pending != 0:
            return CreateAccountStatus.CREDITS_PENDING_MUST_BE_ZERO
        if account.credits_posted != 0:
            return CreateAccountStatus.CREDITS_POSTED_MUST_BE_ZERO
        if account.ledger == 0:
            return CreateAccountStatus.LEDGER_MUST_NOT_BE_ZERO
        if account.code == 0:
            return CreateAccountStatus.CODE_MUST_NOT_BE_ZERO

        if imported:
            for existing in self.accounts:
                if account.timestamp <= existing.timestamp:
                    return CreateAccountStatus.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
            for entry in self.transfers:
                if account.timestamp == entry.transfer.timestamp:
                    return CreateAccountStatus.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
        else:
            account.timestamp = timestamp
        account.flags = AccountFlags(flags)
        self.accounts.append(account)
        return CreateAccountStatus.CREATED

    # --- Transfers ----------------------------------------------------------------------------

    def _transfer_entry(self, id_: int) -> TransferEntry | None:
        for entry in self.transfers:
            if entry.transfer.id == id_:
                return entry
        return None

    def _compare_transfer(self, event: Transfer, old: Transfer) -> CreateTransferStatus:
        """Idempotency: how a resent transfer differs from the stored one with its id."""
        t = copy.copy(event)
        flags = int(t.flags)
        if flags != int(old.flags):
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_FLAGS
        if t.pending_id != old.pending_id:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.timeout != old.timeout:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_TIMEOUT
        if flags & (TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER):
            # Zero fields of a post or void mean "inherit from the pending transfer".
            pending_entry = self._transfer_entry(t.pending_id)
            assert pending_entry is not None
            pending = pending_entry.transfer
            if t.debit_account_id == 0:
                t.debit_account_id = pending.debit_account_id
            if t.credit_account_id == 0:
                t.credit_account_id = pending.credit_account_id
            if t.ledger == 0:
                t.ledger = pending.ledger
            if t.code == 0:
                t.code = pending.code
            if t.user_data_128 == 0:
                t.user_data_128 = pending.user_data_128
            if t.user_data_64 == 0:
                t.user_data_64 = pending.user_data_64
            if t.user_data_32 == 0:
                t.user_data_32 = pending.user_data_32
            t.amount = _resolution_amount(t, pending)
        if t.debit_account_id != old.debit_account_id:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != old.credit_account_id:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if flags & (TransferFlags.BALANCING_DEBIT | TransferFlags.BALANCING_CREDIT):
            # A balancing amount is an upper limit: any limit at or above the stored one fits.
            if t.amount < old.amount:
                return CreateTransferStatus.EXISTS_WITH_DIFFERENT_AMOUNT
        elif t.amount != old.amount:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_AMOUNT
        if t.user_data_128 != old.user_data_128:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if t.user_data_64 != old.user_data_64:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if t.user_data_32 != old.user_data_32:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if t.ledger != old.ledger:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != old.code:
            return CreateTransferStatus.EXISTS_WITH_DIFFERENT_CODE
        return CreateTransferStatus.EXISTS

    def _create_transfer(
        self, event: Transfer, now: int, import_cutoff: int
    ) -> CreateTransferStatus:
        transfer = copy.copy(event)
        flags = int(transfer.flags)
        imported = bool(flags & TransferFlags.IMPORTED)
        pending_flag = bool(flags & TransferFlags.PENDING)
        post = bool(flags & TransferFlags.POST_PENDING_TRANSFER)
        void = bool(flags & TransferFlags.VOID_PENDING_TRANSFER)
        balancing_debit = bool(flags & TransferFlags.BALANCING_DEBIT)
        balancing_credit = bool(flags & TransferFlags.BALANCING_CREDIT)
        closing_debit = bool(flags & TransferFlags.CLOSING_DEBIT)
        closing_credit = bool(flags & TransferFlags.CLOSING_CREDIT)
        void_or_post = post or void

        status = _time_valid(CreateTransferStatus, imported, transfer.timestamp, import_cutoff)
        if status is not None:
            return status
        if flags & ~_TRANSFER_FLAGS_DEFINED:
            return CreateTransferStatus.RESERVED_FLAG
        if transfer.id == 0:
            return CreateTransferStatus.ID_MUST_NOT_BE_ZERO
        if transfer.id == ID_MAX:
            return CreateTransferStatus.ID_MUST_NOT_BE_INT_MAX
        existing = self._transfer_entry(transfer.id)
        if existing is not None:
            return self._compare_transfer(transfer, existing.transfer)
        if transfer.id in self.retired_ids:
            return CreateTransferStatus.ID_ALREADY_FAILED

        if pending_flag and void_or_post:
            return CreateTransferStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if post and void:
            return CreateTransferStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        balancing = balancing_debit or balancing_credit
        if void_or_post and (balancing or closing_debit or closing_credit):
            return CreateTransferStatus.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if void_or_post:
            if transfer.pending_id == 0:
                return CreateTransferStatus.PENDING_ID_MUST_NOT_BE_ZERO
            if transfer.pending_id == ID_MAX:
                return CreateTransferStatus.PENDING_ID_MUST_NOT_BE_INT_MAX
            if transfer.pending_id == transfer.id:
                return CreateTransferStatus.PENDING_ID_MUST_BE_DIFFERENT
        else:
            if transfer.debit_account_id == 0:
                return CreateTransferStatus.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
            if transfer.debit_account_id == ID_MAX:
                return CreateTransferStatus.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
            if transfer.credit_account_id == 0:
                return CreateTransferStatus.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
            if transfer.credit_account_id == ID_MAX:
                return CreateTransferStatus.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
            if transfer.debit_account_id == transfer.credit_account_id:
                return CreateTransferStatus.ACCOUNTS_MUST_BE_DIFFERENT
            if transfer.pending_id != 0:
                return CreateTransferStatus.PENDING_ID_MUST_BE_ZERO
        # A post or void is never pending, so it never takes a timeout either.
        if not pending_flag and transfer.timeout != 0:
            return CreateTransferStatus.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if not pending_flag and (closing_debit or closing_credit):
            return CreateTransferStatus.CLOSING_TRANSFER_MUST_BE_PENDING

        pending_entry: TransferEntry | None = None
        if void_or_post:
            pending_entry = self._transfer_entry(transfer.pending_id)
            if pending_entry is None:
                return CreateTransferStatus.PENDING_TRANSFER_NOT_FOUND
            pending = pending_entry.transfer
            if not int(pending.flags) & TransferFlags.PENDING:
                return CreateTransferStatus.PENDING_TRANSFER_NOT_PENDING
            if transfer.debit_account_id not in (0, pending.debit_account_id):
                return CreateTransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
            transfer.debit_account_id = pending.debit_account_id
            if transfer.credit_account_id not in (0, pending.credit_account_id):
                return CreateTransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
            transfer.credit_account_id = pending.credit_account_id
            if transfer.ledger not in (0, pending.ledger):
                return CreateTransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
            transfer.ledger = pending.ledger
            if transfer.code not in (0, pending.code):
                return CreateTransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_CODE
            transfer.code = pending.code
            transfer.amount = _resolution_amount(transfer, pending)
            if transfer.amount > pending.amount:
                return CreateTransferStatus.EXCEEDS_PENDING_TRANSFER_AMOUNT
            if void and transfer.amount != pending.amount:
                return CreateTransferStatus.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT

            state = pending_entry.pending_state
            assert state is not PendingState.NONE
            if state is PendingState.POSTED:
                return CreateTransferStatus.PENDING_TRANSFER_ALREADY_POSTED
            if state is PendingState.VOIDED:
                return CreateTransferStatus.PENDING_TRANSFER_ALREADY_VOIDED
            if state is PendingState.EXPIRED:
                return CreateTransferStatus.PENDING_TRANSFER_EXPIRED
            # Due but not yet expired by a pulse: rejected, and balances stay pending. Judged at
            # the event's timestamp: an imported event's own (``expires_at <= t.timestamp``).
            event_timestamp = transfer.timestamp if imported else now
            if pending.timeout != 0 and _deadline(pending) <= event_timestamp:
                return CreateTransferStatus.PENDING_TRANSFER_EXPIRED
            if transfer.user_data_128 == 0:
                transfer.user_data_128 = pending.user_data_128
            if transfer.user_data_64 == 0:
                transfer.user_data_64 = pending.user_data_64
            if transfer.user_data_32 == 0:
                transfer.user_data_32 = pending.user_data_32
        else:
            if transfer.ledger == 0:
                return CreateTransferStatus.LEDGER_MUST_NOT_BE_ZERO
            if transfer.code == 0:
                return CreateTransferStatus.CODE_MUST_NOT_BE_ZERO

        dr = self._account(transfer.debit_account_id)
        if dr is None:
            return CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND
        cr = self._account(transfer.credit_account_id)
        if cr is None:
            return CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND

        if dr.ledger != cr.ledger:
            return CreateTransferStatus.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if transfer.ledger != dr.ledger:
            return CreateTransferStatus.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        if imported:
            if transfer.timestamp <= self.newest_transfer_timestamp():
                return CreateTransferStatus.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
            for account in self.accounts:
                if transfer.timestamp == account.timestamp:
                    return CreateTransferStatus.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
            if transfer.timestamp <= dr.timestamp:
                return CreateTransferStatus.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT
            if transfer.timestamp <= cr.timestamp:
                return CreateTransferStatus.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT
            if transfer.timeout != 0:
                return CreateTransferStatus.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO
        else:
            transfer.timestamp = now
        # The only movement allowed on a closed account is voiding a pending transfer.
        if not void:
            if int(dr.flags) & AccountFlags.CLOSED:
                return CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED
            if int(cr.flags) & AccountFlags.CLOSED:
                return CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED

        if not void_or_post:
            if balancing_debit:
                available = max(0, dr.credits_posted - (dr.debits_posted + dr.debits_pending))
                transfer.amount = min(transfer.amount, available)
            if balancing_credit:
                available = max(0, cr.debits_posted - (cr.credits_posted + cr.credits_pending))
                transfer.amount = min(transfer.amount, available)

            amount = transfer.amount
            if pending_flag and amount + dr.debits_pending > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_DEBITS_PENDING
            if pending_flag and amount + cr.credits_pending > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_CREDITS_PENDING
            if amount + dr.debits_posted > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_DEBITS_POSTED
            if amount + cr.credits_posted > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_CREDITS_POSTED
            if amount + dr.debits_pending + dr.debits_posted > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_DEBITS
            if amount + cr.credits_pending + cr.credits_posted > AMOUNT_MAX:
                return CreateTransferStatus.OVERFLOWS_CREDITS

            # The server's ``sum_overflows(u63, timestamp, timeout * ns_per_s)``.
            if transfer.timeout != 0 and _deadline(transfer) > TIMESTAMP_VALID_MAX:
                return CreateTransferStatus.OVERFLOWS_TIMEOUT
            if (
                int(dr.flags) & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
            ):
                return CreateTransferStatus.EXCEEDS_CREDITS
            if (
                int(cr.flags) & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
                and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
            ):
                return CreateTransferStatus.EXCEEDS_DEBITS

        # All validation is complete: commit balances, pending state and the new record.
        if pending_entry is not None:
            pending = pending_entry.transfer
            _release_pending(dr, cr, pending)
            pending_entry.pending_state = PendingState.POSTED if post else PendingState.VOIDED
            if void:
                if int(pending.flags) & TransferFlags.CLOSING_DEBIT:
                    _set_closed(dr, False)
                if int(pending.flags) & TransferFlags.CLOSING_CREDIT:
                    _set_closed(cr, False)

        if pending_flag:
            dr.debits_pending += transfer.amount
            cr.credits_pending += transfer.amount
        if not pending_flag and not void:
            dr.debits_posted += transfer.amount
            cr.credits_posted += transfer.amount
        if closing_debit:
            _set_closed(dr, True)
        if closing_credit:
            _set_closed(cr, True)

        # Queries scan storage in order, so transfers must be appended in timestamp order.
        if self.transfers:
            assert transfer.timestamp > self.transfers[-1].transfer.timestamp
        transfer.flags = TransferFlags(flags)
        self.transfers.append(
            TransferEntry(
                transfer=transfer,
                pending_state=PendingState.PENDING if pending_flag else PendingState.NONE,
            )
        )
        self._record(transfer, transfer.timestamp, expired=False)
        return CreateTransferStatus.CREATED

    def _record(self, transfer: Transfer, timestamp: int, *, expired: bool) -> None:
        # Transfers are in timestamp order among themselves (asserted on insertion); an imported
        # one may predate an expiry, so only expiries must postdate everything.
        if expired:
            assert timestamp > self.watermark()
        flags = int(transfer.flags)
        if expired:
            kind = ChangeKind.TWO_PHASE_EXPIRED
        elif flags & TransferFlags.PENDING:
            kind = ChangeKind.TWO_PHASE_PENDING
        elif flags & TransferFlags.POST_PENDING_TRANSFER:
            kind = ChangeKind.TWO_PHASE_POSTED
        elif flags & TransferFlags.VOID_PENDING_TRANSFER:
            kind = ChangeKind.TWO_PHASE_VOIDED
        else:
            kind = ChangeKind.SINGLE_PHASE
        debit = self._account(transfer.debit_account_id)
        credit = self._account(transfer.credit_account_id)
        assert debit is not None and credit is not None
        self.journal.append(
            ChangeEvent(
                timestamp=timestamp,
                kind=kind,
                transfer=copy.copy(transfer),
                debit_account=copy.copy(debit),
                credit_account=copy.copy(credit),
            )
        )

    # --- Lookups and queries ------------------------------------------------------------------

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        found = (self._account(id_) for id_ in ids)
        return [copy.copy(account) for account in found if account is not None]

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        found = (self._transfer_entry(id_) for id_ in ids)
        return [copy.copy(entry.transfer) for entry in found if entry is not None]

    @staticmethod
    def _account_filter_valid(f: AccountFilter) -> bool:
        flags = int(f.flags)
        return (
            f.limit != 0
            and flags & ~_ACCOUNT_FILTER_FLAGS_DEFINED == 0
            and f.account_id not in (0, ID_MAX)
            and bool(flags & (AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS))
            and _valid_range(f.timestamp_min, f.timestamp_max)
        )

    @staticmethod
    def _query_filter_valid(f: QueryFilter) -> bool:
        return (
            f.limit != 0
            and int(f.flags) & ~_QUERY_FILTER_FLAGS_DEFINED == 0
            and _valid_range(f.timestamp_min, f.timestamp_max)
        )

    @staticmethod
    def _account_filter_side(f: AccountFilter, transfer: Transfer) -> str | None:
        """Which side of ``transfer`` the filter's account is on, if the filter matches it."""
        flags = int(f.flags)
        if not _in_range(transfer.timestamp, f.timestamp_min, f.timestamp_max):
            return None
        for wanted, actual in (
            (f.user_data_128, transfer.user_data_128),
            (f.user_data_64, transfer.user_data_64),
            (f.user_data_32, transfer.user_data_32),
            (f.code, transfer.code),
        ):
            if wanted not in (0, actual):  # A zero filter field matches anything.
                return None
        if flags & AccountFilterFlags.DEBITS and transfer.debit_account_id == f.account_id:
            return "debit"
        if flags & AccountFilterFlags.CREDITS and transfer.credit_account_id == f.account_id:
            return "credit"
        return None

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]:
        _check_query_limit(f.limit)
        if not self._account_filter_valid(f):
            return []
        transfers = sorted((entry.transfer for entry in self.transfers), key=_by_timestamp)
        if int(f.flags) & AccountFilterFlags.REVERSED:
            transfers.reverse()
        matches = [t for t in transfers if self._account_filter_side(f, t) is not None]
        return [copy.copy(t) for t in matches[: f.limit]]

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]:
        _check_query_limit(f.limit)
        if not self._account_filter_valid(f):
            return []
        account = self._account(f.account_id)
        if account is None or not int(account.flags) & AccountFlags.HISTORY:
            return []
        # One row per transfer (expiries add none): the account's balances right after it.
        events = [e for e in self.journal if e.kind is not ChangeKind.TWO_PHASE_EXPIRED]
        events.sort(key=lambda e: e.timestamp)
        if int(f.flags) & AccountFilterFlags.REVERSED:
            events.reverse()
        rows: list[AccountBalance] = []
        for event in events:
            side = self._account_filter_side(f, event.transfer)
            if side is None:
                continue
            after = event.debit_account if side == "debit" else event.credit_account
            rows.append(
                AccountBalance(
                    debits_pending=after.debits_pending,
                    debits_posted=after.debits_posted,
                    credits_pending=after.credits_pending,
                    credits_posted=after.credits_posted,
                    timestamp=event.transfer.timestamp,
                )
            )
        return rows[: f.limit]

    @staticmethod
    def _query_filter_matches(f: QueryFilter, obj: Account | Transfer) -> bool:
        if not _in_range(obj.timestamp, f.timestamp_min, f.timestamp_max):
            return False
        for wanted, actual in (
            (f.user_data_128, obj.user_data_128),
            (f.user_data_64, obj.user_data_64),
            (f.user_data_32, obj.user_data_32),
            (f.ledger, obj.ledger),
            (f.code, obj.code),
        ):
            if wanted not in (0, actual):  # A zero filter field matches anything.
                return False
        return True

    def query_accounts(self, f: QueryFilter) -> list[Account]:
        _check_query_limit(f.limit)
        if not self._query_filter_valid(f):
            return []
        accounts = sorted(self.accounts, key=_by_timestamp)
        if int(f.flags) & QueryFilterFlags.REVERSED:
            accounts.reverse()
        matches = [a for a in accounts if self._query_filter_matches(f, a)]
        return [copy.copy(a) for a in matches[: f.limit]]

    def query_transfers(self, f: QueryFilter) -> list[Transfer]:
        _check_query_limit(f.limit)
        if not self._query_filter_valid(f):
            return []
        transfers = sorted((entry.transfer for entry in self.transfers), key=_by_timestamp)
        if int(f.flags) & QueryFilterFlags.REVERSED:
            transfers.reverse()
        matches = [t for t in transfers if self._query_filter_matches(f, t)]
        return [copy.copy(t) for t in matches[: f.limit]]


def _by_timestamp(obj: Account | Transfer) -> int:
    return obj.timestamp
