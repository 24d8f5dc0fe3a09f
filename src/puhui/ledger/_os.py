"""Linux calls the standard library lacks, through ctypes (each a no-op elsewhere).

ctypes releases the GIL for the length of each call, so helper threads can wait in them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
