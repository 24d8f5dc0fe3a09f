"""Vectorised lookup of a unicode column in a fixed set of strings (a hash table in numba).

``np.searchsorted`` on unicode arrays compares strings character by character at every step
of every search (measured: 1.25 ms per 10,000 ids against a 2,000-entry list). Here each value
is hashed once over its UCS-4 code points (numpy stores ``<U`` arrays as padded uint32) and
looked up in an open-addressing table (at most half full, linear probing), compared in full
only on a hash match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._kernel import jit

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_FMIX = np.uint64(0xFF51AFD7ED558CCD)


def as_chars(column: np.ndarray) -> np.ndarray:
    """A unicode array's code points, one row per value (zero-padded)."""
    column = np.ascontiguousarray(column)
    width = column.dtype.itemsize // 4
    if width == 0 or column.size == 0:
        return np.zeros((column.shape[0], 1), dtype=np.uint32)
    return column.view(np.uint32).reshape(column.shape[0], width)


@jit
def _hash_row(chars: Any, i: int) -> Any:
    h = _FNV_OFFSET
    for k in range(chars.shape[1]):
        c = chars[i, k]
        if c == 0:
            break
        h = (h ^ np.uint64(c)) * _FNV_PRIME
    # FNV's low bits mix poorly and the table uses them: finish as MurmurHash3's fmix64.
    h ^= h >> np.uint64(33)
    h *= _FMIX
    h ^= h >> np.uint64(33)
    return h


@jit
def _rows_equal(a: Any, i: int, b: Any, j: int) -> bool:
    width = max(a.shape[1], b.shape[1])
    for k in range(width):
        x = a[i, k] if k < a.shape[1] else 0
        y = b[j, k] if k < b.shape[1] else 0
        if x != y:
            return False
        if x == 0:
            return True
    return True


@jit
def _hashes(chars: Any, out: Any) -> None:
    for i in range(chars.shape[0]):
        out[i] = _hash_row(chars, i)


@jit
def _build(hashes: Any, slots: Any, slot_hashes: Any) -> None:
    mask = slots.shape[0] - 1
    for j in range(hashes.shape[0]):
        k = np.int64(hashes[j] & np.uint64(mask))
        while slots[k] >= 0:
            k = (k + 1) & mask
        slots[k] = j
        slot_hashes[k] = hashes[j]


@jit
def _lookup(chars: Any, slots: Any, slot_hashes: Any, table: Any, out: Any) -> None:
    mask = slots.shape[0] - 1
    for i in range(chars.shape[0]):
        h = _hash_row(chars, i)
        k = np.int64(h & np.uint64(mask))
        found = -1
        while slots[k] >= 0:
            if slot_hashes[k] == h and _rows_equal(chars, i, table, slots[k]):
                found = slots[k]
                break
            k = (k + 1) & mask
        out[i] = found


class StringTable:
    """A fixed sequence of strings; ``index_of(column)`` finds each value's position or -1."""

    def __init__(self, strings: Sequence[str]) -> None:
        self.strings = tuple(strings)
        array = np.array(self.strings, dtype=str) if self.strings else np.array([], dtype="<U1")
        self._chars = as_chars(array)
        hashes = np.empty(len(self.strings), dtype=np.uint64)
        _hashes(self._chars, hashes)
        size = 1 << max(4, (2 * len(self.strings)).bit_length())  # at most half full
        self._slots = np.full(size, -1, dtype=np.int64)
        self._slot_hashes = np.zeros(size, dtype=np.uint64)
        _build(hashes, self._slots, self._slot_hashes)

    def __len__(self) -> int:
        return len(self.strings)

    def index_of(self, column: np.ndarray) -> np.ndarray:
        """For each value of a unicode array, its index in the table, or -1 (int64)."""
        out = np.empty(column.shape[0], dtype=np.int64)
        if not self.strings:
            out.fill(-1)
            return out
        _lookup(as_chars(column), self._slots, self._slot_hashes, self._chars, out)
        return out
