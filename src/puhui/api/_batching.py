"""Keeping the SQL store off each request's critical path.

- ``AuditBatcher``: concurrent requests' audit entries are written together, one
  transaction (one sync of the store) per group: a request still waits until its entry is
  durable, but a hundred requests share one commit (group commit, as the ledger does). A
  group the store refuses is written again one entry at a time, so an entry it cannot take
  fails its own request only.
- ``GroupCall``: the same for any store call that can take a group (the idempotency
  records' ``begin_many`` / ``finish_many``): one transaction per group, one answer each.
- ``PrincipalCache``: an authenticated token is remembered for ``ttl_s`` (1 s by default),
  so a busy key costs one SQL read per second, not one per request. A key revoked elsewhere
  (the CLI, another server) stops working within ``ttl_s``. A refused token (unknown,
  malformed, revoked, of a suspended tenant) is remembered as refused for ``ttl_s`` too, at
  most ``principals_refused_max`` of them: a client repeating a bad token costs one lookup
  per ``ttl_s``, and a spray of distinct bad tokens cannot grow the memory past the bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from puhui.clock import Clock
from puhui.platform import AuditLog, AuditRecord, InvalidApiKeyError, Principal, Tenants

NS_PER_S = 1_000_000_000

audit_batch_entries_max = 1024
"""Most audit entries written in one transaction (unit: entries)."""

principals_cached_max = 10_000
"""Most tokens remembered at once (unit: tokens); the cache is emptied when full."""

principals_refused_max = 10_000
"""Most refused tokens remembered at once (unit: tokens; a few hundred bytes each); beyond
it the oldest is forgotten first."""


@dataclass
class _LoopState:
    pending: list[tuple[AuditRecord, asyncio.Future[None]]] = field(default_factory=list)
    flushing: bool = False
    task: asyncio.Task[None] | None = None
    """The running flush (kept referenced so it is not collected mid-way)."""


class AuditBatcher:
    """Group commit of audit entries (see the module's description)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._waiting = 0
        # One state per event loop: futures belong to the loop that made them.
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    def depth(self) -> int:
        """Requests waiting for their entry to be stored (queued or being written)."""
        return self._waiting

    async def append(self, record: AuditRecord) -> None:
        """Return once ``record`` is in the audit chain (durably)."""
        self._waiting += 1
        try:
            await self._append(record)
        finally:
            self._waiting -= 1

    async def _append(self, record: AuditRecord) -> None:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        done: asyncio.Future[None] = loop.create_future()
        state.pending.append((record, done))
        if not state.flushing:
            state.flushing = True
            state.task = loop.create_task(self._flush(state))
        await done

    async def _flush(self, state: _LoopState) -> None:
        try:
            while state.pending:
                batch = state.pending[:audit_batch_entries_max]
                del state.pending[: len(batch)]
                try:
                    await asyncio.to_thread(self.audit.append_many, [r for r, _ in batch])
                except Exception as error:
                    if len(batch) > 1:
                        # One entry the store refuses must not fail every request of the
                        # group: each again on its own (a store that is down fails each).
                        await self._one_by_one(batch)
                    else:
                        _fail(batch, error)
                    continue
                except BaseException as error:  # every waiter of the group learns of it
                    _fail(batch, error)
                    raise
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            state.flushing = False

    async def _one_by_one(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]]) -> None:
        for record, done in batch:
            try:
                await asyncio.to_thread(self.audit.append_many, [record])
            except Exception as error:
                _fail([(record, done)], error)
            else:
                if not done.done():
                    done.set_result(None)


def _fail(batch: Sequence[tuple[AuditRecord, asyncio.Future[None]]], error: BaseException) -> None:
    """Every waiter of ``batch`` still waiting learns of ``error``."""
    for _, done in batch:
        if not done.done():
            done.set_exception(error)


T = TypeVar("T")
R = TypeVar("R")

group_calls_max = 1024
"""Most requests' items in one grouped store call (unit: items)."""


@dataclass
class _GroupState(Generic[T, R]):
    pending: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class GroupCall(Generic[T, R]):
    """``await call(item)`` → ``many([items...])[i]``: the items of concurrent callers go to
    the store together, in a worker thread, while the next group fills up."""

    def __init__(self, many: Callable[[Sequence[T]], Sequence[R]]) -> None:
        self.many = many
        self._waiting = 0
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupState[T, R]] = (
            weakref.WeakKeyDictionary()
        )

    def depth(self) -> int:
        """Callers waiting for their answer (queued or in the group being run)."""
        return self._waiting

    async def __call__(self, item: T) -> R:
        self._waiting += 1
        try:
            return await self._call(item)
        finally:
            self._waiting -= 1

    async def _call(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _GroupState()
        done: asyncio.Future[R] = loop.create_future()
        state.pending.append((item, done))
        if state.task is None or state.task.done():
            state.task = loop.create_task(self._drain(state))
        return await done

    async def _drain(self, state: _GroupState[T, R]) -> None:
        while state.pending:
            group = state.pending[:group_calls_max]
            del state.pending[: len(group)]
            try:
                answers = await asyncio.to_thread(self.many, [item for item, _ in group])
            except BaseException as error:  # every caller of the group learns of it
                for _, done in group:
                    if not done.done():
                        done.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, done), answer in zip(group, answers, strict=True):
                if not done.done():
                    done.set_result(answer)


class PrincipalCache:
    """Authenticated tokens, and refused ones, remembered briefly (see the module's
    description).

    Concurrent requests that miss the cache with the same token share one store lookup
    (single flight): when a busy key's entry expires, the requests in flight do not each
    take a worker thread and a SQL read (behind the store's writer) to learn the same
    answer; that holds for a refusal as for a principal. A refusal
    (``InvalidApiKeyError``) is remembered for ``ttl_s`` under the token's hash, and a
    remembered refusal raises an ``InvalidApiKeyError`` with the same message, so the answer
    (``401 api_key_invalid``, its body, audit and metrics) is the one a lookup gives. A store
    error is not remembered; each waiter gets its error.

    Why remembering a refusal is safe: a token is ``pk_<key id>_<secret>`` with 256 random
    bits of secret, shown only once the key is stored, so no request can carry a valid token
    before its key exists (guessing one is hopeless): an unknown token stays unknown. A
    revoked key is never valid again. Only a tenant suspended, then made active again
    elsewhere (the CLI, another server), is refused up to ``ttl_s`` longer here, as a
    revocation elsewhere is accepted up to ``ttl_s`` longer: the same bound either way."""

    def __init__(self, tenants: Tenants, clock: Clock, ttl_s: float) -> None:
        self.tenants = tenants
        self.clock = clock
        self.ttl_ns = int(ttl_s * NS_PER_S)
        self._cache: dict[bytes, tuple[Principal, int]] = {}
        self._refused: dict[bytes, tuple[str, int]] = {}
        """Refused tokens' message and expiry, oldest first (the order of insertion)."""
        self._lock = threading.Lock()
        # Lookups in flight, per event loop (a future belongs to the loop that made it).
        self._flights: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[bytes, asyncio.Future[Principal]]
        ] = weakref.WeakKeyDictionary()
        self._generation = 0
        """Bumped by ``forget``: a lookup begun before it is not remembered."""
        self.lookups = 0
        """Store lookups made so far (tests check that concurrent misses share one)."""

    async def authenticate(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if self.ttl_ns <= 0:
            self.lookups += 1
            return await asyncio.to_thread(self.tenants.authenticate, token)
        while True:
            now = self.clock.now_ns()
            with self._lock:
                hit = self._cache.get(digest)
                refused = self._refused.get(digest)
            if hit is not None and hit[1] > now:
                return hit[0]
            if refused is not None and refused[1] > now:
                raise InvalidApiKeyError(refused[0])
            loop = asyncio.get_running_loop()
            flights = self._flights.get(loop)
            if flights is None:
                flights = self._flights[loop] = {}
            flight = flights.get(digest)
            if flight is None:
                return await self._look_up(token, digest, now, flights)
            try:  # the same token is being looked up: share its answer
                return await asyncio.shield(flight)
            except asyncio.CancelledError:
                if not flight.cancelled():
                    raise  # this request was cancelled
                # the request that looked it up was cancelled: look again

    async def _look_up(
        self,
        token: str,
        digest: bytes,
        now: int,
        flights: dict[bytes, asyncio.Future[Principal]],
    ) -> Principal:
        flight = flights[digest] = asyncio.get_running_loop().create_future()
        generation = self._generation
        try:
            self.lookups += 1
            principal = await asyncio.to_thread(self.tenants.authenticate, token)
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as error:
            if type(error) is InvalidApiKeyError and not error.details:
                self._remember_refusal(digest, error.message, now, generation)
            flight.set_exception(error)
            flight.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            if flights.get(digest) is flight:
                del flights[digest]
        with self._lock:
            if generation == self._generation:  # not if forget() ran meanwhile
                if len(self._cache) >= principals_cached_max:
                    self._cache.clear()
                self._cache[digest] = (principal, now + self.ttl_ns)
                self._refused.pop(digest, None)
        flight.set_result(principal)
        return principal

    def _remember_refusal(self, digest: bytes, message: str, now: int, generation: int) -> None:
        """Remember ``digest`` as refused (with ``message``) until ``now + ttl``; the expired
        and, beyond ``principals_refused_max``, the oldest refusals are forgotten first."""
        with self._lock:
            if generation != self._generation:  # forget() ran meanwhile
                return
            self._cache.pop(digest, None)
            refused = self._refused
            refused.pop(digest, None)  # inserted again below: the newest
            while refused:
                oldest = next(iter(refused))
                if len(refused) < principals_refused_max and refused[oldest][1] > now:
                    break
                del refused[oldest]
            refused[digest] = (message, now + self.ttl_ns)

    def forget(self) -> None:
        """Drop every remembered token, authenticated or refused (after a revocation in this
        process): later requests look their key up again, and a lookup already in flight is
        not remembered."""
        with self._lock:
            self._cache.clear()
            self._refused.clear()
            self._generation += 1
        for flights in list(self._flights.values()):
            flights.clear()

    def refusals_remembered(self) -> int:
        """How many refused tokens are remembered now (expired ones until pushed out)."""
        return len(self._refused)
