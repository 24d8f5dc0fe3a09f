"""Records of the API's ``Idempotency-Key`` header, with Stripe's semantics.

Per tenant, a key names one request (its fingerprint: method, path, body). The first request
with a key claims it (``in_progress``) and, when it ends, stores its response (``done``). Then:

- the same key with the same request gets the stored response back (``REPLAY``);
- the same key with a different request is refused (``REUSED``: 409 ``idempotency_key_reused``);
- the same key while the first is still running is refused (``IN_PROGRESS``: 409
  ``idempotency_request_in_progress``).

A request that crashed without finishing does not wedge its key: the claim lasts
``lock_timeout_s``; after that the next request with the key takes it over and runs. Records
are kept ``window_s`` (24 h by default) from the first request; afterwards the key is new again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

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
    _RECORD, _T.c.fingerprint == sa.bindparam("w_fingerprint"), _T.c.state == "in_progress"
)
_SELECT_FOR_CLAIM = sa.select(_T).where(_RECORD).with_for_update()
_DELETE = _T.delete().where(_RECORD)
_RELOCK = _T.update().where(_RECORD).values(locked_until_ns=sa.bindparam("locked_until_ns"))
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


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    response: StoredResponse | None = None


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
        commit for a group of concurrent requests). A key twice in the group: the second is
        ``IN_PROGRESS``, as it would be a moment later."""
        try:
            with self.engine.begin() as conn:
                return [self._begin_in(conn, *claim) for claim in claims]
        except sa.exc.IntegrityError:
            # A race with another server (PostgreSQL): sort it out one request at a time.
            return [self.begin(*claim) for claim in claims]

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
            conn.execute(_DELETE, record)
            row = None
        if row is None:
            conn.execute(
                _T.insert(),
                {
                    "tenant_id": tenant_id,
                    "key": key,
                    "fingerprint": fingerprint,
                    "state": "in_progress",
                    "created_at_ns": now,
                    "locked_until_ns": now + lock_ns,
                    "expires_at_ns": now + int(self.options.window_s * NS_PER_S),
                },
            )
            return ClaimResult(Claim.STARTED)
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
        # The claim outlived its timeout: its request is taken for crashed.
        conn.execute(_RELOCK, {**record, "locked_until_ns": now + lock_ns})
        return ClaimResult(Claim.STARTED)

    def finish(self, tenant_id: int, key: str, fingerprint: str, response: StoredResponse) -> None:
        """Store the response of a claimed request; later requests with the key replay it."""
        self.finish_many([(tenant_id, key, fingerprint, response)])

    def finish_many(self, done: Sequence[tuple[int, str, str, StoredResponse]]) -> None:
        """``finish`` for each ``(tenant_id, key, fingerprint, response)``, in one transaction."""
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
                        "status_code": response.status_code,
                        "content_type": response.content_type[:64],
                        "body": response.body,
                    }
                    for tenant_id, key, fingerprint, response in done
                ],
            )

    def release(self, tenant_id: int, key: str, fingerprint: str) -> None:
        """Give a claimed key back without a result (the request failed before it changed
        anything, or on a server error): the client may retry with the same key at once."""
        with self.engine.begin() as conn:
            conn.execute(
                _RELEASE, {"w_tenant_id": tenant_id, "w_key": key, "w_fingerprint": fingerprint}
            )

    def purge_expired(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired records (the oldest first, found by the expiry
        index), in one statement; the number deleted."""
        t = tables.idempotency
        now = self.clock.now_ns()
        expired = (
            sa.select(t.c.tenant_id, t.c.key)
            .where(t.c.expires_at_ns <= now)
            .order_by(t.c.expires_at_ns)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            deleted = conn.execute(
                t.delete().where(sa.tuple_(t.c.tenant_id, t.c.key).in_(expired))
            ).rowcount
        return int(deleted)
