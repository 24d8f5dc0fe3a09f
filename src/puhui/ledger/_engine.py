"""The in-memory state machine: columnar state, capacity management, kernels, reads.

``Engine`` is single-threaded: exactly one thread (the ledger's writer) may call its mutating
methods. It knows nothing of durability; ``_ledger.Ledger`` journals every input before it
reaches ``apply``/``pulse`` and snapshots the state this class exports.

Transfer rows and their balance rows live in append-only files (memory-mapped) when a
directory is given, or in anonymous memory otherwise (verification replays, tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _kernel as K
from ._convert import BATCH_EVENTS_MAX
from ._os import map_shared, populate_write, release, reserve, unmap
from ._types import ACCOUNT_DTYPE, BALANCE_DTYPE, RESULT_DTYPE, TRANSFER_DTYPE

PREFAULT_GROUPS_AHEAD = 4
"""How many groups' worth of rows the prefault thread maps in ahead of the writer."""

KIND_ACCOUNTS = 1
KIND_TRANSFERS = 2
KIND_PULSE = 3

Array = npt.NDArray[Any]


SLOT_BYTES = 8 << 20
"""Rows move from memory to their file a slot of this many bytes at a time."""
RING_SLOTS = 16
"""Slots of reused memory the newest rows live in (a group commit needs at most two)."""
_IO_CHUNK = 1 << 20
"""Bytes per write when a slot goes to its file (lets journal writes through in between)."""
_VERIFY_BYTES = 8 << 20
"""Bytes per read when the rows below a snapshot's count are checked against its digests."""


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


class _RowFile:
    """An append-only array of fixed-size records (rows are written once, never changed).

    Without a path, one growable array in memory (verification replays, tests).

    With a path, one array over a reserved range of addresses, in two parts. Below
    ``hot_start`` it maps the file: rows there are read from the page cache, and from the disk
    when they are not in it. From ``hot_start`` on, it maps ``ring_slots`` slots of one
    block of shared memory (a memfd), which the writer fills. When every row of the oldest slot
    is published (see ``spill``), the slot is written to the file with ``O_DIRECT`` (no page
    cache), its addresses are mapped onto the file instead (in one ``mmap`` call: a reader
    sees the old bytes or the same bytes from the file), and its memory is zeroed and mapped
    again at the end of the ring. So the writer only ever writes memory that is allocated
    already. Measured on this project's virtual machine: a fresh page — of the page cache or
    of anonymous memory — costs about 5 µs to fault in (1.3 to 5 s per GiB), which at 2 million
    transfers a second and 256 bytes of rows each took most of a core; the rows' bytes in the
    page cache also made every journal ``fdatasync`` wait behind their writeback.

    Durability does not depend on the rows (the journal has every event); ``sync`` makes the
    rows below a snapshot's count durable before the snapshot counts, and returns a digest
    (``K.rows_digest``) of each piece of ``piece_bytes`` of them, which the snapshot records
    and ``verify`` checks on opening: a row damaged on disk, old or new, is found. A piece is
    digested once, from memory, as it goes to the file whole (its rows all final, on the
    helper thread that moves them), so the writer never digests a row itself.
    """

    def __init__(
        self,
        dtype: np.dtype[Any],
        path: Path | None,
        capacity: int,
        *,
        slot_bytes: int = SLOT_BYTES,
        ring_slots: int = RING_SLOTS,
    ) -> None:
        self.dtype = dtype
        self.path = path
        self.array: Array = np.zeros(0, dtype)
        self._fd = -1
        self.piece_bytes = _IO_CHUNK
        if path is None:
            self._map_memory(max(capacity, 1024))
            return
        self._lock = threading.Lock()
        self._slot = slot_bytes
        self.piece_bytes = min(_IO_CHUNK, slot_bytes)
        self._digests: dict[int, int] = {}
        """Digests of the pieces written whole (their rows final), by piece number."""
        self._ring_slots = ring_slots
        self._ring_bytes = slot_bytes * ring_slots
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._direct_fd = -1
        with contextlib.suppress(OSError, AttributeError):  # no O_DIRECT here: buffered writes
            self._direct_fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self._memfd = os.memfd_create(f"puhui-{path.name}", os.MFD_CLOEXEC)
        os.ftruncate(self._memfd, self._ring_bytes)
        # A second, fixed view of the whole ring: the source of the file writes and of zeroing.
        self._ring_address = reserve(self._ring_bytes)
        map_shared(self._ring_address, self._ring_bytes, self._memfd, 0, populate=False)
        self._ring = _view(self._ring_address, self._ring_bytes, np.dtype(np.uint8))
        self._ring_used = False  # a fresh memfd reads as zeros
        self._reservations: list[tuple[int, int, Array]] = []  # address, bytes, array
        self._address = 0
        self._size = 0  # bytes of the current reservation (a whole number of slots)
        self.hot_start = 0  # byte offset of the first row in the ring (a whole slot)
        self._written = 0  # bytes of final rows from hot_start on already on file (whole chunks)
        self._reserve(max(capacity, 1024))

    # --- layout ------------------------------------------------------------------------------

    def _map_memory(self, capacity: int) -> None:
        grown = np.zeros(capacity, self.dtype)
        grown[: self.array.shape[0]] = self.array
        self.array = grown

    def _hot_end(self) -> int:
        return min(self.hot_start + self._ring_bytes, self._size)

    def _ring_offset(self, offset: int) -> int:
        """Where in the ring the slot holding byte ``offset`` of the rows lives."""
        return (offset // self._slot) % self._ring_slots * self._slot

    def _write_rows(self, offset: int, length: int, *, final: bool) -> None:
        """Write ``length`` bytes of rows from byte ``offset`` (within one slot) to the file;
        ``final``: every byte of it is a final row (so whole pieces are digested)."""
        self._write(self._ring_offset(offset) + offset % self._slot, offset, length, final=final)

    def _map_slot(self, offset: int, *, populate: bool) -> None:
        """Map the ring slot that holds byte ``offset`` of the rows at its place."""
        ring_offset = self._ring_offset(offset)
        map_shared(self._address + offset, self._slot, self._memfd, ring_offset, populate=populate)

    def _reserve(self, capacity: int) -> None:
        """(Re)build the array over a new reservation for ``capacity`` rows (lock held or
        no other thread yet); an earlier reservation stays mapped for views still held."""
        size = -(-capacity * self.dtype.itemsize // self._slot) * self._slot
        current = os.fstat(self._fd).st_size
        if current < size:
            # Blocks allocated now, not while rows are written (unwritten extents read as zeros).
            os.posix_fallocate(self._fd, current, size - current)
        address = reserve(size)
        self._address, self._size = address, size
        if self.hot_start > 0:
            map_shared(address, self.hot_start, self._fd, 0, populate=False)
        for offset in range(self.hot_start, self._hot_end(), self._slot):
            self._map_slot(offset, populate=False)
        self.array = _view(address, size, self.dtype)
        self._reservations.append((address, size, self.array))

    def reset(self, count: int) -> None:
        """Place the ring at row ``count``: rows below it are on file (a restored snapshot),
        the rest is zeros. Called before any row is written after opening."""
        if self._fd < 0:
            return
        with self._lock:
            end = count * self.dtype.itemsize
            self.hot_start = end - end % self._slot
            self._written = self.hot_start
            if self._ring_used:
                self._ring[:] = 0
            self._reserve(max(count, self._size // self.dtype.itemsize))
            if end > self.hot_start:  # the partial slot's rows come back from the file
                data = os.pread(self._fd, end - self.hot_start, self.hot_start)
                if len(data) != end - self.hot_start:
                    raise OSError(f"{self.path}: rows below {count} are missing from the file")
                self.array.view(np.uint8)[self.hot_start : end] = np.frombuffer(data, np.uint8)
                self._ring_used = True

    def ensure(self, rows: int, final: int) -> None:
        """Make room for ``rows`` rows in all, the first ``final`` of them written for good
        (writer thread, between batches)."""
        if rows > self.array.shape[0]:
            if self._fd < 0:
                self._map_memory(_pow2_at_least(rows + rows // 2))
                return
            with self._lock:
                self._reserve(_pow2_at_least(rows + rows // 2))
        if self._fd >= 0:
            self._ring_used = True
            end = rows * self.dtype.itemsize
            while self._hot_end() < end:  # the ring is full: move a slot out here and now
                with self._lock:
                    if self._hot_end() >= end:
                        break
                    if self.hot_start + self._slot > final * self.dtype.itemsize:
                        raise RuntimeError(
                            f"{self.path}: a batch of {rows - final} rows does not fit the "
                            f"ring of {self._ring_bytes} bytes"
                        )
                    self._advance()

    def _advance(self) -> None:
        """Move the oldest ring slot to the file and reuse its memory at the ring's end
        (lock held; every row of that slot must be final)."""
        start = self.hot_start
        ring_offset = self._ring_offset(start)
        if self._written < start + self._slot:  # what the helper has not written yet
            self._write_rows(self._written, start + self._slot - self._written, final=True)
        self._written = start + self._slot
        map_shared(self._address + start, self._slot, self._fd, start, populate=False)
        self._ring[ring_offset : ring_offset + self._slot] = 0
        self.hot_start = start + self._slot
        reused = start + self._ring_bytes
        if reused < self._size:
            self._map_slot(reused, populate=True)

    def _write(self, ring_offset: int, offset: int, length: int, *, final: bool) -> None:
        """Write ``length`` bytes of the ring to the file at ``offset`` (whole pages)."""
        for done in range(0, length, self.piece_bytes):
            size = min(self.piece_bytes, length - done)
            piece = self._ring[ring_offset + done : ring_offset + done + size]
            if final and size == self.piece_bytes and (offset + done) % size == 0:
                self._digests[(offset + done) // size] = int(K.rows_digest(piece.view(np.uint64)))
            data = piece.data
            if self._direct_fd >= 0:
                try:
                    written = os.pwrite(self._direct_fd, data, offset + done)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    os.close(self._direct_fd)  # O_DIRECT refused by this file system
                    self._direct_fd = -1
                    written = os.pwrite(self._fd, data, offset + done)
            else:
                written = os.pwrite(self._fd, data, offset + done)
            if written != size:
                raise OSError(f"{self.path}: short write ({written} of {size} bytes)")

    # --- helper threads ----------------------------------------------------------------------

    def prefault(self, first_row: int, rows: int) -> None:
        """Fault in the ring's pages for rows not yet written (the ring's first lap; later
        laps map reused slots with their page tables filled). ``MADV_POPULATE_WRITE``
        prepares pages without changing their contents. Called from a helper thread."""
        if self._fd < 0:
            return
        start = first_row * self.dtype.itemsize
        stop = min((first_row + rows) * self.dtype.itemsize, self._hot_end())
        start = max(start - start % mmap.PAGESIZE, self.hot_start)
        if stop > start:
            self._ring_used = True
            populate_write(self._address + start, stop - start)

    def spill(self, published_rows: int) -> bool:
        """One step of moving final rows to the file (a helper thread): write the next chunk
        of 1 MiB whose rows are all published, and once the oldest slot is all on file, map
        its addresses onto the file and reuse its memory. True if another step could follow.

        A chunk at a time, as groups publish rows, rather than a slot (8 MiB) at a time: each
        journal sync flushes the disk's cache, so a burst of row bytes just before one made
        that sync, and the group waiting on it, slower.
        """
        if self._fd < 0:
            return False
        published = min(published_rows * self.dtype.itemsize, self._size)
        with self._lock:
            if self._written >= self.hot_start + self._slot:
                self._advance()  # written already: only the mapping and the reuse
                return True
            chunk = min(self.piece_bytes, self.hot_start + self._slot - self._written)
            if self._written + chunk > published:
                return False
            self._write_rows(self._written, chunk, final=True)
            self._written += chunk
            return True

    def sync(self, count: int) -> Array:
        """Make the rows below ``count`` durable on file (all of them are final); returns
        their digests, one a piece (``piece_bytes``, the last one up to the count)."""
        rows_end = count * self.dtype.itemsize
        pieces = -(-rows_end // self.piece_bytes)
        digests = np.zeros(pieces, np.uint64)
        if self._fd < 0:
            data = self.array.view(np.uint8)
            for i in range(pieces):
                start = i * self.piece_bytes
                stop = min(start + self.piece_bytes, rows_end)
                digests[i] = K.rows_digest(data[start:stop].view(np.uint64))
            return digests
        with self._lock:
            end = -(-rows_end // mmap.PAGESIZE) * mmap.PAGESIZE
            end = min(end, self._hot_end())
            offset = self._written  # rows below it are on file already
            while offset < end:  # slot by slot: a ring
                length = min(self._slot - offset % self._slot, end - offset)
                self._write_rows(offset, length, final=False)
                offset += length
            os.fdatasync(self._fd)
            for i in range(pieces):
                start = i * self.piece_bytes
                stop = min(start + self.piece_bytes, rows_end)
                known = self._digests.get(i)
                if known is not None and start + self.piece_bytes <= min(stop, self._written):
                    digests[i] = known  # written whole, digested then
                elif start >= self.hot_start:  # in the ring (a piece never spans a slot)
                    at = self._ring_offset(start) + start % self._slot
                    digests[i] = K.rows_digest(self._ring[at : at + stop - start].view(np.uint64))
                else:  # on file only (a piece the snapshot ends in, moved out since)
                    piece = os.pread(self._fd, stop - start, start)
                    digests[i] = K.rows_digest(np.frombuffer(piece, np.uint64))
        return digests

    def verify(
        self, count: int, digests: Array, each: Callable[[Array, int], None] | None = None
    ) -> bool:
        """Whether the rows below ``count`` as the file holds them have these digests (those
        ``sync`` gave a snapshot). Read with ``O_DIRECT`` into one reused buffer: no page
        cache filled. ``each(rows, first_row)`` is given every piece of rows read (whole
        rows; the view is reused after the call): what else opening needs of them is done
        on the same pass. On success the digests are kept for the snapshots that follow."""
        rows_end = count * self.dtype.itemsize
        if digests.shape[0] != -(-rows_end // self.piece_bytes):
            return False
        if self._fd < 0:
            if not np.array_equal(self.sync(count), digests):
                return False
            if each is not None:
                each(self.array[:count], 0)
            return True
        found = np.zeros_like(digests)
        step = max(_VERIFY_BYTES - _VERIFY_BYTES % self.piece_bytes, self.piece_bytes)
        buffer = mmap.mmap(-1, -(-step // mmap.PAGESIZE) * mmap.PAGESIZE)
        window = memoryview(buffer)
        view = np.frombuffer(window, np.uint8)
        fd = -1
        try:
            with contextlib.suppress(OSError, AttributeError):
                fd = os.open(self.path or "", os.O_RDONLY | os.O_DIRECT)
            if fd < 0:
                fd = os.open(self.path or "", os.O_RDONLY)
            for start in range(0, rows_end, step):
                want = min(step, rows_end - start)
                length = -(-want // mmap.PAGESIZE) * mmap.PAGESIZE
                try:
                    got = os.preadv(fd, [window[:length]], start)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    os.close(fd)  # O_DIRECT refused here: a plain read
                    fd = os.open(self.path or "", os.O_RDONLY)
                    got = os.preadv(fd, [window[:length]], start)
                if got < want:
                    return False  # the file is shorter than the rows
                for at in range(0, want, self.piece_bytes):
                    size = min(self.piece_bytes, want - at)
                    found[(start + at) // self.piece_bytes] = K.rows_digest(
                        view[at : at + size].view(np.uint64)
                    )
                if each is not None:
                    each(view[:want].view(self.dtype), start // self.dtype.itemsize)
        except OSError:
            return False
        finally:
            if fd >= 0:
                os.close(fd)
            del view
            with contextlib.suppress(BufferError):
                window.release()
                buffer.close()
        if not np.array_equal(found, digests):
            return False
        whole = rows_end // self.piece_bytes
        self._digests.update((i, int(found[i])) for i in range(whole))
        return True

    def close(self) -> None:
        self.array = np.zeros(0, self.dtype)
        if self._fd < 0:
            return
        while self._reservations:
            address, size, array = self._reservations.pop()
            # Held only here (this variable, the call's argument): give the addresses back.
            # Otherwise a view a reader still holds reads zeros instead of faulting.
            if sys.getrefcount(array) <= 2:
                unmap(address, size)
            else:
                release(address, size)
            del array
        self._ring = np.zeros(0, np.uint8)
        unmap(self._ring_address, self._ring_bytes)
        os.close(self._memfd)
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
        os.close(self._fd)
        self._fd = -1


_kernels_loading: threading.Thread | None = None
_kernels_lock = threading.Lock()


def load_kernels_in_background() -> None:
    """Start loading every compiled kernel on a thread of its own, once per process (numba
    loads a kernel's machine code from its cache at its first call, and its own machinery
    at the very first: seconds, nearly all of it Python under the GIL). Opening a ledger
    starts it first thing, so that it overlaps the reads of the journal and the row files
    (which release the GIL); ``Engine.warm_up`` then finds the kernels loaded. The kernels
    are called on empty arrays of the types the engine gives them (an in-memory engine's
    ``warm_up``, and the kernels that check the row files on opening)."""
    global _kernels_loading
    with _kernels_lock:
        if _kernels_loading is not None:
            return

        def load() -> None:
            with contextlib.suppress(Exception):  # the engine's own warm-up loads them then
                K.rows_digest(np.zeros(4, np.uint64))
                K.index_insert_rows(np.zeros(16, np.uint64), np.zeros(0, TRANSFER_DTYPE), 0)
                K.index_rebuild(np.zeros(16, np.uint64), np.zeros(0, TRANSFER_DTYPE), 0)
                K.index_rebuild(np.zeros(16, np.uint64), np.zeros(0, ACCOUNT_DTYPE), 0)
                engine = Engine(transfers_capacity=1024)
                engine.warm_up()
                engine.close()

        _kernels_loading = threading.Thread(target=load, name="puhui-ledger-kernels", daemon=True)
        _kernels_loading.start()


def _touched(array: Array) -> Array:
    """Fault in all of a new array's pages now, at once (``MADV_POPULATE_WRITE``). The id
    index is written at random places: left to the writer, its first group after opening
    or growing took one huge-page fault after another (~2.8 ms each here), over 300 ms."""
    if array.nbytes >= 1 << 20:
        start = array.ctypes.data
        first = start - start % mmap.PAGESIZE
        populate_write(first, start + array.nbytes - first)
    return array


def _view(address: int, size: int, dtype: np.dtype[Any]) -> Array:
    """A numpy array over ``size`` bytes of mapped memory at ``address``."""
    buffer = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
    view: Array = np.frombuffer(buffer, dtype=dtype)
    return view


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


def _grown(array: Array, rows: int, fill: int) -> Array:
    """``array`` with room for at least ``rows`` rows (a power of two, 1,024 at least): its
    rows kept, the new ones ``fill``."""
    grown = np.full((_pow2_at_least(max(rows, 1024)), *array.shape[1:]), fill, array.dtype)
    grown[: array.shape[0]] = array
    return grown


class AccountChains:
    """Each account's transfers, newest first: a chain through the transfer rows
    (``K.chain_transfers``), so that one account's transfers and balances are read along it
    (``K.scan_account_chain``) rather than by scanning every transfer of the ledger.

    In memory only, 16 bytes a transfer and 8 an account. Linked on the writer's thread
    between groups (only final rows), at most ``rows_max`` rows a read (``catch_up``): the
    rows not linked yet — at first all of them, after a burst of writes the newest — are
    scanned as before, so no read waits for the whole ledger to be linked. Rows are never
    changed once written, so a row is linked once."""

    def __init__(self) -> None:
        self.count = 0
        """Transfer rows linked so far."""
        self.active = False
        """Whether per-account reads began (only then does the writer link rows when idle:
        a ledger nobody reads per account spends nothing on its chains)."""
        self.last: Array = np.full(0, -1, np.int64)
        self.prev: Array = np.full((0, 2), -1, np.int64)
        self.links: Array = np.zeros(0, np.int64)
        """Rows linked of each account (how long its chain is)."""

    def behind(self, engine: Engine) -> bool:
        """Whether per-account reads began and rows are not linked yet."""
        return self.active and self.count < engine.n_transfers

    def catch_up(self, engine: Engine, rows_max: int) -> None:
        """Link at most ``rows_max`` more of the engine's transfer rows."""
        accounts, rows = engine.n_accounts, min(engine.n_transfers, self.count + rows_max)
        if self.last.shape[0] < accounts:
            self.last = _grown(self.last, accounts, -1)
            self.links = _grown(self.links, accounts, 0)
        if rows == self.count:
            return
        if self.prev.shape[0] < rows:
            self.prev = _grown(self.prev, rows, -1)
        K.chain_transfers(
            engine.transfers,
            self.count,
            rows,
            engine.acct_slots,
            engine.accounts,
            self.last,
            self.prev,
            self.links,
        )
        self.count = rows


class Engine:
    def __init__(
        self,
        directory: Path | None = None,
        *,
        transfers_capacity: int = 1 << 16,
        group_rows_max: int = 4 * BATCH_EVENTS_MAX,
    ) -> None:
        """``group_rows_max``: the most transfers one ``apply`` call may bring (sizes the
        ring of memory the newest rows are written to)."""
        # Room in the ring for two of the largest groups besides the slot being moved out.
        group_bytes = group_rows_max * TRANSFER_DTYPE.itemsize  # = 2 balance rows a transfer
        slots = max(RING_SLOTS, -(-2 * group_bytes // SLOT_BYTES) + 1)
        self.counters = np.zeros(K.COUNTERS, np.uint64)
        self.accounts: Array = np.zeros(1024, ACCOUNT_DTYPE)
        self.acct_slots: Array = np.zeros(2048, np.uint64)
        self._transfers = _RowFile(
            TRANSFER_DTYPE,
            None if directory is None else directory / "transfers.dat",
            transfers_capacity,
            ring_slots=slots,
        )
        self._balances = _RowFile(
            BALANCE_DTYPE,
            None if directory is None else directory / "balances.dat",
            2 * transfers_capacity,
            ring_slots=slots,
        )
        self.xfer_state: Array = _touched(np.zeros(transfers_capacity, np.uint8))
        self.xfer_slots: Array = _touched(
            np.zeros(_pow2_at_least(2 * transfers_capacity), np.uint64)
        )
        self.retired: Array = np.zeros((64, 2), np.uint64)
        self.heap_deadline: Array = np.zeros(64, np.uint64)
        self.heap_ts: Array = np.zeros(64, np.uint64)
        self.heap_row: Array = np.zeros(64, np.int64)
        self._expired_rows: Array = np.zeros(64, np.int64)
        self._prefaulted_until = 0  # rows whose pages are mapped in (prefault thread)
        self._published = 0  # transfer rows that are final (written by finished batches)
        self._image_state: Array = np.zeros(0, np.uint8)  # reused by ``image``
        # Undo log for linked chains; a chain never spans requests, so one batch bounds it.
        self._undo_rows: Array = np.zeros(2 * BATCH_EVENTS_MAX + 2, np.int64)
        self._undo_accounts: Array = np.zeros(2 * BATCH_EVENTS_MAX + 2, ACCOUNT_DTYPE)
        self._undo_state_rows: Array = np.zeros(BATCH_EVENTS_MAX + 1, np.int64)
        self._undo_state_values: Array = np.zeros(BATCH_EVENTS_MAX + 1, np.uint8)
        self._undo_counts: Array = np.zeros(3, np.int64)
        self.chains = AccountChains()
        """Each account's transfers, for the per-account reads (built when first read)."""

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

    def expect_transfers(self, extra: int) -> None:
        """Make room now for ``extra`` more transfers (a replay about to bring at most that
        many): the two-phase states and the id index, each grown once instead of doubling
        as the replay goes (each growth of the index fills a new one, 512 MiB at 10M
        transfers, and indexes every row again, read back from the files; the row files
        grow by address reservations, which cost little). Writer thread, before ``apply``."""
        self._room_for_transfers(self.n_transfers + extra)

    def _room_for_transfers(self, need: int) -> None:
        """The two-phase states and the id index sized for ``need`` transfers (the index
        at most half full), each grown once to a power of two with room to spare."""
        if need > self.xfer_state.shape[0]:
            grown = _touched(np.zeros(_pow2_at_least(need + need // 2), np.uint8))
            grown[: self.n_transfers] = self.xfer_state[: self.n_transfers]
            self.xfer_state = grown
        if 2 * need > self.xfer_slots.shape[0]:
            self.xfer_slots = _touched(np.zeros(_pow2_at_least(4 * need), np.uint64))
            if self.n_transfers:  # (zeros already: no pass over the new index for nothing)
                K.index_rebuild(self.xfer_slots, self._transfers.array, self.n_transfers)

    def _ensure_transfers(self, extra: int) -> None:
        need = self.n_transfers + extra
        self._transfers.ensure(need, self.n_transfers)
        self._balances.ensure(2 * need, 2 * self.n_transfers)
        self._room_for_transfers(need)
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
            self._published = self.n_transfers
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
        no_heap = counters.copy()
        no_heap[K.C_HEAP] = 0  # pops nothing
        K.drop_stale_deadlines(
            self.heap_deadline,
            self.heap_ts,
            self.heap_row,
            self.transfers,
            self.xfer_state,
            no_heap,
        )
        K.find_rows(self.acct_slots, self.accounts, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        # The per-account reads' kernels (``_ledger._TransfersRead``), with its argument types.
        last, prev, zero = np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.uint64(0)
        K.chain_transfers(self.transfers, 0, 0, self.acct_slots, self.accounts, last, prev, last)
        filters = (zero, zero, zero, 0, 0, 0, zero, zero, 0, False)  # limit 0: reads nothing
        K.scan_account_chain(self.transfers, prev, -1, zero, zero, True, True, *filters)
        K.scan_transfers(self.transfers, 0, zero, zero, True, True, True, *filters)
        K.timestamp_rows(self.transfers, 0, zero, zero)  # and the queries' (``query_transfers``)
        self.prefault_after(0, BATCH_EVENTS_MAX)

    def due_count(self, now: int, limit: int) -> int:
        """How many pending transfers a pulse at ``now`` would expire (at most ``limit``)."""
        n = int(self.counters[K.C_HEAP])
        if n == 0 or int(self.heap_deadline[0]) > now:
            return 0
        return min(limit, self._count_due(now, self.counters))

    def next_deadline(self) -> int | None:
        """The deadline of the next pending transfer to expire, if any. Entries of transfers
        posted, voided or rolled back before their deadline are dropped on the way: else the
        writer woke for such a deadline every millisecond once it passed (nothing is due, so
        no pulse popped it), and never linked the accounts' chains while idle."""
        if int(self.counters[K.C_HEAP]) == 0:
            return None
        K.drop_stale_deadlines(
            self.heap_deadline,
            self.heap_ts,
            self.heap_row,
            self._transfers.array,
            self.xfer_state,
            self.counters,
        )
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

    def image(self, *, reuse: bool = False) -> StateImage:
        """A copy of the state for a snapshot (writer thread). With ``reuse``, its
        ``xfer_state`` (a byte per transfer) goes to a buffer the next such call reuses, so
        the snapshot written from it must be finished by then (the background snapshots: one
        at a time). A fresh copy cost the writer ~13 ms at 10M transfers, nearly all of it
        faulting in new pages."""
        n_heap = int(self.counters[K.C_HEAP])
        n = self.n_transfers
        used = (self.retired[:, 0] != 0) | (self.retired[:, 1] != 0)
        if not reuse:
            xfer_state = self.xfer_state[:n].copy()
        else:
            if self._image_state.shape[0] < n:
                self._image_state = _touched(np.zeros(_pow2_at_least(n + n // 2), np.uint8))
            xfer_state = self._image_state[:n]
            np.copyto(xfer_state, self.xfer_state[:n])
        return StateImage(
            counters=self.counters.copy(),
            accounts=self.accounts[: self.n_accounts].copy(),
            xfer_state=xfer_state,
            heap_deadline=self.heap_deadline[:n_heap].copy(),
            heap_ts=self.heap_ts[:n_heap].copy(),
            heap_row=self.heap_row[:n_heap].copy(),
            retired=self.retired[used].copy(),
        )

    def restore(self, image: StateImage, index: Array | None = None) -> None:
        """Load a snapshot image. Transfer rows below its count must already be on file;
        ``index``: their id index if ``check_rows`` built it (else it is built here)."""
        self.chains = AccountChains()
        counters = image.counters.copy()
        n_accounts = int(counters[K.C_ACCOUNTS])
        n_transfers = int(counters[K.C_TRANSFERS])
        self.counters = np.zeros(K.COUNTERS, np.uint64)
        self._transfers.reset(n_transfers)
        self._balances.reset(2 * n_transfers)
        self._published = n_transfers
        self._ensure_accounts(n_accounts)
        self.accounts[:n_accounts] = image.accounts
        self.counters[K.C_ACCOUNTS] = n_accounts
        size = max(self.xfer_slots.shape[0], _pow2_at_least(4 * max(n_transfers, 1)))
        if index is None or index.shape[0] != size:
            index = _touched(np.zeros(size, np.uint64))
            K.index_rebuild(index, self._transfers.array, n_transfers)
        # In place before ``_ensure_transfers``, which would otherwise allocate (and fault in)
        # one more index of the same size for nothing (512 MiB at 10M transfers).
        self.xfer_slots = index
        self._ensure_transfers(n_transfers)
        self.counters[K.C_TRANSFERS] = n_transfers
        self.xfer_state[:n_transfers] = image.xfer_state
        self.acct_slots = np.zeros(_pow2_at_least(4 * max(n_accounts, 1)), np.uint64)
        K.index_rebuild(self.acct_slots, self.accounts, n_accounts)
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

    def write_back_rows(self) -> bool:
        """One step of moving rows from memory to their files (any thread): the oldest ring
        slot whose rows are all final, if there is one. True if more is left."""
        published = self._published
        more = self._transfers.spill(published)
        return self._balances.spill(2 * published) or more

    def sync_rows(self, image: StateImage) -> tuple[Array, Array]:
        """Make the rows below ``image``'s transfer count durable on file (any thread);
        returns the digests of the transfer rows and of the balance rows (``_RowFile.sync``),
        which a snapshot records."""
        count = int(image.counters[K.C_TRANSFERS])
        return self._transfers.sync(count), self._balances.sync(2 * count)

    def rows_match(self, count: int, transfer_digests: Array, balance_digests: Array) -> bool:
        """Whether the row files hold, below ``count`` transfers, exactly the rows a snapshot
        recorded the digests of (``sync_rows``): every row is read and checked, so a row lost,
        replaced or damaged on disk, however old, is found."""
        return self.check_rows(count, transfer_digests, balance_digests) is not None

    def check_rows(
        self, count: int, transfer_digests: Array, balance_digests: Array
    ) -> Array | None:
        """``rows_match``, and the id index of those transfer rows, built on the same pass
        (for ``restore``; None if the rows do not match). The balance rows are read and
        checked on a thread of their own meanwhile (both files' reads release the GIL, and
        so do the kernels): one pass over each file, none through the page cache."""
        slots = _touched(
            np.zeros(max(self.xfer_slots.shape[0], _pow2_at_least(4 * max(count, 1))), np.uint64)
        )

        def index(rows: Array, first_row: int) -> None:
            K.index_insert_rows(slots, rows, first_row)

        balances: list[bool] = []
        checker = threading.Thread(
            target=lambda: balances.append(self._balances.verify(2 * count, balance_digests)),
            name="puhui-ledger-check-balances",
            daemon=True,
        )
        checker.start()
        try:
            transfers = self._transfers.verify(count, transfer_digests, index)
        finally:
            checker.join()
        return slots if transfers and balances == [True] else None

    def close(self) -> None:
        self._transfers.close()
        self._balances.close()
