"""Rate limits shared by the worker processes of one server: the per-key token buckets in a
table of fixed size in a file every worker maps into memory (``SharedRateLimiter``).

With a ``RateLimiter`` per process, each of N workers would grant a key its whole burst and
rate: N times its limit. Here the parent creates the table once in its run directory
(``SharedRateLimiter.create``) and each worker opens it by path (``SharedRateLimiter.open``);
a ``take`` holds an exclusive ``flock`` of the file for the few microseconds of reading and
writing one bucket.

The file: a header of ``HEADER_BYTES`` (magic, layout version, slots, rate, burst), then
``slots`` buckets of ``SLOT_BYTES`` each — the key's 64-bit hash (0: an empty slot), its
tokens (float64) and the time of its last refill (int64 ns), little-endian. A key's bucket
lives in one of the ``probe_slots`` slots from its home slot (its hash modulo the table):
found there, or else put in an empty slot or one whose bucket has refilled to the brim (the
same as no bucket: ``RateLimiter._forget_full``'s rule). When the key's slots all hold
other keys' buckets that are not full, the key shares its home slot's bucket (always that
one): the two keys together get one key's limit until a slot frees — never an error, never
everyone refused, and memory never grows. Size the table at a few times the keys active at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import weakref
from pathlib import Path

from puhui.clock import Clock

from ._guards import NS_PER_S
from ._problems import RateLimitedError

MAGIC = b"PUHUIRL\x00"
LAYOUT_VERSION = 1
HEADER = struct.Struct("<8sIIdq")
"""Magic, layout version, slots, rate_per_s, burst (then zeros up to ``HEADER_BYTES``)."""
HEADER_BYTES = 64
SLOT = struct.Struct("<Qdq")
"""A bucket: key hash (0: empty), tokens, last refill (ns)."""
SLOT_BYTES = SLOT.size
probe_slots = 8
"""Slots a key's bucket may live in, from its home slot on (unit: slots)."""
shared_rate_slots_default = 262_144
"""Buckets of a table created without ``slots`` (6 MiB: a few times ``rate_buckets_max``)."""
shared_rate_slots_max = 1 << 24
"""Most buckets a table may have (384 MiB)."""


class SharedRateLimiter:
    """A token bucket per API key, shared by every process that opened the same table:
    ``burst`` tokens, refilled at ``rate_per_s`` (both the table's). The same interface and
    the same answers as ``RateLimiter`` (while the table has room; see the module)."""

    def __init__(self, path: Path, clock: Clock, fd: int, table: mmap.mmap) -> None:
        self.path = path
        self.clock = clock
        _, _, slots, rate_per_s, burst = HEADER.unpack_from(table, 0)
        self.slots: int = slots
        self.rate_per_s: float = rate_per_s
        self.burst: int = burst
        self._window = min(probe_slots, self.slots)
        self._homes = self.slots - self._window + 1
        self._slots_of_window = struct.Struct("<" + "Qdq" * self._window)
        self._fd = [fd]
        self._table = table
        self._lock = threading.Lock()
        weakref.finalize(self, _close, self._fd, table)
        _LIMITERS.add(self)

    @classmethod
    def create(
        cls,
        path: Path,
        rate_per_s: float,
        burst: int,
        *,
        slots: int = shared_rate_slots_default,
    ) -> None:
        """Write an empty table at ``path`` (mode 0600; an older file there is replaced, at
        once: a worker never sees half a table). The parent calls this before starting the
        workers, with ``ApiOptions.rate_per_key_per_s`` and ``rate_burst_requests``."""
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError("rate_per_s must be positive")
        if burst <= 0:
            raise ValueError("burst must be positive")
        if not 0 < slots <= shared_rate_slots_max:
            raise ValueError(f"slots must be 1 to {shared_rate_slots_max}")
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, HEADER_BYTES + slots * SLOT_BYTES)  # zeros: every slot empty
            header = HEADER.pack(MAGIC, LAYOUT_VERSION, slots, float(rate_per_s), burst)
            os.pwrite(fd, header, 0)
        except BaseException:
            os.close(fd)
            partial.unlink()
            raise
        os.close(fd)
        os.replace(partial, path)

    @classmethod
    def open(cls, path: Path, clock: Clock) -> SharedRateLimiter:
        """The table ``create`` wrote at ``path``, mapped into this process (a worker calls
        this once). A file that is not such a table is refused with ``ValueError``."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise ValueError(
                    f"{path} is not a rate-limit table: {size} bytes, shorter than the header"
                )
            table = mmap.mmap(fd, size)
            try:
                _check(path, table, size)
            except BaseException:
                table.close()
                raise
        except BaseException:
            os.close(fd)
            raise
        return cls(path, clock, fd, table)

    def take(self, key_id: str) -> None:
        """Spend one token of ``key_id``'s bucket, or raise ``RateLimitedError`` with the
        whole seconds to wait (``retry_after_s``)."""
        key = _key_hash(key_id)
        first = HEADER_BYTES + (key % self._homes) * SLOT_BYTES
        rate, burst = self.rate_per_s, float(self.burst)
        with self._lock:  # the file's lock is per open file: one thread of ours at a time
            fcntl.flock(self._fd[0], fcntl.LOCK_EX)
            try:
                # Read under the lock: a time read before it could be older than the one
                # another process just wrote, and its refill counted twice.
                now = self.clock.now_ns()
                window = self._slots_of_window.unpack_from(self._table, first)
                at = _find(window, key, now, rate, burst)
                owner, tokens, last_ns = window[3 * at : 3 * at + 3]
                if owner != key and (owner == 0 or _refilled(tokens, last_ns, now, rate) >= burst):
                    owner, tokens, last_ns = key, burst, now  # a slot of its own, a full bucket
                elapsed_s = max(0, now - last_ns) / NS_PER_S
                tokens = min(burst, tokens + elapsed_s * rate)
                allowed = tokens >= 1.0
                left = tokens - 1.0 if allowed else tokens
                SLOT.pack_into(self._table, first + at * SLOT_BYTES, owner, left, now)
            finally:
                fcntl.flock(self._fd[0], fcntl.LOCK_UN)
        if not allowed:
            wait_s = max(1, math.ceil((1.0 - tokens) / rate))
            raise RateLimitedError("too many requests for this key", retry_after_s=wait_s)

    def close(self) -> None:
        """Unmap the table and close the file (the table stays for the other processes)."""
        _close(self._fd, self._table)

    def _after_fork(self) -> None:
        """In a child of ``os.fork``: a descriptor of its own (the inherited one shares the
        parent's ``flock``: parent and child would not exclude each other)."""
        self._lock = threading.Lock()
        if self._fd[0] >= 0:
            os.close(self._fd[0])
            self._fd[0] = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)


def _find(window: tuple[int | float, ...], key: int, now: int, rate: float, burst: float) -> int:
    """The slot of ``window`` (index) for ``key``: its own; else the first empty one or the
    first whose bucket has refilled to the brim; else the first (its home slot), shared
    with that slot's key: always the same one, so the two keys together get one key's
    limit. (Sharing the fullest slot instead let one key drain each neighbour in turn.)"""
    for at in range(len(window) // 3):
        owner = window[3 * at]
        if owner == key:
            return at
    for at in range(len(window) // 3):
        owner = window[3 * at]
        if owner == 0:
            return at
        tokens = _refilled(float(window[3 * at + 1]), int(window[3 * at + 2]), now, rate)
        if tokens >= burst:
            return at
    return 0


def _refilled(tokens: float, last_ns: int, now: int, rate: float) -> float:
    return tokens + max(0, now - last_ns) / NS_PER_S * rate


def _key_hash(key_id: str) -> int:
    """A 64-bit hash of ``key_id``, the same in every process (Python's ``hash`` of a str is
    not: it is seeded per process), never 0 (an empty slot)."""
    digest = hashlib.blake2b(key_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def _check(path: Path, table: mmap.mmap, size: int) -> None:
    magic, version, slots, rate_per_s, burst = HEADER.unpack_from(table, 0)
    if magic != MAGIC:
        raise ValueError(f"{path} is not a rate-limit table (its first bytes are not {MAGIC!r})")
    if version != LAYOUT_VERSION:
        raise ValueError(f"{path} is a rate-limit table of layout {version}, not {LAYOUT_VERSION}")
    if not 0 < slots <= shared_rate_slots_max:
        raise ValueError(
            f"{path}: a rate-limit table of {slots} slots (1 to {shared_rate_slots_max})"
        )
    if size != HEADER_BYTES + slots * SLOT_BYTES:
        raise ValueError(
            f"{path}: a rate-limit table of {slots} slots is {HEADER_BYTES + slots * SLOT_BYTES}"
            f" bytes, not {size} (cut short or grown)"
        )
    if not (math.isfinite(rate_per_s) and rate_per_s > 0) or burst <= 0:
        raise ValueError(f"{path}: a rate-limit table needs a positive rate and burst")


def _close(fd: list[int], table: mmap.mmap) -> None:
    if not table.closed:
        table.close()
    if fd[0] >= 0:
        os.close(fd[0])
        fd[0] = -1


_LIMITERS: weakref.WeakSet[SharedRateLimiter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for limiter in list(_LIMITERS):
        limiter._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
