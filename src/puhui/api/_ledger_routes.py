"""The ledger over HTTP: batch endpoints mirroring ``puhui.ledger`` (TigerBeetle's API), each
seen through the caller's ``TenantLedger`` (other tenants' accounts do not exist for it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPBearer
from starlette.responses import Response

from puhui.ledger import (
    ACCOUNT_DTYPE,
    ACCOUNT_FIELDS,
    BATCH_EVENTS_MAX,
    TRANSFER_DTYPE,
    TRANSFER_FIELDS,
    AccountFilter,
    AccountFilterFlags,
    BatchTooLargeError,
    CreateAccountStatus,
    CreateTransferStatus,
    FieldOutOfRangeError,
    QueryFilter,
    QueryFilterFlags,
    account_from_mapping,
    transfer_from_mapping,
)
from puhui.platform import Scope, TenantLedger

from ._context import ApiContext
from ._guards import decode_cursor, encode_cursor, page_size
from ._json_events import EventsDecoder
from ._problems import (
    PROBLEM_JSON,
    InvalidCursorError,
    RecordsInvalidError,
    UnsupportedMediaTypeError,
)
from ._route import PlatformRoute, endpoint, principal_of
from ._schemas import (
    BATCH,
    U16,
    U32,
    AccountIn,
    AccountPage,
    AccountsOut,
    BalancePage,
    CreateAccountsIn,
    CreateResultsOut,
    CreateTransfersIn,
    LookupIn,
    Problem,
    TransferIn,
    TransferPage,
    TransfersOut,
    U64Text,
    U128Text,
    account_out,
    balance_out,
    transfer_out,
)

bearer = HTTPBearer(auto_error=False, description="An API key: `pk_<key id>_<secret>`.")

_problem = {"model": Problem, "content": {PROBLEM_JSON: {}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {**_problem, "description": description}
    for status, description in {
        400: "Bad request (malformed header or cursor)",
        401: "Missing, unknown or revoked API key",
        403: "The key lacks the route's scope",
        409: "Idempotency conflict",
        413: "Request body too large",
        422: "The request does not match the schema",
        429: "Rate limited; see Retry-After",
    }.items()
}

router = APIRouter(
    prefix="/v1/ledger",
    tags=["ledger"],
    route_class=PlatformRoute,
    responses=PROBLEM_RESPONSES,
    dependencies=[Depends(bearer)],  # documents the scheme; PlatformRoute authenticates
)


def _tenant_ledger(request: Request) -> TenantLedger:
    context: ApiContext = request.app.state.puhui
    return TenantLedger(context.ledger, principal_of(request).tenant)


@contextlib.contextmanager
def _ledger_timer(request: Request, operation: str, events: int) -> Iterator[None]:
    metrics = request.app.state.puhui.metrics
    metrics.ledger_batch.labels(operation).observe(events)
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.ledger_latency.labels(operation).observe(time.perf_counter() - started)


def _mapping(event: Mapping[str, Any]) -> dict[str, Any]:
    """A validated input event as the ledger's field mapping (decimal text → int)."""
    return {k: int(v) if isinstance(v, str) else v for k, v in event.items()}


JSON = "application/json"
_U64_MASK = (1 << 64) - 1
_TEXT_FIELDS = {"user_data_64"}
"""64-bit fields that travel as decimal text (128-bit ones always do)."""
_SERVER_SET = frozenset(
    {"timestamp", "debits_pending", "debits_posted", "credits_pending", "credits_posted"}
)
"""Fields the ledger fills in: the JSON create routes take no value for them."""
_ACCOUNT_COLUMNS = tuple(f for f in ACCOUNT_FIELDS if f[0] not in _SERVER_SET)
_TRANSFER_COLUMNS = tuple(f for f in TRANSFER_FIELDS if f[0] not in _SERVER_SET)
_ACCOUNT_STATUS_NAMES = {int(s): s.name.lower() for s in CreateAccountStatus}
_TRANSFER_STATUS_NAMES = {int(s): s.name.lower() for s in CreateTransferStatus}


def _columns(
    events: Sequence[Mapping[str, Any]], columns: tuple[tuple[str, int], ...], dtype: np.dtype[Any]
) -> np.ndarray[Any, Any]:
    """Validated input events as the ledger's array, a field at a time (a field no event
    gives stays 0). A number too large for its field raises ``OverflowError`` (numpy refuses
    it) before anything is sent."""
    count = len(events)
    out = np.zeros(count, dtype)
    for name, bits in columns:
        zero = "0" if bits >= 64 else 0
        values = [event.get(name, zero) for event in events]
        if values.count(zero) == count:
            continue
        if bits == 128:
            if max(map(len, values), default=0) < _U64_DIGITS:  # the high halves stay 0
                out[name + "_lo"] = np.fromiter(map(int, values), np.uint64, count)
                continue
            numbers = [int(text) for text in values]
            out[name + "_lo"] = [n & _U64_MASK for n in numbers]
            out[name + "_hi"] = [n >> 64 for n in numbers]
        elif name in _TEXT_FIELDS:
            out[name] = np.fromiter(map(int, values), np.uint64, count)
        else:
            out[name] = values  # ranges checked by the schema (U32, U16)
    return out


_U64_DIGITS = 20
"""Decimal text shorter than this is below 10**19 < 2**64: a 128-bit field's low half."""


def _results_json(
    ids: Sequence[str], results: np.ndarray[Any, Any], names: dict[int, str]
) -> Response:
    """``CreateResultsOut`` as JSON, written straight from the results array: the text
    ``json.dumps`` gives (compact separators), formatted directly — the ids are validated
    decimal text and the status names plain lower-case words, so nothing needs escaping."""
    rows = ",".join(
        [
            _RESULT % (i, ids[i], names[status], stamp)
            for i, (status, stamp) in enumerate(
                zip(results["status"].tolist(), results["timestamp"].tolist(), strict=True)
            )
        ]
    )
    return Response(f'{{"results":[{rows}]}}'.encode(), media_type=JSON)


_RESULT = '{"index":%d,"id":"%s","status":"%s","timestamp":"%d"}'


async def _create(
    request: Request,
    body: CreateAccountsIn | CreateTransfersIn,
    models: Sequence[Mapping[str, Any]],
    reader: EventsDecoder,
    from_mapping: Any,
    operation: str,
    names: dict[int, str],
) -> Response:
    """One JSON create route: the events as the ledger's array (as ``_json_events`` read
    them, or from the validated models), the tenant's ledger call (timed), the results
    written from the array."""
    decoded = body.decoded
    if decoded is not None:
        events = decoded.events
    else:
        try:
            events = _columns(models, reader.columns, reader.dtype)
        except OverflowError:  # the object form names the field (field_out_of_range)
            for model in models:
                from_mapping(_mapping(model))
            raise
    ledger = _tenant_ledger(request)
    create = (
        ledger.create_accounts_array
        if reader.dtype == ACCOUNT_DTYPE
        else ledger.create_transfers_array
    )
    with _ledger_timer(request, operation, len(events)):
        results = await create(events)
    if decoded is not None:
        return Response(reader.results_json(decoded, results), media_type=JSON)
    return _results_json([m["id"] for m in models], results, names)


_ACCOUNTS = EventsDecoder(
    "accounts", AccountIn, _ACCOUNT_COLUMNS, ACCOUNT_DTYPE, BATCH, _ACCOUNT_STATUS_NAMES
)
_TRANSFERS = EventsDecoder(
    "transfers", TransferIn, _TRANSFER_COLUMNS, TRANSFER_DTYPE, BATCH, _TRANSFER_STATUS_NAMES
)


def warm_up_readers() -> None:
    """Load the JSON create routes' compiled readers (``_json_events``) before serving."""
    _ACCOUNTS.warm_up()
    _TRANSFERS.warm_up()


def _read_accounts(body: bytes) -> CreateAccountsIn | None:
    decoded = _ACCOUNTS.decode(body)
    return None if decoded is None else CreateAccountsIn.of_decoded(decoded)


def _read_transfers(body: bytes) -> CreateTransfersIn | None:
    decoded = _TRANSFERS.decode(body)
    return None if decoded is None else CreateTransfersIn.of_decoded(decoded)


@router.post(
    "/accounts", response_model=CreateResultsOut, status_code=200, summary="create_accounts"
)
@endpoint(Scope.LEDGER_WRITE, changes_state=True, read_body=_read_accounts)
async def create_accounts(body: CreateAccountsIn, request: Request) -> Response:
    """Create accounts; one result per event (``created``, ``exists``, ...)."""
    return await _create(
        request,
        body,
        body.accounts,
        _ACCOUNTS,
        account_from_mapping,
        "create_accounts",
        _ACCOUNT_STATUS_NAMES,
    )


@router.post(
    "/transfers", response_model=CreateResultsOut, status_code=200, summary="create_transfers"
)
@endpoint(Scope.LEDGER_WRITE, changes_state=True, read_body=_read_transfers)
async def create_transfers(body: CreateTransfersIn, request: Request) -> Response:
    """Create transfers (linked chains, two-phase, balancing: TigerBeetle's semantics)."""
    return await _create(
        request,
        body,
        body.transfers,
        _TRANSFERS,
        transfer_from_mapping,
        "create_transfers",
        _TRANSFER_STATUS_NAMES,
    )


def _ids(body: LookupIn) -> list[int]:
    ids = [int(text) for text in body.ids]
    for i, value in enumerate(ids):
        if value >= 1 << 128:
            raise FieldOutOfRangeError(f"ids[{i}] exceeds 2**128 - 1", index=i)
    return ids


# --- the binary batch routes: TigerBeetle's wire layout, straight into the ledger's arrays ----

OCTET_STREAM = "application/octet-stream"
RECORD_BYTES = 128
"""One account or transfer record (``ACCOUNT_DTYPE`` / ``TRANSFER_DTYPE``, little-endian)."""
RESULT_BYTES = 16
"""One result record (``RESULT_DTYPE``: timestamp u64, status u32, reserved u32)."""

_BINARY = {"schema": {"type": "string", "format": "binary"}}
BINARY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"One {RESULT_BYTES}-byte result per record, in order: timestamp (u64), "
        "status (u32, TigerBeetle's result value; created = 4294967295), reserved (u32), "
        "little-endian.",
        "content": {OCTET_STREAM: _BINARY},
    },
    415: {**_problem, "description": "The body is not application/octet-stream"},
}


def _binary_body(record: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": f"At most {BATCH_EVENTS_MAX} {record} records of {RECORD_BYTES} bytes "
            "each, back to back, in TigerBeetle's little-endian layout (see docs/api.md).",
            "content": {OCTET_STREAM: _BINARY},
        }
    }


async def _records(request: Request, dtype: np.dtype[Any], kind: str) -> np.ndarray[Any, Any]:
    """The body's records as a (read-only) array of ``dtype``, checked: the media type, whole
    records, at most a batch of them, and no ``timestamp`` (only the ledger sets one; importing
    with one's own timestamps is not offered over the API, as in the JSON routes)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != OCTET_STREAM:
        raise UnsupportedMediaTypeError(f"send the {kind} as {OCTET_STREAM}")
    body = await request.body()
    if len(body) % RECORD_BYTES:
        raise RecordsInvalidError(
            f"the body ({len(body)} bytes) is not a whole number of {RECORD_BYTES}-byte records"
        )
    count = len(body) // RECORD_BYTES
    if count > BATCH_EVENTS_MAX:
        raise BatchTooLargeError(
            f"{count} events in one batch; at most {BATCH_EVENTS_MAX}", count=count
        )
    events = np.frombuffer(body, dtype=dtype)
    stamped = np.flatnonzero(events["timestamp"])
    if stamped.size:
        index = int(stamped[0])
        raise RecordsInvalidError(
            f"{kind}[{index}].timestamp must be 0: the ledger sets it", index=index
        )
    return events


@router.post(
    "/accounts/binary",
    summary="create_accounts (binary)",
    response_class=Response,
    responses=BINARY_RESPONSES,
    openapi_extra=_binary_body("account"),
)
@endpoint(Scope.LEDGER_WRITE, changes_state=True)
async def create_accounts_binary(request: Request) -> Response:
    """``create_accounts`` in the ledger's binary layout: 128-byte account records in, one
    16-byte result per record out. ``user_data_32`` is reserved as in the JSON form."""
    events = await _records(request, ACCOUNT_DTYPE, "accounts")
    with _ledger_timer(request, "create_accounts", len(events)):
        results = await _tenant_ledger(request).create_accounts_array(events)
    return Response(results.tobytes(), media_type=OCTET_STREAM)


@router.post(
    "/transfers/binary",
    summary="create_transfers (binary)",
    response_class=Response,
    responses=BINARY_RESPONSES,
    openapi_extra=_binary_body("transfer"),
)
@endpoint(Scope.LEDGER_WRITE, changes_state=True)
async def create_transfers_binary(request: Request) -> Response:
    """``create_transfers`` in the ledger's binary layout: 128-byte transfer records in, one
    16-byte result per record out (TigerBeetle's semantics, as the JSON form)."""
    events = await _records(request, TRANSFER_DTYPE, "transfers")
    with _ledger_timer(request, "create_transfers", len(events)):
        results = await _tenant_ledger(request).create_transfers_array(events)
    return Response(results.tobytes(), media_type=OCTET_STREAM)


@router.post("/accounts/lookup", response_model=AccountsOut, summary="lookup_accounts")
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def lookup_accounts(body: LookupIn, request: Request) -> AccountsOut:
    """The accounts with these ids that exist (for this tenant), in the order asked."""
    found = await _tenant_ledger(request).lookup_accounts(_ids(body))
    return AccountsOut(accounts=[account_out(a) for a in found])


@router.post("/transfers/lookup", response_model=TransfersOut, summary="lookup_transfers")
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def lookup_transfers(body: LookupIn, request: Request) -> TransfersOut:
    """The transfers with these ids that exist (for this tenant), in the order asked."""
    found = await _tenant_ledger(request).lookup_transfers(_ids(body))
    return TransfersOut(transfers=[transfer_out(t) for t in found])


def _account_filter(
    request: Request,
    kind: str,
    account_id: str,
    *,
    limit: int | None,
    cursor: str | None,
    debits: bool,
    credits: bool,
    reversed: bool,
    timestamp_min: str,
    timestamp_max: str,
    code: int,
    user_data_128: str,
    user_data_64: str,
    user_data_32: int,
) -> AccountFilter:
    page = page_size(request.app.state.puhui.options, limit)
    low, high = _window(kind, cursor, reversed, timestamp_min, timestamp_max)
    flags = AccountFilterFlags.NONE
    if debits:
        flags |= AccountFilterFlags.DEBITS
    if credits:
        flags |= AccountFilterFlags.CREDITS
    if reversed:
        flags |= AccountFilterFlags.REVERSED
    account = int(account_id)
    if account >= 1 << 128:
        raise FieldOutOfRangeError("account_id exceeds 2**128 - 1")
    return AccountFilter(
        account_id=account,
        user_data_128=_u128(user_data_128, "user_data_128"),
        user_data_64=int(user_data_64),
        user_data_32=user_data_32,
        code=code,
        timestamp_min=low,
        timestamp_max=high,
        limit=page,
        flags=flags,
    )


def _window(
    kind: str, cursor: str | None, reversed: bool, timestamp_min: str, timestamp_max: str
) -> tuple[int, int]:
    """The timestamp range to read: the asked one, narrowed past a cursor's position."""
    low, high = int(timestamp_min), int(timestamp_max)
    if cursor is not None:
        position = decode_cursor(kind, cursor)
        after, was_reversed = position.get("ts"), position.get("r")
        if (
            not isinstance(after, int)
            or isinstance(after, bool)
            or not isinstance(was_reversed, bool)
            or after < 0
        ):
            raise InvalidCursorError("malformed cursor")
        if was_reversed != reversed:
            raise InvalidCursorError("the cursor was made with another 'reversed'")
        if reversed:
            high = after - 1 if high == 0 else min(high, after - 1)
            if high <= 0:
                high = 1
                low = max(low, 2)  # an empty range: nothing older than the first timestamp
        else:
            low = max(low, after + 1)
    return low, high


def _u128(text: str, name: str) -> int:
    value = int(text)
    if value >= 1 << 128:
        raise FieldOutOfRangeError(f"{name} exceeds 2**128 - 1")
    return value


def _next_cursor(kind: str, timestamps: list[int], limit: int, reversed: bool) -> str | None:
    if len(timestamps) < limit or not timestamps:
        return None
    return encode_cursor(kind, {"ts": timestamps[-1], "r": reversed})


Limit = Annotated[int | None, Query(ge=1, description="Page size (default 100, at most 1000).")]
Cursor = Annotated[str | None, Query(max_length=512, description="From the previous page.")]


@router.get(
    "/accounts/{account_id}/transfers",
    response_model=TransferPage,
    summary="get_account_transfers",
)
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def get_account_transfers(
    account_id: U128Text,
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    debits: bool = True,
    credits: bool = True,
    reversed: bool = False,
    timestamp_min: Annotated[U64Text, Query()] = "0",
    timestamp_max: Annotated[U64Text, Query()] = "0",
    code: Annotated[U16, Query()] = 0,
    user_data_128: Annotated[U128Text, Query()] = "0",
    user_data_64: Annotated[U64Text, Query()] = "0",
    user_data_32: Annotated[U32, Query()] = 0,
) -> TransferPage:
    """The account's transfers, oldest first (``reversed``: newest first), a page at a time."""
    kind = "account_transfers"
    account_filter = _account_filter(
        request,
        kind,
        account_id,
        limit=limit,
        cursor=cursor,
        debits=debits,
        credits=credits,
        reversed=reversed,
        timestamp_min=timestamp_min,
        timestamp_max=timestamp_max,
        code=code,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    found = await _tenant_ledger(request).get_account_transfers(account_filter)
    return TransferPage(
        data=[transfer_out(t) for t in found],
        next_cursor=_next_cursor(
            kind, [t.timestamp for t in found], account_filter.limit, reversed
        ),
    )


@router.get(
    "/accounts/{account_id}/balances",
    response_model=BalancePage,
    summary="get_account_balances",
)
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def get_account_balances(
    account_id: U128Text,
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    debits: bool = True,
    credits: bool = True,
    reversed: bool = False,
    timestamp_min: Annotated[U64Text, Query()] = "0",
    timestamp_max: Annotated[U64Text, Query()] = "0",
    code: Annotated[U16, Query()] = 0,
    user_data_128: Annotated[U128Text, Query()] = "0",
    user_data_64: Annotated[U64Text, Query()] = "0",
    user_data_32: Annotated[U32, Query()] = 0,
) -> BalancePage:
    """The account's balance after each of its transfers (accounts with the ``history``
    flag only), a page at a time."""
    kind = "account_balances"
    account_filter = _account_filter(
        request,
        kind,
        account_id,
        limit=limit,
        cursor=cursor,
        debits=debits,
        credits=credits,
        reversed=reversed,
        timestamp_min=timestamp_min,
        timestamp_max=timestamp_max,
        code=code,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    found = await _tenant_ledger(request).get_account_balances(account_filter)
    return BalancePage(
        data=[balance_out(b) for b in found],
        next_cursor=_next_cursor(
            kind, [b.timestamp for b in found], account_filter.limit, reversed
        ),
    )


def _query_filter(
    page: int,
    window: tuple[int, int],
    *,
    reversed: bool,
    ledger: int,
    code: int,
    user_data_128: str,
    user_data_64: str,
    user_data_32: int,
) -> QueryFilter:
    return QueryFilter(
        user_data_128=_u128(user_data_128, "user_data_128"),
        user_data_64=int(user_data_64),
        user_data_32=user_data_32,
        ledger=ledger,
        code=code,
        timestamp_min=window[0],
        timestamp_max=window[1],
        limit=page,
        flags=QueryFilterFlags.REVERSED if reversed else QueryFilterFlags.NONE,
    )


@router.get("/accounts", response_model=AccountPage, summary="query_accounts")
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def query_accounts(
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    reversed: bool = False,
    ledger: Annotated[U32, Query()] = 0,
    code: Annotated[U16, Query()] = 0,
    user_data_128: Annotated[U128Text, Query()] = "0",
    user_data_64: Annotated[U64Text, Query()] = "0",
    timestamp_min: Annotated[U64Text, Query()] = "0",
    timestamp_max: Annotated[U64Text, Query()] = "0",
) -> AccountPage:
    """The tenant's accounts matching every field given (0: any), oldest first
    (``reversed``: newest first), a page at a time. ``user_data_32`` is the platform's owner
    stamp, so it is not a filter here."""
    kind = "query_accounts"
    query_filter = _query_filter(
        page_size(request.app.state.puhui.options, limit),
        _window(kind, cursor, reversed, timestamp_min, timestamp_max),
        reversed=reversed,
        ledger=ledger,
        code=code,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=0,
    )
    found = await _tenant_ledger(request).query_accounts(query_filter)
    return AccountPage(
        data=[account_out(a) for a in found],
        next_cursor=_next_cursor(kind, [a.timestamp for a in found], query_filter.limit, reversed),
    )


@router.get("/transfers", response_model=TransferPage, summary="query_transfers")
@endpoint(Scope.LEDGER_READ, changes_state=False)
async def query_transfers(
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    reversed: bool = False,
    ledger: Annotated[U32, Query()] = 0,
    code: Annotated[U16, Query()] = 0,
    user_data_128: Annotated[U128Text, Query()] = "0",
    user_data_64: Annotated[U64Text, Query()] = "0",
    user_data_32: Annotated[U32, Query()] = 0,
    timestamp_min: Annotated[U64Text, Query()] = "0",
    timestamp_max: Annotated[U64Text, Query()] = "0",
) -> TransferPage:
    """The tenant's transfers matching every field given (0: any), oldest first
    (``reversed``: newest first). A page may hold fewer than ``limit`` transfers (even none)
    while ``next_cursor`` is set: other tenants' transfers were skipped; follow the cursor
    until it is null."""
    kind = "query_transfers"
    query_filter = _query_filter(
        page_size(request.app.state.puhui.options, limit),
        _window(kind, cursor, reversed, timestamp_min, timestamp_max),
        reversed=reversed,
        ledger=ledger,
        code=code,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    found, resume = await _tenant_ledger(request).query_transfers(query_filter)
    next_cursor = None if resume is None else encode_cursor(kind, {"ts": resume, "r": reversed})
    return TransferPage(data=[transfer_out(t) for t in found], next_cursor=next_cursor)
