"""Webhooks: tenants' endpoints, the event outbox, signed delivery with retries, dead letters
and replay.

**Outbox.** An event (``evt_…`` id, tenant, type, time, JSON data) is written by
``Webhooks.record(conn, ...)`` *in the caller's SQL transaction*, together with one delivery
row per enabled endpoint of the tenant that wants its type. So an event exists exactly when
the state change it reports committed: a rolled-back payment leaves no event, and a committed
one can never lose its event. ``watch_payments`` and ``watch_checkout`` hook the payments
service (``Payments._finish_hooks``) and checkout (``Checkout.on_change``); which tenant(s) an
event belongs to is answered by the injected ``tenant_of(conn, party_kind, party_id)``; a
party that belongs to no tenant produces no event.

**Delivery.** ``DeliveryWorker`` (asyncio, httpx2) claims due deliveries under a lease,
POSTs the event as JSON with ``Puhui-Event-Id``, ``Puhui-Timestamp`` and ``Puhui-Signature:
t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, and records the outcome: 2xx is delivered;
anything else (another status, a timeout, a refused connection) waits per ``RetrySchedule``
(exponential backoff with full jitter, capped) and after ``attempts_max`` attempts becomes a
dead letter. All state is in SQL and the time is the service's ``Clock``: a worker that dies
mid-attempt leaves a lease that runs out, and any worker then tries again (at-least-once;
receivers de-duplicate on the event id).

**Secrets.** An endpoint's signing secret (``whsec_`` + 256 random bits) is shown once, at
creation, and stored as it is. Unlike an API key, whose SHA-256 suffices to *check* a
presented secret, the HMAC must be *computed* with the secret on every delivery, so a hash
is of no use. Encrypting it with a key kept by the same server would only move the secret
next door; whoever reads the database should be assumed to read that key too. The secret is
never listed or logged again; a tenant that suspects a leak creates a new endpoint and
disables the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import ipaddress
import json
import logging
import random
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import httpx2
import sqlalchemy as sa

from puhui.clock import Clock, SystemClock
from puhui.errors import PuhuiError
from puhui.payments import Checkout, Payments
from puhui.store import platform as tables
from puhui.store import unindexed

from ._errors import PlatformError
from ._webhook_events import TenantOf, checkout_hook, operation_hook
from .model import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventType,
    RetrySchedule,
    check_destination,
    check_webhook_url,
    forbidden_address_reason,
    parse_event_types,
    signature_header,
    url_host,
    wants,
)
from .tenants import lock_tenant_for_creation

log = logging.getLogger("puhui.webhooks")

NS_PER_S: Final = 1_000_000_000
EVENT_ID_PREFIX: Final = "evt_"
ENDPOINT_ID_PREFIX: Final = "we_"
SECRET_PREFIX: Final = "whsec_"
last_error_chars_max: Final = 200
ENDPOINT_DISABLED: Final = "endpoint_disabled"
"""The ``last_error`` of deliveries left pending when their endpoint was disabled."""


class WebhookEndpointNotFoundError(PlatformError):
    """No such endpoint (or not one of this tenant's)."""

    code = "webhook_endpoint_not_found"


class WebhookEventNotFoundError(PlatformError):
    """No such event (or not one of this tenant's)."""

    code = "webhook_event_not_found"


class WebhookEndpointLimitError(PlatformError):
    """The tenant has as many enabled endpoints as allowed."""

    code = "webhook_endpoint_limit"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its next attempt (or in flight, under a lease)."""
    DELIVERED = "delivered"
    DEAD = "dead"
    """Every attempt failed: a dead letter, until replayed."""


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Limits of webhooks (units last in each name)."""

    retry: RetrySchedule = field(default_factory=RetrySchedule)
    lease_s: float = 60.0
    """How long an attempt in flight keeps its delivery from other workers; after a crash the
    delivery is tried again this long after it was claimed. Longer than ``request_timeout_s``."""
    request_timeout_s: float = 10.0
    """Longest one attempt may take, all of it (resolving, connecting, sending, the
    answer's head): beyond it the attempt failed (``TimeoutError``); an answer whose status
    is in counts, the rest of its body is not waited for."""
    deliveries_per_round_max: int = 64
    """Deliveries one worker round claims and sends concurrently."""
    endpoints_per_tenant_max: int = 16
    """Enabled endpoints a tenant may have."""
    response_bytes_max: int = 4096
    """Bytes of a receiver's answer that are read (the rest is ignored)."""
    event_retention_s: float = 30 * 24 * 3600.0
    """How long events are kept (listed, replayable); older ones are deleted unless one of
    their deliveries is still pending."""
    prune_every_s: float = 60.0
    """How often the worker deletes expired events."""
    prune_events_max: int = 1000
    """Events one pruning deletes at most; while it finds that many, the worker prunes
    again at its next round (not after ``prune_every_s``), so a backlog goes at up to this
    many a round."""
    loopback_allowed: bool = False
    """Development and tests only: accept endpoints on loopback addresses (127.0.0.0/8,
    ::1, names resolving there), over ``http://`` too. Off, every endpoint must be an
    ``https://`` URL whose host resolves to public addresses only (see ``check_destination``)."""
    resolve: Resolver | None = None
    """Host name → its IP addresses, when an endpoint is registered and before each delivery
    (default: the system's resolver, ``system_resolve``). Tests pass a fixed table."""

    def __post_init__(self) -> None:
        if not 0 < self.request_timeout_s < self.lease_s:
            raise ValueError("need 0 < request_timeout_s < lease_s")
        if self.deliveries_per_round_max < 1 or self.endpoints_per_tenant_max < 1:
            raise ValueError("limits must be positive")


Resolver = Callable[[str], Sequence[str]]
"""A host name → its IP addresses (none: it does not resolve)."""


def system_resolve(host: str) -> list[str]:
    """The addresses the system's resolver gives ``host`` (TCP), or none."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # gaierror is an OSError
        return []
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """An endpoint as listed: never its secret."""

    id: str
    tenant_id: int
    url: str
    event_types: frozenset[str]
    enabled: bool
    created_at_ns: int
    disabled_at_ns: int | None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str
    """``evt_`` + 32 hex digits: the receiver's de-duplication key."""
    seq: int
    """The outbox's key (deliveries refer to it); orders one transaction's events."""
    txid: int
    """The id of the transaction that wrote it on PostgreSQL (``pg_current_xact_id()``); on
    SQLite, which has one writer, a number that ascends with ``seq``; 0 for events written
    before it was kept."""
    tenant_id: int
    type: str
    created_at_ns: int
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        """What is POSTed (and listed): id, type, created_at (RFC 3339, UTC), data."""
        return {
            "id": self.id,
            "type": self.type,
            "created_at": rfc3339(self.created_at_ns),
            "data": self.data,
        }

    @property
    def position(self) -> tuple[int, int]:
        """Where it is in the listing, ``(txid, seq)``: ``Webhooks.events(after=...)``."""
        return (self.txid, self.seq)

    def body(self) -> bytes:
        """The exact bytes POSTed: compact JSON with sorted keys (the same on every attempt)."""
        return json.dumps(self.envelope(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event to one endpoint."""

    id: int
    event_id: str
    event_type: str
    endpoint_id: str
    state: DeliveryState
    attempts: int
    next_attempt_at_ns: int
    last_status: int | None
    """The receiver's HTTP status of the last attempt (None: no answer)."""
    last_error: str | None
    last_attempt_at_ns: int | None
    delivered_at_ns: int | None


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    """A delivery a worker holds under ``lease`` for one attempt."""

    delivery_id: int
    lease: str
    attempts: int
    """Attempts including this one."""
    url: str
    secret: str
    event_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class AttemptResult:
    claim: DeliveryClaim
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def rfc3339(at_ns: int) -> str:
    seconds, ns = divmod(at_ns, NS_PER_S)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


def _endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=str(row.id),
        tenant_id=int(row.tenant_id),
        url=str(row.url),
        event_types=frozenset(str(row.event_types).split()),
        enabled=bool(row.enabled),
        created_at_ns=int(row.created_at_ns),
        disabled_at_ns=None if row.disabled_at_ns is None else int(row.disabled_at_ns),
    )


def _event(row: Any) -> WebhookEvent:
    return WebhookEvent(
        id=str(row.id),
        seq=int(row.seq),
        txid=int(row.txid),
        tenant_id=int(row.tenant_id),
        type=str(row.type),
        created_at_ns=int(row.created_at_ns),
        data=json.loads(row.payload),
    )


_jitter_source = random.SystemRandom()

_E = tables.webhook_endpoints
_V = tables.webhook_events
_D = tables.webhook_deliveries
_DELIVERY_IDENTITY = frozenset({"event_seq", "endpoint_id", "tenant_id", "created_at_ns"})
"""The columns of a delivery a replay keeps (``Webhooks.replay``)."""

_CURRENT_TXID = sa.cast(sa.cast(sa.func.pg_current_xact_id(), sa.Text), sa.BigInteger)
"""PostgreSQL: this transaction's id (``xid8``, 64 bits with its epoch: it never wraps)."""
_FINISHED_BELOW = sa.cast(
    sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text), sa.BigInteger
)
"""PostgreSQL: the oldest transaction id still running when the statement's snapshot was
taken (the snapshot's xmin). Every transaction below it has committed or rolled back, and
the statement sees all that committed; a transaction that takes its id later gets a larger
one."""
_NEXT_SEQ = sa.select(sa.func.coalesce(sa.func.max(_V.c.seq), 0) + 1).scalar_subquery()
"""SQLite's ``txid``: one more than the largest ``seq`` before the writing statement. One
writer at a time, so it ascends with ``seq`` (the listing's order is ``seq``'s), and unlike a
constant it lets the listing seek to a position in the index instead of scanning to it."""
_INSERT_EVENTS = {
    "postgresql": _V.insert().values(txid=_CURRENT_TXID).returning(_V.c.seq, _V.c.id),
    "sqlite": _V.insert().values(txid=_NEXT_SEQ).returning(_V.c.seq, _V.c.id),
}
"""Events of the outbox, by dialect (parameters: a list of rows, their columns but ``seq``
and ``txid``); answers each one's ``seq`` and ``id``."""
_ENABLED_ENDPOINTS = sa.select(_E.c.id, _E.c.event_types).where(
    _E.c.tenant_id == sa.bindparam("tenant_id"), _E.c.enabled.is_(True)
)
"""A tenant's enabled endpoints (parameter: ``tenant_id``)."""


class Webhooks:
    """Endpoints, the outbox and the deliveries' state, in the SQL store."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Clock | None = None,
        options: WebhookOptions | None = None,
        new_id: Callable[[int], str] = secrets.token_hex,
    ) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()
        self.options = options or WebhookOptions()
        self._token = new_id

    # --- endpoints ------------------------------------------------------------------------------

    def addresses(self, host: str) -> list[str]:
        """The IP addresses of a URL's host: itself if it is an IP literal, else resolved."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        return list((self.options.resolve or system_resolve)(host))

    def check_destination(self, url: str) -> None:
        """Refuse (``webhook_url_insecure``, ``webhook_url_forbidden``,
        ``webhook_url_unresolvable``) a URL Puhui must not POST to, as its host resolves now:
        called when an endpoint is registered and again before every delivery attempt (DNS
        may have changed since)."""
        check_destination(
            url,
            self.addresses(url_host(url)),
            loopback_allowed=self.options.loopback_allowed,
        )

    def create_endpoint(
        self, tenant_id: int, url: str, event_types: Iterable[str]
    ) -> tuple[WebhookEndpoint, str]:
        """A new enabled endpoint and its signing secret: the only time the secret is shown."""
        url = check_webhook_url(url)
        types = parse_event_types(event_types)
        self.check_destination(url)
        endpoint_id = ENDPOINT_ID_PREFIX + self._token(8)
        secret = SECRET_PREFIX + self._token(32)
        with self.engine.begin() as conn:
            # The tenant's row locked first: two creations at once would each count the
            # other's endpoint out and both go in; and the creation time, taken under the
            # lock, puts the endpoint after every cursor of the list handed out before.
            now = lock_tenant_for_creation(conn, _E, tenant_id, self.clock)
            enabled = conn.execute(
                sa.select(sa.func.count())
                .select_from(_E)
                .where(_E.c.tenant_id == tenant_id, _E.c.enabled.is_(True))
            ).scalar_one()
            if enabled >= self.options.endpoints_per_tenant_max:
                raise WebhookEndpointLimitError(
                    f"at most {self.options.endpoints_per_tenant_max} enabled endpoints; "
                    "disable one first"
                )
            conn.execute(
                _E.insert().values(
                    id=endpoint_id,
                    tenant_id=tenant_id,
                    url=url,
                    event_types=" ".join(sorted(types)),
                    secret=secret,
                    enabled=True,
                    created_at_ns=now,
                    disabled_at_ns=None,
                )
            )
        endpoint = WebhookEndpoint(endpoint_id, tenant_id, url, types, True, now, None)
        return endpoint, secret

    def endpoints(
        self, tenant_id: int, *, after: tuple[int, str] | None = None, limit: int = 100
    ) -> list[WebhookEndpoint]:
        """The tenant's endpoints (disabled ones too), oldest first, after the endpoint whose
        ``(created_at_ns, id)`` is ``after``."""
        query = sa.select(_E).where(_E.c.tenant_id == tenant_id)
        if after is not None:
            at, endpoint_id = after
            query = query.where(
                sa.or_(
                    _E.c.created_at_ns > at,
                    sa.and_(_E.c.created_at_ns == at, _E.c.id > endpoint_id),
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(_E.c.created_at_ns, _E.c.id).limit(limit)).all()
        return [_endpoint(row) for row in rows]

    def endpoint(self, tenant_id: int, endpoint_id: str) -> WebhookEndpoint:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_E).where(_E.c.id == endpoint_id, _E.c.tenant_id == tenant_id)
            ).first()
        if row is None:
            raise WebhookEndpointNotFoundError(f"no endpoint {endpoint_id[:40]!r}")
        return _endpoint(row)

    def disable_endpoint(self, tenant_id: int, endpoint_id: str) -> WebhookEndpoint:
        """Stop delivering to the endpoint (again is fine). Its pending deliveries become dead
        letters (``last_error`` ``endpoint_disabled``): listed, and replayable to the
        tenant's enabled endpoints. An attempt in flight that succeeds is still recorded as
        delivered."""
        now = self.clock.now_ns()
        with self.engine.begin() as conn:
            done = conn.execute(
                _E.update()
                .where(_E.c.id == endpoint_id, _E.c.tenant_id == tenant_id, _E.c.enabled.is_(True))
                .values(enabled=False, disabled_at_ns=now)
            )
            if done.rowcount == 1:
                conn.execute(
                    _D.update()
                    .where(
                        _D.c.endpoint_id == endpoint_id,
                        _D.c.state == str(DeliveryState.PENDING),
                    )
                    .values(state=str(DeliveryState.DEAD), last_error=ENDPOINT_DISABLED)
                )
        return self.endpoint(tenant_id, endpoint_id)

    # --- the outbox -----------------------------------------------------------------------------

    def record(
        self, conn: sa.Connection, tenant_id: int, event_type: EventType, data: dict[str, Any]
    ) -> str:
        """Write an event of ``tenant_id`` and its deliveries in the caller's transaction
        ``conn``; returns its id."""
        return self.record_many(conn, [(tenant_id, event_type, data)])[0]

    def record_many(
        self, conn: sa.Connection, events: Sequence[tuple[int, EventType, dict[str, Any]]]
    ) -> list[str]:
        """``record`` for each of ``events`` (tenant, type, data) at once, in the caller's
        transaction ``conn``: their ``seq`` ascend in the order given; returns their ids.
        One statement writes the events, one reads each tenant's endpoints, one writes the
        deliveries (a payments batch's outcomes took two statements per event before).

        Each event also keeps its transaction's id (``txid``) for the listing, which must
        not pass an event that commits later (see ``events``). Writers take no lock for it:
        on PostgreSQL, transactions that record events commit concurrently."""
        if not events:
            return []
        now = self.clock.now_ns()
        rows: list[dict[str, Any]] = [
            {
                "id": EVENT_ID_PREFIX + self._token(16),
                "tenant_id": tenant_id,
                "type": str(event_type),
                "created_at_ns": now,
                "payload": json.dumps(data, sort_keys=True, separators=(",", ":")),
            }
            for tenant_id, event_type, data in events
        ]
        # Statements built once (module constants): SQLAlchemy compiles and keys them once,
        # not per event (building them here cost more than running them).
        # One multi-row INSERT, its rows in the order given (as their seq ascend).
        insert = _INSERT_EVENTS[conn.dialect.name]
        seq_of = {str(r.id): r.seq for r in conn.execute(insert, rows)}
        endpoints_of: dict[int, list[tuple[str, frozenset[str]]]] = {}
        deliveries: list[dict[str, Any]] = []
        for row in rows:
            tenant_id = row["tenant_id"]
            endpoints = endpoints_of.get(tenant_id)
            if endpoints is None:
                endpoints = endpoints_of[tenant_id] = [
                    (str(e.id), frozenset(str(e.event_types).split()))
                    for e in conn.execute(_ENABLED_ENDPOINTS, {"tenant_id": tenant_id})
                ]
            deliveries.extend(
                self._new_delivery(int(seq_of[row["id"]]), endpoint_id, tenant_id, now)
                for endpoint_id, types in endpoints
                if wants(types, row["type"])
            )
        if deliveries:
            conn.execute(_D.insert(), deliveries)
        return [row["id"] for row in rows]

    @staticmethod
    def _new_delivery(seq: int, endpoint_id: str, tenant_id: int, now: int) -> dict[str, Any]:
        return {
            "event_seq": seq,
            "endpoint_id": endpoint_id,
            "tenant_id": tenant_id,
            "state": str(DeliveryState.PENDING),
            "attempts": 0,
            "next_attempt_at_ns": now,
            "lease": None,
            "last_status": None,
            "last_error": None,
            "last_attempt_at_ns": None,
            "delivered_at_ns": None,
            "created_at_ns": now,
        }

    def events(
        self,
        tenant_id: int,
        *,
        after: tuple[int, int] = (0, 0),
        limit: int = 100,
        event_type: str | None = None,
    ) -> list[WebhookEvent]:
        """The tenant's events after the position ``after`` (an event's ``position``,
        ``(txid, seq)``), in that order: commit order, as far as a poller can tell.

        A poller pages with the last position it got and never passes an event that
        commits later. ``seq`` alone could not do that: it is drawn at INSERT, and on
        PostgreSQL a transaction that drew 10 may commit after one that drew 11. So on
        PostgreSQL only events of transactions below the snapshot's xmin are listed (all of
        those have ended, and any transaction still to commit has a larger id, so it lists
        after every position handed out), by their transaction then ``seq``. The price: an
        event is listed only once every transaction that took its id before the event's
        own has ended, so one left open anywhere on the server holds the listing back (not
        the deliveries). SQLite has one writer at a time: ``txid`` ascends with ``seq``,
        the order is ``seq``'s. Events written before ``txid`` was kept have txid 0: they
        come first, in ``seq`` order (commit order then: their writers took a lock)."""
        position = sa.tuple_(_V.c.txid, _V.c.seq)
        query = (
            sa.select(_V)
            .where(_V.c.tenant_id == tenant_id, position > sa.tuple_(*after))
            .order_by(_V.c.txid, _V.c.seq)
            .limit(limit)
        )
        if self.engine.dialect.name == "postgresql":
            query = query.where(_V.c.txid < _FINISHED_BELOW)
        if event_type is not None:
            query = query.where(_V.c.type == event_type)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_event(row) for row in rows]

    def event(self, tenant_id: int, event_id: str) -> WebhookEvent:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_V).where(_V.c.id == event_id, _V.c.tenant_id == tenant_id)
            ).first()
        if row is None:
            raise WebhookEventNotFoundError(f"no event {event_id[:40]!r}")
        return _event(row)

    def _deliveries_query(self) -> sa.Select[Any]:
        return sa.select(_D, _V.c.id.label("event_id"), _V.c.type.label("event_type")).join(
            _V, _V.c.seq == _D.c.event_seq
        )

    @staticmethod
    def _delivery(row: Any) -> WebhookDelivery:
        return WebhookDelivery(
            id=int(row.id),
            event_id=str(row.event_id),
            event_type=str(row.event_type),
            endpoint_id=str(row.endpoint_id),
            state=DeliveryState(row.state),
            attempts=int(row.attempts),
            next_attempt_at_ns=int(row.next_attempt_at_ns),
            last_status=row.last_status,
            last_error=row.last_error,
            last_attempt_at_ns=row.last_attempt_at_ns,
            delivered_at_ns=row.delivered_at_ns,
        )

    def deliveries(self, tenant_id: int, event_id: str) -> list[WebhookDelivery]:
        """The deliveries of one of the tenant's events, one per endpoint."""
        event = self.event(tenant_id, event_id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                self._deliveries_query().where(_D.c.event_seq == event.seq).order_by(_D.c.id)
            ).all()
        return [self._delivery(row) for row in rows]

    def dead_letters(
        self, tenant_id: int, *, after_id: int = 0, limit: int = 100
    ) -> list[WebhookDelivery]:
        """The tenant's deliveries that gave up, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                self._deliveries_query()
                .where(
                    _D.c.tenant_id == tenant_id,
                    _D.c.state == str(DeliveryState.DEAD),
                    _D.c.id > after_id,
                )
                .order_by(_D.c.id)
                .limit(limit)
            ).all()
        return [self._delivery(row) for row in rows]

    def replay(self, tenant_id: int, event_id: str) -> int:
        """Deliver one of the tenant's events again to each of its enabled endpoints that
        wants it (delivered, dead or pending alike: attempts start again from zero, due now,
        and the delivery shows nothing of the attempts before: no last status or error, not
        delivered).
        Returns how many deliveries were queued.

        The event is read under a share lock (PostgreSQL: ``FOR KEY SHARE``) that ``prune``
        does not wait for but skips: an event being replayed is not pruned, and one being
        pruned is waited for and then not found (``webhook_event_not_found``). Without it a
        replay could queue a delivery the pruning then deleted, or insert one for an event
        the pruning had just deleted (a foreign-key violation: a 500)."""
        now = self.clock.now_ns()
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(_V.c.seq, _V.c.type)
                .where(_V.c.id == event_id, _V.c.tenant_id == tenant_id)
                .with_for_update(read=True, key_share=True)
            ).first()
            if row is None:
                raise WebhookEventNotFoundError(f"no event {event_id[:40]!r}")
            endpoints = conn.execute(
                sa.select(_E.c.id, _E.c.event_types).where(
                    _E.c.tenant_id == tenant_id, _E.c.enabled.is_(True)
                )
            ).all()
            queued = 0
            for endpoint in endpoints:
                if not wants(frozenset(str(endpoint.event_types).split()), str(row.type)):
                    continue
                fresh = self._new_delivery(int(row.seq), str(endpoint.id), tenant_id, now)
                done = conn.execute(
                    _D.update()
                    .where(_D.c.event_seq == row.seq, _D.c.endpoint_id == endpoint.id)
                    # as a new delivery: nothing of the attempts before it (its identity and
                    # creation time kept)
                    .values({k: v for k, v in fresh.items() if k not in _DELIVERY_IDENTITY})
                )
                if done.rowcount == 0:
                    conn.execute(_D.insert().values(**fresh))
                queued += 1
        return queued

    # --- the worker's side ----------------------------------------------------------------------

    def prune(self) -> int:
        """Delete up to ``prune_events_max`` events older than ``event_retention_s`` whose
        deliveries are all done (delivered or dead), with those deliveries, but never the
        store's newest event. Returns how many events went.

        Against a concurrent ``replay`` (PostgreSQL; SQLite runs one writer at a time): the
        old events are locked as they are chosen (``FOR UPDATE SKIP LOCKED``: one a replay
        holds is skipped, not waited for, and a replay that comes later waits for this
        transaction and finds the event gone). A replay that committed just before the
        lock is still seen: a delivery is deleted only if it is not pending, read again
        when deleted, and an event only if no delivery is left (both statements see what
        committed before they began). A delivery queued again keeps its event."""
        cutoff = self.clock.now_ns() - int(self.options.event_retention_s * NS_PER_S)
        # the event's own deliveries by their (event_seq, …) key, not every pending delivery
        # of the store by the state index for each old event
        pending = sa.exists().where(
            _D.c.event_seq == _V.c.seq, unindexed(_D.c.state) == str(DeliveryState.PENDING)
        )
        # The newest event of the store is kept, however old: on SQLite a new event's seq
        # (and txid) is the largest one plus one, so deleting them all would hand out seqs
        # again, and a poller past them would skip the new events.
        newest = sa.select(sa.func.max(_V.c.seq)).scalar_subquery()
        with self.engine.begin() as conn:
            seqs = list(
                conn.execute(
                    sa.select(_V.c.seq)
                    .where(_V.c.created_at_ns < cutoff, ~pending, _V.c.seq < newest)
                    .order_by(_V.c.created_at_ns)
                    .limit(self.options.prune_events_max)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not seqs:
                return 0
            conn.execute(
                _D.delete().where(
                    _D.c.event_seq.in_(seqs), _D.c.state != str(DeliveryState.PENDING)
                )
            )
            left = sa.exists().where(_D.c.event_seq == _V.c.seq)
            deleted = conn.execute(_V.delete().where(_V.c.seq.in_(seqs), ~left)).rowcount
        return int(deleted)

    def backlog(self) -> int:
        """Deliveries waiting (pending), over all tenants."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(_D)
                    .where(_D.c.state == str(DeliveryState.PENDING))
                ).scalar_one()
            )

    def claim_due(self, limit: int | None = None) -> list[DeliveryClaim]:
        """Take up to ``limit`` due deliveries of enabled endpoints for one attempt each: the
        attempt is counted and the delivery leased (not due again until the lease ends), so
        that a crash mid-attempt costs one attempt and a lease, never the delivery.

        A due delivery of a disabled endpoint becomes a dead letter (``endpoint_disabled``)
        here instead: one queued by a transaction that read the endpoint as enabled and
        committed after ``disable_endpoint`` (which dead-letters only the deliveries it
        sees), or by a replay racing it. Left pending, it would never be tried nor listed,
        and would keep its event from pruning for ever."""
        limit = limit or self.options.deliveries_per_round_max
        now = self.clock.now_ns()
        lease_until = now + int(self.options.lease_s * NS_PER_S)
        claims: list[DeliveryClaim] = []
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    _D.c.id,
                    _D.c.attempts,
                    _D.c.next_attempt_at_ns,
                    _E.c.url,
                    _E.c.secret,
                    _V.c.id.label("event_id"),
                    _V.c.seq.label("event_seq"),
                    _V.c.txid.label("event_txid"),
                    _V.c.tenant_id.label("event_tenant_id"),
                    _V.c.type.label("event_type"),
                    _V.c.created_at_ns.label("event_created_at_ns"),
                    _V.c.payload,
                    _E.c.enabled,
                )
                .join(_E, _E.c.id == _D.c.endpoint_id)
                .join(_V, _V.c.seq == _D.c.event_seq)
                .where(
                    _D.c.state == str(DeliveryState.PENDING),
                    _D.c.next_attempt_at_ns <= now,
                )
                .order_by(_D.c.next_attempt_at_ns, _D.c.id)
                .limit(limit)
            ).all()
            for row in rows:
                if not row.enabled:  # disabled after this delivery was queued
                    conn.execute(
                        _D.update()
                        .where(
                            _D.c.id == row.id,
                            _D.c.state == str(DeliveryState.PENDING),
                            _D.c.next_attempt_at_ns == row.next_attempt_at_ns,
                        )
                        .values(state=str(DeliveryState.DEAD), last_error=ENDPOINT_DISABLED)
                    )
                    continue
                lease = self._token(16)
                done = conn.execute(
                    _D.update()
                    .where(
                        _D.c.id == row.id,
                        _D.c.state == str(DeliveryState.PENDING),
                        _D.c.next_attempt_at_ns == row.next_attempt_at_ns,
                    )
                    .values(
                        attempts=_D.c.attempts + 1,
                        next_attempt_at_ns=lease_until,
                        lease=lease,
                        last_attempt_at_ns=now,
                    )
                )
                if done.rowcount != 1:  # another worker took it
                    continue
                event = WebhookEvent(
                    id=str(row.event_id),
                    seq=int(row.event_seq),
                    txid=int(row.event_txid),
                    tenant_id=int(row.event_tenant_id),
                    type=str(row.event_type),
                    created_at_ns=int(row.event_created_at_ns),
                    data=json.loads(row.payload),
                )
                claims.append(
                    DeliveryClaim(
                        delivery_id=int(row.id),
                        lease=lease,
                        attempts=int(row.attempts) + 1,
                        url=str(row.url),
                        secret=str(row.secret),
                        event_id=event.id,
                        body=event.body(),
                    )
                )
        return claims

    def finish_attempts(
        self, results: Sequence[AttemptResult], unit_random: Callable[[], float]
    ) -> None:
        """Record attempts' outcomes (one transaction): delivered; or due again after the
        retry schedule's delay; or dead. A result whose lease is no longer the delivery's (it
        ran past its lease and another worker took over) changes nothing."""
        if not results:
            return
        now = self.clock.now_ns()
        retry = self.options.retry
        with self.engine.begin() as conn:
            for result in results:
                claim = result.claim
                where = (_D.c.id == claim.delivery_id, _D.c.lease == claim.lease)
                common = {
                    "lease": None,
                    "last_status": result.status,
                    "last_error": None
                    if result.error is None
                    else result.error[:last_error_chars_max],
                }
                if result.delivered:
                    values: dict[str, Any] = {
                        "state": str(DeliveryState.DELIVERED),
                        "delivered_at_ns": now,
                    }
                elif retry.exhausted(claim.attempts):
                    values = {"state": str(DeliveryState.DEAD)}
                else:
                    delay_s = retry.delay_s(claim.attempts, unit_random())
                    values = {"next_attempt_at_ns": now + int(delay_s * NS_PER_S)}
                conn.execute(_D.update().where(*where).values(**common, **values))

    # --- publishers -----------------------------------------------------------------------------

    def watch_payments(self, payments: Payments, tenant_of: TenantOf) -> None:
        """Record an event for every payments operation that ends (``payment.*``,
        ``transfer.*``, ``top_up.*``, ``withdrawal.*``, ``settlement.*``, ``bill.paid``), in
        the transaction that records its end, for each tenant its parties belong to."""
        payments._finish_hooks["webhooks"] = operation_hook(self, tenant_of)

    def watch_checkout(self, checkout: Checkout, tenant_of: TenantOf) -> None:
        """Record ``order.*`` and ``refund.*`` events, in the transaction of each change."""
        checkout.on_change("webhooks", checkout_hook(self, tenant_of))


def _status_error(status: int) -> str | None:
    """An attempt's ``last_error`` for the receiver's HTTP ``status`` (None: delivered)."""
    return None if 200 <= status < 300 else f"HTTP {status}"


class _RefusedPeerError(Exception):
    """The connection reached an address webhooks must not go to (raised inside the HTTP
    client's connect, before the request is sent)."""


class DeliveryWorker:
    """Sends due deliveries: ``async with DeliveryWorker(webhooks) as worker`` then
    ``await worker.run(stop)`` (or ``run_once()`` per round, as tests do)."""

    def __init__(
        self,
        webhooks: Webhooks,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        unit_random: Callable[[], float] | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.transport = transport
        self.unit_random = unit_random or _jitter_source.random
        """A number in [0, 1) per retry: the jitter (tests pin it)."""
        self._client: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx2.AsyncClient(
            transport=self.transport,
            timeout=self.webhooks.options.request_timeout_s,
            follow_redirects=False,  # a redirect is not a delivery
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_once(self) -> int:
        """One round: claim what is due, POST it all concurrently, record the outcomes.
        Returns how many attempts were made."""
        claims = await asyncio.to_thread(self.webhooks.claim_due)
        if not claims:
            return 0
        results = await asyncio.gather(*(self._attempt(c) for c in claims))
        await asyncio.to_thread(self.webhooks.finish_attempts, results, self.unit_random)
        failed = [r for r in results if not r.delivered]
        for result in failed:  # ids only: never the URL (it may carry a token) or the body
            log.warning(
                "webhook delivery attempt failed",
                extra={
                    "delivery_id": result.claim.delivery_id,
                    "event_id": result.claim.event_id,
                    "attempt": result.claim.attempts,
                    "status": result.status,
                    "error": result.error,
                },
            )
        log.info(
            "webhook delivery round",
            extra={"attempts": len(results), "failed": len(failed)},
        )
        return len(claims)

    async def _attempt(self, claim: DeliveryClaim) -> AttemptResult:
        timestamp = self.webhooks.clock.now_ns() // NS_PER_S
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Puhui-Webhooks/1",
            EVENT_ID_HEADER: claim.event_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature_header(claim.secret, timestamp, claim.body),
        }
        status: list[int] = []  # the receiver's status, once its answer's head is in
        try:
            # The whole attempt within ``request_timeout_s``: the client's own timeouts are
            # per read, so an answer trickled a byte at a time would otherwise hold the
            # attempt (and the round, every tenant's deliveries) past its lease for hours.
            async with asyncio.timeout(self.webhooks.options.request_timeout_s):
                return await self._send(claim, headers, status)
        except TimeoutError:
            if status:  # answered: the rest of the body is not waited for
                return AttemptResult(claim, status[0], _status_error(status[0]))
            return AttemptResult(claim, None, "TimeoutError")

    async def _send(
        self, claim: DeliveryClaim, headers: dict[str, str], status: list[int]
    ) -> AttemptResult:
        """One POST of ``claim`` (``_attempt`` bounds its time); appends the receiver's
        status to ``status`` as soon as its answer's head is in."""
        if self._client is None:
            raise RuntimeError("use the worker as 'async with DeliveryWorker(...) as worker'")
        try:  # again now: the host may resolve elsewhere than when it was registered
            await asyncio.to_thread(self.webhooks.check_destination, claim.url)
        except PuhuiError as refused:
            return AttemptResult(claim, None, refused.code)
        refused_peer: list[str] = []

        async def check_peer(event: str, info: dict[str, Any]) -> None:
            # The connection's real peer, before a byte of the request is sent: the name was
            # checked above, but it is resolved again to connect, and a hostile DNS server
            # may answer a private address the second time (DNS rebinding).
            if event != "connection.connect_tcp.complete":
                return
            stream = info.get("return_value")
            peer = stream.get_extra_info("server_addr") if stream is not None else None
            reason = (
                "no_peer_address"
                if not peer
                else forbidden_address_reason(
                    str(peer[0]), loopback_allowed=self.webhooks.options.loopback_allowed
                )
            )
            if reason is not None:
                refused_peer.append(reason)
                if stream is not None:
                    await stream.aclose()
                raise _RefusedPeerError(reason)

        try:
            async with self._client.stream(
                "POST",
                claim.url,
                content=claim.body,
                headers=headers,
                extensions={"trace": check_peer},
            ) as response:
                status.append(response.status_code)
                read = 0
                async for chunk in response.aiter_bytes():
                    read += len(chunk)
                    if read >= self.webhooks.options.response_bytes_max:
                        break
        except (httpx2.HTTPError, _RefusedPeerError) as exc:
            if refused_peer:  # however the client wrapped it
                return AttemptResult(claim, None, "webhook_url_forbidden")
            return AttemptResult(claim, None, type(exc).__name__)
        return AttemptResult(claim, status[0], _status_error(status[0]))

    async def run(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Rounds until ``stop`` is set: a full round starts the next at once, otherwise the
        worker waits ``interval_s``. A failing round (the store unreachable) is logged and
        tried again after the interval; nothing is lost, the state is in SQL."""
        clock, every_ns = self.webhooks.clock, int(self.webhooks.options.prune_every_s * NS_PER_S)
        pruned_at: int | None = None
        while not stop.is_set():
            try:
                made = await self.run_once()
                now = clock.now_ns()
                if pruned_at is None or now - pruned_at >= every_ns:
                    pruned = await asyncio.to_thread(self.webhooks.prune)
                    if pruned < self.webhooks.options.prune_events_max:
                        pruned_at = now  # caught up; else again next round, not in a minute
            except Exception:
                log.exception("webhook delivery round failed")
                made = 0
            if made >= self.webhooks.options.deliveries_per_round_max:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
