"""The API's limits: options, the per-key token bucket, admission and cursor pagination (the
limits on request bodies are enforced by ``_bodies.BodyGuard``)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from puhui.clock import Clock
from puhui.errors import InvalidInputError
from puhui.platform import IdempotencyOptions, WebhookOptions

from ._problems import InvalidCursorError, RateLimitedError

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ApiOptions:
    """Limits of one API server (units last in each name)."""

    request_body_bytes_max: int = 8 * 1024 * 1024
    """Largest request body (a full batch of 8,189 events in JSON fits); a larger one is
    answered 413 ``request_too_large`` (``puhui.api._bodies``)."""
    request_bodies_bytes_max: int = 256 * 1024 * 1024
    """Most bytes of request bodies held at once, all requests together; a body that does
    not fit is answered 503 ``overloaded`` before it is read (``puhui.api._bodies``)."""
    request_body_timeout_s: float = 30.0
    """Longest time from a request's start until its whole body has arrived; then 408
    ``request_timeout`` and the connection is closed."""
    rate_per_key_per_s: float = 2000.0
    """Requests per second each API key may sustain (token bucket refill)."""
    rate_burst_requests: int = 4000
    """Requests a key may send at once before the sustained rate applies (bucket size)."""
    auth_cache_s: float = 1.0
    """How long an authenticated key is remembered: a key revoked elsewhere stops working
    within this time; a refused key is remembered as refused as long (0: check the store on
    every request)."""
    requests_in_flight_max: int = 1024
    """Most requests inside the authenticated routes' pipeline at once; one more is
    answered 503 ``overloaded`` with ``Retry-After`` before anything is done (each request
    holds its body and a place in the queues to the store and the ledger: without a bound,
    an overload grows them, and every answer's wait, without end)."""
    page_size_default: int = 100
    page_size_max: int = 1000
    idempotency: IdempotencyOptions = field(default_factory=IdempotencyOptions)
    webhooks: WebhookOptions = field(default_factory=WebhookOptions)
    webhook_delivery_interval_s: float | None = None
    """Run the webhook delivery worker on the app's lifespan, a round every this many seconds
    when there is little to do (None: this app does not deliver; ``puhui serve`` sets 1 s)."""
    housekeeping_interval_s: float | None = 60.0
    """Every this many seconds while the app serves (and once at start-up), delete the
    idempotency records whose window is over (``IdempotencyRecords.purge_expired``, at most
    ``housekeeping_rows_max`` a round). None: this app does not (another process does)."""
    housekeeping_rows_max: int = 100_000
    """Most expired records deleted in one round (in statements of 10,000)."""
    freeze_gc_on_start: bool = True
    """On the app's start-up, move every object that exists then out of the garbage
    collector's reach (``gc.freeze``; undone on shutdown): full collections then walk only
    what was made while serving. False leaves the collector alone (an embedding program
    that manages it itself)."""
    gc_young_objects: int | None = 50_000
    """While the app serves, the collector's youngest generation is collected when it has
    grown by this many objects (``gc.set_threshold``'s first value, 700 by default; the
    older generations' unchanged, the old value back on shutdown). The objects of the
    requests in flight kept the default one busy — ~2,600 collections in 10 s of 128
    concurrent payments, ~50 µs of CPU per request — for almost no garbage: a request's
    objects are freed by their reference counts. None leaves the threshold alone."""

    lean_routes: bool = True
    """Take the single-payment POSTs' well-formed requests past FastAPI's per-request
    machinery (``puhui.api._lean_routes``: the same answers, less CPU). False sends every
    request through the router (the tests compare both ways)."""

    def __post_init__(self) -> None:
        if (
            self.request_body_bytes_max <= 0
            or self.rate_burst_requests <= 0
            or self.requests_in_flight_max <= 0
        ):
            raise ValueError("limits must be positive")
        if self.request_bodies_bytes_max < self.request_body_bytes_max:
            raise ValueError("request_bodies_bytes_max must hold one largest body")
        if self.request_body_timeout_s <= 0:
            raise ValueError("request_body_timeout_s must be positive")
        if self.auth_cache_s < 0:
            raise ValueError("auth_cache_s must not be negative")
        if self.rate_per_key_per_s <= 0:
            raise ValueError("rate_per_key_per_s must be positive")
        if not 0 < self.page_size_default <= self.page_size_max:
            raise ValueError("need 0 < page_size_default <= page_size_max")
        if self.gc_young_objects is not None and self.gc_young_objects <= 0:
            raise ValueError("gc_young_objects must be positive")
        if self.webhook_delivery_interval_s is not None and self.webhook_delivery_interval_s <= 0:
            raise ValueError("webhook_delivery_interval_s must be positive")
        if self.housekeeping_interval_s is not None and self.housekeeping_interval_s <= 0:
            raise ValueError("housekeeping_interval_s must be positive")
        if self.housekeeping_rows_max <= 0:
            raise ValueError("housekeeping_rows_max must be positive")


rate_buckets_max = 100_000
"""Buckets kept before the full ones are dropped (unit: API keys; a full bucket is the same
as none: the key may send its whole burst)."""


class RateLimiter:
    """A token bucket per API key: ``burst`` tokens, refilled at ``rate_per_s``. Beyond
    ``rate_buckets_max`` keys, the buckets refilled to the brim are forgotten (revoked and
    idle keys' buckets were kept for ever)."""

    def __init__(self, clock: Clock, rate_per_s: float, burst: int) -> None:
        self.clock = clock
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, int]] = {}
        self._sweep_at = rate_buckets_max
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one token of ``key_id``'s bucket, or raise ``RateLimitedError`` with the
        whole seconds to wait (``retry_after_s``)."""
        now = self.clock.now_ns()
        with self._lock:
            tokens, last_ns = self._buckets.get(key_id, (float(self.burst), now))
            elapsed_s = max(0, now - last_ns) / NS_PER_S
            tokens = min(float(self.burst), tokens + elapsed_s * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait_s = max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
                raise RateLimitedError("too many requests for this key", retry_after_s=wait_s)
            self._buckets[key_id] = (tokens - 1.0, now)
            if len(self._buckets) > self._sweep_at:
                self._forget_full(now)

    def _forget_full(self, now: int) -> None:
        """Drop the buckets that have refilled to ``burst`` by ``now`` (lock held); the next
        sweep waits until there are twice as many left (or ``rate_buckets_max``)."""
        rate, burst = self.rate_per_s, self.burst
        self._buckets = {
            key: (tokens, last_ns)
            for key, (tokens, last_ns) in self._buckets.items()
            if tokens + max(0, now - last_ns) / NS_PER_S * rate < burst
        }
        self._sweep_at = max(rate_buckets_max, 2 * len(self._buckets))


# --- cursor pagination ------------------------------------------------------------------------


def encode_cursor(kind: str, position: dict[str, Any]) -> str:
    """An opaque cursor for the next page of list ``kind`` (URL-safe text)."""
    raw = json.dumps({"k": kind, **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursor_chars_max = 512
cursor_int_bits = 64
"""Numbers in a cursor are positions of a store column or ledger timestamps: signed 64-bit
(unit: bits). A crafted cursor with a larger one is ``cursor_invalid`` (the store would
refuse to bind it: a 500)."""


def page_size(options: ApiOptions, limit: int | None) -> int:
    """The page size a list route serves: ``limit``, else the default; over the maximum is
    ``invalid_input``."""
    page = limit or options.page_size_default
    if page > options.page_size_max:
        raise InvalidInputError(f"limit must be at most {options.page_size_max}")
    return page


def decode_cursor(kind: str, cursor: str) -> dict[str, Any]:
    """The position a cursor of list ``kind`` holds, or ``InvalidCursorError``."""
    if len(cursor) > cursor_chars_max:
        raise InvalidCursorError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursorError("malformed cursor") from None
    if not isinstance(data, dict) or data.pop("k", None) != kind:
        raise InvalidCursorError("this cursor belongs to another list")
    bound = 1 << (cursor_int_bits - 1)
    for value in data.values():
        if isinstance(value, int) and not -bound <= value < bound:
            raise InvalidCursorError("malformed cursor")
        if isinstance(value, str) and not _storable(value):
            raise InvalidCursorError("malformed cursor")
    return data


def _storable(text: str) -> bool:
    """Whether the store can compare ``text``: UTF-8 (JSON's ``\\ud800`` is a lone
    surrogate, which is not) without a NUL (PostgreSQL's text cannot hold one). A crafted
    cursor's text went to the store's query and failed there: a 500."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Admission:
    """Requests in flight through the pipeline, at most ``limit`` (used from the event
    loop's thread only)."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Take a place (True), or False when all ``limit`` are taken."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
