"""The durable ledger: one writer thread, group commit, journal before apply, snapshots.

Callers on any thread submit requests; the writer takes everything queued as one group,
stamps each request with its timestamps, appends the group to the journal (durable on
return), applies it to the engine and only then answers. Reads are served by the same thread
between groups, so every read sees a state that the journal can rebuild. On open, the newest
valid snapshot is loaded and the journal after it is replayed through the same kernels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

from puhui.clock import Clock, SystemClock

from . import _kernel as K
from . import _snapshot as S
from ._convert import (
    BATCH_EVENTS_MAX,
    account_results,
    accounts_to_array,
    array_to_accounts,
    array_to_balances,
    array_to_transfers,
    check_array,
    ids_to_words,
    transfer_results,
    transfers_to_array,
)
from ._engine import (
    KIND_ACCOUNTS,
    KIND_PULSE,
    KIND_TRANSFERS,
    Array,
    Engine,
    load_kernels_in_background,
)
from ._errors import (
    FieldOutOfRangeError,
    JournalCorruptError,
    LedgerClosedError,
    LedgerFailedError,
    LedgerLockedError,
    SnapshotCorruptError,
    TooMuchDataError,
    WrongTypeError,
)
from ._journal import Journal, checksum, decode_group, encode_group, open_journal
from ._os import lower_io_priority, write_durably
from ._types import (
    ACCOUNT_DTYPE,
    AMOUNT_MAX,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
)

T = TypeVar("T")

log = logging.getLogger("puhui.ledger")

TIMESTAMP_VALID_MAX = (1 << 63) - 1
"""TigerBeetle's ``TimestampRange.timestamp_max`` (the top bit of a u64 timestamp is its LSM
tombstone flag): a filter bound above it makes the filter invalid."""

PREFAULT_ROWS_MIN = 8192
"""Fewest rows the prefault thread maps in at a time (1 MiB of transfer rows)."""
WRITE_BACK_ROWS_MIN = 8192
"""Rows that accumulate before the writeback thread is woken (1 MiB of transfer rows)."""


@dataclass(frozen=True, slots=True)
class LedgerOptions:
    """Limits and intervals of one ledger (units last in each name)."""

    group_events_max: int = 8 * BATCH_EVENTS_MAX
    """Most events one group commit takes from the queue."""
    queue_requests_max: int = 4096
    """Most requests waiting for the writer; callers block beyond it (back-pressure)."""
    pulse_expiries_max: int = BATCH_EVENTS_MAX
    """Most pending transfers one pulse expires."""
    snapshot_interval_events: int = 4_000_000
    """Events journalled between background snapshots."""
    transfers_capacity: int = 1 << 16
    """Initial room for transfers (grows by itself)."""


class GroupStats:
    """The last ``window`` group commits: events, requests, apply/journal/total seconds."""

    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self.groups = 0
        self.events = 0
        self._data = np.zeros((window, 5), np.float64)

    def record(
        self, *, events: int, requests: int, apply_s: float, journal_s: float, total_s: float
    ) -> None:
        self._data[self.groups % self.window] = (events, requests, apply_s, journal_s, total_s)
        self.groups += 1
        self.events += events

    def recent(self) -> dict[str, np.ndarray[Any, Any]]:
        """Columns of the recorded groups, oldest first."""
        n = min(self.groups, self.window)
        rows = (
            np.roll(self._data, -(self.groups % self.window), axis=0)[-n:] if n else self._data[:0]
        )
        names = ("events", "requests", "apply_s", "journal_s", "total_s")
        return {name: rows[:, i].copy() for i, name in enumerate(names)}


@dataclass(slots=True)
class _Request:
    """One caller's request. Completed through ``future`` (threads) or ``waiter`` (asyncio)."""

    kind: int
    payload: Any
    future: Future[Any] | None = None
    waiter: tuple[asyncio.AbstractEventLoop, _Waiter] | None = None
    parts: Array | None = None
    """Several callers' batches joined into ``payload``: their boundaries (n + 1 offsets).
    Each part keeps its own timestamp and linked chains, as if submitted on its own."""
    done: bool = False


class _Split:
    """The waiter of a joined request: hands each caller its slice of the results."""

    __slots__ = ("futures", "parts")

    def __init__(self, futures: list[asyncio.Future[Any]], parts: Array) -> None:
        self.futures = futures
        self.parts = parts

    def done(self) -> bool:
        return False

    def set_exception(self, error: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(error)

    def set_result(self, results: Array) -> None:
        parts = self.parts.tolist()
        for k, future in enumerate(self.futures):
            if not future.done():  # a caller that gave up (cancelled) is skipped
                future.set_result(results[parts[k] : parts[k + 1]])


_Waiter = asyncio.Future[Any] | _Split


class _Coalescer:
    """Joins the batches that one event loop submits in one turn into one request.

    Coroutines woken by the same group commit all submit their next batch in the same loop
    turn; queuing them as one request leaves the writer one item to take, stamp and answer
    instead of dozens (TigerBeetle's clients batch the same way).
    """

    def __init__(self, ledger: Ledger, loop: asyncio.AbstractEventLoop) -> None:
        self.ledger = ledger
        self.loop = loop
        self.pending: list[tuple[int, Array, asyncio.Future[Any]]] = []
        self.scheduled = False

    def submit(self, kind: int, payload: Array) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.pending.append((kind, payload, future))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        limit = self.ledger._options.group_events_max
        i = 0
        while i < len(pending):
            kind, events = pending[i][0], pending[i][1].shape[0]
            j = i + 1
            while j < len(pending) and pending[j][0] == kind and events < limit:
                events += pending[j][1].shape[0]
                j += 1
            if j == i + 1:
                request = _Request(kind, pending[i][1], waiter=(self.loop, pending[i][2]))
            else:
                run = pending[i:j]
                parts = np.zeros(len(run) + 1, np.int64)
                np.cumsum([p[1].shape[0] for p in run], out=parts[1:])
                split = _Split([p[2] for p in run], parts)
                request = _Request(
                    kind, _join([p[1] for p in run]), waiter=(self.loop, split), parts=parts
                )
            self.ledger._enqueue_async(request)
            i = j


def _resolve(completions: list[tuple[_Waiter, Any, BaseException | None]]) -> None:
    """Runs in an event loop: complete every waiter of one group at once (one wake-up)."""
    for waiter, result, error in completions:
        if waiter.done():
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(result)


_READ = 0
_CLOSE = -1
_TICK = -2

READ_AHEAD_BYTES = 64 << 20
"""Most bytes of journal records read ahead of the replay (``_read_ahead``)."""


def _read_ahead(
    records: Iterator[tuple[int, bytes]], bytes_max: int = READ_AHEAD_BYTES
) -> Generator[tuple[int, bytes]]:
    """``records`` (a journal's ``read``), pulled on a thread of its own up to ``bytes_max``
    ahead of the caller: the journal's reads and checksums (which release the GIL) run while
    the kernels replay the records before (they release it too). The same records in the
    same order; an error of ``records`` (``journal_corrupt``) is raised after the records
    before it were taken, as without the thread."""
    cond = threading.Condition()
    items: collections.deque[tuple[int, bytes]] = collections.deque()
    held = 0
    finished = False
    stop = False
    error: BaseException | None = None

    def produce() -> None:
        nonlocal held, finished, error
        try:
            for op, payload in records:
                with cond:
                    while held >= bytes_max and not stop:
                        cond.wait()
                    if stop:
                        return
                    items.append((op, payload))
                    held += len(payload)
                    cond.notify_all()
        except BaseException as failure:  # handed to the caller, after the records before it
            error = failure
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            with cond:
                finished = True
                cond.notify_all()

    reader = threading.Thread(target=produce, name="puhui-ledger-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            with cond:
                while not items and not finished:
                    cond.wait()
                if not items:
                    if error is not None:
                        raise error
                    return
                op, payload = items.popleft()
                held -= len(payload)
                cond.notify_all()
            yield op, payload
    finally:
        with cond:
            stop = True
            cond.notify_all()
        reader.join()


class Ledger:
    """A TigerBeetle-compatible client over the embedded engine. Use ``puhui.ledger.open``."""

    def __init__(
        self,
        journal: Journal,
        state_dir: Path,
        *,
        clock: Clock | None = None,
        options: LedgerOptions | None = None,
    ) -> None:
        self._journal = journal
        self._state_dir = state_dir
        self._clock: Clock = clock or SystemClock()
        self._options = options or LedgerOptions()
        self._lock_fd = -1
        self._closed = False
        self._failure: BaseException | None = None
        self._fault: BaseException | None = None
        """Damage the background checks found (``_check_unread``): the writer stops on it."""
        self._checks_stop = threading.Event()
        self._queue: queue.Queue[_Request] = queue.Queue(self._options.queue_requests_max)
        self._completions: dict[
            asyncio.AbstractEventLoop, list[tuple[_Waiter, Any, BaseException | None]]
        ] = {}
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Coalescer] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_coalescer: _Coalescer | None = None
        """The coalescer of the loop that submitted last (most programs have one loop)."""
        self._op = 0
        self._op_checksum = 0
        """The checksum of journal record ``_op`` (0 for op 0): a snapshot records it."""
        self._journal_seconds = 0.0
        self.stats = GroupStats()
        """Group commit figures: sizes and how long the journal and the kernels took."""
        self._events_since_snapshot = 0
        self._snapshot_op = 0
        self._snapshot_thread: threading.Thread | None = None
        state_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        engine: Engine | None = None
        try:
            self._bind_state_dir()
            engine = self._engine = Engine(
                state_dir,
                transfers_capacity=self._options.transfers_capacity,
                # A group takes requests up to the limit, and the last one may be a joined
                # request of up to the limit plus one batch.
                group_rows_max=2 * self._options.group_events_max + 2 * BATCH_EVENTS_MAX,
            )
            self._recover()
            self._engine.warm_up()
        except BaseException:
            if engine is not None:  # its row files' descriptors and mappings, let go
                engine.close()
            self._release_lock()
            raise
        self._journal_thread = ThreadPoolExecutor(1, thread_name_prefix="puhui-ledger-journal")
        self._prefault_thread = ThreadPoolExecutor(1, thread_name_prefix="puhui-ledger-prefault")
        self._prefaulting: Future[None] | None = None
        # Everything the writer touches exists before it starts.
        self._write_back_wanted = threading.Event()
        self._write_back_signalled = 0
        self._write_back_stop = False
        self._write_back = threading.Thread(
            target=self._write_back_rows, name="puhui-ledger-writeback", daemon=True
        )
        self._write_back.start()
        self._writer = threading.Thread(target=self._run, name="puhui-ledger-writer", daemon=True)
        self._writer.start()
        # What opening did not read is checked now, beside the writer (``_check_unread``).
        self._checks = threading.Thread(
            target=self._check_unread, name="puhui-ledger-checks", daemon=True
        )
        self._checks.start()

    # --- lifecycle --------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        fd = os.open(self._state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            raise LedgerLockedError(
                f"ledger state {self._state_dir} is open in another process"
            ) from error
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _bind_state_dir(self) -> None:
        """Tie the state directory to this journal; state of another journal is discarded."""
        marker = self._state_dir / "journal-identity"
        if marker.exists() and marker.read_text().strip() == self._journal.identity:
            return
        if marker.exists():
            log.warning("state in %s belongs to another journal; rebuilding it", self._state_dir)
        S.remove_all(self._state_dir)
        for name in ("transfers.dat", "balances.dat"):
            with contextlib.suppress(FileNotFoundError):
                (self._state_dir / name).unlink()
        write_durably(marker, self._journal.identity.encode())

    def _recover(self) -> None:
        last_op = self._journal.last_op()
        start_op = 0
        start_checksum = 0
        S.remove_unfinished(self._state_dir)
        for path in S.list_snapshots(self._state_dir):
            try:
                manifest, image = S.read_snapshot(path)
            except SnapshotCorruptError as error:
                # Removed, not only skipped: the next snapshot of its op would otherwise be
                # taken as written already (``write_snapshot`` keeps an existing one).
                log.warning("removing snapshot: %s", error)
                S.remove_snapshot(path)
                continue
            op = manifest.op
            if (
                manifest.identity != self._journal.identity
                or op > last_op
                or self._record_checksum(op) != manifest.record_checksum
            ):
                # The state after a record this journal does not hold (it was restored from a
                # backup, or is a copy of the ledger that went its own way): never valid again,
                # even once the journal has an op of that number.
                log.warning("removing snapshot %s: it does not match the journal", path.name)
                S.remove_snapshot(path)
                continue
            count = int(image.counters[K.C_TRANSFERS])
            index = self._engine.check_rows(count, manifest.transfer_rows, manifest.balance_rows)
            if index is None:
                # A row file lost, replaced or damaged: the rows below the snapshot's count are
                # not its. The journal rebuilds them (from an older snapshot, or from scratch).
                log.warning(
                    "removing snapshot %s: the row files do not hold its rows (lost, replaced"
                    " or damaged); rebuilding them from the journal",
                    path.name,
                )
                S.remove_snapshot(path)
                continue
            self._engine.restore(image, index)
            start_op = op
            start_checksum = manifest.record_checksum
            break
        self._op = start_op
        self._op_checksum = start_checksum
        self._snapshot_op = start_op
        # Rows replayed go to their files from a helper thread while replay goes on (else the
        # replay writes each full ring slot itself, and waits for the disk each time).
        done = threading.Event()

        def move_rows() -> None:
            while not done.is_set():
                if not self._engine.write_back_rows():
                    done.wait(0.002)

        replayed = self._journal.bytes_after(start_op)
        if replayed:  # at most one transfer per 128 bytes of records: room made once
            self._engine.expect_transfers(replayed // TRANSFER_DTYPE.itemsize)
        mover = threading.Thread(target=move_rows, name="puhui-ledger-recovery-rows", daemon=True)
        mover.start()
        last: bytes | None = None
        try:
            for op, payload in _read_ahead(self._journal.read(start_op)):
                apply_record(self._engine, payload)
                self._op = op
                last = payload
        finally:
            done.set()
            mover.join()
        if last is not None:
            self._op_checksum = checksum(last)

    def _check_unread(self) -> None:
        """Check, at idle I/O priority, the journal records opening did not read (the file
        journal's segments wholly below its checkpoint's durable op: the snapshot restored
        counted them). Damage there is what opening reported before (``journal_corrupt``):
        the ledger stops (fail-stop, ``ledger_failed`` caused by it) at its next group, and
        the damage is logged; ``wait_for_checks`` raises it."""
        lower_io_priority()
        try:
            self._journal.check_unread(self._checks_stop)
        except JournalCorruptError as error:
            log.error("journal damaged below the snapshot; the ledger stops: %s", error)
            self._fault = error
            with contextlib.suppress(queue.Full):  # wake an idle writer; a busy one sees it
                self._queue.put_nowait(_Request(_TICK, None))

    def wait_for_checks(self, timeout: float | None = None) -> bool:
        """Wait for the checks opening left to the background (see ``_check_unread``);
        raises the damage they found. False if still running after ``timeout`` seconds."""
        self._checks.join(timeout)
        if self._fault is not None:
            raise self._fault
        return not self._checks.is_alive()

    def _record_checksum(self, op: int) -> int | None:
        """The checksum of the journal's record ``op`` (0 for op 0; None if missing)."""
        if op == 0:
            return 0
        known = self._journal.known_checksum(op)
        if known is not None:
            return known
        found = next(iter(self._journal.read(op - 1)), None)
        if found is None or found[0] != op:
            return None
        return checksum(found[1])

    def close(self) -> None:
        """Finish queued requests, write a final snapshot, release the journal and the lock."""
        if self._closed:
            return
        self._closed = True
        self._checks_stop.set()
        if self._writer.is_alive():
            self._queue.put(_Request(_CLOSE, None, future=Future()))
            self._writer.join()
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
        if self._failure is None and self._op > self._snapshot_op:
            self._write_snapshot(self._op, self._op_checksum, self._engine.image())
        self._journal_thread.shutdown()
        self._prefault_thread.shutdown()
        self._write_back_stop = True
        self._write_back_wanted.set()
        self._write_back.join()
        self._checks.join()
        self._engine.close()
        self._journal.close()
        self._release_lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the writer -------------------------------------------------------------------------

    def _submit(self, kind: int, payload: Any) -> Any:
        if self._closed:
            raise LedgerClosedError("the ledger client is closed")
        if self._failure is not None:
            raise LedgerFailedError(
                "the ledger stopped after a fault; reopen it"
            ) from self._failure
        future: Future[Any] = Future()
        self._queue.put(_Request(kind, payload, future=future))
        if self._closed or self._failure is not None:  # raced with close() or a fault
            self._writer.join()
            self._fail_orphans()
        return future.result()

    def _submit_async(self, kind: int, payload: Any) -> asyncio.Future[Any]:
        """Submit from a coroutine: the returned future is awaited by the caller (a plain
        function, not a coroutine: one frame less per request)."""
        if self._closed:
            raise LedgerClosedError("the ledger client is closed")
        if self._failure is not None:
            raise LedgerFailedError(
                "the ledger stopped after a fault; reopen it"
            ) from self._failure
        loop = asyncio.get_running_loop()
        coalescer = self._last_coalescer
        if coalescer is None or coalescer.loop is not loop:
            coalescer = self._coalescers.get(loop)
            if coalescer is None:
                coalescer = self._coalescers[loop] = _Coalescer(self, loop)
            self._last_coalescer = coalescer
        return coalescer.submit(kind, payload)

    def _enqueue_async(self, request: _Request) -> None:
        """Queue an event loop's request without blocking that loop."""
        try:
            self._queue.put_nowait(request)
        except queue.Full:  # back-pressure: a worker thread waits for room
            self._background(request, wait_for_room=True)
            return
        if self._closed or self._failure is not None:  # raced with close() or a fault
            self._background(request, wait_for_room=False)

    def _background(self, request: _Request, *, wait_for_room: bool) -> None:
        """Finish queuing ``request`` off the event loop: wait for room in the queue if
        asked, then, if the writer stopped meanwhile, fail what it will never answer."""

        async def finish() -> None:
            if wait_for_room:
                await asyncio.to_thread(self._queue.put, request)
            if self._closed or self._failure is not None:
                await asyncio.to_thread(self._writer.join)
                self._fail_orphans()

        assert request.waiter is not None
        task = request.waiter[0].create_task(finish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_orphans(self) -> None:
        """Requests queued after the writer stopped (a race with ``close`` or a fault) get an
        error instead of waiting for ever. A request queued while the writer still runs is
        answered by it: the writer drains the queue on its way out."""
        if not self._writer.is_alive():
            error = (
                LedgerFailedError("the ledger stopped after a fault; reopen it")
                if self._failure is not None
                else LedgerClosedError("the ledger client is closed")
            )
            self._drain_failed(error)

    def _complete(
        self, request: _Request, result: Any = None, error: BaseException | None = None
    ) -> None:
        if request.done:
            return
        request.done = True
        if request.future is not None:
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(result)
        elif request.waiter is not None:
            loop, waiter = request.waiter
            self._completions.setdefault(loop, []).append((waiter, result, error))

    def _flush_completions(self) -> None:
        for loop, completions in self._completions.items():
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                loop.call_soon_threadsafe(_resolve, completions)
        self._completions = {}

    def _run(self) -> None:
        engine = self._engine
        while True:
            timeout = self._wait_s()
            chains = engine.chains
            if chains.behind(engine) and (timeout is None or timeout > IDLE_LINK_DUE_S):
                # Idle and the accounts' chains behind: link some rows, then look again.
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    chains.catch_up(engine, CHAIN_ROWS_WHEN_IDLE)
                    continue
            else:
                try:
                    first = self._queue.get(timeout=timeout)
                except queue.Empty:
                    first = _Request(_TICK, None)
            group = [first]
            events = 0
            while events < self._options.group_events_max:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                group.append(request)
                if request.kind in (KIND_ACCOUNTS, KIND_TRANSFERS):
                    events += request.payload.shape[0]
            closing = any(r.kind == _CLOSE for r in group)
            try:
                self._process(group)
            except BaseException as error:  # fail-stop: memory may no longer match the journal
                log.exception("ledger writer failed")
                self._failure = error
                for request in group:
                    self._complete(
                        request,
                        error=LedgerFailedError("the ledger stopped after a fault; reopen it"),
                    )
                self._drain_failed()
                return
            if closing:
                self._drain_failed(LedgerClosedError("the ledger client is closed"))
                return

    def _write_back_rows(self) -> None:
        """Move final rows from memory to their files a chunk at a time as groups publish them (see
        ``Engine.write_back_rows``); snapshots still sync them before they count. Normal
        I/O priority: when this thread lags, the writer does the same work itself."""
        while True:
            self._write_back_wanted.wait()
            self._write_back_wanted.clear()
            while not self._write_back_stop and self._engine.write_back_rows():
                pass
            if self._write_back_stop:
                return

    def _drain_failed(self, error: BaseException | None = None) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            self._complete(
                request,
                error=error or LedgerFailedError("the ledger stopped after a fault; reopen it"),
            )
        self._flush_completions()

    def _wait_s(self) -> float | None:
        deadline = self._engine.next_deadline()
        if deadline is None:
            return None
        return max(0.0, (deadline - self._clock.now_ns()) / 1e9) + 0.001

    def _process(self, group: list[_Request]) -> None:
        if self._fault is not None:  # damage the background checks found: stop (fail-stop)
            raise self._fault
        engine = self._engine
        now_ns = self._clock.now_ns()
        stamp = max(engine.clock, now_ns)
        entries: list[tuple[int, int, int, bytes | memoryview]] = []
        pulse_count = 0
        deadline = engine.next_deadline()
        if deadline is not None and deadline <= stamp:
            pulse_count = engine.due_count(stamp, self._options.pulse_expiries_max)
            if pulse_count > 0:
                entries.append((KIND_PULSE, self._options.pulse_expiries_max, stamp, b""))
                stamp = max(stamp, engine.watermark + pulse_count)
        writes = [r for r in group if r.kind in (KIND_ACCOUNTS, KIND_TRANSFERS)]
        nows: list[int] = []
        for request in writes:
            events: Array = request.payload
            if request.parts is None:
                nows.append(stamp)
                entries.append((request.kind, events.shape[0], stamp, events.view(np.uint8).data))
                stamp += events.shape[0]
                continue
            data = events.view(np.uint8).data
            size = events.dtype.itemsize
            parts = request.parts.tolist()
            for k in range(len(parts) - 1):
                count = parts[k + 1] - parts[k]
                nows.append(stamp)
                entries.append(
                    (request.kind, count, stamp, data[parts[k] * size : parts[k + 1] * size])
                )
                stamp += count
        answers: list[tuple[_Request, Array]] = []
        if entries:
            self._op += 1
            # The journal write and the kernels run at the same time (the kernels release the
            # GIL); nobody is answered, and no read runs, until the journal write is durable.
            # If it fails, memory holds state the journal does not: the writer stops (fail-stop)
            # and reopening recovers from the journal.
            # The record is built on the journal's thread too (a copy of the group's bytes),
            # not before the kernels start.
            durable = self._journal_thread.submit(self._append, self._op, entries)
            # Meanwhile another thread maps in the pages the next group will write, off the
            # writer's path (beyond this group's rows, so no overlap), unless it is still busy.
            # Small groups wake that thread only once per PREFAULT_ROWS_MIN rows.
            events_in_group = sum(r.payload.shape[0] for r in writes)
            window = max(events_in_group, PREFAULT_ROWS_MIN)
            if (self._prefaulting is None or self._prefaulting.done()) and (
                engine.prefaulted_ahead() < 2 * window
            ):
                self._prefaulting = self._prefault_thread.submit(
                    engine.prefault_after, events_in_group, window
                )
            started = time.perf_counter()
            try:
                if pulse_count > 0:
                    expired = engine.pulse(entries[0][2], self._options.pulse_expiries_max)
                    if expired != pulse_count:
                        raise AssertionError(f"pulse expired {expired}, expected {pulse_count}")
                answers = self._apply_requests(writes, nows)
                applied = time.perf_counter()
            finally:
                durable.result()
            self.stats.record(
                events=sum(r.payload.shape[0] for r in writes),
                requests=len(nows),
                apply_s=applied - started,
                journal_s=self._journal_seconds,
                total_s=time.perf_counter() - started,
            )
            self._events_since_snapshot += sum(r.payload.shape[0] for r in writes)
            # Wake the writeback thread once a chunk's worth of rows is waiting, not per group.
            if engine.n_transfers - self._write_back_signalled >= WRITE_BACK_ROWS_MIN:
                self._write_back_signalled = engine.n_transfers
                self._write_back_wanted.set()
        for request, results in answers:
            self._complete(request, results)
        for request in group:
            if request.kind == _READ:
                try:
                    self._complete(request, request.payload(engine))
                except Exception as error:  # a read's own error goes to its caller
                    self._complete(request, error=error)
            elif request.kind in (_TICK, _CLOSE):
                self._complete(request, pulse_count)
        self._flush_completions()
        if self._events_since_snapshot >= self._options.snapshot_interval_events:
            self._start_snapshot()

    def _append(self, op: int, entries: list[tuple[int, int, int, bytes | memoryview]]) -> None:
        started = time.perf_counter()
        self._op_checksum = self._journal.append(op, encode_group(entries))
        self._journal_seconds = time.perf_counter() - started

    def _apply_requests(
        self, writes: list[_Request], nows: list[int]
    ) -> list[tuple[_Request, Array]]:
        """Apply runs of same-kind requests, each run in one kernel call. ``nows`` holds one
        timestamp per part (a joined request has several parts; others have one)."""
        answers: list[tuple[_Request, Array]] = []
        i = 0
        part = 0
        while i < len(writes):
            j = i
            while j < len(writes) and writes[j].kind == writes[i].kind:
                j += 1
            batch = writes[i:j]
            events = batch[0].payload if len(batch) == 1 else _join([r.payload for r in batch])
            counts: list[int] = []
            for request in batch:
                if request.parts is None:
                    counts.append(request.payload.shape[0])
                else:
                    counts.extend(np.diff(request.parts).tolist())
            starts = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=starts[1:])
            results = self._engine.apply(
                writes[i].kind,
                events,
                starts,
                np.array(nows[part : part + len(counts)], dtype=np.uint64),
            )
            part += len(counts)
            offset = 0
            for request in batch:
                size = request.payload.shape[0]
                answers.append((request, results[offset : offset + size]))
                offset += size
            i = j
        return answers

    def _start_snapshot(self) -> None:
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            return
        op = self._op
        image = self._engine.image(reuse=True)  # no snapshot thread runs: the buffer is free
        self._events_since_snapshot = 0
        self._snapshot_thread = threading.Thread(
            target=self._write_snapshot,
            args=(op, self._op_checksum, image),
            name="puhui-ledger-snapshot",
            daemon=True,
        )
        self._snapshot_thread.start()

    def _write_snapshot(self, op: int, record_checksum: int, image: Any) -> None:
        try:
            transfer_rows, balance_rows = self._engine.sync_rows(image)
            manifest = S.Manifest(
                identity=self._journal.identity,
                op=op,
                record_checksum=record_checksum,
                transfer_rows=transfer_rows,
                balance_rows=balance_rows,
            )
            S.write_snapshot(self._state_dir, manifest, image)
            self._snapshot_op = max(self._snapshot_op, op)
            # The journal keeps it too: records the snapshot counted, lost later, are damage.
            self._journal.mark_durable(op)
        except OSError:
            log.exception("snapshot at op %d failed; the journal still has everything", op)

    def _read(self, fn: Callable[[Engine], Any]) -> Any:
        return self._submit(_READ, fn)

    def tick(self) -> int:
        """Run due expiries now (they also run by themselves at each deadline).

        Returns how many pending transfers this call expired.
        """
        expired: int = self._submit(_TICK, None)
        return expired

    # --- the TigerBeetle API ----------------------------------------------------------------

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return account_results(self.create_accounts_array(accounts_to_array(accounts)))

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return transfer_results(self.create_transfers_array(transfers_to_array(transfers)))

    def create_accounts_array(self, accounts: Array) -> Array:
        """Columnar ``create_accounts``: ACCOUNT_DTYPE rows in, RESULT_DTYPE rows out."""
        events = check_array(accounts, ACCOUNT_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        result: Array = self._submit(KIND_ACCOUNTS, events)
        return result

    def create_transfers_array(self, transfers: Array) -> Array:
        """Columnar ``create_transfers``: TRANSFER_DTYPE rows in, RESULT_DTYPE rows out."""
        events = check_array(transfers, TRANSFER_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        result: Array = self._submit(KIND_TRANSFERS, events)
        return result

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return array_to_accounts(self.lookup_accounts_array(ids))

    def lookup_accounts_array(self, ids: Sequence[int]) -> Array:
        return self._lookup_accounts_words(*ids_to_words(ids))

    def _lookup_accounts_words(self, lo: Array, hi: Array) -> Array:
        """``lookup_accounts_array`` of ids given as their low and high u64 words."""

        def read(engine: Engine) -> Array:
            rows = engine.account_rows(lo, hi)
            copied: Array = engine.accounts[rows[rows >= 0]].copy()
            return copied

        result: Array = self._read(read)
        return result

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return array_to_transfers(self.lookup_transfers_array(ids))

    def lookup_transfers_array(self, ids: Sequence[int]) -> Array:
        return self._lookup_transfers_words(*ids_to_words(ids))

    def _lookup_transfers_words(self, lo: Array, hi: Array) -> Array:
        """``lookup_transfers_array`` of ids given as their low and high u64 words."""

        def read(engine: Engine) -> Array:
            rows = engine.transfer_rows(lo, hi)
            copied: Array = engine.transfers[rows[rows >= 0]].copy()
            return copied

        result: Array = self._read(read)
        return result

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return array_to_transfers(self._account_transfers_array(filter))

    def _account_transfers_array(self, filter: AccountFilter) -> Array:
        """``get_account_transfers`` as TRANSFER_DTYPE rows (the server's answer)."""
        params = _account_filter(filter)
        if params is None:
            return np.zeros(0, TRANSFER_DTYPE)
        found = self._transfers_read(params, _copy_transfers)
        return np.zeros(0, TRANSFER_DTYPE) if found is None else found

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        found = self._account_balances_arrays(filter)
        return [] if found is None else array_to_balances(*found)

    def _account_balances_arrays(self, filter: AccountFilter) -> tuple[Array, list[int]] | None:
        """``get_account_balances`` as BALANCE_DTYPE rows and their timestamps (None: none)."""
        params = _account_filter(filter)
        if params is None:
            return None

        def history(engine: Engine) -> bool:
            lo, hi = params["account"]
            row = int(engine.account_rows(np.array([lo], np.uint64), np.array([hi], np.uint64))[0])
            return row >= 0 and bool(K.account_has_history(engine.accounts, row))

        def copy(engine: Engine, rows: Array, sides: Array) -> tuple[Array, list[int]]:
            balances: Array = engine.balances[2 * rows + sides].copy()
            return balances, engine.transfers["timestamp"][rows].tolist()

        return self._transfers_read(params, copy, history)

    def _transfers_read(
        self,
        params: dict[str, Any],
        copy: Callable[[Engine, Array, Array], T],
        allowed: Callable[[Engine], bool] | None = None,
    ) -> T | None:
        """``copy(engine, rows, sides)`` of the transfers matching the filter (one account's,
        or a query's), the rows read in turns of the writer (``_TransfersRead``, at most
        ``QUERY_ROWS_PER_TURN`` rows scanned a turn): one turn when the rows to scan are
        fewer. None if ``allowed`` says no at the first turn."""
        read = _TransfersRead(params, QUERY_ROWS_PER_TURN)
        first = True

        def turn(engine: Engine) -> tuple[bool, T | None]:
            nonlocal first
            if first:
                first = False
                if allowed is not None and not allowed(engine):
                    return True, None
            if read.turn(engine):
                return True, copy(engine, *read.answer())
            return False, None

        while True:
            done, answer = self._read(turn)
            if done:
                return answer  # type: ignore[no-any-return]

    def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return array_to_accounts(self._query_accounts_array(query_filter))

    def _query_accounts_array(self, query_filter: QueryFilter) -> Array:
        """``query_accounts`` as ACCOUNT_DTYPE rows (the server's answer)."""
        params = _query_filter(query_filter)
        if params is None:
            return np.zeros(0, ACCOUNT_DTYPE)

        def read(engine: Engine) -> Array:
            rows = K.scan_accounts(engine.accounts, engine.n_accounts, *_scan_args(params))
            copied: Array = engine.accounts[rows].copy()
            return copied

        result: Array = self._read(read)
        return result

    def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        """Transfers matching the filter, scanned ``QUERY_ROWS_PER_TURN`` rows per turn of
        the writer: a query over a big ledger takes turns with the writes instead of
        holding them for its whole scan. The answer is the ledger as the first turn found it
        (rows are immutable once written; later transfers are past the rows it scans)."""
        return array_to_transfers(self._query_transfers_array(query_filter))

    def _query_transfers_array(self, query_filter: QueryFilter) -> Array:
        """``query_transfers`` as TRANSFER_DTYPE rows (the server's answer)."""
        params = _query_filter(query_filter)
        if params is None:
            return np.zeros(0, TRANSFER_DTYPE)
        found = self._transfers_read(params, _copy_transfers)
        return np.zeros(0, TRANSFER_DTYPE) if found is None else found

    # --- introspection (verify, benchmarks, CLI) --------------------------------------------

    def read_state(self, fn: Callable[[Engine], Any]) -> Any:
        """Run ``fn(engine)`` on the writer thread between groups (read-only use only)."""
        return self._read(fn)

    @property
    def journal(self) -> Journal:
        return self._journal

    @property
    def identity(self) -> str:
        """The journal's identity: the same for every client of this ledger."""
        return self._journal.identity

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def last_op(self) -> int:
        return self._op

    def snapshot_now(self) -> None:
        """Write a snapshot of the current state (blocking)."""

        def take(engine: Engine) -> tuple[int, int, Any]:
            return self._op, self._op_checksum, engine.image()

        op, record_checksum, image = self._read(take)
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
        self._write_snapshot(op, record_checksum, image)


def _join(arrays: list[Array]) -> Array:
    """Concatenate record arrays of one dtype by their bytes (``np.concatenate`` checks the
    structured dtype per array: 30 µs each, the larger part of a group of single requests)."""
    joined = bytearray().join(a.view(np.uint8).data for a in arrays)  # writable, one copy
    return np.frombuffer(joined, dtype=arrays[0].dtype)


def apply_record(engine: Engine, payload: bytes) -> None:
    """Apply one journal record to ``engine`` (recovery and verification replays)."""
    entries = decode_group(payload)
    i = 0
    while i < len(entries):
        kind, count, now, _ = entries[i]
        if kind == KIND_PULSE:
            engine.pulse(now, count)
            i += 1
            continue
        j = i
        while j < len(entries) and entries[j][0] == kind:
            j += 1
        chunk = entries[i:j]
        arrays = [e[3] for e in chunk if e[3] is not None]
        all_events = arrays[0] if len(arrays) == 1 else _join(arrays)
        starts = np.zeros(len(chunk) + 1, np.int64)
        np.cumsum([e[1] for e in chunk], out=starts[1:])
        engine.apply(kind, all_events, starts, np.array([e[2] for e in chunk], np.uint64))
        i = j


# --- filters --------------------------------------------------------------------------------


def _check_fields(obj: object, fields: tuple[tuple[str, int], ...]) -> None:
    for name, bits in fields:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise WrongTypeError(f"filter field {name!r} must be an int", field=name)
        if value < 0 or value >= 1 << bits:
            raise FieldOutOfRangeError(f"filter field {name!r} is out of range", field=name)


_ACCOUNT_FILTER_FIELDS = (
    ("account_id", 128),
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("code", 16),
    ("timestamp_min", 64),
    ("timestamp_max", 64),
    ("limit", 32),
    ("flags", 32),
)
_QUERY_FILTER_FIELDS = (
    ("user_data_128", 128),
    ("user_data_64", 64),
    ("user_data_32", 32),
    ("ledger", 32),
    ("code", 16),
    ("timestamp_min", 64),
    ("timestamp_max", 64),
    ("limit", 32),
    ("flags", 32),
)
_MASK64 = (1 << 64) - 1


def _check_limit(limit: int) -> None:
    if limit > BATCH_EVENTS_MAX:
        raise TooMuchDataError(
            f"limit {limit} exceeds the {BATCH_EVENTS_MAX} results one reply may hold"
        )


def _timestamps_valid(minimum: int, maximum: int) -> bool:
    """TigerBeetle: each bound 0 (unbounded) or in ``1 ..= TIMESTAMP_VALID_MAX``, and
    ``minimum <= maximum`` when ``maximum`` is set."""
    return (
        minimum <= TIMESTAMP_VALID_MAX
        and maximum <= TIMESTAMP_VALID_MAX
        and (maximum == 0 or minimum <= maximum)
    )


def _account_filter(f: AccountFilter) -> dict[str, Any] | None:
    """Validated parameters, or None for a filter TigerBeetle answers with an empty list."""
    if not isinstance(f, AccountFilter):
        raise WrongTypeError(f"expected an AccountFilter, got {type(f).__name__}")
    _check_fields(f, _ACCOUNT_FILTER_FIELDS)
    _check_limit(f.limit)
    flags = int(f.flags)
    if f.limit == 0 or flags & ~0b111:
        return None
    if not flags & (AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS):
        return None
    if f.account_id in (0, AMOUNT_MAX) or not _timestamps_valid(f.timestamp_min, f.timestamp_max):
        return None
    return {
        "account": (f.account_id & _MASK64, f.account_id >> 64),
        "debits": bool(flags & AccountFilterFlags.DEBITS),
        "credits": bool(flags & AccountFilterFlags.CREDITS),
        "reversed": bool(flags & AccountFilterFlags.REVERSED),
        "user_data_128": (np.uint64(f.user_data_128 & _MASK64), np.uint64(f.user_data_128 >> 64)),
        "user_data_64": f.user_data_64,
        "user_data_32": f.user_data_32,
        "code": f.code,
        "timestamp_min": f.timestamp_min,
        "timestamp_max": f.timestamp_max,
        "limit": f.limit,
    }


def _query_filter(f: QueryFilter) -> dict[str, Any] | None:
    if not isinstance(f, QueryFilter):
        raise WrongTypeError(f"expected a QueryFilter, got {type(f).__name__}")
    _check_fields(f, _QUERY_FILTER_FIELDS)
    _check_limit(f.limit)
    flags = int(f.flags)
    if f.limit == 0 or flags & ~int(QueryFilterFlags.REVERSED):
        return None
    if not _timestamps_valid(f.timestamp_min, f.timestamp_max):
        return None
    return {
        "reversed": bool(flags & QueryFilterFlags.REVERSED),
        "user_data_128": (np.uint64(f.user_data_128 & _MASK64), np.uint64(f.user_data_128 >> 64)),
        "user_data_64": f.user_data_64,
        "user_data_32": f.user_data_32,
        "ledger": f.ledger,
        "code": f.code,
        "timestamp_min": f.timestamp_min,
        "timestamp_max": f.timestamp_max,
        "limit": f.limit,
    }


def _scan_args(params: dict[str, Any]) -> tuple[Any, ...]:
    """The filter arguments the compiled scans share, in their order."""
    return (
        *params["user_data_128"],
        np.uint64(params["user_data_64"]),
        params["user_data_32"],
        params.get("ledger", 0),
        params["code"],
        np.uint64(params["timestamp_min"]),
        np.uint64(params["timestamp_max"]),
        params["limit"],
        params["reversed"],
    )


QUERY_ROWS_PER_TURN = 1 << 17
"""Most transfer rows ``query_transfers`` and the per-account reads (``_TransfersRead``) scan
in one turn of the writer (unit: rows; a scan reads 128-byte rows at the memory's pace, ~1 ms
a turn here, more from disk, see ``benchmarks/ledger_history.py``): writes queued meanwhile
go between its turns."""
CHAIN_ROWS_PER_READ = 1 << 13
"""Most transfer rows one per-account read links into the accounts' chains: ~2 ms of the
writer's time when the rows are in memory (``benchmarks/ledger_history.py`` linked a million
in 0.23 s), more when old rows come from disk. The rows not linked yet are scanned instead;
the writer links more whenever it is idle (``CHAIN_ROWS_WHEN_IDLE``)."""
CHAIN_ROW_COST = 64
"""What a row of a chain costs to read, in rows of a sequential scan (a random read against
a compare in a tight loop: measured ~90 ns against ~1.5 ns with few matches)."""
CHAIN_ROWS_WHEN_IDLE = 1 << 11
"""Rows the writer links at a time while no request waits, once per-account reads began
(256 KiB of rows, read from disk when old: a request arriving meanwhile waits that long)."""
IDLE_LINK_DUE_S = 0.002
"""With a pending transfer's expiry nearer than this, the writer waits for it instead."""


def _scan_account(engine: Engine, params: dict[str, Any]) -> tuple[Array, Array]:
    """One account's transfers matching the filter (rows and sides, in the filter's order, at
    most ``limit``), read in one go on the writer's thread (``_TransfersRead`` without turns)."""
    read = _TransfersRead(params, None)
    while not read.turn(engine):
        pass
    return read.answer()


_NO_ACCOUNT = (np.uint64(0), np.uint64(0), False, False)


def _copy_transfers(engine: Engine, rows: Array, sides: Array) -> Array:
    copied: Array = engine.transfers[rows].copy()
    return copied


class _TransfersRead:
    """The transfers matching a filter: a query's (``params`` without an account: the rows
    of its time range scanned), or one account's: the rows already linked read along the
    account's chain (``AccountChains``, a cost that follows the account's own transfers), the
    newer ones scanned; a busy account read from a point in time scanned from there instead.
    Rows scanned are at most ``step`` a turn of the writer (None: no bound), so that a long
    scan takes turns with the writes; the answer is the ledger as the first turn found it
    (rows are immutable once written, and later ones lie past the rows it reads).

    The parts, in the filter's order: a *scan* of rows ``lo``..``hi`` (by the account, in
    turns) and the *chain* of the rows linked at the first turn, walked from the account's
    newest row linked then (one turn: its cost is the account's)."""

    def __init__(self, params: dict[str, Any], step: int | None) -> None:
        self.params = params
        self.step = step
        self.args = _scan_args(params)  # ..., timestamp_min, timestamp_max, limit, reversed
        self.limit: int = self.args[-2]
        self.reversed: bool = self.args[-1]
        self.account: tuple[np.uint64, np.uint64, bool, bool] | None = None
        if "account" in params:
            lo, hi = params["account"]
            self.account = (np.uint64(lo), np.uint64(hi), params["debits"], params["credits"])
        self.row = -1
        self.parts: list[tuple[Array, Array]] = []
        self.found = 0
        self.phases: list[tuple[str, int, int]] | None = None  # set by the first turn

    def answer(self) -> tuple[Array, Array]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.concatenate([r for r, _ in self.parts])
        sides = np.concatenate([s for _, s in self.parts])
        return rows, sides.astype(np.int64)

    def turn(self, engine: Engine) -> bool:
        """Go on for one turn of the writer; whether the answer is complete."""
        if self.phases is None and not self._plan(engine):
            return True
        assert self.phases is not None
        budget = self.step
        while self.phases and self.found < self.limit:
            kind, lo, hi = self.phases[0]
            if kind == "chain":
                self._chain(engine, lo)
                self.phases.pop(0)
                continue
            if lo >= hi:
                self.phases.pop(0)
                continue
            if budget is not None and budget <= 0:
                return False  # the writer's turn is over: go on at the next
            size = hi - lo if budget is None else min(hi - lo, budget)
            start, end = (hi - size, hi) if self.reversed else (lo, lo + size)
            self._scan(engine, start, end)
            self.phases[0] = (kind, lo, start) if self.reversed else (kind, end, hi)
            if budget is not None:
                budget -= size
        return True

    def _plan(self, engine: Engine) -> bool:
        """The first turn: the account, and which parts to read; False: no such account."""
        t_min, t_max = self.args[-4], self.args[-3]
        if self.account is None:  # a query: its time range
            self.phases = [
                ("scan", *K.timestamp_rows(engine.transfers, engine.n_transfers, t_min, t_max))
            ]
            return True
        lo, hi = self.params["account"]
        self.row = int(engine.account_rows(np.array([lo], np.uint64), np.array([hi], np.uint64))[0])
        if self.row < 0:
            return False
        chains = engine.chains
        chains.active = True  # from now on the writer links rows while idle
        if not self.reversed:  # oldest first: the chains serve first, so bring them on a little
            chains.catch_up(engine, CHAIN_ROWS_PER_READ)
        # (Newest first, the newest rows are scanned first and often answer alone: nothing is
        # linked on the read's time then. The oldest rows are read from disk when linked.)
        linked, count = chains.count, engine.n_transfers
        row = self.row
        length = int(chains.links[row]) if row < chains.links.shape[0] else 0
        transfers = engine.transfers
        if CHAIN_ROW_COST * length * length > self.limit * count and not (
            self.reversed and t_max == 0
        ):
            # A busy account read from a point in time: scanning the rows from there finds its
            # ``limit`` sooner (~limit x count / length rows) than walking its whole chain
            # (~length rows, each a random read); newest first without a bound, the chain
            # gives them at once.
            start, end = K.timestamp_rows(transfers, count, t_min, t_max)
            self.phases = [("scan", start, end)]
            return True
        # The rows not linked yet, within the timestamps (searched in their own slice: no
        # search through older rows, which may have to come from disk).
        start, end = K.timestamp_rows(transfers[linked:count], count - linked, t_min, t_max)
        tail = ("scan", linked + start, linked + end)
        # The chain: from the account's newest row linked now (an account newer than the
        # chains' arrays has none linked), so a later turn walks the same rows.
        head = int(chains.last[row]) if row < chains.last.shape[0] else -1
        if linked == 0 or head < 0:
            self.phases = [tail]
            return True
        chain = ("chain", head, 0)
        # Newest first, the rows not linked yet come first; oldest first, the chain's.
        self.phases = [tail, chain] if self.reversed else [chain, tail]
        return True

    def _scan(self, engine: Engine, start: int, end: int) -> None:
        zero = np.uint64(0)
        account = _NO_ACCOUNT if self.account is None else self.account
        rows, sides = K.scan_transfers(
            engine.transfers[start:end],
            end - start,
            *account[:2],
            self.account is not None,
            *account[2:],
            *self.args[:-4],
            zero,
            zero,  # the rows are within the timestamps already
            self.limit - self.found,
            self.reversed,
        )
        if rows.shape[0]:
            self.parts.append((rows + start, sides))
            self.found += int(rows.shape[0])

    def _chain(self, engine: Engine, head: int) -> None:
        assert self.account is not None
        rows, sides = K.scan_account_chain(
            engine.transfers,
            engine.chains.prev,
            head,  # the account's newest row linked at the first turn
            *self.account,
            *self.args[:-2],
            self.limit - self.found,
            self.reversed,
        )
        if rows.shape[0]:
            self.parts.append((rows, sides))
            self.found += int(rows.shape[0])


# --- opening --------------------------------------------------------------------------------


def default_state_dir(url: str, identity: str) -> Path:
    """Beside a SQLite file or a file-journal directory; ``./puhui-data/`` for PostgreSQL."""
    for prefix in ("sqlite:///", "file://"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix).rstrip("/") + ".state")
    if "://" not in url:
        return Path(url.rstrip("/") + ".state")
    return Path("puhui-data") / f"ledger-{identity}"


def open(
    path_or_url: str | os.PathLike[str],
    *,
    state_dir: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    options: LedgerOptions | None = None,
) -> Ledger:
    """Open (or create) a ledger.

    ``path_or_url`` names the journal: a directory path or ``file:///dir`` for the file
    journal (the embedded default: pre-allocated, checksummed segments synced with
    ``fdatasync``), a ``*.sqlite`` path or ``sqlite:///path`` for SQLite, or
    ``postgresql+psycopg://user@host:port/db`` for PostgreSQL. Derived state (snapshots,
    transfer rows) lives in ``state_dir``: by default beside a local journal
    (``<path>.state``), or ``./puhui-data/ledger-<journal id>`` for PostgreSQL.
    """
    url = os.fspath(path_or_url)
    load_kernels_in_background()  # while the journal and the state are read
    journal = open_journal(url)
    try:
        directory = (
            Path(state_dir) if state_dir is not None else default_state_dir(url, journal.identity)
        )
        return Ledger(journal, directory, clock=clock, options=options)
    except BaseException:
        journal.close()
        raise
