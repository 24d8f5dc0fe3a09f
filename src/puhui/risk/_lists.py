"""Block and allow lists (customers, devices, cards, IPs, merchants) with expiry and reason.

Entries are looked up one at a time (``lookup``) or a whole batch column at once
(``contains``: a numba hash-table lookup in the list's ``ExpiryTable``, then each found
entry's expiry checked against the clock; measured 0.18 ms per 10,000 ids against 2,000
entries, against 1.4 ms for a Python set, 1.5 ms for ``np.searchsorted`` on the sorted values
and 5.3 ms for ``np.isin``). The table is built at a list's first ``contains`` and then
changed in place by each add or remove (O(1) amortised), not built again. Expired entries
never match; they stay stored until removed or ``purge_expired`` is called. Persistence is one JSON
file written atomically (a temporary file renamed over the old one).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from puhui.clock import Clock

from ._errors import RiskListError
from ._strings import ExpiryTable

LIST_NAMES: tuple[str, ...] = tuple(
    f"{kind}_{what}"
    for kind in ("allowed", "blocked")
    for what in ("cards", "customers", "devices", "ips", "merchants")
)
"""The lists every engine has: ``blocked_devices``, ``allowed_customers``, …"""

list_value_chars_max = 200
"""Longest list value (unit: characters)."""

list_reason_chars_max = 500
"""Longest reason (unit: characters)."""

expires_at_ns_max = (1 << 63) - 1
"""Latest expiry (unit: ns since the epoch): the store keeps it as a signed 64-bit number."""

list_entries_max = 10_000_000
"""Most entries in one list (unit: entries)."""

_FILE_FORMAT = 1
_NEVER = np.iinfo(np.int64).max
_CHANGES_IN_PLACE_MIN = 1_024
"""Changes to one list in one ``_apply`` that are always made in its hash table in place
(more than this and a quarter of the list's entries: the table is built again instead)."""


@dataclass(frozen=True, slots=True)
class ListEntry:
    value: str
    reason: str
    added_at_ns: int
    expires_at_ns: int | None = None
    """The entry matches while ``now < expires_at_ns``; ``None``: until removed."""

    def is_live(self, now_ns: int) -> bool:
        return self.expires_at_ns is None or now_ns < self.expires_at_ns


def _expiry(entry: ListEntry) -> int:
    return _NEVER if entry.expires_at_ns is None else entry.expires_at_ns


class RiskLists:
    """Named block/allow lists; thread-safe (mutations lock; lookups read the dicts, and
    the hash tables without the lock: see ``ExpiryTable``)."""

    def __init__(self, clock: Clock, names: Iterable[str] = LIST_NAMES) -> None:
        self._clock = clock
        self._entries: dict[str, dict[str, ListEntry]] = {name: {} for name in names}
        self._tables: dict[str, ExpiryTable] = {}
        """Each list's hash table for ``contains``, once built."""
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def _list(self, name: str) -> dict[str, ListEntry]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_list(name, self._entries) from None

    def add(
        self, name: str, value: str, *, reason: str, expires_at_ns: int | None = None
    ) -> ListEntry:
        """Put ``value`` on list ``name`` (replacing an entry for the same value)."""
        self._list(name)
        check_entry_input(value, reason, expires_at_ns)
        entry = ListEntry(value, reason, self._clock.now_ns(), expires_at_ns)
        with self._lock:
            entries = self._entries[name]  # under the lock: ``replace_all`` swaps the dicts
            if value not in entries and len(entries) >= list_entries_max:
                raise RiskListError(f"list {name!r} is full ({list_entries_max} entries)")
            entries[value] = entry
            self._table_set(name, entry)
        return entry

    def remove(self, name: str, value: str) -> bool:
        """Take ``value`` off list ``name``; whether it was there."""
        self._list(name)
        with self._lock:
            removed = self._entries[name].pop(value, None) is not None
            if removed:
                self._table_discard(name, value)
        return removed

    def lookup(self, name: str, value: str) -> ListEntry | None:
        """The live entry for ``value`` on list ``name`` (``None`` if absent or expired)."""
        entry = self._list(name).get(value)
        if entry is None or not entry.is_live(self._clock.now_ns()):
            return None
        return entry

    def entries(self, name: str) -> list[ListEntry]:
        """Every stored entry of list ``name`` (expired ones too), sorted by value."""
        self._list(name)
        with self._lock:
            entries = self._entries[name]
            return [entries[value] for value in sorted(entries)]

    def purge_expired(self) -> int:
        """Delete expired entries from every list; how many were deleted."""
        now = self._clock.now_ns()
        purged = 0
        with self._lock:
            for name, entries in self._entries.items():
                dead = [value for value, entry in entries.items() if not entry.is_live(now)]
                for value in dead:
                    del entries[value]
                    self._table_discard(name, value)
                purged += len(dead)
        return purged

    def replace_all(self, lists: dict[str, list[ListEntry]]) -> None:
        """Make every list hold exactly the given entries (lists not named become empty), in
        one swap under the lock: a lookup sees the old lists or the new ones, never a mix."""
        for name in lists:
            self._list(name)
        fresh = {name: {e.value: e for e in lists.get(name, [])} for name in self._entries}
        with self._lock:
            self._entries = fresh
            self._tables = {}

    def _apply(self, changes: Sequence[tuple[str, str, ListEntry | None]]) -> None:
        """Put each entry on its list, or take the value off (``None``), in order, as given:
        no checks, no clock (a follower repeating what the store recorded; lists it does not
        have are skipped). One lock for them all; each list's hash table is changed in place,
        or dropped (built again at its next ``contains``) when the list has more changes here
        than a quarter of its entries, when that is cheaper."""
        with self._lock:
            for name, count in Counter(name for name, _, _ in changes).items():
                entries = self._entries.get(name)
                if entries is not None and count > max(_CHANGES_IN_PLACE_MIN, len(entries) // 4):
                    self._tables.pop(name, None)
            for name, value, entry in changes:
                entries = self._entries.get(name)
                if entries is None:
                    continue
                if entry is not None:
                    entries[value] = entry
                    self._table_set(name, entry)
                elif entries.pop(value, None) is not None:
                    self._table_discard(name, value)

    def _table_set(self, name: str, entry: ListEntry) -> None:
        table = self._tables.get(name)  # the caller holds the lock
        if table is not None:
            table.set(entry.value, _expiry(entry))

    def _table_discard(self, name: str, value: str) -> None:
        table = self._tables.get(name)  # the caller holds the lock
        if table is not None:
            table.discard(value)

    def contains(self, name: str, values: np.ndarray) -> np.ndarray:
        """For each value of a unicode array, whether list ``name`` holds it, live, now."""
        table = self._table(name)
        values = np.asarray(values)
        if len(table) == 0 or values.size == 0:
            return np.zeros(values.shape, dtype=np.bool_)
        if values.dtype.kind != "U":
            raise RiskListError(f"list values must be a unicode array, not {values.dtype}")
        found: np.ndarray = table.lookup(values) > self._clock.now_ns()  # absent: -1
        return found

    def _table(self, name: str) -> ExpiryTable:
        table = self._tables.get(name)
        if table is not None:
            return table
        self._list(name)
        with self._lock:
            table = self._tables.get(name)
            if table is None:
                entries = self._entries[name]
                expires = np.fromiter(
                    (_expiry(e) for e in entries.values()), dtype=np.int64, count=len(entries)
                )
                table = ExpiryTable(self._lock, list(entries), expires)
                self._tables[name] = table
        return table

    # --- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write every list to ``path`` (JSON), atomically."""
        path = Path(path)
        with self._lock:
            document = {
                "format": _FILE_FORMAT,
                "lists": {
                    name: [
                        {
                            "value": entry.value,
                            "reason": entry.reason,
                            "added_at_ns": entry.added_at_ns,
                            "expires_at_ns": entry.expires_at_ns,
                        }
                        for _, entry in sorted(entries.items())
                    ]
                    for name, entries in self._entries.items()
                },
            }
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path, clock: Clock) -> RiskLists:
        """Lists saved by ``save`` (``RiskListError`` if the file is not such a file)."""
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RiskListError(f"cannot read list file: {type(error).__name__}") from None
        if not isinstance(document, dict) or document.get("format") != _FILE_FORMAT:
            raise RiskListError(f"not a list file of format {_FILE_FORMAT}")
        raw_lists = document.get("lists")
        if not isinstance(raw_lists, dict):
            raise RiskListError("list file without 'lists'")
        lists = cls(clock, names=list(raw_lists))
        for name, raw_entries in raw_lists.items():
            if not isinstance(raw_entries, list):
                raise RiskListError(f"list {name!r} is not an array")
            for raw in raw_entries:
                value = _value_of(raw)
                lists._entries[name][value] = _entry_of(raw)
        return lists


def unknown_list(name: object, names: Iterable[str]) -> RiskListError:
    """The error for a list name that is none of ``names`` (it names those there are)."""
    return RiskListError(f"unknown list {name!r} (known: {', '.join(names)})", list_name=str(name))


def check_entry_input(value: Any, reason: Any, expires_at_ns: Any) -> None:
    """Raise ``RiskListError`` unless these make a valid list entry."""
    _check_text(value, "value", list_value_chars_max)
    _check_text(reason, "reason", list_reason_chars_max)
    if expires_at_ns is not None and (
        type(expires_at_ns) is not int or not 0 <= expires_at_ns <= expires_at_ns_max
    ):
        raise RiskListError(
            f"expires_at_ns must be an int 0..{expires_at_ns_max} (ns since the epoch)"
        )


def _check_text(text: Any, what: str, chars_max: int) -> None:
    if not isinstance(text, str) or not text or len(text) > chars_max:
        raise RiskListError(f"{what} must be a string of 1 to {chars_max} characters")


def _value_of(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise RiskListError("list entry is not an object")
    value = raw.get("value")
    _check_text(value, "value", list_value_chars_max)
    assert isinstance(value, str)
    return value


def _entry_of(raw: dict[str, Any]) -> ListEntry:
    if set(raw) != {"value", "reason", "added_at_ns", "expires_at_ns"}:
        raise RiskListError("list entry must have value, reason, added_at_ns, expires_at_ns")
    _check_text(raw["reason"], "reason", list_reason_chars_max)
    added, expires = raw["added_at_ns"], raw["expires_at_ns"]
    if type(added) is not int or (expires is not None and type(expires) is not int):
        raise RiskListError("added_at_ns and expires_at_ns must be integers (or null expiry)")
    return ListEntry(raw["value"], raw["reason"], added, expires)
