"""Conformance to TigerBeetle 0.17, on the reference model and on the real engine.

A port of the test blocks of TigerBeetle's Zig reference model (``StateMachineReferenceType``)
that can be driven through the client API, plus the facts recorded on a real server in
``ledger-semantics.md``. Every test runs on each ``LedgerHarness`` (see conftest.py).

Conventions:

- Every harness starts at ``now == 100`` (``START``); a batch of ``n`` events takes the slot
  timestamps ``now + 1 .. now + n`` and moves ``now`` by ``n``. Result timestamps are asserted
  as absolute values derived from that.
- The engine expires pending transfers by itself once their deadline has passed; the reference
  model only on ``pulse()``. So, after moving the clock past a deadline, tests call ``pulse()``
  before they look at balances, and assert its return value only where both agree (0).
- Where a Zig test pokes the model's internals, the situation is rebuilt through the API
  (balances near ``AMOUNT_MAX`` come from transfers between accounts without limit flags;
  closed accounts from closing transfers or from accounts created closed).
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from puhui.ledger import (
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
    TooMuchDataError,
    Transfer,
    TransferFlags,
)
from tests.conftest import POSTGRES_ENV, postgres_url
from tests.ledger.conftest import HARNESS_START
from tests.ledger.engine_harness import EngineHarness
from tests.ledger.harness import LedgerHarness, ReferenceHarness
from tests.ledger.remote_harness import RemoteHarness

A = CreateAccountStatus
T = CreateTransferStatus
AF = AccountFlags
TF = TransferFlags

START = HARNESS_START
M = AMOUNT_MAX
ID_MAX = AMOUNT_MAX
TIMESTAMP_MAX = 2**64 - 2
"""``maxInt(u64) - 1``: no timestamp may reach it."""
NS = 1_000_000_000
LIMIT_MAX = 8189

ACCOUNT_PADDING = AccountFlags(1 << 6)
"""The lowest account flag bit that TigerBeetle does not define."""
TRANSFER_PADDING = TransferFlags(1 << 9)
"""The lowest transfer flag bit that TigerBeetle does not define."""
BOTH_LIMITS = AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.CREDITS_MUST_NOT_EXCEED_DEBITS
POST = TF.POST_PENDING_TRANSFER
VOID = TF.VOID_PENDING_TRANSFER

UD128 = (1 << 100) + 7
UD64 = (1 << 40) + 8


# --- fixtures ---------------------------------------------------------------------------------


def _pg_execute(url: str, sql: str) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.encode())


@pytest.fixture(params=["reference", "engine-sqlite", "engine-postgresql", "remote-sqlite"])
def make_harness(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], LedgerHarness]]:
    """A factory of fresh harnesses of one kind, for tests that run many cases from scratch.

    Each call returns a new harness at ``now == START`` with no accounts; an engine harness made
    earlier by the same factory is closed first.
    """
    name: str = request.param
    base_url: str | None = None
    if name == "engine-postgresql":
        base_url = postgres_url()
        if base_url is None:
            pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (CI sets it; .ci/run exports it)")
    opened: list[EngineHarness | RemoteHarness] = []
    schemas: list[str] = []
    counter = itertools.count()

    def close_all() -> None:
        while opened:
            opened.pop().close()

    def make() -> LedgerHarness:
        if name == "reference":
            return ReferenceHarness(now=START)
        close_all()
        url = None
        if base_url is not None:
            schema = f"puhui_test_{uuid.uuid4().hex[:12]}"
            _pg_execute(base_url, f'CREATE SCHEMA "{schema}"')
            schemas.append(schema)
            separator = "&" if "?" in base_url else "?"
            url = f"{base_url}{separator}options=-csearch_path%3D{schema}"
        directory = tmp_path / f"ledger-{next(counter)}"
        engine: EngineHarness | RemoteHarness
        if name == "remote-sqlite":
            engine = RemoteHarness(directory, now=START)
        else:
            engine = EngineHarness(directory, now=START, url=url)
        opened.append(engine)
        return engine

    try:
        yield make
    finally:
        close_all()
        for schema in schemas:
            assert base_url is not None
            _pg_execute(base_url, f'DROP SCHEMA "{schema}" CASCADE')


# --- events and filters -----------------------------------------------------------------------


def account(id_: int, **fields: Any) -> Account:
    """Zig ``test_account``: ledger 1, code 1."""
    values: dict[str, Any] = {"id": id_, "ledger": 1, "code": 1}
    values.update(fields)
    return Account(**values)


def transfer(id_: int, **fields: Any) -> Transfer:
    """Zig ``test_transfer``: 10 from account 1 to account 2 on ledger 1, code 1."""
    values: dict[str, Any] = {
        "id": id_,
        "debit_account_id": 1,
        "credit_account_id": 2,
        "amount": 10,
        "ledger": 1,
        "code": 1,
    }
    values.update(fields)
    return Transfer(**values)


def resolution(id_: int, *, post: bool, pending_id: int = 1, **fields: Any) -> Transfer:
    """Zig ``test_resolution``: a post (of everything) or void with every other field zero."""
    values: dict[str, Any] = {
        "id": id_,
        "pending_id": pending_id,
        "flags": POST if post else VOID,
        "amount": M if post else 0,
    }
    values.update(fields)
    return Transfer(**values)


def query(limit: int = LIMIT_MAX, *, reversed_: bool = False, **fields: Any) -> QueryFilter:
    values: dict[str, Any] = {
        "user_data_128": 0,
        "user_data_64": 0,
        "user_data_32": 0,
        "ledger": 0,
        "code": 0,
        "timestamp_min": 0,
        "timestamp_max": 0,
        "limit": limit,
        "flags": QueryFilterFlags.REVERSED if reversed_ else QueryFilterFlags.NONE,
    }
    values.update(fields)
    return QueryFilter(**values)


def account_filter(
    account_id: int,
    *,
    debits: bool = True,
    credits: bool = True,
    reversed_: bool = False,
    limit: int = LIMIT_MAX,
    **fields: Any,
) -> AccountFilter:
    flags = AccountFilterFlags.NONE
    if debits:
        flags |= AccountFilterFlags.DEBITS
    if credits:
        flags |= AccountFilterFlags.CREDITS
    if reversed_:
        flags |= AccountFilterFlags.REVERSED
    values: dict[str, Any] = {
        "account_id": account_id,
        "user_data_128": 0,
        "user_data_64": 0,
        "user_data_32": 0,
        "code": 0,
        "timestamp_min": 0,
        "timestamp_max": 0,
        "limit": limit,
        "flags": flags,
    }
    values.update(fields)
    return AccountFilter(**values)


# --- checks -----------------------------------------------------------------------------------

State = tuple[list[Account], list[Transfer]]


def snapshot(h: LedgerHarness) -> State:
    """Everything a client can see: all accounts and transfers (scans agree with lookups)."""
    accounts = h.query_accounts(query())
    transfers = h.query_transfers(query())
    assert h.lookup_accounts([a.id for a in accounts]) == accounts
    assert h.lookup_transfers([t.id for t in transfers]) == transfers
    return accounts, transfers


def _imported(event: Account | Transfer) -> bool:
    if isinstance(event, Account):
        return bool(int(event.flags) & AF.IMPORTED)
    return bool(int(event.flags) & TF.IMPORTED)


def _want(
    now: int,
    events: Sequence[Account | Transfer],
    expected: Sequence[Any],
    stored_timestamp: Callable[[int], int],
) -> list[tuple[Any, int]]:
    """Expected (status, timestamp) per event. A bare status takes the documented timestamp:
    the imported timestamp for an imported create, the stored object's for EXISTS, else the
    event's slot. A ``(status, timestamp)`` pair is taken as is."""
    want: list[tuple[Any, int]] = []
    for index, (event, item) in enumerate(zip(events, expected, strict=True)):
        if isinstance(item, tuple):
            want.append(item)
        elif item.name == "EXISTS":
            want.append((item, stored_timestamp(event.id)))
        elif item.name == "CREATED" and _imported(event):
            want.append((item, event.timestamp))
        else:
            want.append((item, now + index + 1))
    return want


def check_accounts(
    h: LedgerHarness, events: Sequence[Account], expected: Sequence[Any]
) -> list[CreateAccountResult]:
    now = h.now
    results = h.create_accounts(events)
    assert h.now == now + len(events)

    def stored_timestamp(id_: int) -> int:
        [found] = h.lookup_accounts([id_])
        return found.timestamp

    want = _want(now, events, expected, stored_timestamp)
    assert [(r.status, r.timestamp) for r in results] == want
    for event, result in zip(events, results, strict=True):
        if result.status is A.CREATED:
            assert h.lookup_accounts([event.id]) == [
                dataclasses.replace(event, timestamp=result.timestamp)
            ]
    return results


def check_transfers(
    h: LedgerHarness, events: Sequence[Transfer], expected: Sequence[Any]
) -> list[CreateTransferResult]:
    now = h.now
    results = h.create_transfers(events)
    assert h.now == now + len(events)

    def stored_timestamp(id_: int) -> int:
        [found] = h.lookup_transfers([id_])
        return found.timestamp

    want = _want(now, events, expected, stored_timestamp)
    assert [(r.status, r.timestamp) for r in results] == want
    # Posts, voids and balancing transfers are stored with derived fields; others as sent.
    derived = int(POST | VOID | TF.BALANCING_DEBIT | TF.BALANCING_CREDIT)
    for event, result in zip(events, results, strict=True):
        if result.status is T.CREATED and int(event.flags) & derived == 0:
            assert h.lookup_transfers([event.id]) == [
                dataclasses.replace(event, timestamp=result.timestamp)
            ]
    return results


def reject_account(h: LedgerHarness, event: Account, status: A) -> None:
    """One event, rejected with ``status`` at its slot timestamp; nothing visible changes."""
    before = snapshot(h)
    check_accounts(h, [event], [status])
    assert snapshot(h) == before


def reject_transfer(h: LedgerHarness, event: Transfer, status: T) -> None:
    before = snapshot(h)
    check_transfers(h, [event], [status])
    assert snapshot(h) == before


def submit(h: LedgerHarness, event: Transfer, status: Any = T.CREATED) -> CreateTransferResult:
    [result] = check_transfers(h, [event], [status])
    return result


def balances(h: LedgerHarness, id_: int) -> tuple[int, int, int, int]:
    """(debits_pending, debits_posted, credits_pending, credits_posted)."""
    [found] = h.lookup_accounts([id_])
    return found.debits_pending, found.debits_posted, found.credits_pending, found.credits_posted


def closed(h: LedgerHarness, id_: int) -> bool:
    [found] = h.lookup_accounts([id_])
    return bool(int(found.flags) & AF.CLOSED)


def with_accounts(h: LedgerHarness, *accounts: Account) -> None:
    """Zig ``test_model_with_accounts``: accounts 1 and 2 at 101 and 102 unless given."""
    events = list(accounts) or [account(1), account(2)]
    check_accounts(h, events, [A.CREATED] * len(events))


def with_pending(h: LedgerHarness) -> Transfer:
    """Zig ``test_pending``: pending transfer 1 with user data 128/64/32."""
    pending = transfer(1, flags=TF.PENDING, user_data_128=128, user_data_64=64, user_data_32=32)
    submit(h, pending)
    return pending


def ids(objects: Sequence[Account | Transfer]) -> list[int]:
    return [o.id for o in objects]


# --- status coverage --------------------------------------------------------------------------

_IMP1 = {"flags": AF.IMPORTED, "timestamp": 1}

# Overrides of account(1) and account(2), and their statuses (a fresh ledger at 100: the import
# cutoff of a two-account batch is 101).
ACCOUNT_PAIRS: list[tuple[dict[str, Any], dict[str, Any], tuple[A, A]]] = [
    ({}, {}, (A.CREATED, A.CREATED)),
    ({"flags": AF.LINKED}, {"id": 0}, (A.LINKED_EVENT_FAILED, A.ID_MUST_NOT_BE_ZERO)),
    ({"flags": AF.LINKED, "id": 0}, {}, (A.ID_MUST_NOT_BE_ZERO, A.LINKED_EVENT_FAILED)),
    (
        {"flags": AF.LINKED},
        {"flags": AF.LINKED},
        (A.LINKED_EVENT_FAILED, A.LINKED_EVENT_CHAIN_OPEN),
    ),
    (_IMP1, {}, (A.CREATED, A.IMPORTED_EVENT_EXPECTED)),
    ({}, _IMP1, (A.CREATED, A.IMPORTED_EVENT_NOT_EXPECTED)),
    ({}, {"timestamp": 1}, (A.CREATED, A.TIMESTAMP_MUST_BE_ZERO)),
    (
        _IMP1,
        {"flags": AF.IMPORTED, "timestamp": 0},
        (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ),
    (
        _IMP1,
        {"flags": AF.IMPORTED, "timestamp": TIMESTAMP_MAX},
        (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ),
    (
        _IMP1,
        {"flags": AF.IMPORTED, "timestamp": TIMESTAMP_MAX + 1},
        (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ),
    (
        _IMP1,
        {"flags": AF.IMPORTED, "timestamp": 102},
        (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE),
    ),
    # {reserved = 1} -> RESERVED_FIELD: the client's Account has no reserved field.
    ({}, {"flags": ACCOUNT_PADDING}, (A.CREATED, A.RESERVED_FLAG)),
    ({}, {"id": 0}, (A.CREATED, A.ID_MUST_NOT_BE_ZERO)),
    ({}, {"id": ID_MAX}, (A.CREATED, A.ID_MUST_NOT_BE_INT_MAX)),
    ({}, {"id": 1, "flags": AF.HISTORY}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_FLAGS)),
    ({}, {"id": 1, "user_data_128": 1}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_USER_DATA_128)),
    ({}, {"id": 1, "user_data_64": 1}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_USER_DATA_64)),
    ({}, {"id": 1, "user_data_32": 1}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_USER_DATA_32)),
    ({}, {"id": 1, "ledger": 2}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_LEDGER)),
    ({}, {"id": 1, "code": 2}, (A.CREATED, A.EXISTS_WITH_DIFFERENT_CODE)),
    ({}, {"id": 1}, (A.CREATED, A.EXISTS)),
    ({}, {"flags": BOTH_LIMITS}, (A.CREATED, A.FLAGS_ARE_MUTUALLY_EXCLUSIVE)),
    ({}, {"debits_pending": 1}, (A.CREATED, A.DEBITS_PENDING_MUST_BE_ZERO)),
    ({}, {"debits_posted": 1}, (A.CREATED, A.DEBITS_POSTED_MUST_BE_ZERO)),
    ({}, {"credits_pending": 1}, (A.CREATED, A.CREDITS_PENDING_MUST_BE_ZERO)),
    ({}, {"credits_posted": 1}, (A.CREATED, A.CREDITS_POSTED_MUST_BE_ZERO)),
    ({}, {"ledger": 0}, (A.CREATED, A.LEDGER_MUST_NOT_BE_ZERO)),
    ({}, {"code": 0}, (A.CREATED, A.CODE_MUST_NOT_BE_ZERO)),
    (
        {"flags": AF.IMPORTED, "timestamp": 2},
        _IMP1,
        (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS),
    ),
    (_IMP1, _IMP1, (A.CREATED, A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS)),
    (
        {"flags": AF.IMPORTED, "timestamp": 100},
        {"flags": AF.IMPORTED, "timestamp": 101},
        (A.CREATED, A.CREATED),
    ),
]


def test_create_account_status_coverage(make_harness: Callable[[], LedgerHarness]) -> None:
    """Zig: "conformance test CreateAccountStatus" (every status but RESERVED_FIELD)."""
    covered: set[A] = set()
    for first, second, statuses in ACCOUNT_PAIRS:
        h = make_harness()
        events = [account(1, **first), account(2, **second)]
        results = check_accounts(h, events, list(statuses))
        covered.update(r.status for r in results)
        created = [e.id for e, r in zip(events, results, strict=True) if r.status is A.CREATED]
        assert ids(h.query_accounts(query())) == created
    assert set(A) - covered == {A.RESERVED_FIELD}


_TIMP90 = {"flags": TF.IMPORTED, "timestamp": 90}

# Overrides of transfer(1) and transfer(2), and their statuses. The base ledger has accounts 1
# and 2 imported at 10 and 20; the transfer batch has slots 103 and 104 and import cutoff 103.
TRANSFER_PAIRS: list[tuple[dict[str, Any], dict[str, Any], tuple[T, T]]] = [
    ({}, {}, (T.CREATED, T.CREATED)),
    ({"amount": 0}, {"amount": 0}, (T.CREATED, T.CREATED)),
    ({"flags": TF.LINKED}, {"id": 0}, (T.LINKED_EVENT_FAILED, T.ID_MUST_NOT_BE_ZERO)),
    ({"flags": TF.LINKED, "id": 0}, {}, (T.ID_MUST_NOT_BE_ZERO, T.LINKED_EVENT_FAILED)),
    (
        {"flags": TF.LINKED},
        {"flags": TF.LINKED},
        (T.LINKED_EVENT_FAILED, T.LINKED_EVENT_CHAIN_OPEN),
    ),
    (_TIMP90, {}, (T.CREATED, T.IMPORTED_EVENT_EXPECTED)),
    ({}, _TIMP90, (T.CREATED, T.IMPORTED_EVENT_NOT_EXPECTED)),
    ({}, {"timestamp": 1}, (T.CREATED, T.TIMESTAMP_MUST_BE_ZERO)),
    (_TIMP90, {"flags": TF.IMPORTED}, (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE)),
    (
        _TIMP90,
        {"flags": TF.IMPORTED, "timestamp": TIMESTAMP_MAX},
        (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ),
    (
        _TIMP90,
        {"flags": TF.IMPORTED, "timestamp": TIMESTAMP_MAX + 1},
        (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ),
    (
        _TIMP90,
        {"flags": TF.IMPORTED, "timestamp": 104},
        (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE),
    ),
    ({}, {"flags": TRANSFER_PADDING}, (T.CREATED, T.RESERVED_FLAG)),
    ({}, {"id": 0}, (T.CREATED, T.ID_MUST_NOT_BE_ZERO)),
    ({}, {"id": ID_MAX}, (T.CREATED, T.ID_MUST_NOT_BE_INT_MAX)),
    ({}, {"id": 1, "flags": TF.PENDING}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_FLAGS)),
    ({}, {"id": 1, "pending_id": 1}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_PENDING_ID)),
    ({}, {"id": 1, "timeout": 1}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_TIMEOUT)),
    ({}, {"id": 1, "debit_account_id": 3}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID)),
    (
        {},
        {"id": 1, "credit_account_id": 3},
        (T.CREATED, T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    ),
    ({}, {"id": 1, "amount": 11}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_AMOUNT)),
    ({}, {"id": 1, "user_data_128": 1}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_USER_DATA_128)),
    ({}, {"id": 1, "user_data_64": 1}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_USER_DATA_64)),
    ({}, {"id": 1, "user_data_32": 1}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_USER_DATA_32)),
    ({}, {"id": 1, "ledger": 2}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_LEDGER)),
    ({}, {"id": 1, "code": 2}, (T.CREATED, T.EXISTS_WITH_DIFFERENT_CODE)),
    ({}, {"id": 1}, (T.CREATED, T.EXISTS)),
    (
        {"debit_account_id": 3},
        {"id": 1, "debit_account_id": 3},
        (T.DEBIT_ACCOUNT_NOT_FOUND, T.ID_ALREADY_FAILED),
    ),
    ({}, {"flags": TF.PENDING | POST}, (T.CREATED, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE)),
    ({}, {"debit_account_id": 0}, (T.CREATED, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO)),
    ({}, {"debit_account_id": ID_MAX}, (T.CREATED, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX)),
    ({}, {"credit_account_id": 0}, (T.CREATED, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO)),
    ({}, {"credit_account_id": ID_MAX}, (T.CREATED, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX)),
    ({}, {"credit_account_id": 1}, (T.CREATED, T.ACCOUNTS_MUST_BE_DIFFERENT)),
    ({}, {"pending_id": 1}, (T.CREATED, T.PENDING_ID_MUST_BE_ZERO)),
    ({"flags": TF.PENDING}, {"flags": POST}, (T.CREATED, T.PENDING_ID_MUST_NOT_BE_ZERO)),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": ID_MAX},
        (T.CREATED, T.PENDING_ID_MUST_NOT_BE_INT_MAX),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 2},
        (T.CREATED, T.PENDING_ID_MUST_BE_DIFFERENT),
    ),
    ({}, {"timeout": 1}, (T.CREATED, T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)),
    ({}, {"flags": TF.CLOSING_DEBIT}, (T.CREATED, T.CLOSING_TRANSFER_MUST_BE_PENDING)),
    ({}, {"ledger": 0}, (T.CREATED, T.LEDGER_MUST_NOT_BE_ZERO)),
    ({}, {"code": 0}, (T.CREATED, T.CODE_MUST_NOT_BE_ZERO)),
    ({}, {"debit_account_id": 3}, (T.CREATED, T.DEBIT_ACCOUNT_NOT_FOUND)),
    ({}, {"credit_account_id": 3}, (T.CREATED, T.CREDIT_ACCOUNT_NOT_FOUND)),
    ({}, {"ledger": 2}, (T.CREATED, T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS)),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 3},
        (T.CREATED, T.PENDING_TRANSFER_NOT_FOUND),
    ),
    ({}, {"flags": POST, "pending_id": 1}, (T.CREATED, T.PENDING_TRANSFER_NOT_PENDING)),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 1, "debit_account_id": 3},
        (T.CREATED, T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 1, "credit_account_id": 3},
        (T.CREATED, T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 1, "ledger": 2},
        (T.CREATED, T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 1, "code": 2},
        (T.CREATED, T.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": POST, "pending_id": 1, "amount": 11},
        (T.CREATED, T.EXCEEDS_PENDING_TRANSFER_AMOUNT),
    ),
    (
        {"flags": TF.PENDING},
        {"flags": VOID, "pending_id": 1, "amount": 9},
        (T.CREATED, T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    ),
    (
        _TIMP90,
        {"flags": TF.IMPORTED, "timestamp": 89},
        (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS),
    ),
    (_TIMP90, _TIMP90, (T.CREATED, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS)),
    (
        {"flags": TF.IMPORTED, "timestamp": 10},
        {"flags": TF.IMPORTED, "timestamp": 20},
        (T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS),
    ),
    (
        {"flags": TF.IMPORTED, "timestamp": 5},
        {"flags": TF.IMPORTED, "timestamp": 15},
        (
            T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT,
            T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT,
        ),
    ),
    (
        _TIMP90,
        {"flags": TF.IMPORTED | TF.PENDING, "timestamp": 91, "timeout": 1},
        (T.CREATED, T.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO),
    ),
    (
        {"flags": TF.IMPORTED, "timestamp": 102},
        {"flags": TF.IMPORTED, "timestamp": 103},
        (T.CREATED, T.CREATED),
    ),
    ({"flags": TF.PENDING | TF.CLOSING_DEBIT}, {}, (T.CREATED, T.DEBIT_ACCOUNT_ALREADY_CLOSED)),
    ({"flags": TF.PENDING | TF.CLOSING_CREDIT}, {}, (T.CREATED, T.CREDIT_ACCOUNT_ALREADY_CLOSED)),
    (
        {"flags": TF.PENDING, "amount": M},
        {"flags": TF.PENDING, "amount": 1},
        (T.CREATED, T.OVERFLOWS_DEBITS_PENDING),
    ),
    ({"amount": M}, {"amount": 1}, (T.CREATED, T.OVERFLOWS_DEBITS_POSTED)),
    ({"flags": TF.PENDING, "amount": M}, {"amount": 1}, (T.CREATED, T.OVERFLOWS_DEBITS)),
]


def _transfer_base(
    h: LedgerHarness, *, flags: tuple[AF, AF] = (AF.NONE, AF.NONE), ledger2: int = 1
) -> None:
    """Zig's base model: accounts 1 and 2 imported at 10 and 20 (now 102)."""
    with_accounts(
        h,
        account(1, flags=AF.IMPORTED | flags[0], timestamp=10),
        account(2, flags=AF.IMPORTED | flags[1], timestamp=20, ledger=ledger2),
    )


def test_create_transfer_status_coverage(make_harness: Callable[[], LedgerHarness]) -> None:
    """Zig: "conformance test CreateTransferStatus" (every status, each on a fresh base)."""
    covered: set[T] = set()

    def pair(h: LedgerHarness, first: Transfer, second: Transfer, statuses: Sequence[T]) -> None:
        transfers_before = ids(h.query_transfers(query()))
        results = check_transfers(h, [first, second], list(statuses))
        covered.update(r.status for r in results)
        created = [
            t.id for t, r in zip((first, second), results, strict=True) if r.status is T.CREATED
        ]
        assert ids(h.query_transfers(query())) == transfers_before + created

    for first, second, statuses in TRANSFER_PAIRS:
        h = make_harness()
        _transfer_base(h)
        pair(h, transfer(1, **first), transfer(2, **second), statuses)

    # These failures depend on account configuration, which transfers cannot change.
    h = make_harness()
    _transfer_base(h, ledger2=2)
    pair(h, transfer(1), transfer(2), [T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER] * 2)
    for limits, status in (
        ((AF.DEBITS_MUST_NOT_EXCEED_CREDITS, AF.NONE), T.EXCEEDS_CREDITS),
        ((AF.NONE, AF.CREDITS_MUST_NOT_EXCEED_DEBITS), T.EXCEEDS_DEBITS),
    ):
        h = make_harness()
        _transfer_base(h, flags=limits)
        pair(h, transfer(1, amount=0), transfer(2), [T.CREATED, status])

    # Credit-side overflows: account 2's credits reach AMOUNT_MAX - 10 by a transfer from an
    # extra account 3, so that no debit-side overflow takes precedence.
    for seed_pending, pending, status in (
        (True, True, T.OVERFLOWS_CREDITS_PENDING),
        (False, False, T.OVERFLOWS_CREDITS_POSTED),
        (True, False, T.OVERFLOWS_CREDITS),
    ):
        h = make_harness()
        _transfer_base(h)
        with_accounts(h, account(3))
        seed_flags = TF.PENDING if seed_pending else TF.NONE
        submit(h, transfer(9, debit_account_id=3, amount=M - 10, flags=seed_flags))
        flags = TF.PENDING if pending else TF.NONE
        pair(h, transfer(1, flags=flags), transfer(2, flags=flags, amount=1), [T.CREATED, status])

    # Already-resolved statuses need a pending transfer before the pair of resolutions.
    for flags, status in (
        (POST, T.PENDING_TRANSFER_ALREADY_POSTED),
        (VOID, T.PENDING_TRANSFER_ALREADY_VOIDED),
    ):
        h = make_harness()
        _transfer_base(h)
        pair(h, transfer(3, flags=TF.PENDING, timeout=1), transfer(4, amount=0), [T.CREATED] * 2)
        pair(
            h,
            transfer(1, flags=flags, pending_id=3),
            transfer(2, flags=flags, pending_id=3),
            [T.CREATED, status],
        )

    # Expiration requires advancing time between creation and resolution.
    h = make_harness()
    _transfer_base(h)
    pair(h, transfer(3, flags=TF.PENDING, timeout=1), transfer(4, amount=0), [T.CREATED] * 2)
    [stored] = h.lookup_transfers([3])
    h.set_now(stored.timestamp + NS)
    h.pulse()
    pair(
        h,
        transfer(1, flags=POST, pending_id=3),
        transfer(2, flags=VOID, pending_id=3),
        [T.PENDING_TRANSFER_EXPIRED] * 2,
    )

    # A timeout overflows only when the clock is near its upper bound.
    h = make_harness()
    _transfer_base(h)
    h.set_now(TIMESTAMP_MAX - NS)
    pair(
        h,
        transfer(1),
        transfer(2, flags=TF.PENDING, timeout=1),
        [T.CREATED, T.OVERFLOWS_TIMEOUT],
    )

    assert set(T) - covered == set()


# --- timestamps and validation ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["accounts", "transfers"])
@pytest.mark.parametrize(
    ("imported", "timestamp", "status"),
    [
        (False, 0, "CREATED"),
        (False, 1, "TIMESTAMP_MUST_BE_ZERO"),
        (True, 0, "IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE"),
        (True, TIMESTAMP_MAX, "IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE"),
        (True, TIMESTAMP_MAX + 1, "IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE"),
        (True, "cutoff+1", "IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE"),
        (True, "cutoff", "CREATED"),
        (True, "cutoff-1", "CREATED"),
    ],
)
def test_timestamp_boundaries(
    harness: LedgerHarness, kind: str, imported: bool, timestamp: int | str, status: str
) -> None:
    """Zig: "timestamp boundaries". A one-event batch's import cutoff is ``now``."""
    if kind == "transfers":
        _transfer_base(harness)
    cutoff = harness.now
    if isinstance(timestamp, str):
        timestamp = cutoff + {"cutoff+1": 1, "cutoff": 0, "cutoff-1": -1}[timestamp]
    if kind == "accounts":
        flags = AF.IMPORTED if imported else AF.NONE
        check_accounts(
            harness, [account(1, flags=flags, timestamp=timestamp)], [CreateAccountStatus[status]]
        )
    else:
        flags_t = TF.IMPORTED if imported else TF.NONE
        check_transfers(
            harness,
            [transfer(1, flags=flags_t, timestamp=timestamp)],
            [CreateTransferStatus[status]],
        )


ACCOUNT_REJECTIONS: list[tuple[dict[str, Any], A]] = [
    # Zig: "account validation and duplicates".
    ({"timestamp": 1}, A.TIMESTAMP_MUST_BE_ZERO),
    ({"id": 0}, A.ID_MUST_NOT_BE_ZERO),
    ({"id": ID_MAX}, A.ID_MUST_NOT_BE_INT_MAX),
    ({"debits_pending": 1}, A.DEBITS_PENDING_MUST_BE_ZERO),
    ({"debits_posted": 1}, A.DEBITS_POSTED_MUST_BE_ZERO),
    ({"credits_pending": 1}, A.CREDITS_PENDING_MUST_BE_ZERO),
    ({"credits_posted": 1}, A.CREDITS_POSTED_MUST_BE_ZERO),
    ({"ledger": 0}, A.LEDGER_MUST_NOT_BE_ZERO),
    ({"code": 0}, A.CODE_MUST_NOT_BE_ZERO),
    ({"flags": ACCOUNT_PADDING}, A.RESERVED_FLAG),
    ({"flags": BOTH_LIMITS}, A.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    # Zig: "account validation precedence" (the reserved-field row cannot be expressed).
    ({"timestamp": 1, "id": 0}, A.TIMESTAMP_MUST_BE_ZERO),
    ({"flags": ACCOUNT_PADDING, "id": 0}, A.RESERVED_FLAG),
    ({"id": 0, "ledger": 0}, A.ID_MUST_NOT_BE_ZERO),
    ({"id": ID_MAX, "code": 0}, A.ID_MUST_NOT_BE_INT_MAX),
    ({"flags": BOTH_LIMITS, "debits_pending": 1}, A.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ({"debits_pending": 1, "debits_posted": 1}, A.DEBITS_PENDING_MUST_BE_ZERO),
    ({"debits_posted": 1, "credits_pending": 1}, A.DEBITS_POSTED_MUST_BE_ZERO),
    ({"credits_pending": 1, "credits_posted": 1}, A.CREDITS_PENDING_MUST_BE_ZERO),
    ({"credits_posted": 1, "ledger": 0}, A.CREDITS_POSTED_MUST_BE_ZERO),
    ({"ledger": 0, "code": 0}, A.LEDGER_MUST_NOT_BE_ZERO),
]


@pytest.mark.parametrize(("overrides", "status"), ACCOUNT_REJECTIONS)
def test_account_rejected(harness: LedgerHarness, overrides: dict[str, Any], status: A) -> None:
    reject_account(harness, account(1, **overrides), status)
    assert harness.lookup_accounts([1]) == []


ACCOUNT_DUPLICATES: list[tuple[dict[str, Any], A]] = [
    # Zig: "account validation and duplicates".
    ({"user_data_128": 1}, A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    ({"user_data_64": 1}, A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ({"user_data_32": 1}, A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    ({"ledger": 2}, A.EXISTS_WITH_DIFFERENT_LEDGER),
    ({"code": 2}, A.EXISTS_WITH_DIFFERENT_CODE),
    ({"flags": AF.HISTORY}, A.EXISTS_WITH_DIFFERENT_FLAGS),
    # Zig: "duplicate comparison precedence".
    ({"flags": AF.HISTORY, "user_data_128": 1}, A.EXISTS_WITH_DIFFERENT_FLAGS),
    ({"user_data_128": 1, "user_data_64": 1}, A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    ({"user_data_64": 1, "user_data_32": 1}, A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ({"user_data_32": 1, "ledger": 0}, A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    # ledger-semantics: "exists" comes before field validation.
    ({"ledger": 0, "code": 0}, A.EXISTS_WITH_DIFFERENT_LEDGER),
    ({"code": 0, "debits_pending": 1}, A.EXISTS_WITH_DIFFERENT_CODE),
]


@pytest.mark.parametrize(("overrides", "status"), ACCOUNT_DUPLICATES)
def test_account_exists_with_different(
    harness: LedgerHarness, overrides: dict[str, Any], status: A
) -> None:
    with_accounts(harness)
    reject_account(harness, account(1, **overrides), status)
    before = snapshot(harness)
    check_accounts(harness, [account(1)], [(A.EXISTS, START + 1)])
    assert snapshot(harness) == before


def test_account_idempotency_ignores_balances_and_timestamp(harness: LedgerHarness) -> None:
    """ledger-semantics: account idempotency ignores the balance fields and the timestamp."""
    with_accounts(harness)
    before = snapshot(harness)
    check_accounts(
        harness,
        [account(1, debits_pending=1, debits_posted=2, credits_pending=3, credits_posted=4)],
        [(A.EXISTS, START + 1)],
    )
    imported = account(3, flags=AF.IMPORTED, timestamp=harness.now)
    check_accounts(harness, [imported], [A.CREATED])
    retry = dataclasses.replace(imported, timestamp=harness.now)
    check_accounts(harness, [retry], [(A.EXISTS, imported.timestamp)])
    assert snapshot(harness)[0] == [*before[0], imported]


TRANSFER_REJECTIONS: list[tuple[dict[str, Any], T]] = [
    # Zig: "transfer validation".
    ({"timestamp": 1}, T.TIMESTAMP_MUST_BE_ZERO),
    ({"id": 0}, T.ID_MUST_NOT_BE_ZERO),
    ({"id": ID_MAX}, T.ID_MUST_NOT_BE_INT_MAX),
    ({"debit_account_id": 0}, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    ({"debit_account_id": ID_MAX}, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
    ({"credit_account_id": 0}, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    ({"credit_account_id": ID_MAX}, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
    ({"credit_account_id": 1}, T.ACCOUNTS_MUST_BE_DIFFERENT),
    ({"pending_id": 1}, T.PENDING_ID_MUST_BE_ZERO),
    ({"timeout": 1}, T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    ({"ledger": 0}, T.LEDGER_MUST_NOT_BE_ZERO),
    ({"code": 0}, T.CODE_MUST_NOT_BE_ZERO),
    ({"debit_account_id": 3}, T.DEBIT_ACCOUNT_NOT_FOUND),
    ({"credit_account_id": 3}, T.CREDIT_ACCOUNT_NOT_FOUND),
    ({"ledger": 2}, T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS),
    ({"flags": TRANSFER_PADDING}, T.RESERVED_FLAG),
    ({"flags": TF.PENDING | POST}, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ({"flags": TF.PENDING | VOID}, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ({"flags": POST | VOID}, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ({"flags": TF.CLOSING_DEBIT}, T.CLOSING_TRANSFER_MUST_BE_PENDING),
    ({"flags": TF.CLOSING_CREDIT}, T.CLOSING_TRANSFER_MUST_BE_PENDING),
    *(
        ({"flags": resolve | flag}, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
        for resolve in (POST, VOID)
        for flag in (TF.BALANCING_DEBIT, TF.BALANCING_CREDIT, TF.CLOSING_DEBIT, TF.CLOSING_CREDIT)
    ),
    # Zig: "transfer validation precedence".
    ({"timestamp": 1, "id": 0}, T.TIMESTAMP_MUST_BE_ZERO),
    ({"flags": TRANSFER_PADDING, "id": 0}, T.RESERVED_FLAG),
    ({"id": 0, "debit_account_id": 0}, T.ID_MUST_NOT_BE_ZERO),
    ({"id": ID_MAX, "debit_account_id": 0}, T.ID_MUST_NOT_BE_INT_MAX),
    ({"flags": TF.PENDING | POST, "pending_id": 0}, T.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ({"debit_account_id": 0, "credit_account_id": 0}, T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    (
        {"debit_account_id": ID_MAX, "credit_account_id": 0},
        T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
    ),
    ({"credit_account_id": 0, "pending_id": 1}, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
    ({"credit_account_id": ID_MAX, "pending_id": 1}, T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX),
    ({"credit_account_id": 1, "pending_id": 1}, T.ACCOUNTS_MUST_BE_DIFFERENT),
    ({"pending_id": 1, "timeout": 1}, T.PENDING_ID_MUST_BE_ZERO),
    ({"timeout": 1, "flags": TF.CLOSING_DEBIT}, T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    ({"flags": TF.CLOSING_DEBIT, "ledger": 0}, T.CLOSING_TRANSFER_MUST_BE_PENDING),
    ({"ledger": 0, "code": 0}, T.LEDGER_MUST_NOT_BE_ZERO),
    ({"code": 0, "debit_account_id": 3}, T.CODE_MUST_NOT_BE_ZERO),
    ({"debit_account_id": 3, "credit_account_id": 4}, T.DEBIT_ACCOUNT_NOT_FOUND),
]


@pytest.mark.parametrize(("overrides", "status"), TRANSFER_REJECTIONS)
def test_transfer_rejected(harness: LedgerHarness, overrides: dict[str, Any], status: T) -> None:
    with_accounts(harness)
    reject_transfer(harness, transfer(1, **overrides), status)


def test_accounts_must_have_the_same_ledger(harness: LedgerHarness) -> None:
    with_accounts(harness, account(1), account(2, ledger=2))
    reject_transfer(harness, transfer(1), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER)
    reject_transfer(harness, transfer(1, ledger=2), T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER)


def test_last_linked_event_is_chain_open_before_any_other_check(harness: LedgerHarness) -> None:
    """ledger-semantics: an open tail gets LINKED_EVENT_CHAIN_OPEN even with id 0."""
    before = snapshot(harness)
    check_accounts(harness, [account(0, flags=AF.LINKED, timestamp=5)], [A.LINKED_EVENT_CHAIN_OPEN])
    assert snapshot(harness) == before
    with_accounts(harness)
    before = snapshot(harness)
    check_transfers(
        harness,
        [transfer(0, flags=TF.LINKED | TRANSFER_PADDING, timestamp=5)],
        [T.LINKED_EVENT_CHAIN_OPEN],
    )
    assert snapshot(harness) == before


def test_flags_mutually_exclusive_only_for_post_and_void(harness: LedgerHarness) -> None:
    """ledger-semantics: FLAGS_ARE_MUTUALLY_EXCLUSIVE only from post/void; amount 0 is fine."""
    with_accounts(harness)
    submit(harness, transfer(1, amount=0))
    every = (
        TF.PENDING | TF.BALANCING_DEBIT | TF.BALANCING_CREDIT | TF.CLOSING_DEBIT | TF.CLOSING_CREDIT
    )
    result = submit(harness, transfer(2, flags=every, timeout=1))
    assert harness.lookup_transfers([2]) == [
        transfer(2, flags=every, timeout=1, amount=0, timestamp=result.timestamp)
    ]
    assert closed(harness, 1)
    assert closed(harness, 2)


# --- single phase, duplicates, limits ----------------------------------------------------------


def test_single_phase_and_duplicate_comparisons(harness: LedgerHarness) -> None:
    """Zig: "single phase and duplicate comparisons"."""
    with_accounts(harness)
    sent = transfer(1)
    created = submit(harness, sent)
    assert created.timestamp == START + 3
    assert balances(harness, 1) == (0, 10, 0, 0)
    assert balances(harness, 2) == (0, 0, 0, 10)
    assert harness.lookup_transfers([1]) == [dataclasses.replace(sent, timestamp=START + 3)]
    before = snapshot(harness)
    submit(harness, sent, (T.EXISTS, created.timestamp))
    assert snapshot(harness) == before
    for field in (
        "pending_id",
        "timeout",
        "debit_account_id",
        "credit_account_id",
        "amount",
        "user_data_128",
        "user_data_64",
        "user_data_32",
        "ledger",
        "code",
    ):
        different = dataclasses.replace(sent, **{field: getattr(sent, field) + 1})
        reject_transfer(
            harness, different, CreateTransferStatus[f"EXISTS_WITH_DIFFERENT_{field.upper()}"]
        )
    different = dataclasses.replace(sent, flags=TF.PENDING)
    reject_transfer(harness, different, T.EXISTS_WITH_DIFFERENT_FLAGS)


TRANSFER_DUPLICATES: list[tuple[dict[str, Any], T]] = [
    # Zig: "duplicate comparison precedence".
    ({"flags": TF.PENDING, "amount": 11}, T.EXISTS_WITH_DIFFERENT_FLAGS),
    ({"pending_id": 1, "timeout": 1}, T.EXISTS_WITH_DIFFERENT_PENDING_ID),
    ({"timeout": 1, "debit_account_id": 0}, T.EXISTS_WITH_DIFFERENT_TIMEOUT),
    ({"debit_account_id": 0, "credit_account_id": 0}, T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
    ({"credit_account_id": 0, "amount": 11}, T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
    ({"amount": 11, "user_data_128": 1}, T.EXISTS_WITH_DIFFERENT_AMOUNT),
    ({"user_data_128": 1, "user_data_64": 1}, T.EXISTS_WITH_DIFFERENT_USER_DATA_128),
    ({"user_data_64": 1, "user_data_32": 1}, T.EXISTS_WITH_DIFFERENT_USER_DATA_64),
    ({"user_data_32": 1, "ledger": 0}, T.EXISTS_WITH_DIFFERENT_USER_DATA_32),
    ({"ledger": 0, "code": 0}, T.EXISTS_WITH_DIFFERENT_LEDGER),
    # ledger-semantics: resending an id with ledger 0 is a duplicate, not LEDGER_MUST_NOT_BE_ZERO.
    ({"ledger": 0}, T.EXISTS_WITH_DIFFERENT_LEDGER),
    ({"code": 0}, T.EXISTS_WITH_DIFFERENT_CODE),
    # ledger-semantics: `linked` is stored and compared.
    ({"flags": TF.LINKED}, T.EXISTS_WITH_DIFFERENT_FLAGS),
]


@pytest.mark.parametrize(("overrides", "status"), TRANSFER_DUPLICATES)
def test_transfer_exists_with_different(
    harness: LedgerHarness, overrides: dict[str, Any], status: T
) -> None:
    with_accounts(harness)
    submit(harness, transfer(1))
    if overrides.get("flags") == TF.LINKED:
        # Not last in its batch, so that the chain is not open.
        before = snapshot(harness)
        check_transfers(
            harness, [transfer(1, **overrides), transfer(2)], [status, T.LINKED_EVENT_FAILED]
        )
        assert snapshot(harness) == before
    else:
        reject_transfer(harness, transfer(1, **overrides), status)


# Zig: "balance limits and overflow boundaries". (account, side seeded to AMOUNT_MAX - 10,
# whether the transfer is pending, the status for 11). The seed comes from a transfer to or
# from account 3, which has no limit flags.
OVERFLOWS: list[tuple[int, str, bool, T]] = [
    (1, "debits_pending", True, T.OVERFLOWS_DEBITS_PENDING),
    (2, "credits_pending", True, T.OVERFLOWS_CREDITS_PENDING),
    (1, "debits_posted", False, T.OVERFLOWS_DEBITS_POSTED),
    (2, "credits_posted", False, T.OVERFLOWS_CREDITS_POSTED),
    (1, "debits_pending", False, T.OVERFLOWS_DEBITS),
    (2, "credits_pending", False, T.OVERFLOWS_CREDITS),
]


@pytest.mark.parametrize(("seeded", "side", "pending", "status"), OVERFLOWS)
def test_overflow_boundaries(
    harness: LedgerHarness, seeded: int, side: str, pending: bool, status: T
) -> None:
    with_accounts(harness, account(1), account(2), account(3))
    seed_flags = TF.PENDING if side.endswith("pending") else TF.NONE
    if seeded == 1:
        seed = transfer(9, credit_account_id=3, amount=M - 10, flags=seed_flags)
    else:
        seed = transfer(9, debit_account_id=3, amount=M - 10, flags=seed_flags)
    submit(harness, seed)
    flags = TF.PENDING if pending else TF.NONE
    reject_transfer(harness, transfer(1, flags=flags, amount=11), status)
    submit(harness, transfer(1, flags=flags, amount=10))
    [after] = harness.lookup_accounts([seeded])
    if side.endswith("pending") and not pending:
        both = side.replace("pending", "posted")
        assert (getattr(after, side), getattr(after, both)) == (M - 10, 10)
        assert getattr(after, side) + getattr(after, both) == M
    else:
        assert getattr(after, side) == M
    # One more unit overflows again.
    reject_transfer(harness, transfer(2, flags=flags, amount=1), status)


@pytest.mark.parametrize("credit", [False, True], ids=["exceeds_credits", "exceeds_debits"])
def test_balance_limits(harness: LedgerHarness, credit: bool) -> None:
    """Zig: the limit-flag half of "balance limits and overflow boundaries"."""
    if credit:
        with_accounts(harness, account(1), account(2, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS))
    else:
        with_accounts(harness, account(1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS), account(2))
    # Account 1 has credits_posted 10, account 2 debits_posted 10.
    submit(harness, transfer(9, debit_account_id=2, credit_account_id=1))
    status = T.EXCEEDS_DEBITS if credit else T.EXCEEDS_CREDITS
    reject_transfer(harness, transfer(1, amount=11), status)
    # The failure burned id 1 (ledger-semantics: exceeds credits/debits burn the id).
    reject_transfer(harness, transfer(1, amount=10), T.ID_ALREADY_FAILED)
    submit(harness, transfer(2, amount=10))
    reject_transfer(harness, transfer(3, amount=1), status)
    submit(harness, transfer(4, amount=0))


def test_overflows_timeout_boundary(harness: LedgerHarness) -> None:
    """state_machine.zig: a deadline must fit in a u63 (``sum_overflows(u63, t.timestamp,
    t.timeout * ns_per_s)``), so with a (test) clock near TIMESTAMP_MAX any timeout overflows
    (the Zig model's bound was TIMESTAMP_MAX itself). The u63 boundary:
    ``test_conformance_more.py::test_overflows_timeout_at_the_u63_boundary``."""
    with_accounts(harness)
    harness.set_now(TIMESTAMP_MAX - NS - 2)
    pending = transfer(1, flags=TF.PENDING, timeout=1)
    reject_transfer(harness, pending, T.OVERFLOWS_TIMEOUT)
    # A transfer without a timeout is unaffected.
    submit(harness, transfer(3, flags=TF.PENDING))


@pytest.mark.parametrize("flag", [TF.BALANCING_DEBIT, TF.BALANCING_CREDIT])
@pytest.mark.parametrize("available", [0, 5, 10, 20])
def test_balancing_amounts_and_retries(harness: LedgerHarness, flag: TF, available: int) -> None:
    """Zig: "balancing amounts and retries". Seeded through transfers: account 1 gets
    credits_posted available+5, debits_posted 3 and debits_pending 2 (and account 2 the
    mirror image), so either side has ``available`` left."""
    with_accounts(harness)
    submit(harness, transfer(101, debit_account_id=2, credit_account_id=1, amount=available + 5))
    submit(harness, transfer(102, amount=3))
    submit(harness, transfer(103, amount=2, flags=TF.PENDING))
    sent = transfer(1, flags=flag)
    created = submit(harness, sent)
    amount = min(available, 10)
    assert harness.lookup_transfers([1]) == [
        dataclasses.replace(sent, amount=amount, timestamp=created.timestamp)
    ]
    assert balances(harness, 1) == (2, amount + 3, 0, available + 5)
    assert balances(harness, 2) == (0, available + 5, 2, amount + 3)
    before = snapshot(harness)
    # ledger-semantics: a resend with any amount at or above the stored one is EXISTS.
    for limit in (10, amount, M):
        submit(harness, dataclasses.replace(sent, amount=limit), (T.EXISTS, created.timestamp))
    if amount > 0:
        reject_transfer(
            harness, dataclasses.replace(sent, amount=amount - 1), T.EXISTS_WITH_DIFFERENT_AMOUNT
        )
    assert snapshot(harness) == before


def test_balancing_both_sides(harness: LedgerHarness) -> None:
    with_accounts(harness)
    submit(harness, transfer(9, amount=20))
    sent = transfer(1, flags=TF.BALANCING_DEBIT | TF.BALANCING_CREDIT)
    created = submit(harness, sent)
    assert harness.lookup_transfers([1]) == [
        dataclasses.replace(sent, amount=0, timestamp=created.timestamp)
    ]
    assert balances(harness, 1) == (0, 20, 0, 0)


@pytest.mark.parametrize("credit", [False, True], ids=["debits", "credits"])
def test_pending_amounts_and_balance_limits(harness: LedgerHarness, credit: bool) -> None:
    """ledger-semantics: pending debits count against debits_must_not_exceed_credits, and
    pending credits do not count as credits (and symmetrically)."""
    if credit:
        limit, status = AF.CREDITS_MUST_NOT_EXCEED_DEBITS, T.EXCEEDS_DEBITS
        moves, raises = (2, 1), (1, 3)  # into account 1; out of it (raising its limit)
    else:
        limit, status = AF.DEBITS_MUST_NOT_EXCEED_CREDITS, T.EXCEEDS_CREDITS
        moves, raises = (1, 2), (3, 1)  # out of account 1; into it (raising its limit)
    with_accounts(harness, account(1, flags=limit), account(2), account(3))

    def move(id_: int, amount: int, path: tuple[int, int] = moves, **fields: Any) -> Transfer:
        return transfer(
            id_, debit_account_id=path[0], credit_account_id=path[1], amount=amount, **fields
        )

    submit(harness, move(11, 10, raises))  # the limit is now 10
    submit(harness, move(12, 10, flags=TF.PENDING))  # pending counts against it...
    reject_transfer(harness, move(13, 1), status)
    reject_transfer(harness, move(14, 1, flags=TF.PENDING), status)
    submit(harness, move(15, 100, raises, flags=TF.PENDING))  # ...and does not raise it
    reject_transfer(harness, move(16, 1), status)
    submit(harness, resolution(17, post=False, pending_id=12))
    submit(harness, move(18, 10))
    reject_transfer(harness, move(19, 1), status)


# --- two-phase transfers ----------------------------------------------------------------------

PENDING_RESOLUTION_REJECTIONS: list[tuple[dict[str, Any], T]] = [
    # Zig: "pending resolution validation" (a post of everything, id 2, of pending transfer 1).
    ({"pending_id": 0}, T.PENDING_ID_MUST_NOT_BE_ZERO),
    ({"pending_id": ID_MAX}, T.PENDING_ID_MUST_NOT_BE_INT_MAX),
    ({"pending_id": 2}, T.PENDING_ID_MUST_BE_DIFFERENT),
    ({"pending_id": 3}, T.PENDING_TRANSFER_NOT_FOUND),
    ({"timeout": 1}, T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    ({"debit_account_id": 3}, T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
    ({"credit_account_id": 3}, T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
    ({"ledger": 2}, T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
    ({"code": 2}, T.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
    ({"amount": 11}, T.EXCEEDS_PENDING_TRANSFER_AMOUNT),
    ({"flags": VOID, "amount": 9}, T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    ({"flags": VOID, "amount": 11}, T.EXCEEDS_PENDING_TRANSFER_AMOUNT),
]


@pytest.mark.parametrize(("overrides", "status"), PENDING_RESOLUTION_REJECTIONS)
def test_pending_resolution_rejected(
    harness: LedgerHarness, overrides: dict[str, Any], status: T
) -> None:
    with_accounts(harness)
    with_pending(harness)
    reject_transfer(harness, resolution(2, post=True, **overrides), status)
    assert balances(harness, 1) == (10, 0, 0, 0)


def test_pending_transfer_not_pending(harness: LedgerHarness) -> None:
    with_accounts(harness)
    submit(harness, transfer(1))
    reject_transfer(harness, resolution(2, post=True), T.PENDING_TRANSFER_NOT_PENDING)
    reject_transfer(harness, resolution(2, post=False), T.PENDING_TRANSFER_NOT_PENDING)


PENDING_RESOLUTION_PRECEDENCE: list[tuple[dict[str, Any], T]] = [
    # Zig: "pending resolution precedence". The pending transfer is already posted in every
    # row: mismatches must still win over PENDING_TRANSFER_ALREADY_POSTED.
    ({"pending_id": 0, "timeout": 1}, T.PENDING_ID_MUST_NOT_BE_ZERO),
    ({"pending_id": ID_MAX, "timeout": 1}, T.PENDING_ID_MUST_NOT_BE_INT_MAX),
    ({"pending_id": 2, "timeout": 1}, T.PENDING_ID_MUST_BE_DIFFERENT),
    ({"pending_id": 9, "timeout": 1}, T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    ({"pending_id": 9, "debit_account_id": 3}, T.PENDING_TRANSFER_NOT_FOUND),
    (
        {"debit_account_id": 3, "credit_account_id": 4},
        T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
    ),
    ({"credit_account_id": 4, "ledger": 2}, T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
    ({"ledger": 2, "code": 2}, T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER),
    ({"code": 2, "amount": 11}, T.PENDING_TRANSFER_HAS_DIFFERENT_CODE),
    ({"amount": 11}, T.EXCEEDS_PENDING_TRANSFER_AMOUNT),
    ({"flags": VOID, "amount": 9}, T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT),
    ({}, T.PENDING_TRANSFER_ALREADY_POSTED),
    ({"flags": VOID, "amount": 0}, T.PENDING_TRANSFER_ALREADY_POSTED),
]


@pytest.mark.parametrize(("overrides", "status"), PENDING_RESOLUTION_PRECEDENCE)
def test_pending_resolution_precedence(
    harness: LedgerHarness, overrides: dict[str, Any], status: T
) -> None:
    with_accounts(harness)
    with_pending(harness)
    submit(harness, resolution(3, post=True))
    reject_transfer(harness, resolution(2, post=True, **overrides), status)


RESOLUTIONS = [(False, 0), (False, 10), (True, 0), (True, 4), (True, 10), (True, M)]


@pytest.mark.parametrize(("post", "requested"), RESOLUTIONS)
def test_post_and_void_transitions(harness: LedgerHarness, post: bool, requested: int) -> None:
    """Zig: "pending post and void transitions". A post/void takes the pending transfer's
    accounts, ledger and code, and inherits its user data when zero; AMOUNT_MAX posts and 0
    voids the full amount; a resend with zero fields is EXISTS."""
    with_accounts(harness)
    pending = with_pending(harness)
    assert balances(harness, 1) == (10, 0, 0, 0)
    assert balances(harness, 2) == (0, 0, 10, 0)
    sent = resolution(2, post=post, amount=requested)
    result = submit(harness, sent)
    amount = 10 if not post or requested == M else requested
    posted = amount if post else 0
    assert balances(harness, 1) == (0, posted, 0, 0)
    assert balances(harness, 2) == (0, 0, 0, posted)
    stored = dataclasses.replace(
        pending, id=2, pending_id=1, flags=sent.flags, amount=amount, timestamp=result.timestamp
    )
    assert harness.lookup_transfers([2]) == [stored]
    before = snapshot(harness)
    submit(harness, sent, (T.EXISTS, result.timestamp))
    explicit = dataclasses.replace(stored, timestamp=0)
    submit(harness, explicit, (T.EXISTS, result.timestamp))
    assert snapshot(harness) == before
    for field in (
        "debit_account_id",
        "credit_account_id",
        "ledger",
        "code",
        "user_data_128",
        "user_data_64",
        "user_data_32",
    ):
        different = dataclasses.replace(explicit, **{field: getattr(explicit, field) + 1})
        reject_transfer(
            harness, different, CreateTransferStatus[f"EXISTS_WITH_DIFFERENT_{field.upper()}"]
        )
    status = T.PENDING_TRANSFER_ALREADY_POSTED if post else T.PENDING_TRANSFER_ALREADY_VOIDED
    reject_transfer(harness, resolution(3, post=post), status)
    reject_transfer(harness, resolution(3, post=not post), status)


def test_resolution_explicit_fields_bypass_inheritance(harness: LedgerHarness) -> None:
    """Zig: explicit matching account fields and nonzero user data bypass inheritance."""
    with_accounts(harness)
    with_pending(harness)
    sent = transfer(2, pending_id=1, flags=POST, user_data_128=9, user_data_64=8, user_data_32=7)
    result = submit(harness, sent)
    assert harness.lookup_transfers([2]) == [dataclasses.replace(sent, timestamp=result.timestamp)]


@pytest.mark.parametrize("flag", [TF.CLOSING_DEBIT, TF.CLOSING_CREDIT])
def test_closing_accounts_and_void_reopening(harness: LedgerHarness, flag: TF) -> None:
    """Zig: "closing accounts and void reopening". Ids of failed events differ here: through
    the API, *_ACCOUNT_ALREADY_CLOSED burns the id."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING | flag))
    debit = flag == TF.CLOSING_DEBIT
    assert (closed(harness, 1), closed(harness, 2)) == (debit, not debit)
    status = T.DEBIT_ACCOUNT_ALREADY_CLOSED if debit else T.CREDIT_ACCOUNT_ALREADY_CLOSED
    reject_transfer(harness, transfer(2), status)
    reject_transfer(harness, transfer(2), T.ID_ALREADY_FAILED)
    reject_transfer(harness, resolution(3, post=True), status)
    reject_transfer(harness, transfer(4, flags=TF.PENDING), status)
    submit(harness, resolution(5, post=False))
    assert not closed(harness, 1)
    assert not closed(harness, 2)
    assert balances(harness, 1) == (0, 0, 0, 0)
    submit(harness, transfer(6))
    reject_transfer(harness, transfer(3), T.ID_ALREADY_FAILED)


@pytest.mark.parametrize("flag", [TF.CLOSING_DEBIT, TF.CLOSING_CREDIT])
def test_void_allowed_on_closed_account_post_not(harness: LedgerHarness, flag: TF) -> None:
    """ledger-semantics: voids are allowed on closed accounts; posts are not."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING))
    submit(harness, transfer(2, flags=TF.PENDING | flag, amount=0))
    status = (
        T.DEBIT_ACCOUNT_ALREADY_CLOSED
        if flag == TF.CLOSING_DEBIT
        else (T.CREDIT_ACCOUNT_ALREADY_CLOSED)
    )
    reject_transfer(harness, resolution(3, post=True), status)
    reject_transfer(harness, resolution(3, post=True, amount=4), T.ID_ALREADY_FAILED)
    submit(harness, resolution(4, post=False))
    assert balances(harness, 1) == (0, 0, 0, 0)
    # Voiding an ordinary pending transfer does not reopen the account.
    assert closed(harness, 1) == (flag == TF.CLOSING_DEBIT)
    assert closed(harness, 2) == (flag == TF.CLOSING_CREDIT)
    reject_transfer(harness, resolution(5, post=True, pending_id=2), status)
    submit(harness, resolution(6, post=False, pending_id=2))
    assert not closed(harness, 1)
    assert not closed(harness, 2)


def test_account_created_closed_is_never_reopened(harness: LedgerHarness) -> None:
    """ledger-semantics: an account created closed can never be reopened."""
    with_accounts(harness, account(1, flags=AF.CLOSED), account(2), account(3))
    reject_transfer(harness, transfer(1), T.DEBIT_ACCOUNT_ALREADY_CLOSED)
    reject_transfer(
        harness,
        transfer(2, debit_account_id=2, credit_account_id=1),
        T.CREDIT_ACCOUNT_ALREADY_CLOSED,
    )
    reject_transfer(
        harness, transfer(3, flags=TF.PENDING | TF.CLOSING_DEBIT), T.DEBIT_ACCOUNT_ALREADY_CLOSED
    )
    # Closing and voiding on the other accounts leaves account 1 closed.
    submit(
        harness,
        transfer(
            4,
            debit_account_id=2,
            credit_account_id=3,
            flags=TF.PENDING | TF.CLOSING_DEBIT | TF.CLOSING_CREDIT,
        ),
    )
    submit(harness, resolution(5, post=False, pending_id=4))
    assert closed(harness, 1)
    assert not closed(harness, 2)
    check_accounts(harness, [account(1, flags=AF.CLOSED)], [(A.EXISTS, START + 1)])
    reject_account(harness, account(1), A.EXISTS_WITH_DIFFERENT_FLAGS)


def test_closing_transfer_closes_stored_account_flags(harness: LedgerHarness) -> None:
    """A closed account's stored flags include CLOSED, so a resend of the original account
    differs in flags until it is reopened (Zig compares the stored flags)."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING | TF.CLOSING_DEBIT))
    reject_account(harness, account(1), A.EXISTS_WITH_DIFFERENT_FLAGS)
    check_accounts(harness, [account(1, flags=AF.CLOSED)], [(A.EXISTS, START + 1)])
    submit(harness, resolution(2, post=False))
    check_accounts(harness, [account(1)], [(A.EXISTS, START + 1)])


# --- expiry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("elapsed", [NS - 1, NS, NS + 1])
def test_expiration_deadline(harness: LedgerHarness, elapsed: int) -> None:
    """Zig: "expiration deadline". With timeout 1 s, a post at created + 1e9 - 1 succeeds and
    one at created + 1e9 (the deadline) or later is PENDING_TRANSFER_EXPIRED."""
    with_accounts(harness)
    created = submit(harness, transfer(1, flags=TF.PENDING, timeout=1))
    harness.set_now(created.timestamp + elapsed - 1)  # the post's slot is created + elapsed
    if elapsed < NS:
        submit(harness, resolution(2, post=True))
        assert balances(harness, 1) == (0, 10, 0, 0)
        return
    transfers = harness.query_transfers(query())
    submit(harness, resolution(2, post=True), T.PENDING_TRANSFER_EXPIRED)
    submit(harness, resolution(2, post=False), T.PENDING_TRANSFER_EXPIRED)
    harness.pulse()
    assert harness.pulse() == 0
    # The expired transfer looks unchanged; the balances are released.
    assert harness.query_transfers(query()) == transfers
    assert balances(harness, 1) == (0, 0, 0, 0)
    assert balances(harness, 2) == (0, 0, 0, 0)
    # Mismatches are reported before expiry; PENDING_TRANSFER_EXPIRED does not burn the id.
    reject_transfer(
        harness, resolution(2, post=True, code=2), T.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    )
    reject_transfer(
        harness, resolution(2, post=False, amount=9), (T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT)
    )
    reject_transfer(harness, resolution(2, post=True), T.PENDING_TRANSFER_EXPIRED)
    reject_transfer(harness, resolution(2, post=True), T.PENDING_TRANSFER_EXPIRED)
    submit(harness, transfer(2))


def test_pulse_expires_only_due_unresolved_transfers(harness: LedgerHarness) -> None:
    """Zig: "pulse expires only due unresolved transfers"."""
    with_accounts(harness)
    assert harness.pulse() == 0
    created = submit(harness, transfer(1, flags=TF.PENDING, timeout=1))
    submit(harness, transfer(2, flags=TF.PENDING))
    submit(harness, transfer(3, flags=TF.PENDING, timeout=1))
    submit(harness, resolution(4, post=True, pending_id=3))
    submit(harness, transfer(5, flags=TF.PENDING, timeout=1))
    submit(harness, resolution(6, post=False, pending_id=5))
    submit(harness, transfer(7))
    before = snapshot(harness)
    assert balances(harness, 1) == (20, 20, 0, 0)

    harness.set_now(created.timestamp + NS - 1)
    assert harness.pulse() == 0
    assert snapshot(harness) == before
    harness.set_now(created.timestamp + NS)
    harness.pulse()
    assert harness.pulse() == 0
    # Transfer 1 expired; 2 has no timeout; 3 and 5 were resolved.
    assert balances(harness, 1) == (10, 20, 0, 0)
    assert balances(harness, 2) == (0, 0, 10, 20)
    assert snapshot(harness)[1] == before[1]
    reject_transfer(harness, resolution(8, post=True), T.PENDING_TRANSFER_EXPIRED)
    reject_transfer(harness, resolution(8, post=False), T.PENDING_TRANSFER_EXPIRED)
    after = snapshot(harness)
    # Even after all deadlines pass, resolved and timeout-free transfers are skipped.
    harness.set_now(harness.now + 2 * NS)
    assert harness.pulse() == 0
    assert snapshot(harness) == after
    submit(harness, resolution(9, post=True, pending_id=2))


def test_pulse_deadline_ordering(harness: LedgerHarness) -> None:
    """Zig: "pulse limits and deadline ordering", observed through balances at the times in
    between the deadlines (the pulse limit is not part of the harness API)."""
    with_accounts(harness)
    first = submit(harness, transfer(1, flags=TF.PENDING, timeout=3))
    second = submit(harness, transfer(2, flags=TF.PENDING, timeout=1, amount=20))
    harness.set_now(first.timestamp + NS - 1)
    third = submit(harness, transfer(3, flags=TF.PENDING, timeout=2, amount=30))
    # Transfers 1 and 3 share a deadline.
    assert first.timestamp + 3 * NS == third.timestamp + 2 * NS
    transfers = harness.query_transfers(query())
    assert balances(harness, 1) == (60, 0, 0, 0)

    harness.set_now(second.timestamp + NS - 1)
    assert harness.pulse() == 0
    assert balances(harness, 1) == (60, 0, 0, 0)
    harness.set_now(second.timestamp + NS)
    harness.pulse()
    assert balances(harness, 1) == (40, 0, 0, 0)
    assert balances(harness, 2) == (0, 0, 40, 0)
    submit(harness, resolution(4, post=True, pending_id=1, amount=1))
    harness.set_now(first.timestamp + 3 * NS - 1)
    assert harness.pulse() == 0
    assert balances(harness, 1) == (30, 1, 0, 0)
    harness.set_now(first.timestamp + 3 * NS)
    harness.pulse()
    assert harness.pulse() == 0
    assert balances(harness, 1) == (0, 1, 0, 0)
    assert balances(harness, 2) == (0, 0, 0, 1)
    assert harness.query_transfers(query())[:3] == transfers
    for id_, pending_id in ((5, 2), (6, 3)):
        reject_transfer(
            harness, resolution(id_, post=False, pending_id=pending_id), T.PENDING_TRANSFER_EXPIRED
        )


@pytest.mark.parametrize(
    "flags",
    [TF.CLOSING_DEBIT, TF.CLOSING_CREDIT, TF.CLOSING_DEBIT | TF.CLOSING_CREDIT],
    ids=["debit", "credit", "both"],
)
def test_pulse_reopens_closing_accounts(harness: LedgerHarness, flags: TF) -> None:
    """Zig: "pulse reopens closing accounts"."""
    with_accounts(harness)
    created = submit(harness, transfer(1, flags=TF.PENDING | flags, timeout=1))
    assert closed(harness, 1) == bool(flags & TF.CLOSING_DEBIT)
    assert closed(harness, 2) == bool(flags & TF.CLOSING_CREDIT)
    harness.set_now(created.timestamp + NS)
    harness.pulse()
    assert not closed(harness, 1)
    assert not closed(harness, 2)
    submit(harness, transfer(2))
    assert balances(harness, 1) == (0, 10, 0, 0)


def test_scenario_expired_post_then_pulses(harness: LedgerHarness) -> None:
    """Zig: "supplied scenario ticks and bounded pulses" (without the pulse limit)."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING, timeout=2))
    submit(harness, transfer(2, flags=TF.PENDING, timeout=1))
    harness.set_now(START + 3 * NS)
    # Both are due: the post is rejected whether or not the expiry has run yet.
    result = submit(harness, resolution(3, post=True, pending_id=2), T.PENDING_TRANSFER_EXPIRED)
    assert result.timestamp == START + 3 * NS + 1
    harness.pulse()
    assert harness.pulse() == 0
    assert balances(harness, 1) == (0, 0, 0, 0)
    reject_transfer(harness, resolution(3, post=True, pending_id=1), T.PENDING_TRANSFER_EXPIRED)


def test_scenario_imports_after_expiration(harness: LedgerHarness) -> None:
    """Zig: "supplied scenario imports after expiration". The Zig model also makes imports
    postdate the expiry; the server only the newest transfer (``transfers.objects.key_range``),
    see ``test_imported_transfer_may_predate_an_expiry``."""
    with_accounts(harness)
    created = submit(harness, transfer(1, flags=TF.PENDING, timeout=1))
    expiry = created.timestamp + NS
    harness.set_now(expiry)
    harness.pulse()
    imported = transfer(2, flags=TF.IMPORTED, timestamp=created.timestamp)
    reject_transfer(harness, imported, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS)
    imported = dataclasses.replace(imported, timestamp=expiry + 1)
    submit(harness, imported)
    submit(harness, imported, (T.EXISTS, expiry + 1))
    too_new = transfer(3, flags=TF.IMPORTED, timestamp=harness.now + 1)
    reject_transfer(harness, too_new, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE)
    harness.set_now(harness.now + 10)
    linked = transfer(3, flags=TF.IMPORTED | TF.LINKED, timestamp=harness.now - 1)
    invalid = transfer(4, flags=TF.IMPORTED, timestamp=harness.now, code=0)
    before = snapshot(harness)
    now = harness.now
    check_transfers(
        harness,
        [linked, invalid],
        [(T.LINKED_EVENT_FAILED, linked.timestamp), (T.CODE_MUST_NOT_BE_ZERO, now + 2)],
    )
    assert snapshot(harness) == before
    assert ids(before[1]) == [1, 2]
    # The watermark is still the import at expiry + 1.
    submit(
        harness,
        transfer(5, flags=TF.IMPORTED, timestamp=expiry + 1),
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    )
    submit(harness, transfer(5, flags=TF.IMPORTED, timestamp=expiry + 2))


def test_scenario_linked_resolution_rollback(harness: LedgerHarness) -> None:
    """Zig: "supplied scenario linked resolution rollback"."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING))
    before = snapshot(harness)
    missing = transfer(3, debit_account_id=42, amount=0)
    check_transfers(
        harness,
        [resolution(2, post=True, flags=POST | TF.LINKED), missing],
        [T.LINKED_EVENT_FAILED, T.DEBIT_ACCOUNT_NOT_FOUND],
    )
    assert snapshot(harness) == before
    assert balances(harness, 1) == (10, 0, 0, 0)
    reject_transfer(harness, missing, T.ID_ALREADY_FAILED)
    submit(harness, resolution(2, post=True))
    assert balances(harness, 1) == (0, 10, 0, 0)


def test_scenario_expiration_order(harness: LedgerHarness) -> None:
    """Zig: "supplied scenario expiration journal snapshots": two pendings in one batch, the
    second due first. The journal is internal; balances show the order."""
    with_accounts(harness)
    check_transfers(
        harness,
        [
            transfer(1, flags=TF.PENDING, timeout=2),
            transfer(2, flags=TF.PENDING, timeout=1, amount=20),
        ],
        [T.CREATED, T.CREATED],
    )
    assert balances(harness, 1) == (30, 0, 0, 0)
    harness.set_now(START + 4 + NS)
    harness.pulse()
    assert balances(harness, 1) == (10, 0, 0, 0)
    harness.set_now(START + 3 * NS)
    harness.pulse()
    assert balances(harness, 1) == (0, 0, 0, 0)
    assert harness.pulse() == 0


def test_expired_transfer_does_not_burn_its_resolutions(harness: LedgerHarness) -> None:
    """ledger-semantics: PENDING_TRANSFER_EXPIRED does not burn the id: a resend gets
    PENDING_TRANSFER_EXPIRED again, and the id stays usable."""
    with_accounts(harness)
    created = submit(harness, transfer(1, flags=TF.PENDING, timeout=1))
    harness.set_now(created.timestamp + NS)
    harness.pulse()
    for _ in range(2):
        reject_transfer(harness, resolution(2, post=True), T.PENDING_TRANSFER_EXPIRED)
        reject_transfer(harness, resolution(2, post=False), T.PENDING_TRANSFER_EXPIRED)
    submit(harness, transfer(2))


# --- imported events and batches --------------------------------------------------------------


def test_imported_accounts(harness: LedgerHarness) -> None:
    """Zig: "imported accounts"."""
    for timestamp, status in (
        (0, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
        (TIMESTAMP_MAX, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
        (TIMESTAMP_MAX + 1, A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
    ):
        reject_account(harness, account(1, flags=AF.IMPORTED, timestamp=timestamp), status)
    reject_account(
        harness,
        account(1, flags=AF.IMPORTED, timestamp=harness.now + 1),
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE,
    )
    imported = account(1, flags=AF.IMPORTED, timestamp=10)
    check_accounts(harness, [imported], [(A.CREATED, 10)])
    check_accounts(harness, [imported], [(A.EXISTS, 10)])
    for timestamp in (9, 10):
        reject_account(
            harness,
            account(2, flags=AF.IMPORTED, timestamp=timestamp),
            A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
        )
    check_accounts(harness, [account(2, flags=AF.IMPORTED, timestamp=11)], [(A.CREATED, 11)])
    created = submit(harness, transfer(1))
    reject_account(
        harness,
        account(3, flags=AF.IMPORTED, timestamp=created.timestamp),
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    )
    # Accounts may predate transfers if their timestamps do not collide.
    check_accounts(harness, [account(3, flags=AF.IMPORTED, timestamp=12)], [(A.CREATED, 12)])
    assert ids(harness.query_accounts(query())) == [1, 2, 3]


def test_imported_transfers_out_of_range(make_harness: Callable[[], LedgerHarness]) -> None:
    for timestamp, status in (
        (0, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
        (TIMESTAMP_MAX, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
        (TIMESTAMP_MAX + 1, T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE),
        (START + 3, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE),
    ):
        h = make_harness()
        with_accounts(h)
        reject_transfer(h, transfer(1, flags=TF.IMPORTED, timestamp=timestamp), status)


def test_imported_transfers(harness: LedgerHarness) -> None:
    """Zig: "imported transfers". The accounts are imported at 10 and 20 so that a transfer
    can fall between them (the Zig test moves the debit account's timestamp instead)."""
    _transfer_base(harness)
    harness.set_now(200)
    sent = transfer(1, flags=TF.IMPORTED)
    for timestamp, status in (
        (10, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS),
        (20, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS),
        (9, T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT),
        (15, T.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT),
    ):
        reject_transfer(harness, dataclasses.replace(sent, timestamp=timestamp), status)
    pending = dataclasses.replace(sent, timestamp=103, flags=TF.IMPORTED | TF.PENDING, timeout=1)
    reject_transfer(harness, pending, T.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO)
    pending = dataclasses.replace(pending, timeout=0)
    check_transfers(harness, [pending], [(T.CREATED, 103)])
    check_transfers(harness, [pending], [(T.EXISTS, 103)])
    for timestamp in (102, 103):
        reject_transfer(
            harness,
            dataclasses.replace(pending, id=2, timestamp=timestamp),
            T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
        )
    check_transfers(harness, [dataclasses.replace(pending, id=2, timestamp=104)], [T.CREATED])
    # Imported transfers can be resolved by imported posts.
    post = resolution(3, post=True, flags=POST | TF.IMPORTED, timestamp=105)
    check_transfers(harness, [post], [(T.CREATED, 105)])
    assert balances(harness, 1) == (10, 10, 0, 0)


def test_empty_batches(harness: LedgerHarness) -> None:
    """Zig: "empty batches and clock limits" (the clock-limit half is left out)."""
    before = snapshot(harness)
    now = harness.now
    assert harness.create_accounts([]) == []
    assert harness.create_transfers([]) == []
    assert harness.now == now
    assert snapshot(harness) == before
    # Empty batches take no timestamps.
    with_accounts(harness)
    assert harness.create_transfers([]) == []
    assert submit(harness, transfer(1)).timestamp == START + 3


def _event(kind: str, index: int, **fields: Any) -> Any:
    """The index-th event of a batch: account 3, 4, 5... or transfer 1, 2, 3..."""
    if kind == "accounts":
        return account(index + 3, **fields)
    return transfer(index + 1, **fields)


def _flag(kind: str, name: str) -> Any:
    return (AF if kind == "accounts" else TF)[name]


def _check(h: LedgerHarness, kind: str, events: Sequence[Any], expected: Sequence[Any]) -> None:
    if kind == "accounts":
        check_accounts(h, events, expected)
    else:
        check_transfers(h, events, expected)


def _status(kind: str, name: str) -> Any:
    return (A if kind == "accounts" else T)[name]


@pytest.mark.parametrize("kind", ["accounts", "transfers"])
@pytest.mark.parametrize("imported", [False, True])
def test_batch_import_mode(harness: LedgerHarness, kind: str, imported: bool) -> None:
    """Zig: "batch import mode and admission cutoff": the first event decides."""
    with_accounts(harness)
    harness.set_now(200)
    flag = _flag(kind, "IMPORTED")
    events = [
        _event(kind, 0, flags=flag if imported else 0, timestamp=150 if imported else 0),
        _event(kind, 1, flags=0 if imported else flag, timestamp=0 if imported else 151),
    ]
    second = "IMPORTED_EVENT_EXPECTED" if imported else "IMPORTED_EVENT_NOT_EXPECTED"
    _check(
        harness,
        kind,
        events,
        [(_status(kind, "CREATED"), 150 if imported else 201), (_status(kind, second), 202)],
    )
    assert harness.now == 202


@pytest.mark.parametrize("kind", ["accounts", "transfers"])
def test_batch_import_cutoff(harness: LedgerHarness, kind: str) -> None:
    """Zig: the import cutoff of a batch is its last slot; a new call has a new cutoff."""
    with_accounts(harness)
    harness.set_now(200)
    flag = _flag(kind, "IMPORTED")
    events = [
        _event(kind, 0, flags=flag, timestamp=201),
        _event(kind, 1, flags=flag, timestamp=202),
    ]
    statuses = [
        _status(kind, "CREATED"),
        _status(kind, "IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE"),
    ]
    _check(harness, kind, events, statuses)
    _check(harness, kind, events[1:], [(_status(kind, "CREATED"), 202)])


@pytest.mark.parametrize("kind", ["accounts", "transfers"])
def test_imported_chain_rollback_timestamps(harness: LedgerHarness, kind: str) -> None:
    """Zig: "imported chain rollback preserves result timestamps": a rolled-back imported
    event keeps its imported timestamp; failures take their slots."""
    with_accounts(harness)
    harness.set_now(200)
    imported, linked = _flag(kind, "IMPORTED"), _flag(kind, "LINKED")
    events = [
        _event(kind, index, flags=imported | (linked if index < 2 else 0), timestamp=150 + index)
        for index in range(3)
    ]
    events[1] = dataclasses.replace(events[1], code=0)
    before = snapshot(harness)
    _check(
        harness,
        kind,
        events,
        [
            (_status(kind, "LINKED_EVENT_FAILED"), 150),
            (_status(kind, "CODE_MUST_NOT_BE_ZERO"), 202),
            (_status(kind, "LINKED_EVENT_FAILED"), 203),
        ],
    )
    assert snapshot(harness) == before
    assert harness.now == 203


def test_creation_timestamps_advance_before_validation(harness: LedgerHarness) -> None:
    """Zig: "creation timestamps advance before validation"."""
    results = check_accounts(harness, [account(1), account(2)], [A.CREATED, A.CREATED])
    assert [r.timestamp for r in results] == [START + 1, START + 2]
    assert harness.now == START + 2
    # Admitted by the import cutoff, but it collides with account 2's timestamp.
    imported = transfer(1, flags=TF.IMPORTED, timestamp=START + 2)
    reject_transfer(harness, imported, T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS)
    assert harness.now == START + 3
    check_transfers(harness, [dataclasses.replace(imported, timestamp=START + 3)], [T.CREATED])
    assert harness.now == START + 4
    assert submit(harness, transfer(2)).timestamp == START + 5
    assert harness.now == START + 5


# --- linked chains and burned ids -------------------------------------------------------------


def test_account_chains_rollback_and_open_tails(harness: LedgerHarness) -> None:
    """Zig: "account chains rollback and open tails"."""
    accounts = [account(1), account(2, flags=AF.LINKED), account(3, flags=AF.LINKED, code=0)]
    accounts += [account(4), account(5)]
    statuses = [
        A.CREATED,
        A.LINKED_EVENT_FAILED,
        A.CODE_MUST_NOT_BE_ZERO,
        A.LINKED_EVENT_FAILED,
        A.CREATED,
    ]
    check_accounts(harness, accounts, [(s, START + 1 + i) for i, s in enumerate(statuses)])
    assert ids(harness.query_accounts(query())) == [1, 5]
    before = snapshot(harness)
    # An existing event also fails its chain and keeps its original timestamp.
    check_accounts(
        harness,
        [account(6, flags=AF.LINKED), account(1)],
        [A.LINKED_EVENT_FAILED, (A.EXISTS, START + 1)],
    )
    check_accounts(
        harness,
        [account(6, flags=AF.LINKED), account(1, flags=AF.LINKED)],
        [A.LINKED_EVENT_FAILED, A.LINKED_EVENT_CHAIN_OPEN],
    )
    # An open tail takes precedence even when an earlier event failed.
    check_accounts(
        harness,
        [account(0, flags=AF.LINKED), account(1, flags=AF.LINKED)],
        [A.ID_MUST_NOT_BE_ZERO, A.LINKED_EVENT_CHAIN_OPEN],
    )
    assert snapshot(harness) == before
    check_accounts(harness, [account(6, flags=AF.LINKED), account(7)], [A.CREATED, A.CREATED])
    assert ids(harness.query_accounts(query())) == [1, 5, 6, 7]


@pytest.mark.parametrize("post", [False, True])
def test_transfer_chain_restores_pending_resolution(harness: LedgerHarness, post: bool) -> None:
    """Zig: "transfer chains restore balances pending states and journal"."""
    with_accounts(harness)
    with_pending(harness)
    before = snapshot(harness)
    linked = resolution(2, post=post, flags=(POST if post else VOID) | TF.LINKED)
    check_transfers(
        harness,
        [linked, transfer(3, code=0)],
        [T.LINKED_EVENT_FAILED, T.CODE_MUST_NOT_BE_ZERO],
    )
    assert snapshot(harness) == before
    result = submit(harness, resolution(2, post=post))
    assert result.timestamp == harness.now
    assert ids(harness.query_transfers(query())) == [1, 2]
    assert balances(harness, 1) == (0, 10 if post else 0, 0, 0)


def test_transfer_chain_restores_closing_and_resolves_within_chain(harness: LedgerHarness) -> None:
    with_accounts(harness)
    before = snapshot(harness)
    closing = transfer(
        1, flags=TF.PENDING | TF.CLOSING_DEBIT | TF.CLOSING_CREDIT | TF.LINKED, amount=10
    )
    check_transfers(
        harness,
        [closing, transfer(2, code=0)],
        [T.LINKED_EVENT_FAILED, T.CODE_MUST_NOT_BE_ZERO],
    )
    assert snapshot(harness) == before
    assert not closed(harness, 1)
    # A successful chain can resolve the pending transfer created by its first event.
    check_transfers(
        harness,
        [transfer(1, flags=TF.PENDING | TF.LINKED), resolution(2, post=True)],
        [T.CREATED, T.CREATED],
    )
    assert balances(harness, 1) == (0, 10, 0, 0)
    assert balances(harness, 2) == (0, 0, 0, 10)
    assert ids(harness.query_transfers(query())) == [1, 2]
    reject_transfer(harness, resolution(3, post=False), T.PENDING_TRANSFER_ALREADY_POSTED)


def test_transfer_chain_restores_balances(harness: LedgerHarness) -> None:
    """Balances moved by earlier chain members are restored when a later one fails."""
    with_accounts(harness, account(1), account(2, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS))
    submit(harness, transfer(9, debit_account_id=2, credit_account_id=1, amount=15))
    before = snapshot(harness)
    check_transfers(
        harness,
        [
            transfer(1, flags=TF.LINKED),
            transfer(2, flags=TF.LINKED | TF.PENDING, amount=5),
            transfer(3, amount=1),
        ],
        [T.LINKED_EVENT_FAILED, T.LINKED_EVENT_FAILED, T.EXCEEDS_DEBITS],
    )
    assert snapshot(harness) == before
    assert balances(harness, 2) == (0, 15, 0, 0)
    check_transfers(
        harness,
        [transfer(1, flags=TF.LINKED), transfer(2, flags=TF.PENDING, amount=5)],
        [T.CREATED, T.CREATED],
    )
    assert balances(harness, 2) == (0, 15, 5, 10)
    reject_transfer(harness, transfer(3, amount=0), T.ID_ALREADY_FAILED)


def test_rolled_back_pending_transfer_leaves_no_expiry(harness: LedgerHarness) -> None:
    """A rolled-back chain leaves nothing behind, not even the expiry of a pending transfer
    it created (Zig: the rollback restores the whole state). Here an imported pending transfer
    without a timeout later takes the rolled-back transfer's timestamp; it must never expire.
    (Regression: the engine once expired it through the rolled-back transfer's heap entry.)"""
    with_accounts(harness)
    before = snapshot(harness)
    slot = harness.now + 1
    check_transfers(
        harness,
        [transfer(1, flags=TF.PENDING | TF.LINKED, timeout=1), transfer(2, code=0)],
        [T.LINKED_EVENT_FAILED, T.CODE_MUST_NOT_BE_ZERO],
    )
    assert snapshot(harness) == before
    imported = transfer(3, flags=TF.IMPORTED | TF.PENDING, timestamp=slot)
    check_transfers(harness, [imported], [(T.CREATED, slot)])
    harness.set_now(slot + NS)
    assert harness.pulse() == 0
    assert balances(harness, 1) == (10, 0, 0, 0)
    submit(harness, resolution(4, post=True, pending_id=3))
    assert balances(harness, 1) == (0, 10, 0, 0)


def test_linked_is_compared_and_exists_breaks_a_chain(harness: LedgerHarness) -> None:
    """ledger-semantics: `linked` is stored and compared; EXISTS breaks a chain."""
    with_accounts(harness)
    check_transfers(harness, [transfer(1, flags=TF.LINKED), transfer(2)], [T.CREATED, T.CREATED])
    before = snapshot(harness)
    reject_transfer(harness, transfer(1), T.EXISTS_WITH_DIFFERENT_FLAGS)
    check_transfers(
        harness,
        [transfer(1, flags=TF.LINKED), transfer(2)],
        [(T.EXISTS, START + 3), T.LINKED_EVENT_FAILED],
    )
    check_transfers(
        harness,
        [transfer(3, flags=TF.LINKED), transfer(1, flags=TF.LINKED), transfer(4)],
        [T.LINKED_EVENT_FAILED, (T.EXISTS, START + 3), T.LINKED_EVENT_FAILED],
    )
    assert snapshot(harness) == before
    # Rolled-back members keep their ids usable.
    check_transfers(harness, [transfer(3), transfer(4)], [T.CREATED, T.CREATED])
    # The same for accounts.
    check_accounts(harness, [account(5, flags=AF.LINKED), account(6)], [A.CREATED, A.CREATED])
    reject_account(harness, account(5), A.EXISTS_WITH_DIFFERENT_FLAGS)
    check_accounts(
        harness,
        [account(7, flags=AF.LINKED), account(6)],
        [A.LINKED_EVENT_FAILED, A.EXISTS],
    )
    assert harness.lookup_accounts([7]) == []


def test_burned_id_uses_chain_relative_index(harness: LedgerHarness) -> None:
    """Zig: "transient failure retirement uses chain relative index"."""
    with_accounts(harness)
    transfers = [transfer(i) for i in range(1, 6)]
    transfers[1] = transfer(2, flags=TF.LINKED)
    transfers[2] = transfer(3, flags=TF.LINKED, debit_account_id=9)
    statuses = [
        T.CREATED,
        T.LINKED_EVENT_FAILED,
        T.DEBIT_ACCOUNT_NOT_FOUND,
        T.LINKED_EVENT_FAILED,
        T.CREATED,
    ]
    check_transfers(harness, transfers, [(s, START + 3 + i) for i, s in enumerate(statuses)])
    assert ids(harness.query_transfers(query())) == [1, 5]
    assert balances(harness, 1) == (0, 20, 0, 0)
    reject_transfer(harness, transfer(3), T.ID_ALREADY_FAILED)
    submit(harness, transfer(2))
    submit(harness, transfer(4))


def test_earlier_burn_does_not_burn_a_later_permanent_failure(harness: LedgerHarness) -> None:
    with_accounts(harness)
    check_transfers(
        harness,
        [transfer(1, debit_account_id=9), transfer(2, code=0)],
        [T.DEBIT_ACCOUNT_NOT_FOUND, T.CODE_MUST_NOT_BE_ZERO],
    )
    reject_transfer(harness, transfer(1), T.ID_ALREADY_FAILED)
    submit(harness, transfer(2))


def test_id_burned_in_rolled_back_chain_is_burned_later_in_same_batch(
    harness: LedgerHarness,
) -> None:
    """ledger-semantics: an id burned inside a rolled-back chain is burned at once, even for
    the rest of the same batch; the other chain members stay usable."""
    with_accounts(harness)
    check_transfers(
        harness,
        [
            transfer(1, flags=TF.LINKED),
            transfer(2, flags=TF.LINKED, credit_account_id=9),
            transfer(3),
            transfer(2),
            transfer(4, flags=TF.LINKED),
            transfer(2),
            transfer(5),
        ],
        [
            T.LINKED_EVENT_FAILED,
            T.CREDIT_ACCOUNT_NOT_FOUND,
            T.LINKED_EVENT_FAILED,
            T.ID_ALREADY_FAILED,
            T.LINKED_EVENT_FAILED,
            T.ID_ALREADY_FAILED,
            T.CREATED,
        ],
    )
    reject_transfer(harness, transfer(2), T.ID_ALREADY_FAILED)
    check_transfers(harness, [transfer(1), transfer(3), transfer(4)], [T.CREATED] * 3)


BURNING = [
    T.DEBIT_ACCOUNT_NOT_FOUND,
    T.CREDIT_ACCOUNT_NOT_FOUND,
    T.PENDING_TRANSFER_NOT_FOUND,
    T.EXCEEDS_CREDITS,
    T.EXCEEDS_DEBITS,
    T.DEBIT_ACCOUNT_ALREADY_CLOSED,
    T.CREDIT_ACCOUNT_ALREADY_CLOSED,
]


@pytest.mark.parametrize("status", BURNING, ids=[s.name.lower() for s in BURNING])
def test_transient_failure_burns_only_the_failed_id(harness: LedgerHarness, status: T) -> None:
    """Zig: "transient failures retire only the failed event". Account flags are set at
    creation (the Zig test sets them in place)."""
    flags1 = flags2 = AF.NONE
    sent = transfer(1)
    if status is T.DEBIT_ACCOUNT_NOT_FOUND:
        sent = transfer(1, debit_account_id=9)
    elif status is T.CREDIT_ACCOUNT_NOT_FOUND:
        sent = transfer(1, credit_account_id=9)
    elif status is T.PENDING_TRANSFER_NOT_FOUND:
        sent = resolution(2, post=True)
    elif status is T.EXCEEDS_CREDITS:
        flags1 = AF.DEBITS_MUST_NOT_EXCEED_CREDITS
    elif status is T.EXCEEDS_DEBITS:
        flags2 = AF.CREDITS_MUST_NOT_EXCEED_DEBITS
    elif status is T.DEBIT_ACCOUNT_ALREADY_CLOSED:
        flags1 = AF.CLOSED
    else:
        flags2 = AF.CLOSED
    with_accounts(harness, account(1, flags=flags1), account(2, flags=flags2))
    reject_transfer(harness, sent, status)
    # Correcting the request cannot revive an already failed id.
    if status is T.DEBIT_ACCOUNT_NOT_FOUND or status is T.CREDIT_ACCOUNT_NOT_FOUND:
        with_accounts(harness, account(9))
    if status is T.EXCEEDS_CREDITS:
        submit(harness, transfer(5, debit_account_id=2, credit_account_id=1, amount=100))
    reject_transfer(harness, sent, T.ID_ALREADY_FAILED)
    reject_transfer(harness, transfer(sent.id, amount=0), T.ID_ALREADY_FAILED)
    # Other ids are unaffected.
    if not flags1 & AF.CLOSED and not flags2 & AF.CLOSED:
        submit(harness, transfer(3, amount=0))


# --- queries ----------------------------------------------------------------------------------


def with_query_model(h: LedgerHarness) -> None:
    """Zig ``test_query_model``: accounts 1-4 (3 and 4 on ledger 2) at 101-104, then
    transfers 90, 10, 70, 30 at 105-108, one per batch."""
    with_accounts(h, account(1), account(2), account(3, ledger=2), account(4, ledger=2))
    transfers = [
        transfer(90, user_data_128=UD128, user_data_64=UD64, user_data_32=9),
        transfer(10, debit_account_id=2, credit_account_id=1, user_data_128=UD128, code=2),
        transfer(
            70,
            debit_account_id=3,
            credit_account_id=4,
            ledger=2,
            user_data_64=UD64,
            user_data_32=9,
        ),
        transfer(30, user_data_32=9, code=3),
    ]
    for index, sent in enumerate(transfers):
        check_transfers(h, [sent], [(T.CREATED, START + 5 + index)])


def expect_transfers(
    h: LedgerHarness, f: QueryFilter | AccountFilter, expected_ids: Sequence[int]
) -> list[Transfer]:
    """The query returns exactly these transfers, as stored, and changes nothing."""
    before = snapshot(h)
    now = h.now
    found = h.query_transfers(f) if isinstance(f, QueryFilter) else h.get_account_transfers(f)
    assert ids(found) == list(expected_ids)
    assert found == h.lookup_transfers(expected_ids)
    assert snapshot(h) == before
    assert h.now == now
    return found


def test_query_transfers_empty_results_and_limits(harness: LedgerHarness) -> None:
    """Zig: "query_transfers empty results and output limits"."""
    expect_transfers(harness, query(8), [])
    expect_transfers(harness, query(0), [])
    with_query_model(harness)
    expect_transfers(harness, query(0), [])
    expect_transfers(harness, query(1), [90])
    expect_transfers(harness, query(2), [90, 10])
    expect_transfers(harness, query(4), [90, 10, 70, 30])
    expect_transfers(harness, query(8), [90, 10, 70, 30])
    expect_transfers(harness, query(1, reversed_=True), [30])
    expect_transfers(harness, query(2, reversed_=True), [30, 70])
    expect_transfers(harness, query(8, reversed_=True), [30, 70, 10, 90])
    # The page size applies after filtering, even when the match comes late.
    expect_transfers(harness, query(1, code=2), [10])
    expect_transfers(harness, account_filter(1, limit=1, reversed_=True), [30])


def test_query_transfers_imported_timestamp_ordering(harness: LedgerHarness) -> None:
    """Zig: "query_transfers imported timestamp ordering": results are in timestamp order."""
    with_accounts(harness)
    submit(harness, transfer(90))
    harness.set_now(200)
    imported = transfer(10, flags=TF.IMPORTED, timestamp=150)
    submit(harness, imported)
    # Imports may predate the clock, but cannot regress behind stored transfers.
    reject_transfer(
        harness,
        dataclasses.replace(imported, id=50, timestamp=140),
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    )
    submit(harness, dataclasses.replace(imported, id=70, timestamp=160))
    submit(harness, transfer(30))
    expect_transfers(harness, query(8), [90, 10, 70, 30])
    expect_transfers(harness, query(8, reversed_=True), [30, 70, 10, 90])
    expect_transfers(harness, query(1, timestamp_min=150, timestamp_max=160), [10])
    expect_transfers(harness, query(1, timestamp_min=150, timestamp_max=160, reversed_=True), [70])
    expect_transfers(harness, account_filter(1), [90, 10, 70, 30])
    expect_transfers(harness, account_filter(2, reversed_=True, limit=3), [30, 70, 10])


ACCOUNT_DIRECTIONS: list[tuple[dict[str, Any], list[int]]] = [
    ({"account_id": 1}, [90, 10, 30]),
    ({"account_id": 1, "credits": False}, [90, 30]),
    ({"account_id": 1, "debits": False}, [10]),
    ({"account_id": 1, "debits": False, "credits": False}, []),
    ({"account_id": 2, "credits": False}, [10]),
    ({"account_id": 2, "debits": False}, [90, 30]),
    ({"account_id": 3}, [70]),
    ({"account_id": 4}, [70]),
    ({"account_id": 0}, []),
    ({"account_id": ID_MAX}, []),
    ({"account_id": 5}, []),
]


def test_account_transfers_directions(harness: LedgerHarness) -> None:
    """Zig: "query_transfers account directions", through get_account_transfers."""
    with_query_model(harness)
    for fields, expected in ACCOUNT_DIRECTIONS:
        expect_transfers(harness, account_filter(**fields), expected)
        expect_transfers(harness, account_filter(**fields, reversed_=True), expected[::-1])
    # Without an account: query_transfers.
    expect_transfers(harness, query(), [90, 10, 70, 30])


METADATA_FILTERS: list[tuple[dict[str, Any], list[int]]] = [
    ({"user_data_128": UD128}, [90, 10]),
    ({"user_data_64": UD64}, [90, 70]),
    ({"user_data_32": 9}, [90, 70, 30]),
    ({"ledger": 1}, [90, 10, 30]),
    ({"ledger": 2}, [70]),
    ({"code": 1}, [90, 70]),
    ({"user_data_128": 7}, []),
    ({"user_data_64": 8}, []),
    ({"user_data_32": 8}, []),
    ({"ledger": 3}, []),
    ({"code": 4}, []),
    (
        {"user_data_128": UD128, "user_data_64": UD64, "user_data_32": 9, "ledger": 1, "code": 1},
        [90],
    ),
    # Both fields match individually, but no transfer matches both.
    ({"ledger": 2, "code": 2}, []),
    # Zero metadata fields are wildcards, including records with nonzero values.
    ({}, [90, 10, 70, 30]),
]


def test_query_transfers_metadata_filters_intersect(harness: LedgerHarness) -> None:
    """Zig: "query_transfers metadata filters intersect"."""
    with_query_model(harness)
    for fields, expected in METADATA_FILTERS:
        expect_transfers(harness, query(**fields), expected)
    # With an account (the account filter has no ledger field).
    expect_transfers(harness, account_filter(1, debits=False, user_data_32=9), [])
    expect_transfers(
        harness,
        account_filter(
            1, credits=False, user_data_32=9, timestamp_min=106, timestamp_max=108, reversed_=True
        ),
        [30],
    )
    expect_transfers(harness, account_filter(1, user_data_128=UD128), [90, 10])
    expect_transfers(harness, account_filter(2, user_data_64=UD64, code=1), [90])
    expect_transfers(harness, account_filter(1, code=3), [30])


TIMESTAMP_BOUNDS: list[tuple[int, int, list[int]]] = [
    (0, 0, [90, 10, 70, 30]),
    (105, 108, [90, 10, 70, 30]),
    (106, 107, [10, 70]),
    (106, 106, [10]),
    (107, 0, [70, 30]),
    (0, 106, [90, 10]),
    (0, 104, []),
    (109, 0, []),
    (108, 105, []),
    (TIMESTAMP_MAX - 1, 0, []),
    # The server's bounds stop at maxInt(u63) (``TimestampRange.valid``); the Zig model's at
    # TIMESTAMP_MAX - 1.
    (0, 2**63 - 1, [90, 10, 70, 30]),
    (0, 2**63, []),
    (0, TIMESTAMP_MAX - 1, []),
    (TIMESTAMP_MAX, 0, []),
    (TIMESTAMP_MAX + 1, 0, []),
    (0, TIMESTAMP_MAX, []),
    (0, TIMESTAMP_MAX + 1, []),
]


def test_query_transfers_timestamp_bounds(harness: LedgerHarness) -> None:
    """Zig: "query_transfers timestamp bounds" (inclusive; above 2**63 - 1 is invalid)."""
    with_query_model(harness)
    for minimum, maximum, expected in TIMESTAMP_BOUNDS:
        expect_transfers(harness, query(timestamp_min=minimum, timestamp_max=maximum), expected)
        expect_transfers(
            harness,
            account_filter(2, timestamp_min=minimum, timestamp_max=maximum),
            [i for i in expected if i != 70],
        )
    expect_transfers(harness, query(timestamp_min=106, timestamp_max=107, reversed_=True), [70, 10])
    # The largest valid timestamp remains queryable, with inclusive bounds.
    harness.set_now(2**63 - 2)
    assert submit(harness, transfer(50)).timestamp == 2**63 - 1
    bound: dict[str, Any] = {"timestamp_min": 2**63 - 1, "timestamp_max": 2**63 - 1}
    expect_transfers(harness, query(**bound), [50])
    expect_transfers(harness, account_filter(1, **bound), [50])


@pytest.mark.parametrize("reversed_", [False, True])
def test_query_transfers_resumable_pages(harness: LedgerHarness, reversed_: bool) -> None:
    """Zig: "query_transfers resumable pages"."""
    with_query_model(harness)
    expected = [30, 70, 10, 90] if reversed_ else [90, 10, 70, 30]
    for make in (query, lambda **kw: account_filter(1, **kw)):
        bounds: dict[str, int] = {}
        seen: list[int] = []
        for _ in range(3):
            page = make(limit=2, reversed_=reversed_, **bounds)
            found = h_query(harness, page)
            seen += ids(found)
            if not found:
                break
            last = found[-1].timestamp
            if reversed_:
                bounds["timestamp_max"] = last - 1
            else:
                bounds["timestamp_min"] = last + 1
        wanted = expected if make is query else [i for i in expected if i != 70]
        assert seen == wanted


def h_query(h: LedgerHarness, f: QueryFilter | AccountFilter) -> list[Transfer]:
    return h.query_transfers(f) if isinstance(f, QueryFilter) else h.get_account_transfers(f)


def test_query_transfers_lists_pending_and_resolutions_once(harness: LedgerHarness) -> None:
    """Zig: "query_transfers includes pending and resolution records only once"."""
    with_accounts(harness)
    with_pending(harness)
    submit(harness, resolution(2, post=True))
    pending = transfer(3, flags=TF.PENDING)
    submit(harness, pending)
    submit(harness, resolution(4, post=False, pending_id=3))
    submit(harness, dataclasses.replace(pending, id=5))
    # Retries and rejected or rolled-back events add no records.
    submit(harness, dataclasses.replace(pending, id=5), T.EXISTS)
    check_transfers(
        harness,
        [transfer(7, flags=TF.LINKED), transfer(6, code=0)],
        [T.LINKED_EVENT_FAILED, T.CODE_MUST_NOT_BE_ZERO],
    )
    expect_transfers(harness, query(8), [1, 2, 3, 4, 5])
    # Posting inherits metadata, which the query sees too.
    expect_transfers(harness, query(8, user_data_128=128), [1, 2])
    expect_transfers(harness, account_filter(1, user_data_64=64), [1, 2])


def test_scenario_query_pagination(harness: LedgerHarness) -> None:
    """Zig: "supplied scenario query pagination"."""
    with_accounts(harness)
    first = transfer(99, amount=0, user_data_64=7)
    second = transfer(1, debit_account_id=2, credit_account_id=1, amount=0, user_data_64=8)
    check_transfers(harness, [first, second], [T.CREATED, T.CREATED])
    [page] = expect_transfers(harness, query(1), [99])
    expect_transfers(harness, query(1, timestamp_min=page.timestamp + 1), [1])
    expect_transfers(harness, query(1, reversed_=True), [1])
    expect_transfers(harness, account_filter(1, credits=False, limit=1), [99])
    expect_transfers(harness, query(1, user_data_64=8), [1])
    expect_transfers(harness, query(1, code=2), [])


def test_invalid_filters_return_nothing(harness: LedgerHarness) -> None:
    """ledger-semantics: invalid filters (no debits/credits flag, limit 0, reserved bits,
    min > max, TIMESTAMP_MAX) give an empty list, not an error."""
    with_accounts(harness, account(1, flags=AF.HISTORY), account(2))
    submit(harness, transfer(1))
    assert harness.get_account_balances(account_filter(1)) != []
    assert harness.query_accounts(query()) != []
    for f in (
        account_filter(1, debits=False, credits=False),
        account_filter(1, limit=0),
        account_filter(1, flags=AccountFilterFlags(1 << 3) | AccountFilterFlags.DEBITS),
        account_filter(1, timestamp_min=104, timestamp_max=103),
        account_filter(1, timestamp_min=TIMESTAMP_MAX),
        account_filter(0),
        account_filter(ID_MAX),
    ):
        assert harness.get_account_transfers(f) == []
        assert harness.get_account_balances(f) == []
    for q in (
        query(0),
        query(flags=QueryFilterFlags(1 << 1)),
        query(timestamp_min=104, timestamp_max=103),
        query(timestamp_max=TIMESTAMP_MAX),
    ):
        assert harness.query_transfers(q) == []
        assert harness.query_accounts(q) == []


def test_query_limit_above_batch_size_raises(harness: LedgerHarness) -> None:
    """ledger-semantics: a limit above 8,189 makes the client raise (TooMuchDataError)."""
    with_accounts(harness)
    for call in (
        lambda: harness.query_transfers(query(LIMIT_MAX + 1)),
        lambda: harness.query_accounts(query(LIMIT_MAX + 1)),
        lambda: harness.get_account_transfers(account_filter(1, limit=LIMIT_MAX + 1)),
        lambda: harness.get_account_balances(account_filter(1, limit=LIMIT_MAX + 1)),
    ):
        with pytest.raises((TooMuchDataError, ValueError)):
            call()


def test_query_accounts(harness: LedgerHarness) -> None:
    """query_accounts: timestamp order, metadata filters, bounds, limit, reversed."""
    with_accounts(
        harness,
        account(40, user_data_128=UD128, user_data_64=7, code=3),
        account(10, user_data_32=9, ledger=2),
        account(30, user_data_128=UD128, user_data_32=9),
        account(20, user_data_64=7, ledger=2, code=3),
    )
    cases: list[tuple[QueryFilter, list[int]]] = [
        (query(), [40, 10, 30, 20]),
        (query(reversed_=True), [20, 30, 10, 40]),
        (query(2), [40, 10]),
        (query(1, reversed_=True, ledger=1), [30]),
        (query(user_data_128=UD128), [40, 30]),
        (query(user_data_64=7, code=3), [40, 20]),
        (query(user_data_32=9, ledger=2), [10]),
        (query(ledger=2, code=1), [10]),
        (query(code=2), []),
        (query(timestamp_min=START + 2, timestamp_max=START + 3), [10, 30]),
        (query(timestamp_min=START + 4), [20]),
        (query(timestamp_max=START + 1), [40]),
    ]
    for f, expected in cases:
        found = harness.query_accounts(f)
        assert ids(found) == expected
        assert found == harness.lookup_accounts(expected)


# --- lookups and balances ---------------------------------------------------------------------


def test_lookups_skip_missing_and_repeat_duplicates(harness: LedgerHarness) -> None:
    """ledger-semantics: lookups skip missing ids and repeat duplicated ids."""
    with_accounts(harness)
    submit(harness, transfer(1))
    submit(harness, transfer(2, amount=5))
    accounts = harness.lookup_accounts([2, 9, 1, 2, 0, ID_MAX, 1])
    assert ids(accounts) == [2, 1, 2, 1]
    assert accounts[0] == accounts[2]
    assert harness.lookup_accounts([]) == []
    assert harness.lookup_accounts([9]) == []
    transfers = harness.lookup_transfers([1, 1, 3, 2, 0, 1])
    assert ids(transfers) == [1, 1, 2, 1]
    assert transfers[0] == transfers[1] == transfers[3]
    assert harness.lookup_transfers([3]) == []


def test_account_balances_history_only_and_expiry_adds_no_row(harness: LedgerHarness) -> None:
    """ledger-semantics: get_account_balances works only for accounts with the history flag
    (one row per transfer: the balances right after it); an expiry adds no row."""
    with_accounts(harness, account(1, flags=AF.HISTORY), account(2), account(3, flags=AF.HISTORY))
    t1 = submit(harness, transfer(1))
    t2 = submit(harness, transfer(2, flags=TF.PENDING, timeout=1, amount=5, user_data_32=7))
    t3 = submit(harness, transfer(3, debit_account_id=3, credit_account_id=1, amount=2))
    rows = [
        AccountBalance(0, 10, 0, 0, t1.timestamp),
        AccountBalance(5, 10, 0, 0, t2.timestamp),
        AccountBalance(5, 10, 0, 2, t3.timestamp),
    ]
    assert harness.get_account_balances(account_filter(1)) == rows
    assert harness.get_account_balances(account_filter(1, reversed_=True)) == rows[::-1]
    assert harness.get_account_balances(account_filter(1, credits=False)) == rows[:2]
    assert harness.get_account_balances(account_filter(1, debits=False)) == rows[2:]
    assert harness.get_account_balances(account_filter(1, user_data_32=7)) == rows[1:2]
    assert harness.get_account_balances(account_filter(1, limit=1, reversed_=True)) == rows[2:]
    bounds: dict[str, Any] = {"timestamp_min": t2.timestamp, "timestamp_max": t2.timestamp}
    assert harness.get_account_balances(account_filter(1, **bounds)) == rows[1:2]
    assert harness.get_account_balances(account_filter(2)) == []
    assert harness.get_account_balances(account_filter(9)) == []
    assert harness.get_account_balances(account_filter(3)) == [
        AccountBalance(0, 2, 0, 0, t3.timestamp)
    ]
    transfers = harness.query_transfers(query())

    harness.set_now(t2.timestamp + NS)
    harness.pulse()
    assert balances(harness, 1) == (0, 10, 0, 2)
    assert harness.get_account_balances(account_filter(1)) == rows
    assert harness.query_transfers(query()) == transfers
    t4 = submit(harness, transfer(4, amount=1))
    assert harness.get_account_balances(account_filter(1))[3:] == [
        AccountBalance(0, 11, 0, 2, t4.timestamp)
    ]


def test_ids_and_amounts_use_all_128_bits(harness: LedgerHarness) -> None:
    """Ids, amounts and user data are u128: values that differ only in the high word are
    distinct, and amounts carry across the 64-bit boundary."""
    low, high, both = 1, 1 << 64, (1 << 64) + 1
    with_accounts(harness, account(low), account(high), account(both), account(1 << 127))
    assert ids(harness.lookup_accounts([both, high, low, 1 << 127])) == [both, high, low, 1 << 127]
    debit = {"debit_account_id": high, "credit_account_id": both}
    submit(harness, transfer(high, **debit, amount=(1 << 64) - 1))
    submit(harness, transfer(both, **debit, amount=1, flags=TF.PENDING))
    submit(harness, transfer(low, **debit, amount=1 << 64, user_data_128=high))
    assert balances(harness, high) == (1, (1 << 65) - 1, 0, 0)
    assert balances(harness, both) == (0, 0, 1, (1 << 65) - 1)
    submit(harness, resolution(1 << 127, post=True, pending_id=both))
    assert balances(harness, high) == (0, 1 << 65, 0, 0)
    reject_transfer(harness, transfer(low, **debit, amount=1), T.EXISTS_WITH_DIFFERENT_AMOUNT)
    reject_transfer(
        harness,
        transfer(low, **debit, amount=1 << 64, user_data_128=both),
        T.EXISTS_WITH_DIFFERENT_USER_DATA_128,
    )
    expect_transfers(harness, query(user_data_128=high), [low])
    expect_transfers(harness, account_filter(high, limit=2, reversed_=True), [1 << 127, low])


# --- the server's own rules (src/state_machine.zig), where the reference model differs --------
#
# TigerBeetle keeps the top bit of a u64 timestamp as the LSM tombstone flag, so a valid
# timestamp is 1 ..= 2**63 - 1 (``TimestampRange.timestamp_max = maxInt(u63)``); the Zig
# reference model bounds them by ``maxInt(u64) - 1`` instead.

VALID_TIMESTAMP_MAX = 2**63 - 1
"""``TimestampRange.timestamp_max``: the largest timestamp TigerBeetle accepts anywhere."""


@pytest.mark.parametrize("timestamp", [2**63, 2**63 + 1, TIMESTAMP_MAX - 1])
def test_imported_timestamp_above_u63_is_out_of_range(
    harness: LedgerHarness, timestamp: int
) -> None:
    """state_machine.zig ``execute_create``: ``if (!TimestampRange.valid(event.timestamp))
    break :blk .imported_event_timestamp_out_of_range;`` comes before ``must_not_advance``;
    the docs: "Must be greater than 0 and less than 2^63" for imported events."""
    reject_account(
        harness,
        account(1, flags=AF.IMPORTED, timestamp=timestamp),
        A.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE,
    )
    reject_account(
        harness,
        account(1, flags=AF.IMPORTED, timestamp=VALID_TIMESTAMP_MAX),
        A.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE,
    )
    _transfer_base(harness)
    reject_transfer(
        harness,
        transfer(1, flags=TF.IMPORTED, timestamp=timestamp),
        T.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE,
    )
    reject_transfer(
        harness,
        transfer(1, flags=TF.IMPORTED, timestamp=VALID_TIMESTAMP_MAX),
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE,
    )


@pytest.mark.parametrize(
    ("minimum", "maximum", "valid"),
    [
        (0, VALID_TIMESTAMP_MAX, True),
        (VALID_TIMESTAMP_MAX, VALID_TIMESTAMP_MAX, True),
        (0, 2**63, False),
        (2**63, 0, False),
        (0, TIMESTAMP_MAX - 1, False),
        (TIMESTAMP_MAX - 1, 0, False),
    ],
)
def test_filter_timestamps_above_u63_are_invalid(
    harness: LedgerHarness, minimum: int, maximum: int, valid: bool
) -> None:
    """state_machine.zig ``get_scan_from_account_filter`` / ``get_scan_from_query_filter``:
    ``(filter.timestamp_min == 0 or TimestampRange.valid(filter.timestamp_min)) and
    (filter.timestamp_max == 0 or TimestampRange.valid(filter.timestamp_max))``, else the
    filter is invalid and the answer empty."""
    with_accounts(harness, account(1, flags=AF.HISTORY), account(2))
    submit(harness, transfer(1))
    bounds: dict[str, Any] = {"timestamp_min": minimum, "timestamp_max": maximum}
    every = minimum == 0
    expect_transfers(harness, query(**bounds), [1] if valid and every else [])
    expect_transfers(harness, account_filter(1, **bounds), [1] if valid and every else [])
    assert len(harness.get_account_balances(account_filter(1, **bounds))) == (
        1 if valid and every else 0
    )
    assert ids(harness.query_accounts(query(**bounds))) == ([1, 2] if valid and every else [])


def test_imported_transfer_may_predate_an_expiry(harness: LedgerHarness) -> None:
    """state_machine.zig ``create_transfer``: an imported transfer must postdate
    ``transfers.objects.key_range.key_max`` (the newest transfer), not the expiries: an expiry
    writes no transfer (it updates ``transfers_pending``, the accounts and ``account_events``).
    So after an expiry an import may take a timestamp between the newest transfer and it."""
    with_accounts(harness)
    created = submit(harness, transfer(1, flags=TF.PENDING, timeout=1))
    harness.set_now(created.timestamp + 2 * NS)
    assert harness.pulse() == 1
    assert balances(harness, 1) == (0, 0, 0, 0)
    reject_transfer(
        harness,
        transfer(2, flags=TF.IMPORTED, timestamp=created.timestamp),
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    )
    imported = transfer(2, flags=TF.IMPORTED, timestamp=created.timestamp + 1)
    submit(harness, imported)
    submit(harness, imported, (T.EXISTS, created.timestamp + 1))
    assert balances(harness, 1) == (0, 10, 0, 0)
    assert ids(harness.query_transfers(query())) == [1, 2]
    # The newest transfer is now the import: the next must postdate it, and may still
    # predate the expiry.
    reject_transfer(
        harness,
        transfer(3, flags=TF.IMPORTED, timestamp=created.timestamp + 1),
        T.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    )
    submit(harness, transfer(3, flags=TF.IMPORTED, timestamp=created.timestamp + 2))
    # Expiries keep their own order: a later one still gets a newer timestamp.
    later = submit(harness, transfer(4, flags=TF.PENDING, timeout=1))
    harness.set_now(later.timestamp + 2 * NS)
    assert harness.pulse() == 1
    assert balances(harness, 1) == (0, 20, 0, 0)
    assert submit(harness, transfer(5)).timestamp > later.timestamp + 2 * NS
