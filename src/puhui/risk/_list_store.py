"""Block and allow lists kept in SQL (the record), and the engine's lists following it.

``ListStore`` is the system of record: entries in ``risk_list_entries`` (list, value,
reason, when added, optional expiry), and one version number in ``risk_list_state`` that
every change raises by one in its own transaction. The CLI, the API and any process write
through it.

``SyncedRiskLists`` is the ``RiskLists`` an engine reads: it loads every list from the store
and, at most every ``check_interval_ms`` (on the injected clock), reads the version; when it
changed, it reloads the lists and swaps them in at once. A change made anywhere takes effect
in every engine within the interval, without a restart. Lookups stay in memory (the numba
hash table of ``RiskLists``); the check is one indexed read of one row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

import numpy as np
import sqlalchemy as sa

from puhui.clock import Clock
from puhui.store import risk as t

from ._errors import RiskListError
from ._lists import (
    LIST_NAMES,
    ListEntry,
    RiskLists,
    check_entry_input,
    list_entries_max,
)

CHECK_INTERVAL_MS_DEFAULT: Final = 1_000
"""How often an engine's lists look for changes in the store (unit: milliseconds)."""
PAGE_ENTRIES_MAX: Final = 1_000
"""Most entries in one page of ``ListStore.entries`` (unit: entries)."""


def _entry(row: sa.Row[tuple[object, ...]]) -> ListEntry:
    expires = row.expires_at_ns
    return ListEntry(
        str(row.value),
        str(row.reason),
        int(row.added_at_ns),
        None if expires is None else int(expires),
    )


class ListStore:
    """The block and allow lists in the SQL store."""

    def __init__(self, engine: sa.Engine, clock: Clock, names: Iterable[str] = LIST_NAMES):
        self.engine = engine
        self.clock = clock
        self.names: tuple[str, ...] = tuple(names)

    def _check_name(self, name: str) -> str:
        if name not in self.names:
            raise RiskListError(f"unknown list {name!r}", list_name=str(name))
        return name

    @staticmethod
    def _bump(conn: sa.Connection) -> None:
        done = conn.execute(
            t.list_state.update()
            .where(t.list_state.c.id == 1)
            .values(version=t.list_state.c.version + 1)
        )
        if done.rowcount != 1:  # the migration inserts the row: a schema not migrated
            raise RuntimeError("risk_list_state has no row: is the store migrated?")

    def add(
        self, name: str, value: str, *, reason: str, expires_at_ns: int | None = None
    ) -> ListEntry:
        """Put ``value`` on list ``name`` (replacing an entry for the same value)."""
        self._check_name(name)
        check_entry_input(value, reason, expires_at_ns)
        entry = ListEntry(value, reason, self.clock.now_ns(), expires_at_ns)
        key = (t.list_entries.c.list_name == name) & (t.list_entries.c.value == value)
        with self.engine.begin() as conn:
            self._bump(conn)  # first: concurrent writers queue on this row
            replaced = conn.execute(t.list_entries.delete().where(key)).rowcount
            if not replaced:
                count = conn.execute(
                    sa.select(sa.func.count()).where(t.list_entries.c.list_name == name)
                ).scalar_one()
                if count >= list_entries_max:
                    raise RiskListError(f"list {name!r} is full ({list_entries_max} entries)")
            conn.execute(
                t.list_entries.insert().values(
                    list_name=name,
                    value=value,
                    reason=reason,
                    added_at_ns=entry.added_at_ns,
                    expires_at_ns=expires_at_ns,
                )
            )
        return entry

    def remove(self, name: str, value: str) -> bool:
        """Take ``value`` off list ``name``; whether it was there."""
        self._check_name(name)
        key = (t.list_entries.c.list_name == name) & (t.list_entries.c.value == value)
        with self.engine.begin() as conn:
            removed = conn.execute(t.list_entries.delete().where(key)).rowcount == 1
            if removed:
                self._bump(conn)
        return removed

    def lookup(self, name: str, value: str) -> ListEntry | None:
        """The live entry for ``value`` on ``name`` (``None`` if absent or expired)."""
        self._check_name(name)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.list_entries).where(
                    t.list_entries.c.list_name == name, t.list_entries.c.value == value
                )
            ).first()
        if row is None:
            return None
        entry = _entry(row)
        return entry if entry.is_live(self.clock.now_ns()) else None

    def purge_expired(self) -> int:
        """Delete expired entries of every list; how many were deleted."""
        now = self.clock.now_ns()
        with self.engine.begin() as conn:
            purged = conn.execute(
                t.list_entries.delete().where(t.list_entries.c.expires_at_ns <= now)
            ).rowcount
            if purged:
                self._bump(conn)
        return int(purged)

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(t.list_state.c.version).where(t.list_state.c.id == 1)
                ).scalar_one()
            )

    def load(self) -> tuple[int, dict[str, list[ListEntry]]]:
        """The version and every entry of every list (expired ones too), sorted by value.
        The version is read first: the entries are at least as new as it says."""
        lists: dict[str, list[ListEntry]] = {name: [] for name in self.names}
        with self.engine.connect() as conn:
            version = int(
                conn.execute(
                    sa.select(t.list_state.c.version).where(t.list_state.c.id == 1)
                ).scalar_one()
            )
            rows = conn.execute(
                sa.select(t.list_entries).order_by(
                    t.list_entries.c.list_name, t.list_entries.c.value
                )
            ).all()
        for row in rows:
            if row.list_name in lists:
                lists[row.list_name].append(_entry(row))
        return version, lists

    def entries(
        self, name: str, *, after_value: str | None = None, limit: int | None = None
    ) -> list[ListEntry]:
        """The stored entries of ``name`` (expired ones too), sorted by value: all of them,
        or a page of at most ``limit`` after ``after_value`` (the cursor)."""
        self._check_name(name)
        if limit is not None and not 1 <= limit <= PAGE_ENTRIES_MAX:
            raise RiskListError(f"limit must be 1..{PAGE_ENTRIES_MAX}")
        query = sa.select(t.list_entries).where(t.list_entries.c.list_name == name)
        if after_value is not None:
            query = query.where(t.list_entries.c.value > after_value)
        query = query.order_by(t.list_entries.c.value)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_entry(row) for row in rows]


class SyncedRiskLists(RiskLists):
    """An engine's ``RiskLists`` that follows a ``ListStore``: loaded at construction, then
    reloaded when the store's version changed, checked at most every ``check_interval_ms``
    (lookups in between never touch SQL). ``add``/``remove`` write to the store and reload
    at once. One thread at a time checks; the others keep reading the lists they have."""

    def __init__(
        self, store: ListStore, *, check_interval_ms: int = CHECK_INTERVAL_MS_DEFAULT
    ) -> None:
        super().__init__(store.clock, names=store.names)
        if check_interval_ms < 0:
            raise RiskListError("check_interval_ms must be >= 0")
        self.store = store
        self.check_interval_ns = check_interval_ms * 1_000_000
        self.version = -1
        self.reloads = 0
        self._checked_at_ns = 0
        self._checking = threading.Lock()
        self.sync(force=True)

    def sync(self, *, force: bool = False) -> bool:
        """Reload from the store if its version changed (``force``: whatever the interval);
        whether the lists were reloaded."""
        now = self.store.clock.now_ns()
        if not force and now - self._checked_at_ns < self.check_interval_ns:
            return False
        if not self._checking.acquire(blocking=force):
            return False
        try:
            self._checked_at_ns = now
            if self.store.version() == self.version:
                return False
            version, lists = self.store.load()
            self.replace_all(lists)
            self.version = version
            self.reloads += 1
            return True
        finally:
            self._checking.release()

    def contains(self, name: str, values: np.ndarray) -> np.ndarray:
        self.sync()
        return super().contains(name, values)

    def lookup(self, name: str, value: str) -> ListEntry | None:
        self.sync()
        return super().lookup(name, value)

    def add(
        self, name: str, value: str, *, reason: str, expires_at_ns: int | None = None
    ) -> ListEntry:
        entry = self.store.add(name, value, reason=reason, expires_at_ns=expires_at_ns)
        self.sync(force=True)
        return entry

    def remove(self, name: str, value: str) -> bool:
        removed = self.store.remove(name, value)
        self.sync(force=True)
        return removed

    def purge_expired(self) -> int:
        purged = self.store.purge_expired()
        self.sync(force=True)
        return purged
