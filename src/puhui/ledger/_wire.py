"""The wire format between ``serve`` and ``connect`` (described in docs/ledger.md).

Little-endian throughout. A connection opens with a handshake (``HELLO``: magic, version),
then carries frames both ways: a 16-byte header (payload length, request id, operation,
status) and the payload, which is TigerBeetle's binary layout of the operation's events or
results. Requests on one connection are pipelined; answers carry the request's id and may
arrive in any order.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from puhui.errors import PuhuiError

from . import _errors as E
from ._convert import BATCH_EVENTS_MAX
from ._types import (
    ACCOUNT_DTYPE,
    AccountFilter,
    AccountFilterFlags,
    QueryFilter,
    QueryFilterFlags,
)

MAGIC = b"PHLG"
VERSION = 1

HELLO = struct.Struct("<4sHH")
"""Client to server: magic, version, reserved (0)."""
WELCOME = struct.Struct("<4sHHI")
"""Server to client: magic, version, status (``WELCOME_*``), identity length; the identity
(UTF-8) follows."""
WELCOME_OK = 0
WELCOME_VERSION_UNSUPPORTED = 1
IDENTITY_BYTES_MAX = 256

HEADER = struct.Struct("<IQHH")
"""Every frame: payload length (bytes after the header), request id, operation, status
(requests: 0; answers: ``STATUS_OK`` or ``STATUS_ERROR``)."""
STATUS_OK = 0
STATUS_ERROR = 1

OP_CREATE_ACCOUNTS = 1
OP_CREATE_TRANSFERS = 2
OP_LOOKUP_ACCOUNTS = 3
OP_LOOKUP_TRANSFERS = 4
OP_GET_ACCOUNT_TRANSFERS = 5
OP_GET_ACCOUNT_BALANCES = 6
OP_QUERY_ACCOUNTS = 7
OP_QUERY_TRANSFERS = 8
OP_TICK = 9

EVENT_BYTES = ACCOUNT_DTYPE.itemsize  # accounts and transfers alike: 128
ID_BYTES = 16
ACCOUNT_FILTER_BYTES = 128
QUERY_FILTER_BYTES = 64
TICK_ANSWER_BYTES = 8
ERROR_BYTES_MAX = 16 << 10
"""Most bytes of an error answer (its JSON: code, message, details)."""

FRAME_PAYLOAD_BYTES_MAX = BATCH_EVENTS_MAX * EVENT_BYTES
"""The largest legal payload, either way (a full batch of events or of results); a frame
announcing more is refused and its connection closed."""

IDS_DTYPE = np.dtype([("lo", "<u8"), ("hi", "<u8")])
"""Ids on the wire: 16 bytes each, low word first (as TigerBeetle's u128)."""

ACCOUNT_FILTER = struct.Struct("<QQQQQIH58xQQII")
"""TigerBeetle's AccountFilter (128 bytes): account_id, user_data_128 (u128 each, as two
u64 words), user_data_64, user_data_32, code, reserved, timestamp_min, timestamp_max,
limit, flags."""
QUERY_FILTER = struct.Struct("<QQQIIH6xQQII")
"""TigerBeetle's QueryFilter (64 bytes): user_data_128, user_data_64, user_data_32, ledger,
code, reserved, timestamp_min, timestamp_max, limit, flags."""

BALANCE_WIRE_DTYPE = np.dtype(
    [
        ("debits_pending_lo", "<u8"),
        ("debits_pending_hi", "<u8"),
        ("debits_posted_lo", "<u8"),
        ("debits_posted_hi", "<u8"),
        ("credits_pending_lo", "<u8"),
        ("credits_pending_hi", "<u8"),
        ("credits_posted_lo", "<u8"),
        ("credits_posted_hi", "<u8"),
        ("timestamp", "<u8"),
        ("reserved", "V56"),
    ]
)
"""TigerBeetle's AccountBalance (128 bytes): the four balances, the timestamp, reserved."""

assert ACCOUNT_FILTER.size == ACCOUNT_FILTER_BYTES
assert QUERY_FILTER.size == QUERY_FILTER_BYTES
assert BALANCE_WIRE_DTYPE.itemsize == EVENT_BYTES
assert HEADER.size == 16

_MASK64 = (1 << 64) - 1


def pack_account_filter(f: AccountFilter) -> bytes:
    return ACCOUNT_FILTER.pack(
        f.account_id & _MASK64,
        f.account_id >> 64,
        f.user_data_128 & _MASK64,
        f.user_data_128 >> 64,
        f.user_data_64,
        f.user_data_32,
        f.code,
        f.timestamp_min,
        f.timestamp_max,
        f.limit,
        int(f.flags),
    )


def unpack_account_filter(data: bytes) -> AccountFilter:
    lo, hi, ud_lo, ud_hi, ud64, ud32, code, t_min, t_max, limit, flags = ACCOUNT_FILTER.unpack(data)
    return AccountFilter(
        account_id=(hi << 64) | lo,
        user_data_128=(ud_hi << 64) | ud_lo,
        user_data_64=ud64,
        user_data_32=ud32,
        code=code,
        timestamp_min=t_min,
        timestamp_max=t_max,
        limit=limit,
        flags=AccountFilterFlags(flags),
    )


def pack_query_filter(f: QueryFilter) -> bytes:
    return QUERY_FILTER.pack(
        f.user_data_128 & _MASK64,
        f.user_data_128 >> 64,
        f.user_data_64,
        f.user_data_32,
        f.ledger,
        f.code,
        f.timestamp_min,
        f.timestamp_max,
        f.limit,
        int(f.flags),
    )


def unpack_query_filter(data: bytes) -> QueryFilter:
    ud_lo, ud_hi, ud64, ud32, ledger, code, t_min, t_max, limit, flags = QUERY_FILTER.unpack(data)
    return QueryFilter(
        user_data_128=(ud_hi << 64) | ud_lo,
        user_data_64=ud64,
        user_data_32=ud32,
        ledger=ledger,
        code=code,
        timestamp_min=t_min,
        timestamp_max=t_max,
        limit=limit,
        flags=QueryFilterFlags(flags),
    )


# --- errors ---------------------------------------------------------------------------------

ERROR_CLASSES: dict[str, type[PuhuiError]] = {
    cls.code: cls
    for cls in (
        E.BatchTooLargeError,
        E.TooMuchDataError,
        E.WrongTypeError,
        E.FieldOutOfRangeError,
        E.UnknownFieldError,
        E.LedgerClosedError,
        E.LedgerFailedError,
        E.LedgerLockedError,
        E.JournalCorruptError,
        E.JournalUnavailableError,
        E.SnapshotCorruptError,
        E.VerificationError,
    )
}
"""The ledger's errors a server passes on: re-raised by the client as the same class."""


def encode_error(error: PuhuiError) -> bytes:
    body = json.dumps(
        {"code": error.code, "message": error.message, "details": error.details},
        default=str,
    ).encode()
    if len(body) > ERROR_BYTES_MAX:  # details too large to pass on: the code and message
        body = json.dumps({"code": error.code, "message": error.message[:1024]}).encode()
    return body


def decode_error(data: bytes) -> PuhuiError:
    """The error an answer carries, as the class the server raised (an unknown code: the
    connection is of another program: ``LedgerUnavailableError``)."""
    try:
        body: dict[str, Any] = json.loads(data)
        code = str(body["code"])
        message = str(body["message"])
        details = body.get("details") or {}
        if not isinstance(details, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return E.LedgerUnavailableError("the ledger server sent an error answer not understood")
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return E.LedgerUnavailableError(f"the ledger server answered with an unknown error {code}")
    return cls(message, **details)
