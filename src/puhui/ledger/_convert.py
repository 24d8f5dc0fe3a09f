"""Conversions between the object API (dataclasses) and the columnar layout, with validation.

Bad input raises a specific ``InvalidInputError`` subclass naming the event index and field,
before anything reaches the journal: a rejected request changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import BatchTooLargeError, FieldOutOfRangeError, UnknownFieldError, WrongTypeError
from ._types import (
    ACCOUNT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountBalance,
    AccountFlags,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

BATCH_EVENTS_MAX = 8189
"""Most events in one create/lookup request, and most results in one query (as TigerBeetle)."""

ACCOUNT_FIELDS: tuple[tuple[str, int], ...] = (
    ("id", 128),
    ("debits_pending", 128),
    ("debits_posted", 128),
    ("credits_pending", 128),
    ("credits_posted", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("ledger", 32),
    ("code", 16),
    ("flags", 16),
    ("timestamp", 64),
)
TRANSFER_FIELDS: tuple[tuple[str, int], ...] = (
    ("id", 128),
    ("debit_account_id", 128),
    ("credit_account_id", 128),
    ("amount", 128),
    ("pending_id", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("timeout", 32),
    ("ledger", 32),
    ("code", 16),
    ("flags", 16),
    ("timestamp", 64),
)
"""Each transfer field and its width in bits (``ACCOUNT_FIELDS`` likewise for accounts): the
one table input checks and columnar conversions read."""

_ACCOUNT_STATUS = {int(s): s for s in CreateAccountStatus}
_TRANSFER_STATUS = {int(s): s for s in CreateTransferStatus}


def _check_value(index: int, name: str, bits: int, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WrongTypeError(
            f"event {index}: field {name!r} must be an int, not {type(value).__name__}",
            index=index,
            field=name,
        )
    if value < 0 or value >= 1 << bits:
        raise FieldOutOfRangeError(
            f"event {index}: field {name!r} must be in [0, 2**{bits} - 1]",
            index=index,
            field=name,
        )


def _validate(
    index: int, event: object, cls: type[Any], fields: tuple[tuple[str, int], ...]
) -> None:
    if not isinstance(event, cls):
        raise WrongTypeError(
            f"event {index}: expected {cls.__name__}, got {type(event).__name__}", index=index
        )
    for name, bits in fields:
        _check_value(index, name, bits, getattr(event, name))


def _check_batch(events: Sequence[object]) -> None:
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise WrongTypeError("a batch must be a list of events")
    if len(events) > BATCH_EVENTS_MAX:
        raise BatchTooLargeError(
            f"{len(events)} events in one batch; at most {BATCH_EVENTS_MAX}", count=len(events)
        )


def accounts_to_array(accounts: Sequence[Account]) -> np.ndarray[Any, Any]:
    _check_batch(accounts)
    parts: list[bytes] = []
    try:
        for a in accounts:
            if not isinstance(a, Account):
                raise TypeError
            parts.append(
                b"".join(
                    (
                        a.id.to_bytes(16, "little"),
                        a.debits_pending.to_bytes(16, "little"),
                        a.debits_posted.to_bytes(16, "little"),
                        a.credits_pending.to_bytes(16, "little"),
                        a.credits_posted.to_bytes(16, "little"),
                        a.user_data_128.to_bytes(16, "little"),
                        a.user_data_64.to_bytes(8, "little"),
                        a.user_data_32.to_bytes(4, "little"),
                        b"\0\0\0\0",
                        a.ledger.to_bytes(4, "little"),
                        a.code.to_bytes(2, "little"),
                        a.flags.to_bytes(2, "little"),
                        a.timestamp.to_bytes(8, "little"),
                    )
                )
            )
    except (AttributeError, OverflowError, TypeError):
        for index, event in enumerate(accounts):
            _validate(index, event, Account, ACCOUNT_FIELDS)
        raise
    return np.frombuffer(b"".join(parts), dtype=ACCOUNT_DTYPE).copy()


def transfers_to_array(transfers: Sequence[Transfer]) -> np.ndarray[Any, Any]:
    _check_batch(transfers)
    parts: list[bytes] = []
    try:
        for t in transfers:
            if not isinstance(t, Transfer):
                raise TypeError
            parts.append(
                b"".join(
                    (
                        t.id.to_bytes(16, "little"),
                        t.debit_account_id.to_bytes(16, "little"),
                        t.credit_account_id.to_bytes(16, "little"),
                        t.amount.to_bytes(16, "little"),
                        t.pending_id.to_bytes(16, "little"),
                        t.user_data_128.to_bytes(16, "little"),
                        t.user_data_64.to_bytes(8, "little"),
                        t.user_data_32.to_bytes(4, "little"),
                        t.timeout.to_bytes(4, "little"),
                        t.ledger.to_bytes(4, "little"),
                        t.code.to_bytes(2, "little"),
                        t.flags.to_bytes(2, "little"),
                        t.timestamp.to_bytes(8, "little"),
                    )
                )
            )
    except (AttributeError, OverflowError, TypeError):
        for index, event in enumerate(transfers):
            _validate(index, event, Transfer, TRANSFER_FIELDS)
        raise
    return np.frombuffer(b"".join(parts), dtype=TRANSFER_DTYPE).copy()


def check_array(events: object, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Validate a columnar batch: a 1-d array of exactly ``dtype``, at most 8,189 events."""
    if not isinstance(events, np.ndarray):
        raise WrongTypeError(
            f"expected a numpy array of dtype {dtype}, got {type(events).__name__}"
        )
    if events.dtype != dtype:
        names = set(events.dtype.names or ())
        unknown = sorted(names - set(dtype.names or ()))
        missing = sorted(set(dtype.names or ()) - names)
        raise UnknownFieldError(
            f"array layout differs from the ledger's (unknown {unknown}, missing {missing})",
            unknown=unknown,
            missing=missing,
        )
    if events.ndim != 1:
        raise WrongTypeError("a batch must be a 1-dimensional array")
    if events.shape[0] > BATCH_EVENTS_MAX:
        raise BatchTooLargeError(
            f"{events.shape[0]} events in one batch; at most {BATCH_EVENTS_MAX}",
            count=int(events.shape[0]),
        )
    return np.ascontiguousarray(events)


def ids_to_words(ids: Sequence[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    _check_batch(ids)
    for index, value in enumerate(ids):
        _check_value(index, "id", 128, value)
    mask = (1 << 64) - 1
    lo = np.array([i & mask for i in ids], dtype=np.uint64)
    hi = np.array([i >> 64 for i in ids], dtype=np.uint64)
    return lo, hi


def _u128(rows: np.ndarray[Any, Any], name: str) -> list[int]:
    lo = rows[name + "_lo"].tolist()
    hi = rows[name + "_hi"].tolist()
    return [(h << 64) | low for low, h in zip(lo, hi, strict=True)]


def array_to_accounts(rows: np.ndarray[Any, Any]) -> list[Account]:
    cols = {name: _u128(rows, name) for name, bits in ACCOUNT_FIELDS if bits == 128}
    ud64 = rows["user_data_64"].tolist()
    ud32 = rows["user_data_32"].tolist()
    ledger = rows["ledger"].tolist()
    code = rows["code"].tolist()
    flags = rows["flags"].tolist()
    ts = rows["timestamp"].tolist()
    return [
        Account(
            id=cols["id"][i],
            debits_pending=cols["debits_pending"][i],
            debits_posted=cols["debits_posted"][i],
            credits_pending=cols["credits_pending"][i],
            credits_posted=cols["credits_posted"][i],
            user_data_128=cols["user_data_128"][i],
            user_data_64=ud64[i],
            user_data_32=ud32[i],
            ledger=ledger[i],
            code=code[i],
            flags=AccountFlags(flags[i]),
            timestamp=ts[i],
        )
        for i in range(rows.shape[0])
    ]


def array_to_transfers(rows: np.ndarray[Any, Any]) -> list[Transfer]:
    cols = {name: _u128(rows, name) for name, bits in TRANSFER_FIELDS if bits == 128}
    ud64 = rows["user_data_64"].tolist()
    ud32 = rows["user_data_32"].tolist()
    timeout = rows["timeout"].tolist()
    ledger = rows["ledger"].tolist()
    code = rows["code"].tolist()
    flags = rows["flags"].tolist()
    ts = rows["timestamp"].tolist()
    return [
        Transfer(
            id=cols["id"][i],
            debit_account_id=cols["debit_account_id"][i],
            credit_account_id=cols["credit_account_id"][i],
            amount=cols["amount"][i],
            pending_id=cols["pending_id"][i],
            user_data_128=cols["user_data_128"][i],
            user_data_64=ud64[i],
            user_data_32=ud32[i],
            timeout=timeout[i],
            ledger=ledger[i],
            code=code[i],
            flags=TransferFlags(flags[i]),
            timestamp=ts[i],
        )
        for i in range(rows.shape[0])
    ]


def array_to_balances(rows: np.ndarray[Any, Any], timestamps: list[int]) -> list[AccountBalance]:
    cols = {
        name: _u128(rows, name)
        for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
    }
    return [
        AccountBalance(
            debits_pending=cols["debits_pending"][i],
            debits_posted=cols["debits_posted"][i],
            credits_pending=cols["credits_pending"][i],
            credits_posted=cols["credits_posted"][i],
            timestamp=timestamps[i],
        )
        for i in range(rows.shape[0])
    ]


def account_results(results: np.ndarray[Any, Any]) -> list[CreateAccountResult]:
    table = _ACCOUNT_STATUS
    return [
        CreateAccountResult(timestamp=ts, status=table[st])
        for ts, st in zip(results["timestamp"].tolist(), results["status"].tolist(), strict=True)
    ]


def transfer_results(results: np.ndarray[Any, Any]) -> list[CreateTransferResult]:
    table = _TRANSFER_STATUS
    return [
        CreateTransferResult(timestamp=ts, status=table[st])
        for ts, st in zip(results["timestamp"].tolist(), results["status"].tolist(), strict=True)
    ]


def _from_mapping(
    data: Mapping[str, object], cls: type[Any], fields: tuple[tuple[str, int], ...]
) -> Any:
    if not isinstance(data, Mapping):
        raise WrongTypeError(f"expected a mapping of fields, got {type(data).__name__}")
    known = {name for name, _ in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UnknownFieldError(f"unknown fields {unknown} for {cls.__name__}", unknown=unknown)
    for name, bits in fields:
        if name in data:
            _check_value(0, name, bits, data[name])
    return cls(**data)


def account_from_mapping(data: Mapping[str, object]) -> Account:
    """Build an ``Account`` from a mapping (e.g. decoded JSON), rejecting unknown fields."""
    account: Account = _from_mapping(data, Account, ACCOUNT_FIELDS)
    account.flags = AccountFlags(account.flags)
    return account


def transfer_from_mapping(data: Mapping[str, object]) -> Transfer:
    """Build a ``Transfer`` from a mapping (e.g. decoded JSON), rejecting unknown fields."""
    transfer: Transfer = _from_mapping(data, Transfer, TRANSFER_FIELDS)
    transfer.flags = TransferFlags(transfer.flags)
    return transfer
