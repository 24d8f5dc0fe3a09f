"""Linux calls the standard library lacks, through ctypes (each a no-op elsewhere).

ctypes releases the GIL for the length of each call, so helper threads can wait in them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

_MADV_POPULATE_WRITE = 23  # Linux 5.14+
_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_WHO_PROCESS = 1
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}.get(platform.machine())

_LIBC: ctypes.CDLL | None
try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def lower_io_priority() -> bool:
    """Give the calling thread idle I/O priority: its disk writes yield to everyone else's.

    Returns False where the call is unknown or refused.
    """
    if _LIBC is None or _SYS_IOPRIO_SET is None:
        return False
    ioprio = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    result: int = _LIBC.syscall(
        _SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, threading.get_native_id(), ioprio
    )
    return result == 0


def fsync_path(path: os.PathLike[str] | str) -> None:
    """``fsync`` a file or a directory by name (a directory: the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: os.PathLike[str] | str, data: bytes) -> None:
    """Replace the file ``path`` by ``data`` so that a crash leaves the old file or the new
    one, never a name without its bytes: write a temporary file beside it, ``fsync`` it,
    rename it into place, ``fsync`` the directory."""
    target = os.fspath(path)
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    fsync_path(os.path.dirname(target) or ".")


def write_back(fd: int, offset: int, length: int) -> bool:
    """Write the dirty pages of a file range to the disk and wait (no metadata, no flush of
    the disk's cache: pacing, not durability). False where ``sync_file_range`` is missing."""
    if _LIBC is None:
        return False
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
    result: int = _LIBC.sync_file_range(
        fd, ctypes.c_int64(offset), ctypes.c_int64(length), ctypes.c_uint(flags)
    )
    return result == 0


def populate_write(address: int, length: int) -> None:
    """Fault in the pages of a shared mapping for writing (``MADV_POPULATE_WRITE``); a hint."""
    if _LIBC is not None:
        _LIBC.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), _MADV_POPULATE_WRITE)


# --- address-space layout for the row files (see ``_engine._RowFile``) -------------------------

_PROT_NONE = 0
_PROT_RW = 0x1 | 0x2
_MAP_SHARED = 0x01
_MAP_PRIVATE = 0x02
_MAP_FIXED = 0x10
_MAP_ANONYMOUS = 0x20
_MAP_NORESERVE = 0x4000
_MAP_POPULATE = 0x8000
_MAP_FAILED = ctypes.c_void_p(-1).value

if _LIBC is not None:
    _LIBC.mmap.restype = ctypes.c_void_p
    _LIBC.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    _LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _mmap(address: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    if _LIBC is None:  # pragma: no cover - not Linux
        raise OSError("mmap through libc is not available here")
    result = _LIBC.mmap(address or None, length, prot, flags, fd, offset)
    if result is None or result == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap: {os.strerror(error)}")
    return int(result)


def reserve(length: int) -> int:
    """Reserve ``length`` bytes of address space (inaccessible, no memory); returns it."""
    return _mmap(0, length, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)


def map_shared(address: int, length: int, fd: int, offset: int, *, populate: bool) -> None:
    """Map ``length`` bytes of ``fd`` from ``offset`` at exactly ``address`` (read-write,
    shared), replacing what was there in one step: a thread reading those addresses sees the
    old mapping or the new one, never a hole. ``populate`` also fills the page tables now."""
    flags = _MAP_SHARED | _MAP_FIXED | (_MAP_POPULATE if populate else 0)
    _mmap(address, length, _PROT_RW, flags, fd, offset)


def release(address: int, length: int) -> None:
    """Replace a range by fresh, untouched anonymous memory (reads give zeros): the file and
    shared memory behind it are let go, while a stale view into it stays harmless."""
    flags = _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
    _mmap(address, length, _PROT_RW, flags, -1, 0)


def unmap(address: int, length: int) -> None:
    """Give a range of addresses back (nothing may use them any more)."""
    if _LIBC is not None and _LIBC.munmap(address, length) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"munmap: {os.strerror(error)}")
