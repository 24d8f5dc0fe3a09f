"""Records of the API's ``Idempotency-Key`` header, with Stripe's semantics.

Per tenant, a key names one request (its fingerprint: method, path, body). The first request
with a key claims it (``in_progress``) and, when it ends, stores its response (``done``). Then:

- the same key with the same request gets the stored response back (``REPLAY``);
- the same key with a different request is refused (``REUSED``: 409 ``idempotency_key_reused``);
- the same key while the first is still running is refused (``IN_PROGRESS``: 409
  ``idempotency_request_in_progress``).

A request that crashed without finishing does not wedge its key: the claim lasts
``lock_timeout_s``; after that the next request with the key takes it over and runs. Records
are kept ``window_s`` (24 h by default) from the first request, and while a claim holds them
(a key taken over near the window's end, a window shorter than the lock); afterwards the key
is new again.

A claim is named by its token (``ClaimResult.token``), and ``finish`` and ``release`` change
the record only while it is still that claim: a request that ran past its lock and was taken
over (it had not crashed, only run long) then stores nothing and frees nothing; the request
that took the key over owns it. The token is the claim's lock deadline (``locked_until_ns``),
which no other claim of the record shares: a claim is only taken over once its deadline has
passed, and the new deadline is that moment plus ``lock_timeout_s``, so later; a record made
afresh (the key expired) is made later still. So the check is one more column compared in the
statement that finishes or releases, not a column, a round trip or a random number more.

Concurrency (PostgreSQL; SQLite runs one writing transaction at a time). A claim locks its
record (``SELECT ... FOR UPDATE``) before it decides; an expired record is taken over by
deleting it and inserting a fresh one. Every transaction that locks several records (a
group's ``begin_many`` and ``finish_many``) takes them in one order, by ``(tenant_id, key)``,
so two groups sharing keys wait for each other but never deadlock. ``purge_expired`` skips
the records a request holds (``FOR UPDATE SKIP LOCKED``): it never waits for a request nor
deadlocks with one, and a record taken over meanwhile is not deleted (the next round deletes
what is still expired). If the purge locks an expired record first, a request for the key
waits for the purge's single statement, finds no record, and claims the key afresh.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from puhui.clock import Clock, SystemClock
from puhui.store import platform as tables

NS_PER_S = 1_000_000_000

# Statements built once (module constants): SQLAlchemy compiles and keys them once, not per
# claim (building them per claim was most of a group's CPU). Parameters: ``w_*`` name the
# record, the others its new values.
_T = tables.idempotency
_RECORD = sa.and_(_T.c.tenant_id == sa.bindparam("w_tenant_id"), _T.c.key == sa.bindparam("w_key"))
_CLAIMED = sa.and_(
    _RECORD,
    _T.c.fingerprint == sa.bindparam("w_fingerprint"),
    _T.c.state == "in_progress",
    _T.c.locked_until_ns == sa.bindparam("w_token"),  # still this claim (not taken over)
)
_SELECT_FOR_CLAIM = sa.select(_T).where(_RECORD).with_for_update()
_DELETE = _T.delete().where(_RECORD)
_RELOCK = (
    _T.update()
    .where(_RECORD)
    .values(
        locked_until_ns=sa.bindparam("locked_until_ns"),
        expires_at_ns=sa.bindparam("expires_at_ns"),
    )
)
_FINISH = (
    _T.update()
    .where(_CLAIMED)
    .values(
        state="done",
        status_code=sa.bindparam("status_code"),
        content_type=sa.bindparam("content_type"),
        body=sa.bindparam("body"),
    )
)
_RELEASE = _T.delete().where(_CLAIMED)
_EXPIRED = _T.c.expires_at_ns <= sa.bindparam("now")
# SQLite (one writing transaction at a time): the oldest expired keys, then their records.
_PURGE = _T.delete().where(
    sa.tuple_(_T.c.tenant_id, _T.c.key).in_(
        sa.select(_T.c.tenant_id, _T.c.key)
        .where(_EXPIRED)
        .order_by(_T.c.expires_at_ns)
        .limit(sa.bindparam("limit"))
    )
)
# PostgreSQL: the oldest expired records a request does not hold, locked (``SKIP LOCKED``:
# the purge never waits for a request, so it can neither deadlock with one nor wait behind a
# long one), then deleted by their row address. ``ARRAY(subquery)`` runs once, before the
# delete (an init plan), and the delete finds the rows by address (a TID scan), not by
# joining every record of the table against the keys (a sequential scan).
_CTID: sa.ColumnElement[Any] = sa.literal_column("ctid")
_PURGE_SKIP_LOCKED = _T.delete().where(
    sa.any_(  # rendered ``ctid = ANY (array((SELECT ctid ...)))``
        sa.func.array(
            sa.select(_CTID)
            .select_from(_T)
            .where(_EXPIRED)
            .order_by(_T.c.expires_at_ns)
            .limit(sa.bindparam("limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    == _CTID
)


@dataclass(frozen=True, slots=True)
class IdempotencyOptions:
    window_s: float = 24 * 3600.0
    """How long a key and its stored response are kept, from the first request."""
    lock_timeout_s: float = 60.0
    """How long a claim holds without a result: a request still unfinished after this is
    taken for crashed and its key may be claimed again. Must exceed the longest a request
    may run."""

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.lock_timeout_s > 0):
            raise ValueError("window_s and lock_timeout_s must be positive")


class Claim(enum.Enum):
    STARTED = "started"
    """The caller holds the key: run the request, then ``finish`` (or ``release``)."""
    REPLAY = "replay"
    """A response is stored for this very request: send it again."""
    REUSED = "reused"
    """The key belongs to a different request."""
    IN_PROGRESS = "in_progress"
    """The same request is running under this key right now."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    content_type: str
    body: bytes


Finished = tuple[int, str, str, int, StoredResponse]
"""A request's end for ``finish_many``: ``(tenant_id, key, fingerprint, token, response)``."""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    response: StoredResponse | None = None
    token: int | None = None
    """``STARTED`` only: names this claim, for ``finish`` and ``release`` (see the module's
    description)."""


class IdempotencyRecords:
    """The idempotency records of every tenant, in the SQL store."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Clock | None = None,
        options: IdempotencyOptions | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.options = options or IdempotencyOptions()

    def begin(self, tenant_id: int, key: str, fingerprint: str) -> ClaimResult:
        """Claim ``key`` for the request ``fingerprint`` (see the module's description)."""
        try:
            return self._begin(tenant_id, key, fingerprint)
        except sa.exc.IntegrityError:
            # Two first requests raced to insert (PostgreSQL); the loser sees the winner's row.
            return self._begin(tenant_id, key, fingerprint)

    def begin_many(self, claims: Sequence[tuple[int, str, str]]) -> list[ClaimResult]:
        """``begin`` for each ``(tenant_id, key, fingerprint)``, all in one transaction (one
        commit for a group of concurrent requests); the answers in the order of ``claims``.
        A key twice in the group: the second is ``IN_PROGRESS``, as it would be a moment
        later. The records are locked in ``(tenant_id, key)`` order whatever the group's
        order (see the module's description)."""
        answers: dict[int, ClaimResult] = {}
        try:
            with self.engine.begin() as conn:
                for i in _in_key_order(claims):
                    answers[i] = self._begin_in(conn, *claims[i])
        except sa.exc.IntegrityError:
            # A race with another server (PostgreSQL): sort it out one request at a time.
            return [self.begin(*claim) for claim in claims]
        return [answers[i] for i in range(len(claims))]

    def _begin(self, tenant_id: int, key: str, fingerprint: str) -> ClaimResult:
        with self.engine.begin() as conn:
            return self._begin_in(conn, tenant_id, key, fingerprint)

    def _begin_in(
        self, conn: sa.Connection, tenant_id: int, key: str, fingerprint: str
    ) -> ClaimResult:
        now = self.clock.now_ns()
        lock_ns = int(self.options.lock_timeout_s * NS_PER_S)
        record = {"w_tenant_id": tenant_id, "w_key": key}
        row = conn.execute(_SELECT_FOR_CLAIM, record).first()
        if row is not None and row.expires_at_ns <= now:
            # Taken over: deleted and inserted afresh (the row stays locked in between, so
            # no purge deletes it under us; were it gone, the delete would find nothing and
            # the insert would still claim the key).
            conn.execute(_DELETE, record)
            row = None
        if row is None:
            window_ns = int(self.options.window_s * NS_PER_S)
            conn.execute(
                _T.insert(),
                {
                    "tenant_id": tenant_id,
                    "key": key,
                    "fingerprint": fingerprint,
                    "state": "in_progress",
                    "created_at_ns": now,
                    "locked_until_ns": now + lock_ns,
                    # Never before its claim ends (a window shorter than the lock).
                    "expires_at_ns": now + max(window_ns, lock_ns),
                },
            )
            return ClaimResult(Claim.STARTED, token=now + lock_ns)
        if row.fingerprint != fingerprint:
            return ClaimResult(Claim.REUSED)
        if row.state == "done":
            stored = StoredResponse(
                status_code=int(row.status_code),
                content_type=str(row.content_type),
                body=bytes(row.body),
            )
            return ClaimResult(Claim.REPLAY, stored)
        if row.locked_until_ns > now:
            return ClaimResult(Claim.IN_PROGRESS)
        # The claim outlived its timeout: its request is taken for crashed. The new deadline
        # (the token) is later than the old one, which has passed: the old claim's finish or
        # release no longer matches. The record lasts at least as long as the new claim: it
        # does not expire (nor is purged) under a request that still holds it.
        expires_ns = max(int(row.expires_at_ns), now + lock_ns)
        conn.execute(
            _RELOCK, {**record, "locked_until_ns": now + lock_ns, "expires_at_ns": expires_ns}
        )
        return ClaimResult(Claim.STARTED, token=now + lock_ns)

    def finish(
        self, tenant_id: int, key: str, fingerprint: str, token: int, response: StoredResponse
    ) -> None:
        """Store the response of a claimed request (its claim's ``token``); later requests
        with the key replay it. A claim taken over since stores nothing."""
        self.finish_many([(tenant_id, key, fingerprint, token, response)])

    def finish_many(self, done: Sequence[Finished]) -> None:
        """``finish`` for each ``(tenant_id, key, fingerprint, token, response)``, in one
        transaction (the records locked in ``(tenant_id, key)`` order, as ``begin_many``
        does)."""
        if not done:
            return
        with self.engine.begin() as conn:
            conn.execute(
                _FINISH,
                [
                    {
                        "w_tenant_id": tenant_id,
                        "w_key": key,
                        "w_fingerprint": fingerprint,
                        "w_token": token,
                        "status_code": response.status_code,
                        "content_type": response.content_type[:64],
                        "body": response.body,
                    }
                    for tenant_id, key, fingerprint, token, response in (
                        done[i] for i in _in_key_order(done)
                    )
                ],
            )

    def release(self, tenant_id: int, key: str, fingerprint: str, token: int) -> None:
        """Give a claimed key back without a result (the request failed before it changed
        anything, or on a server error): the client may retry with the same key at once. A
        claim taken over since (``token`` no longer its) is left to the request that took
        it."""
        claim = {"w_tenant_id": tenant_id, "w_key": key, "w_fingerprint": fingerprint}
        with self.engine.begin() as conn:
            conn.execute(_RELEASE, {**claim, "w_token": token})

    def purge_expired(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired records (the oldest first, found by the expiry
        index), in one statement; the number deleted. On PostgreSQL the records a request
        holds (it is taking one over) are skipped, not waited for (see the module's
        description): fewer than ``limit`` may go while more are expired."""
        with self.engine.begin() as conn:
            return self._purge_in(conn, limit)

    def _purge_in(self, conn: sa.Connection, limit: int) -> int:
        statement = _PURGE_SKIP_LOCKED if conn.dialect.name == "postgresql" else _PURGE
        deleted = conn.execute(statement, {"now": self.clock.now_ns(), "limit": limit}).rowcount
        return int(deleted)


def _in_key_order(items: Sequence[tuple[int, str, str]] | Sequence[Finished]) -> list[int]:
    """The positions of ``items`` by ``(tenant_id, key)`` (a stable sort: the same key keeps
    the group's order), the one order in which transactions lock several records."""
    return sorted(range(len(items)), key=lambda i: (items[i][0], items[i][1]))
