"""The ledger's data model, mirroring the public API of the ``tigerbeetle`` 0.17 Python client.

Names, fields, flag values and numeric status values are the same as the official client's,
so that code written against ``tigerbeetle`` runs against Puhui by changing an import.

The columnar dtypes (``ACCOUNT_DTYPE``, ``TRANSFER_DTYPE``, ...) have TigerBeetle's binary
layout: 128-byte little-endian records, each 128-bit field split into ``*_lo``/``*_hi`` words.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

AMOUNT_MAX = (1 << 128) - 1
"""The largest amount (and id) representable: ``2**128 - 1``."""

U128_MAX = AMOUNT_MAX
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1


class AccountFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3
    IMPORTED = 1 << 4
    CLOSED = 1 << 5


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3
    BALANCING_DEBIT = 1 << 4
    BALANCING_CREDIT = 1 << 5
    CLOSING_DEBIT = 1 << 6
    CLOSING_CREDIT = 1 << 7
    IMPORTED = 1 << 8


class AccountFilterFlags(enum.IntFlag):
    NONE = 0
    DEBITS = 1 << 0
    CREDITS = 1 << 1
    REVERSED = 1 << 2


class QueryFilterFlags(enum.IntFlag):
    NONE = 0
    REVERSED = 1 << 0


class CreateAccountStatus(enum.IntEnum):
    """Result of one ``create_accounts`` event, in TigerBeetle's order of precedence."""

    CREATED = 0xFFFFFFFF
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    IMPORTED_EVENT_EXPECTED = 22
    IMPORTED_EVENT_NOT_EXPECTED = 23
    TIMESTAMP_MUST_BE_ZERO = 3
    IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 24
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 25
    RESERVED_FIELD = 4
    RESERVED_FLAG = 5
    ID_MUST_NOT_BE_ZERO = 6
    ID_MUST_NOT_BE_INT_MAX = 7
    EXISTS_WITH_DIFFERENT_FLAGS = 15
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
    EXISTS_WITH_DIFFERENT_LEDGER = 19
    EXISTS_WITH_DIFFERENT_CODE = 20
    EXISTS = 21
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    DEBITS_PENDING_MUST_BE_ZERO = 9
    DEBITS_POSTED_MUST_BE_ZERO = 10
    CREDITS_PENDING_MUST_BE_ZERO = 11
    CREDITS_POSTED_MUST_BE_ZERO = 12
    LEDGER_MUST_NOT_BE_ZERO = 13
    CODE_MUST_NOT_BE_ZERO = 14
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 26


class CreateTransferStatus(enum.IntEnum):
    """Result of one ``create_transfers`` event, in TigerBeetle's order of precedence."""

    CREATED = 0xFFFFFFFF
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    IMPORTED_EVENT_EXPECTED = 56
    IMPORTED_EVENT_NOT_EXPECTED = 57
    TIMESTAMP_MUST_BE_ZERO = 3
    IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 58
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 59
    RESERVED_FLAG = 4
    ID_MUST_NOT_BE_ZERO = 5
    ID_MUST_NOT_BE_INT_MAX = 6
    EXISTS_WITH_DIFFERENT_FLAGS = 36
    EXISTS_WITH_DIFFERENT_PENDING_ID = 40
    EXISTS_WITH_DIFFERENT_TIMEOUT = 44
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 37
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 38
    EXISTS_WITH_DIFFERENT_AMOUNT = 39
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 41
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 42
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 43
    EXISTS_WITH_DIFFERENT_LEDGER = 67
    EXISTS_WITH_DIFFERENT_CODE = 45
    EXISTS = 46
    ID_ALREADY_FAILED = 68
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 8
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 9
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 10
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 11
    ACCOUNTS_MUST_BE_DIFFERENT = 12
    PENDING_ID_MUST_BE_ZERO = 13
    PENDING_ID_MUST_NOT_BE_ZERO = 14
    PENDING_ID_MUST_NOT_BE_INT_MAX = 15
    PENDING_ID_MUST_BE_DIFFERENT = 16
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 17
    CLOSING_TRANSFER_MUST_BE_PENDING = 64
    LEDGER_MUST_NOT_BE_ZERO = 19
    CODE_MUST_NOT_BE_ZERO = 20
    DEBIT_ACCOUNT_NOT_FOUND = 21
    CREDIT_ACCOUNT_NOT_FOUND = 22
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 23
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 24
    PENDING_TRANSFER_NOT_FOUND = 25
    PENDING_TRANSFER_NOT_PENDING = 26
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 27
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 28
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 29
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 30
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 31
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 32
    PENDING_TRANSFER_ALREADY_POSTED = 33
    PENDING_TRANSFER_ALREADY_VOIDED = 34
    PENDING_TRANSFER_EXPIRED = 35
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 60
    IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT = 61
    IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT = 62
    IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO = 63
    DEBIT_ACCOUNT_ALREADY_CLOSED = 65
    CREDIT_ACCOUNT_ALREADY_CLOSED = 66
    OVERFLOWS_DEBITS_PENDING = 47
    OVERFLOWS_CREDITS_PENDING = 48
    OVERFLOWS_DEBITS_POSTED = 49
    OVERFLOWS_CREDITS_POSTED = 50
    OVERFLOWS_DEBITS = 51
    OVERFLOWS_CREDITS = 52
    OVERFLOWS_TIMEOUT = 53
    EXCEEDS_CREDITS = 54
    EXCEEDS_DEBITS = 55


# The dataclasses use slots, as the official client does on Python 3.10+.


@dataclass(slots=True)
class Account:
    id: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int = 0
    code: int = 0
    flags: AccountFlags = AccountFlags.NONE
    timestamp: int = 0


@dataclass(slots=True)
class Transfer:
    id: int = 0
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    pending_id: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timeout: int = 0
    ledger: int = 0
    code: int = 0
    flags: TransferFlags = TransferFlags.NONE
    timestamp: int = 0


@dataclass(slots=True)
class CreateAccountResult:
    timestamp: int
    status: CreateAccountStatus


@dataclass(slots=True)
class CreateTransferResult:
    timestamp: int
    status: CreateTransferStatus


@dataclass(slots=True)
class AccountFilter:
    account_id: int
    user_data_128: int
    user_data_64: int
    user_data_32: int
    code: int
    timestamp_min: int
    timestamp_max: int
    limit: int
    flags: AccountFilterFlags


@dataclass(slots=True)
class AccountBalance:
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int


@dataclass(slots=True)
class QueryFilter:
    user_data_128: int
    user_data_64: int
    user_data_32: int
    ledger: int
    code: int
    timestamp_min: int
    timestamp_max: int
    limit: int
    flags: QueryFilterFlags


# --- Columnar layout ------------------------------------------------------------------------

ACCOUNT_DTYPE = np.dtype(
    [
        ("id_lo", "<u8"),
        ("id_hi", "<u8"),
        ("debits_pending_lo", "<u8"),
        ("debits_pending_hi", "<u8"),
        ("debits_posted_lo", "<u8"),
        ("debits_posted_hi", "<u8"),
        ("credits_pending_lo", "<u8"),
        ("credits_pending_hi", "<u8"),
        ("credits_posted_lo", "<u8"),
        ("credits_posted_hi", "<u8"),
        ("user_data_128_lo", "<u8"),
        ("user_data_128_hi", "<u8"),
        ("user_data_64", "<u8"),
        ("user_data_32", "<u4"),
        ("reserved", "<u4"),
        ("ledger", "<u4"),
        ("code", "<u2"),
        ("flags", "<u2"),
        ("timestamp", "<u8"),
    ],
    align=True,
)
"""An account as TigerBeetle lays it out on the wire: 128 bytes."""

TRANSFER_DTYPE = np.dtype(
    [
        ("id_lo", "<u8"),
        ("id_hi", "<u8"),
        ("debit_account_id_lo", "<u8"),
        ("debit_account_id_hi", "<u8"),
        ("credit_account_id_lo", "<u8"),
        ("credit_account_id_hi", "<u8"),
        ("amount_lo", "<u8"),
        ("amount_hi", "<u8"),
        ("pending_id_lo", "<u8"),
        ("pending_id_hi", "<u8"),
        ("user_data_128_lo", "<u8"),
        ("user_data_128_hi", "<u8"),
        ("user_data_64", "<u8"),
        ("user_data_32", "<u4"),
        ("timeout", "<u4"),
        ("ledger", "<u4"),
        ("code", "<u2"),
        ("flags", "<u2"),
        ("timestamp", "<u8"),
    ],
    align=True,
)
"""A transfer as TigerBeetle lays it out on the wire: 128 bytes."""

RESULT_DTYPE = np.dtype([("timestamp", "<u8"), ("status", "<u4"), ("reserved", "<u4")], align=True)
"""One ``create_*`` result: 16 bytes, as TigerBeetle's ``CreateTransferResult``."""

BALANCE_DTYPE = np.dtype(
    [
        ("debits_pending_lo", "<u8"),
        ("debits_pending_hi", "<u8"),
        ("debits_posted_lo", "<u8"),
        ("debits_posted_hi", "<u8"),
        ("credits_pending_lo", "<u8"),
        ("credits_pending_hi", "<u8"),
        ("credits_posted_lo", "<u8"),
        ("credits_posted_hi", "<u8"),
    ],
    align=True,
)
"""One account's four balances: 64 bytes."""

assert ACCOUNT_DTYPE.itemsize == 128
assert TRANSFER_DTYPE.itemsize == 128
assert RESULT_DTYPE.itemsize == 16
assert BALANCE_DTYPE.itemsize == 64

ACCOUNT_U128_FIELDS = (
    "id",
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
    "user_data_128",
)
TRANSFER_U128_FIELDS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_id",
    "user_data_128",
)


# --- Identifiers ----------------------------------------------------------------------------


class _IdGenerator:
    """ULID-style 128-bit ids: 48 bits of milliseconds, then 80 bits that increase.

    The same construction as ``tigerbeetle.id()``: ids sort by creation time, and ids made in
    one process never repeat, even within one millisecond.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_time_ms = time.time_ns() // 1_000_000
        self._last_random = int.from_bytes(os.urandom(10), "little")

    def generate(self) -> int:
        return self._take(1)

    def generate_block(self, count: int) -> range:
        """``count`` consecutive ids (one lock, one clock read): as ``count`` calls of
        ``generate`` in a row would give them, with no id of another thread in between."""
        if count < 1:
            raise ValueError("a block holds at least one id")
        start = self._take(count)
        return range(start, start + count)

    def _take(self, count: int) -> int:
        """The first of the next ``count`` ids (the clock read and the counter moved once)."""
        with self._lock:
            time_ms = time.time_ns() // 1_000_000
            if time_ms <= self._last_time_ms:
                time_ms = self._last_time_ms
            else:
                self._last_time_ms = time_ms
                self._last_random = int.from_bytes(os.urandom(10), "little")
            first = self._last_random + 1
            if first + count > 1 << 80:
                # The official client raises here too: 2**80 ids in one millisecond.
                raise OverflowError("random bits overflow on monotonic increment")
            self._last_random = first + count - 1
            return (time_ms << 80) | first


_id_generator = _IdGenerator()


def id() -> int:
    """Return a new unique, time-sortable 128-bit id (as ``tigerbeetle.id()``)."""
    return _id_generator.generate()


def ids(count: int) -> range:
    """``count`` new unique, time-sortable 128-bit ids at once, in increasing order: what
    ``count`` calls of ``id()`` would return, for one lock and one clock read."""
    return _id_generator.generate_block(count)
