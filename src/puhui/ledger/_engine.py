"""The in-memory state machine: columnar state, capacity management, kernels, reads.

``Engine`` is single-threaded: exactly one thread (the ledger's writer) may call its mutating
methods. It knows nothing of durability; ``_ledger.Ledger`` journals every input before it
reaches ``apply``/``pulse`` and snapshots the state this class exports.

Transfer rows and their balance rows live in append-only files (memory-mapped) when a
directory is given, or in anonymous memory otherwise (verification replays, tests).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernel as K
from ._convert import BATCH_EVENTS_MAX
from ._os import populate_write, write_back
from ._types import ACCOUNT_DTYPE, BALANCE_DTYPE, RESULT_DTYPE, TRANSFER_DTYPE

PREFAULT_GROUPS_AHEAD = 4
"""How many groups' worth of rows the prefault thread maps in ahead of the writer."""

KIND_ACCOUNTS = 1
KIND_TRANSFERS = 2
KIND_PULSE = 3

Array = npt.NDArray[Any]


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


class _RowFile:
    """A growable array of fixed-size records, backed by a memory-mapped file or by memory."""

    def __init__(self, dtype: np.dtype[Any], path: Path | None, capacity: int) -> None:
        self.dtype = dtype
        self.path = path
        self._maps: list[mmap.mmap] = []
        self._fd = -1
        self._written_back = 0
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.array: Array = np.zeros(0, dtype)
        self._map(max(capacity, 1024))

    def _map(self, capacity: int) -> None:
        if self._fd < 0:
            grown = np.zeros(capacity, self.dtype)
            grown[: self.array.shape[0]] = self.array
            self.array = grown
            return
        size = capacity * self.dtype.itemsize
        current = os.fstat(self._fd).st_size
        if current < size:
            # Allocate the blocks now (unwritten extents: reads give zeros). Left sparse, the
            # file made the kernel allocate blocks while the writer faulted pages in, which
            # showed as 25 ms stalls of the apply every 8 MiB of rows.
            os.posix_fallocate(self._fd, current, size - current)
        mapped = mmap.mmap(self._fd, size)
        self._maps.append(mapped)
        self.array = np.frombuffer(mapped, dtype=self.dtype)

    def ensure(self, rows: int) -> None:
        if rows > self.array.shape[0]:
            self._map(_pow2_at_least(rows + rows // 2))

    def prefault(self, first_row: int, rows: int) -> None:
        """Map in the pages of rows not yet written, so the kernel does not fault on them.

        ``MADV_POPULATE_WRITE`` prepares pages without changing their contents, so it is safe
        while the kernel writes other rows. Called from a helper thread (ctypes releases the
        GIL); a kernel without the advice just leaves the work to the page faults.
        """
        array = self.array
        end = min(first_row + rows, array.shape[0])
        if self._fd < 0 or end <= first_row:
            return
        start = array.ctypes.data + first_row * self.dtype.itemsize
        stop = array.ctypes.data + end * self.dtype.itemsize
        start -= start % mmap.PAGESIZE
        populate_write(start, stop - start)

    def write_back(self, end_row: int, chunk_bytes: int) -> bool:
        """Write back (not sync) one chunk of the whole pages below ``end_row`` not yet
        written back, and wait for it; True if more is left.

        Paced this way, from a thread of idle I/O priority, the rows reach the disk in the
        gaps between journal writes instead of in the kernel's bursts when dirty pages pile
        up, which stalled the journal's syncs behind them.
        """
        if self._fd < 0:
            return False
        end = end_row * self.dtype.itemsize
        end -= end % mmap.PAGESIZE
        if end - self._written_back < mmap.PAGESIZE:
            return False
        stop = min(end, self._written_back + chunk_bytes)
        if not write_back(self._fd, self._written_back, stop - self._written_back):
            return False  # not supported here: the kernel's own writeback does it
        self._written_back = stop
        return stop < end

    def sync(self) -> None:
        """Make every row written so far durable (rows are never rewritten)."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        self.array = np.zeros(0, self.dtype)
        for mapped in self._maps:
            # A reader may still hold a view; the mapping then dies with it.
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class StateImage:
    """A consistent copy of the mutable state, taken between batches (for snapshots)."""

    counters: Array
    accounts: Array
    xfer_state: Array
    heap_deadline: Array
    heap_ts: Array
    heap_row: Array
    retired: Array  # (n, 2) uint64 ids


class Engine:
    def __init__(self, directory: Path | None = None, *, transfers_capacity: int = 1 << 16) -> None:
        self.counters = np.zeros(K.COUNTERS, np.uint64)
        self.accounts: Array = np.zeros(1024, ACCOUNT_DTYPE)
        self.acct_slots: Array = np.zeros(2048, np.uint64)
        self._transfers = _RowFile(
            TRANSFER_DTYPE,
            None if directory is None else directory / "transfers.dat",
            transfers_capacity,
        )
        self._balances = _RowFile(
            BALANCE_DTYPE,
            None if directory is None else directory / "balances.dat",
            2 * transfers_capacity,
        )
        self.xfer_state: Array = np.zeros(transfers_capacity, np.uint8)
        self.xfer_slots: Array = np.zeros(_pow2_at_least(2 * transfers_capacity), np.uint64)
        self.retired: Array = np.zeros((64, 2), np.uint64)
        self.heap_deadline: Array = np.zeros(64, np.uint64)
        self.heap_ts: Array = np.zeros(64, np.uint64)
        self.heap_row: Array = np.zeros(64, np.int64)
        self._expired_rows: Array = np.zeros(64, np.int64)
        self._prefaulted_until = 0  # rows whose pages are mapped in (prefault thread)
        # Undo log for linked chains; a chain never spans requests, so one batch bounds it.
        self._undo_rows: Array = np.zeros(2 * BATCH_EVENTS_MAX + 2, np.int64)
        self._undo_accounts: Array = np.zeros(2 * BATCH_EVENTS_MAX + 2, ACCOUNT_DTYPE)
        self._undo_state_rows: Array = np.zeros(BATCH_EVENTS_MAX + 1, np.int64)
        self._undo_state_values: Array = np.zeros(BATCH_EVENTS_MAX + 1, np.uint8)
        self._undo_counts: Array = np.zeros(3, np.int64)

    # --- counters ---------------------------------------------------------------------------

    @property
    def n_accounts(self) -> int:
        return int(self.counters[K.C_ACCOUNTS])

    @property
    def n_transfers(self) -> int:
        return int(self.counters[K.C_TRANSFERS])

    @property
    def clock(self) -> int:
        """The newest timestamp handed out (batch slots and pulses)."""
        return int(self.counters[K.C_CLOCK])

    @property
    def watermark(self) -> int:
        return int(self.counters[K.C_WATERMARK])

    @property
    def transfers(self) -> Array:
        return self._transfers.array

    @property
    def balances(self) -> Array:
        return self._balances.array

    # --- capacity ---------------------------------------------------------------------------

    def _ensure_accounts(self, extra: int) -> None:
        need = self.n_accounts + extra
        if need > self.accounts.shape[0]:
            grown = np.zeros(_pow2_at_least(need + need // 2), ACCOUNT_DTYPE)
            grown[: self.n_accounts] = self.accounts[: self.n_accounts]
            self.accounts = grown
        if 2 * need > self.acct_slots.shape[0]:
            self.acct_slots = np.zeros(_pow2_at_least(4 * need), np.uint64)
            K.index_rebuild(self.acct_slots, self.accounts, self.n_accounts)

    def _ensure_transfers(self, extra: int) -> None:
        need = self.n_transfers + extra
        self._transfers.ensure(need)
        self._balances.ensure(2 * need)
        if need > self.xfer_state.shape[0]:
            grown = np.zeros(_pow2_at_least(need + need // 2), np.uint8)
            grown[: self.n_transfers] = self.xfer_state[: self.n_transfers]
            self.xfer_state = grown
        if 2 * need > self.xfer_slots.shape[0]:
            self.xfer_slots = np.zeros(_pow2_at_least(4 * need), np.uint64)
            K.index_rebuild(self.xfer_slots, self._transfers.array, self.n_transfers)
        need_retired = int(self.counters[K.C_RETIRED]) + extra
        if 2 * need_retired > self.retired.shape[0]:
            grown = np.zeros((_pow2_at_least(4 * need_retired), 2), np.uint64)
            K.retired_rehash(self.retired, grown)
            self.retired = grown
        need_heap = int(self.counters[K.C_HEAP]) + extra
        if need_heap > self.heap_deadline.shape[0]:
            size = _pow2_at_least(need_heap + need_heap // 2)
            for name in ("heap_deadline", "heap_ts", "heap_row"):
                old = getattr(self, name)
                grown = np.zeros(size, old.dtype)
                grown[: old.shape[0]] = old
                setattr(self, name, grown)

    # --- mutations (writer thread only) ------------------------------------------------------

    def apply(self, kind: int, events: Array, starts: Array, nows: Array) -> Array:
        """Apply consecutive batches of one kind; ``starts`` has len(batches) + 1 entries."""
        results = np.zeros(events.shape[0], RESULT_DTYPE)
        if events.shape[0] == 0:
            return results
        if kind == KIND_ACCOUNTS:
            self._ensure_accounts(events.shape[0])
            self._create_accounts(events, starts, nows, self.counters, results)
        elif kind == KIND_TRANSFERS:
            self._ensure_transfers(events.shape[0])
            self._create_transfers(events, starts, nows, self.counters, results)
        else:
            raise ValueError(f"unknown batch kind {kind}")
        return results

    def _create_accounts(
        self, events: Array, starts: Array, nows: Array, counters: Array, results: Array
    ) -> None:
        K.create_accounts(
            events,
            starts,
            nows,
            self.accounts,
            self.acct_slots,
            self._transfers.array,
            counters,
            results,
        )

    def _create_transfers(
        self, events: Array, starts: Array, nows: Array, counters: Array, results: Array
    ) -> None:
        K.create_transfers(
            events,
            starts,
            nows,
            self.accounts,
            self.acct_slots,
            self._transfers.array,
            self.xfer_slots,
            self.xfer_state,
            self._balances.array,
            self.retired,
            self.heap_deadline,
            self.heap_ts,
            self.heap_row,
            counters,
            self._undo_rows,
            self._undo_accounts,
            self._undo_state_rows,
            self._undo_state_values,
            self._undo_counts,
            results,
        )

    def warm_up(self) -> None:
        """Load every compiled kernel now (numba reads machine code from its cache lazily, at
        the first call) and map in the first rows, so the first request does not pay for it."""
        none_accounts = np.zeros(0, ACCOUNT_DTYPE)
        none_transfers = np.zeros(0, TRANSFER_DTYPE)
        no_batches = np.zeros(1, np.int64)
        no_nows = np.zeros(0, np.uint64)
        none_results = np.zeros(0, RESULT_DTYPE)
        counters = self.counters.copy()  # the kernels only touch counters of real batches
        self._create_accounts(none_accounts, no_batches, no_nows, counters, none_results)
        self._create_transfers(none_transfers, no_batches, no_nows, counters, none_results)
        self._count_due(0, counters)
        self._expire(0, 0, counters)
        K.find_rows(self.acct_slots, self.accounts, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        self.prefault_after(0, BATCH_EVENTS_MAX)

    def due_count(self, now: int, limit: int) -> int:
        """How many pending transfers a pulse at ``now`` would expire (at most ``limit``)."""
        n = int(self.counters[K.C_HEAP])
        if n == 0 or int(self.heap_deadline[0]) > now:
            return 0
        return min(limit, self._count_due(now, self.counters))

    def next_deadline(self) -> int | None:
        if int(self.counters[K.C_HEAP]) == 0:
            return None
        return int(self.heap_deadline[0])

    def pulse(self, now: int, limit: int) -> int:
        """Expire due pending transfers; returns how many expired."""
        if self._expired_rows.shape[0] < limit:
            self._expired_rows = np.zeros(_pow2_at_least(limit), np.int64)
        return self._expire(now, limit, self.counters)

    def _count_due(self, now: int, counters: Array) -> int:
        return int(
            K.count_due(
                self.heap_deadline,
                self.heap_ts,
                self.heap_row,
                np.uint64(now),
                self._transfers.array,
                self.xfer_state,
                counters,
            )
        )

    def _expire(self, now: int, limit: int, counters: Array) -> int:
        return int(
            K.expire(
                np.uint64(now),
                limit,
                self.accounts,
                self.acct_slots,
                self._transfers.array,
                self.xfer_state,
                self.heap_deadline,
                self.heap_ts,
                self.heap_row,
                counters,
                self._expired_rows,
            )
        )

    def advance_clock(self, timestamp: int) -> None:
        if timestamp > self.clock:
            self.counters[K.C_CLOCK] = np.uint64(timestamp)

    # --- reads ------------------------------------------------------------------------------

    def account_rows(self, ids_lo: Array, ids_hi: Array) -> Array:
        return K.find_rows(self.acct_slots, self.accounts, ids_lo, ids_hi)  # type: ignore[no-any-return]

    def transfer_rows(self, ids_lo: Array, ids_hi: Array) -> Array:
        return K.find_rows(self.xfer_slots, self._transfers.array, ids_lo, ids_hi)  # type: ignore[no-any-return]

    def retired_ids(self) -> list[tuple[int, int]]:
        used = np.nonzero((self.retired[:, 0] != 0) | (self.retired[:, 1] != 0))[0]
        return [(int(self.retired[i, 0]), int(self.retired[i, 1])) for i in used]

    # --- snapshots --------------------------------------------------------------------------

    def image(self) -> StateImage:
        n_heap = int(self.counters[K.C_HEAP])
        used = (self.retired[:, 0] != 0) | (self.retired[:, 1] != 0)
        return StateImage(
            counters=self.counters.copy(),
            accounts=self.accounts[: self.n_accounts].copy(),
            xfer_state=self.xfer_state[: self.n_transfers].copy(),
            heap_deadline=self.heap_deadline[:n_heap].copy(),
            heap_ts=self.heap_ts[:n_heap].copy(),
            heap_row=self.heap_row[:n_heap].copy(),
            retired=self.retired[used].copy(),
        )

    def restore(self, image: StateImage) -> None:
        """Load a snapshot image. Transfer rows below its count must already be on file."""
        counters = image.counters.copy()
        n_accounts = int(counters[K.C_ACCOUNTS])
        n_transfers = int(counters[K.C_TRANSFERS])
        self.counters = np.zeros(K.COUNTERS, np.uint64)
        self._ensure_accounts(n_accounts)
        self.accounts[:n_accounts] = image.accounts
        self.counters[K.C_ACCOUNTS] = n_accounts
        self._ensure_transfers(n_transfers)
        self.counters[K.C_TRANSFERS] = n_transfers
        self.xfer_state[:n_transfers] = image.xfer_state
        self.acct_slots = np.zeros(_pow2_at_least(4 * max(n_accounts, 1)), np.uint64)
        K.index_rebuild(self.acct_slots, self.accounts, n_accounts)
        self.xfer_slots = np.zeros(
            max(self.xfer_slots.shape[0], _pow2_at_least(4 * max(n_transfers, 1))), np.uint64
        )
        K.index_rebuild(self.xfer_slots, self._transfers.array, n_transfers)
        n_retired = image.retired.shape[0]
        self.retired = np.zeros((_pow2_at_least(4 * max(n_retired, 16)), 2), np.uint64)
        K.retired_rehash(np.ascontiguousarray(image.retired, dtype=np.uint64), self.retired)
        n_heap = image.heap_deadline.shape[0]
        size = _pow2_at_least(max(n_heap, 64))
        self.heap_deadline = np.zeros(size, np.uint64)
        self.heap_ts = np.zeros(size, np.uint64)
        self.heap_row = np.zeros(size, np.int64)
        self.heap_deadline[:n_heap] = image.heap_deadline
        self.heap_ts[:n_heap] = image.heap_ts
        self.heap_row[:n_heap] = image.heap_row
        self.counters[:] = counters

    def prefaulted_ahead(self) -> int:
        """Rows already mapped in beyond those written."""
        return self._prefaulted_until - self.n_transfers

    def prefault_after(self, skip: int, rows: int) -> None:
        """Prepare the pages of ``rows`` rows that follow the next ``skip`` (any thread).

        Reads a counter the writer may be advancing; any value gives a harmless hint.
        """
        committed = self.n_transfers
        # Stay several groups ahead, so that the writer never waits for a page itself.
        first = max(self._prefaulted_until, committed + skip)
        until = committed + skip + PREFAULT_GROUPS_AHEAD * rows
        if until > first:
            self._transfers.prefault(first, until - first)
            self._balances.prefault(2 * first, 2 * (until - first))
            self._prefaulted_until = until

    def write_back_rows(self, chunk_bytes: int = 1 << 20) -> bool:
        """One step of background writeback of the rows written so far (any thread; reads
        a counter the writer may be advancing). True if more is left."""
        committed = self.n_transfers
        more = self._transfers.write_back(committed, chunk_bytes)
        return self._balances.write_back(2 * committed, chunk_bytes) or more

    def sync_rows(self) -> None:
        self._transfers.sync()
        self._balances.sync()

    def close(self) -> None:
        self._transfers.close()
        self._balances.close()
