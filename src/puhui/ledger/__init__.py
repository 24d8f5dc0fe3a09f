"""Puhui's double-entry ledger: TigerBeetle's API and semantics, embedded and durable.

``puhui.ledger`` mirrors the public API of the official ``tigerbeetle`` 0.17 Python client
(same names, fields, flag values and status values), so code written for TigerBeetle runs here
by changing an import. ``open(path_or_url)`` returns a client journalling to SQLite (a path or
``sqlite:///…``) or PostgreSQL (``postgresql+psycopg://…``). Besides the object API, the
``*_array`` methods take and return numpy arrays in TigerBeetle's binary layout.
``serve(ledger, path)`` shares an open ledger with other processes over a Unix domain
socket; ``connect(path)`` is their client (``RemoteLedger``, the same API).
"""

from ._async import AsyncLedger
from ._client import LedgerClient
from ._convert import (
    ACCOUNT_FIELDS,
    BATCH_EVENTS_MAX,
    TRANSFER_FIELDS,
    account_from_mapping,
    transfer_from_mapping,
)
from ._errors import (
    BatchTooLargeError,
    FieldOutOfRangeError,
    JournalCorruptError,
    JournalUnavailableError,
    LedgerClosedError,
    LedgerFailedError,
    LedgerLockedError,
    LedgerSocketInUseError,
    LedgerUnavailableError,
    SnapshotCorruptError,
    TooMuchDataError,
    UnknownFieldError,
    VerificationError,
    WrongTypeError,
)
from ._ledger import Ledger, LedgerOptions, open
from ._remote import RemoteLedger, connect
from ._server import LedgerServer, serve
from ._types import (
    ACCOUNT_DTYPE,
    AMOUNT_MAX,
    BALANCE_DTYPE,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
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
    id,
    ids,
)
from ._verify import VerifyReport, verify

__all__ = [
    "ACCOUNT_DTYPE",
    "ACCOUNT_FIELDS",
    "AMOUNT_MAX",
    "BALANCE_DTYPE",
    "BATCH_EVENTS_MAX",
    "RESULT_DTYPE",
    "TRANSFER_DTYPE",
    "TRANSFER_FIELDS",
    "Account",
    "AccountBalance",
    "AccountFilter",
    "AccountFilterFlags",
    "AccountFlags",
    "AsyncLedger",
    "BatchTooLargeError",
    "CreateAccountResult",
    "CreateAccountStatus",
    "CreateTransferResult",
    "CreateTransferStatus",
    "FieldOutOfRangeError",
    "JournalCorruptError",
    "JournalUnavailableError",
    "Ledger",
    "LedgerClient",
    "LedgerClosedError",
    "LedgerFailedError",
    "LedgerLockedError",
    "LedgerOptions",
    "LedgerServer",
    "LedgerSocketInUseError",
    "LedgerUnavailableError",
    "QueryFilter",
    "QueryFilterFlags",
    "RemoteLedger",
    "SnapshotCorruptError",
    "TooMuchDataError",
    "Transfer",
    "TransferFlags",
    "UnknownFieldError",
    "VerificationError",
    "VerifyReport",
    "WrongTypeError",
    "account_from_mapping",
    "connect",
    "id",
    "ids",
    "open",
    "serve",
    "transfer_from_mapping",
    "verify",
]
