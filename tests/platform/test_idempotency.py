"""Idempotency records: replay, reuse with another request, in flight, crash take-over,
expiry; and, on PostgreSQL, the purge and groups of claims beside each other (locks)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.platform import (
    Claim,
    ClaimResult,
    IdempotencyOptions,
    IdempotencyRecords,
    StoredResponse,
    Tenants,
)

from .._locks import PROMPTLY_S, backend_pid, wait_until_blocked_or_done

S = 1_000_000_000
DONE = StoredResponse(201, "application/json", b"{}")


def _records(engine: sa.Engine, clock: ManualClock) -> tuple[IdempotencyRecords, int, int]:
    tenants = Tenants(engine, clock=clock)
    a = tenants.create("Bank A", "bank").id
    b = tenants.create("Bank B", "bank").id
    options = IdempotencyOptions(window_s=3600, lock_timeout_s=30)
    return IdempotencyRecords(engine, clock=clock, options=options), a, b


def _token(started: ClaimResult) -> int:
    """The token of a claim that started."""
    assert started.claim is Claim.STARTED and started.token is not None
    return started.token


def test_replay_reuse_and_in_flight(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, b = _records(engine, clock)
    started = records.begin(a, "k", "fp1")
    assert started.claim is Claim.STARTED
    assert records.begin(a, "k", "fp1").claim is Claim.IN_PROGRESS
    assert records.begin(a, "k", "fp2").claim is Claim.REUSED
    assert records.begin(b, "k", "fp2").claim is Claim.STARTED  # keys are per tenant
    stored = StoredResponse(201, "application/json", b'{"ok":true}')
    records.finish(a, "k", "fp1", _token(started), stored)
    again = records.begin(a, "k", "fp1")
    assert again.claim is Claim.REPLAY and again.response == stored
    assert records.begin(a, "k", "fp2").claim is Claim.REUSED


def test_a_crashed_request_does_not_wedge_its_key(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, _ = _records(engine, clock)
    assert records.begin(a, "k", "fp").claim is Claim.STARTED
    clock.advance(29 * S)
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS
    clock.advance(2 * S)  # past the 30 s lock timeout: the first request is taken for dead
    assert records.begin(a, "k", "fp").claim is Claim.STARTED
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS


def test_a_request_taken_over_neither_frees_nor_finishes_the_new_claim(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """A request runs past its 30 s lock; a retry takes the key over (a new token); then the
    first ends. Before, its release (a 5xx) deleted the retry's claim, so a third request ran
    beside the retry; and its finish stored its answer under the retry's claim. Now both
    change nothing: the key stays the retry's, and the retry's answer is the one kept."""
    records, a, _ = _records(engine, clock)
    first = records.begin(a, "k", "fp")
    clock.advance(31 * S)
    retry = records.begin(a, "k", "fp")
    assert _token(retry) > _token(first)
    records.release(a, "k", "fp", _token(first))
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS  # still the retry's
    records.finish(a, "k", "fp", _token(first), StoredResponse(201, "application/json", b"1"))
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS
    records.finish(a, "k", "fp", _token(retry), DONE)
    assert records.begin(a, "k", "fp").response == DONE
    # a record made afresh once the key expired is a new claim as well
    clock.advance(3600 * S)
    fresh = records.begin(a, "k", "fp")
    records.release(a, "k", "fp", _token(retry))
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS
    records.release(a, "k", "fp", _token(fresh))
    assert records.begin(a, "k", "fp").claim is Claim.STARTED


def test_release_and_expiry(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, _ = _records(engine, clock)
    started = records.begin(a, "k", "fp")
    assert started.claim is Claim.STARTED
    records.release(a, "k", "fp", _token(started))
    again = records.begin(a, "k", "other")
    assert again.claim is Claim.STARTED  # the key is free again
    records.finish(a, "k", "other", _token(again), StoredResponse(200, "application/json", b"{}"))
    clock.advance(3599 * S)
    assert records.begin(a, "k", "fp").claim is Claim.REUSED
    clock.advance(1 * S)  # the window (1 h) is over: the key is new
    assert records.purge_expired() == 1
    assert records.begin(a, "k", "fp").claim is Claim.STARTED


def test_a_claim_holds_its_key_past_the_end_of_the_window(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """A crashed request's key taken over 10 s before its record's window (1 h) ends: the
    retry runs on past the window's end. Before, a request with the key just after the end
    found the record expired and started afresh beside the running retry (the same request
    carried out twice), and the purge deleted the record under it. Now the record lasts
    while a claim holds it: the third request is ``IN_PROGRESS``, the purge leaves it, and
    the retry's answer is kept and replayed."""
    records, a, _ = _records(engine, clock)
    records.begin(a, "k", "fp")  # crashes: never finished
    clock.advance(3590 * S)
    retry = records.begin(a, "k", "fp")
    clock.advance(11 * S)  # the window is over, the retry's 30 s claim is not
    assert records.purge_expired() == 0
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS
    records.finish(a, "k", "fp", _token(retry), DONE)
    assert records.begin(a, "k", "fp") == ClaimResult(Claim.REPLAY, DONE)
    clock.advance(19 * S)  # the retry's claim is over: its record with it
    assert records.purge_expired() == 1
    assert records.begin(a, "k", "fp").claim is Claim.STARTED


def test_a_window_shorter_than_the_lock_still_holds_a_running_claim(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """With ``window_s`` shorter than ``lock_timeout_s`` (allowed), a request still running
    when its window ended had its record taken afresh by the next one: run twice."""
    records, a, _ = _records(engine, clock)
    records.options = IdempotencyOptions(window_s=10, lock_timeout_s=30)
    records.begin(a, "k", "fp")
    clock.advance(11 * S)
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS


def test_a_group_of_claims_and_finishes_is_one_transaction_each(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """begin_many / finish_many (the API's group commit) answer as one-by-one calls would."""
    records, a, b = _records(engine, clock)
    records.begin(a, "old", "fp")
    claims = records.begin_many(
        [(a, "k1", "fp"), (a, "k1", "fp"), (b, "k1", "fp"), (a, "old", "other"), (a, "k2", "x")]
    )
    assert [c.claim for c in claims] == [
        Claim.STARTED,
        Claim.IN_PROGRESS,  # the same key twice in one group: the second waits its turn
        Claim.STARTED,
        Claim.REUSED,
        Claim.STARTED,
    ]
    one = StoredResponse(201, "application/json", b"1")
    two = StoredResponse(200, "application/json", b"2")
    k1, k2, b_k1 = (_token(claims[i]) for i in (0, 4, 2))
    records.finish_many(
        [(a, "k1", "fp", k1, one), (a, "k2", "x", k2, two), (b, "k1", "wrong", b_k1, two)]
    )
    assert records.begin(a, "k1", "fp").response == one
    assert records.begin(a, "k2", "x").response == two
    assert records.begin(b, "k1", "fp").claim is Claim.IN_PROGRESS  # not finished: wrong fp


def test_a_group_answers_in_its_own_order_whatever_order_it_locks_in(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """The group's records are locked in (tenant, key) order; the answers keep the group's
    order, and of one key twice the first in the group is the one that runs."""
    records, a, b = _records(engine, clock)
    records.begin(a, "m", "fp")
    claims = records.begin_many(
        [(b, "a", "fp"), (a, "z", "two"), (a, "m", "other"), (a, "z", "one"), (a, "b", "fp")]
    )
    assert [c.claim for c in claims] == [
        Claim.STARTED,
        Claim.STARTED,  # the first of "z" in the group runs ...
        Claim.REUSED,
        Claim.REUSED,  # ... and the second is measured against it
        Claim.STARTED,
    ]
    ba, az, ab = (_token(claims[i]) for i in (0, 1, 4))
    records.finish_many(
        [(b, "a", "fp", ba, DONE), (a, "z", "two", az, DONE), (a, "b", "fp", ab, DONE)]
    )
    assert [records.begin(*c).claim for c in [(b, "a", "fp"), (a, "z", "two"), (a, "b", "fp")]] == [
        Claim.REPLAY
    ] * 3


def test_a_purge_that_deleted_a_record_a_claim_is_reading_leaves_a_fresh_claim(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """A purge deletes an expired record while a request for its key reads it: the request
    waits for the purge (PostgreSQL: the row lock; SQLite: the one writer), finds no record
    and claims the key afresh; nothing is lost and nothing fails."""
    records, a, _ = _records(engine, clock)
    records.finish(a, "k", "old", _token(records.begin(a, "k", "old")), DONE)
    clock.advance(3600 * S)  # expired
    with engine.connect() as purge, ThreadPoolExecutor(1) as pool:
        purge.begin()
        assert records._purge_in(purge, 100) == 1  # deleted, not committed yet
        claim = pool.submit(records.begin_many, [(a, "k", "new")])
        wait_until_blocked_or_done(engine, backend_pid(purge), claim)
        purge.commit()
        assert [c.claim for c in claim.result(PROMPTLY_S)] == [Claim.STARTED]
    row = _record(engine, a, "k")
    assert (row.fingerprint, row.state) == ("new", "in_progress")
    assert row.expires_at_ns == clock.now_ns() + 3600 * S
    assert records.begin(a, "k", "new").claim is Claim.IN_PROGRESS


# --- PostgreSQL: row locks ---------------------------------------------------------------


def _record(engine: sa.Engine, tenant_id: int, key: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM platform_idempotency WHERE tenant_id = :t AND key = :k"),
            {"t": tenant_id, "k": key},
        ).first()


def _keys(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT key FROM platform_idempotency")).scalars())


def _expired_records(records: IdempotencyRecords, clock: ManualClock, a: int, *keys: str) -> None:
    for key in keys:
        records.finish(a, key, "old", _token(records.begin(a, key, "old")), DONE)
    clock.advance(3600 * S)  # the window (1 h) is over for all of them


@pytest.mark.postgres
@pytest.mark.parametrize("request_ends", ["commit", "rollback"])
def test_a_purge_skips_the_record_a_request_is_taking_over(
    pg_engine: sa.Engine, clock: ManualClock, request_ends: str
) -> None:
    """A request is taking over an expired key (its record locked, replaced, uncommitted):
    the purge returns at once, deletes the other expired records and leaves that one. Before,
    it waited for the request's transaction (or deadlocked with it)."""
    records, a, _ = _records(pg_engine, clock)
    _expired_records(records, clock, a, "e1", "e2", "e3")
    records.begin(a, "fresh", "fp")
    with pg_engine.connect() as request, ThreadPoolExecutor(1) as pool:
        request.begin()
        assert records._begin_in(request, a, "e2", "new").claim is Claim.STARTED
        purge = pool.submit(records.purge_expired)
        try:
            purged = purge.result(PROMPTLY_S)
        except TimeoutError:
            request.rollback()  # the purge goes on
            purge.result()
            pytest.fail("purge_expired waited for a record a request holds")
        assert purged == 2
        assert _keys(pg_engine) == ["e2", "fresh"]  # e2: still the old one, to others
        getattr(request, request_ends)()
    row = _record(pg_engine, a, "e2")
    if request_ends == "commit":  # the request's fresh record stays
        assert (row.fingerprint, row.state) == ("new", "in_progress")
        assert records.purge_expired() == 0
        assert records.begin(a, "e2", "new").claim is Claim.IN_PROGRESS
    else:  # the old record is back, still expired: the next purge deletes it
        assert row.fingerprint == "old"
        assert records.purge_expired() == 1
    assert _keys(pg_engine) == (["e2", "fresh"] if request_ends == "commit" else ["fresh"])


@pytest.mark.postgres
def test_a_purge_and_a_request_taking_over_two_keys_do_not_deadlock(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """A group takes over e2, then e1 (both expired); the purge runs between the two. Before,
    the purge deleted (locked) e1, then waited for e2: with the group then waiting for e1,
    PostgreSQL aborted one of them (a deadlock: the purge failed, or the group's requests
    were answered 500). Now the purge skips e2, so the group finds e1 already gone."""
    records, a, _ = _records(pg_engine, clock)
    _expired_records(records, clock, a, "e1", "e2")
    with pg_engine.connect() as request, ThreadPoolExecutor(1) as pool:
        request.begin()
        assert records._begin_in(request, a, "e2", "new").claim is Claim.STARTED
        purge = pool.submit(records.purge_expired)
        wait_until_blocked_or_done(pg_engine, backend_pid(request), purge)
        try:
            assert records._begin_in(request, a, "e1", "new").claim is Claim.STARTED
            request.commit()
        finally:
            request.rollback()  # no-op after the commit; else lets a waiting purge go on
            purged = purge.result(PROMPTLY_S)
    assert purged == 1
    for key in ("e1", "e2"):
        assert _record(pg_engine, a, key).fingerprint == "new"
    assert records.purge_expired() == 0


def _statement_hook(
    engine: sa.Engine, on_select: Callable[[sa.Connection, int], None]
) -> Callable[[], None]:
    """Call ``on_select(conn, n)`` before the ``n``-th read of idempotency records (one
    per claim) that a thread marked with ``_HOOKED.on = True`` sends; returns the function
    that removes the hook."""

    def before(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if not getattr(_HOOKED, "on", False):
            return
        if statement.lstrip().upper().startswith("SELECT") and "platform_idempotency" in statement:
            _HOOKED.selects = getattr(_HOOKED, "selects", 0) + 1
            on_select(conn, _HOOKED.selects)

    sa.event.listen(engine, "before_cursor_execute", before)
    return lambda: sa.event.remove(engine, "before_cursor_execute", before)


_HOOKED = threading.local()


def test_two_groups_with_the_same_keys_in_opposite_orders_do_not_deadlock(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """Two groups (two servers) claim keys x and y, in opposite orders, each pausing after
    its first claim until the other has made its own. Before, each locked its first key
    (PostgreSQL: the inserted row), then waited for the other's: a deadlock, one group's
    transaction aborted, its requests answered 500. Now both lock x first: the second waits
    for the first, then answers ``IN_PROGRESS`` for both keys. (SQLite: one writer, no
    deadlock either way; the answers are checked all the same.)"""
    records, a, _ = _records(engine, clock)
    both_claimed_one = threading.Barrier(2, timeout=1.0)

    def pause_before_second_claim(_conn: sa.Connection, n: int) -> None:
        if n == 2:  # the group's first claim is made (uncommitted)
            # (broken: after a second, the other group waits for a lock of this one)
            with contextlib.suppress(threading.BrokenBarrierError):
                both_claimed_one.wait()

    def group(order: list[str]) -> list[Claim]:
        _HOOKED.on = True
        return [c.claim for c in records.begin_many([(a, key, "fp") for key in order])]

    unhook = _statement_hook(engine, pause_before_second_claim)
    try:
        with ThreadPoolExecutor(2) as pool:
            xy = pool.submit(group, ["x", "y"])
            yx = pool.submit(group, ["y", "x"])
            answers = [xy.result(PROMPTLY_S), yx.result(PROMPTLY_S)]
    finally:
        unhook()
    started, waiting = [Claim.STARTED] * 2, [Claim.IN_PROGRESS] * 2
    assert answers in ([started, waiting], [waiting, started])


@pytest.mark.postgres
def test_a_group_of_claims_and_a_group_of_finishes_do_not_deadlock(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """A group of claims reads (locks) x, then y, both in progress; a group of finishes
    for y and x runs between the two. Before, the finishes updated (locked) y, then waited
    for x, and the claims then waited for y: a deadlock. Now the finishes lock x first: they
    wait for the claims' transaction and then store both responses."""
    records, a, _ = _records(pg_engine, clock)
    x, y = (_token(records.begin(a, key, "fp")) for key in ("x", "y"))
    x_locked, finishing = threading.Event(), threading.Event()
    finishes: list[Future[None]] = []

    def pause_before_second_claim(conn: sa.Connection, n: int) -> None:
        if n == 2:  # x is locked: let the finishes run until they wait (or end)
            x_locked.set()
            assert finishing.wait(PROMPTLY_S)
            wait_until_blocked_or_done(pg_engine, backend_pid(conn), finishes[0])

    def claims() -> list[Claim]:
        _HOOKED.on = True
        return [c.claim for c in records.begin_many([(a, "x", "fp"), (a, "y", "fp")])]

    unhook = _statement_hook(pg_engine, pause_before_second_claim)
    try:
        with ThreadPoolExecutor(2) as pool:
            claimed = pool.submit(claims)
            assert x_locked.wait(PROMPTLY_S)
            finishes.append(
                pool.submit(records.finish_many, [(a, "y", "fp", y, DONE), (a, "x", "fp", x, DONE)])
            )
            finishing.set()
            assert claimed.result(PROMPTLY_S) == [Claim.IN_PROGRESS] * 2
            finishes[0].result(PROMPTLY_S)
    finally:
        unhook()
    assert [records.begin(a, key, "fp").claim for key in ("x", "y")] == [Claim.REPLAY] * 2
