"""Block and allow lists kept in SQL (the record), and the engine's lists following it.

``ListStore`` is the system of record: entries in ``risk_list_entries`` (list, value,
reason, when added, optional expiry), one version number in ``risk_list_state``, and the
log of changes in ``risk_list_changes``. Every changed entry raises the version by one and
is logged under the version it made, in the change's own transaction: an add or a remove
makes one version, a purge of k expired entries k versions (one 'remove' each). The log
keeps the last ``changes_kept`` versions (``LIST_CHANGES_KEPT``). The CLI, the API and any
process write through it.

``SyncedRiskLists`` is the ``RiskLists`` an engine reads: it loads every list from the store
once and, at most every ``check_interval_ms`` (on the injected clock), reads the version;
when it changed, it reads the logged changes after its own version and applies them, entry
by entry (O(1) amortised each, the lists' hash tables changed in place), or — when the log
no longer holds them all (trimmed; a store it does not know) — reloads every list as at
the start. A change made anywhere takes effect in every engine within the interval, without
a restart. Lookups stay in memory (the numba hash tables of ``RiskLists``); the check is one
indexed read of one row, and a change costs its own rows, not the lists'.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
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
    unknown_list,
)

CHECK_INTERVAL_MS_DEFAULT: Final = 1_000
"""How often an engine's lists look for changes in the store (unit: milliseconds)."""
PAGE_ENTRIES_MAX: Final = 1_000
"""Most entries in one page of ``ListStore.entries`` (unit: entries)."""
LIST_CHANGES_KEPT: Final = 100_000
"""Changes the log keeps, the newest (unit: versions, i.e. changed entries): an engine that
fell further behind (it checks every ``check_interval_ms``) reloads every list instead."""


@dataclass(frozen=True, slots=True)
class ListChange:
    """One logged change: ``entry`` put on list ``name``, or ``value`` taken off (``None``)."""

    version: int
    name: str
    value: str
    entry: ListEntry | None


def _entry(row: sa.Row[tuple[object, ...]]) -> ListEntry:
    expires = row.expires_at_ns
    return ListEntry(
        str(row.value),
        str(row.reason),
        int(row.added_at_ns),
        None if expires is None else int(expires),
    )


def _change(row: sa.Row[tuple[object, ...]]) -> ListChange:
    entry = _entry(row) if row.op == "add" else None
    return ListChange(int(row.version), str(row.list_name), str(row.value), entry)


def _removal(name: str, value: str) -> dict[str, object]:
    return {
        "list_name": name,
        "value": value,
        "op": "remove",
        "reason": None,
        "added_at_ns": None,
        "expires_at_ns": None,
    }


class ListStore:
    """The block and allow lists in the SQL store."""

    def __init__(
        self,
        engine: sa.Engine,
        clock: Clock,
        names: Iterable[str] = LIST_NAMES,
        *,
        changes_kept: int = LIST_CHANGES_KEPT,
    ):
        if changes_kept < 1:
            raise RiskListError("changes_kept must be >= 1")
        self.engine = engine
        self.clock = clock
        self.names: tuple[str, ...] = tuple(names)
        self.changes_kept = changes_kept

    def _check_name(self, name: str) -> str:
        if name not in self.names:
            raise unknown_list(name, self.names)
        return name

    @staticmethod
    def _lock_version(conn: sa.Connection) -> int:
        """Lock the state's row (first in every change: concurrent writers queue on it, and
        take the versions one after the other); the version before this change."""
        version = conn.execute(
            t.list_state.update()
            .where(t.list_state.c.id == 1)
            .values(version=t.list_state.c.version)
            .returning(t.list_state.c.version)
        ).scalar_one_or_none()
        if version is None:  # the migration inserts the row: a schema not migrated
            raise RuntimeError("risk_list_state has no row: is the store migrated?")
        return int(version)

    def _record(self, conn: sa.Connection, before: int, changes: list[dict[str, object]]) -> None:
        """Log ``changes`` as versions ``before + 1``… (those the log would keep), raise the
        version past them, and trim the log to the last ``changes_kept`` versions."""
        version = before + len(changes)
        oldest = version - self.changes_kept  # kept: versions after it
        rows = [
            {"version": before + i, **change}
            for i, change in enumerate(changes, start=1)
            if before + i > oldest
        ]
        if rows:
            conn.execute(t.list_changes.insert(), rows)
        conn.execute(t.list_state.update().where(t.list_state.c.id == 1).values(version=version))
        conn.execute(t.list_changes.delete().where(t.list_changes.c.version <= oldest))

    def add(
        self, name: str, value: str, *, reason: str, expires_at_ns: int | None = None
    ) -> ListEntry:
        """Put ``value`` on list ``name`` (replacing an entry for the same value)."""
        self._check_name(name)
        check_entry_input(value, reason, expires_at_ns)
        entry = ListEntry(value, reason, self.clock.now_ns(), expires_at_ns)
        key = (t.list_entries.c.list_name == name) & (t.list_entries.c.value == value)
        with self.engine.begin() as conn:
            before = self._lock_version(conn)
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
            change = {
                "list_name": name,
                "value": value,
                "op": "add",
                "reason": reason,
                "added_at_ns": entry.added_at_ns,
                "expires_at_ns": expires_at_ns,
            }
            self._record(conn, before, [change])
        return entry

    def remove(self, name: str, value: str) -> bool:
        """Take ``value`` off list ``name``; whether it was there."""
        self._check_name(name)
        key = (t.list_entries.c.list_name == name) & (t.list_entries.c.value == value)
        with self.engine.begin() as conn:
            before = self._lock_version(conn)
            removed = conn.execute(t.list_entries.delete().where(key)).rowcount == 1
            if removed:
                self._record(conn, before, [_removal(name, value)])
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
        """Delete expired entries of every list; how many were deleted. Each is logged as a
        removal of its own (a follower takes exactly these off, whatever its clock says)."""
        now = self.clock.now_ns()
        expired = t.list_entries.c.expires_at_ns <= now
        with self.engine.begin() as conn:
            before = self._lock_version(conn)
            rows = conn.execute(
                sa.select(t.list_entries.c.list_name, t.list_entries.c.value)
                .where(expired)
                .order_by(t.list_entries.c.list_name, t.list_entries.c.value)
            ).all()
            if not rows:
                return 0
            conn.execute(t.list_entries.delete().where(expired))
            self._record(conn, before, [_removal(str(r.list_name), str(r.value)) for r in rows])
        return len(rows)

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(t.list_state.c.version).where(t.list_state.c.id == 1)
                ).scalar_one()
            )

    def changes(self, after: int) -> tuple[int, list[ListChange] | None]:
        """The version, and the logged changes after version ``after`` up to it, in order —
        ``None`` when the log does not hold them all (trimmed, or the store is not the one
        ``after`` was read from): then only a full ``load`` brings a follower up to date."""
        with self.engine.connect() as conn:
            version = int(
                conn.execute(
                    sa.select(t.list_state.c.version).where(t.list_state.c.id == 1)
                ).scalar_one()
            )
            if version == after:
                return version, []
            if after < 0 or version < after or version - after > self.changes_kept:
                return version, None
            rows = conn.execute(
                sa.select(t.list_changes)
                .where(t.list_changes.c.version > after, t.list_changes.c.version <= version)
                .order_by(t.list_changes.c.version)
            ).all()
        # Versions are unique and in (after, version]: as many rows as versions is all of them.
        if len(rows) != version - after:
            return version, None
        return version, [_change(row) for row in rows]

    def load(self) -> tuple[int, dict[str, list[ListEntry]]]:
        """The version and every entry of every list (expired ones too), sorted by value,
        read together (one snapshot of the store): the entries are the version's."""
        lists: dict[str, list[ListEntry]] = {name: [] for name in self.names}
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE: one snapshot
                conn.execution_options(isolation_level="REPEATABLE READ")
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
    brought up to date when the store's version changed, checked at most every
    ``check_interval_ms`` (lookups in between never touch SQL): the logged changes after its
    version are applied in order, each list's hash table changed in place — or, when the log
    no longer holds them all, every list is reloaded. ``add``/``remove``/``purge_expired``
    write to the store and sync at once. One thread at a time syncs; the others keep reading
    the lists they have (a lookup sees each change whole, before or after it)."""

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
        """Syncs that changed the lists (by applying changes or by a full load)."""
        self.full_loads = 0
        """Syncs that reloaded every list (the first, and when the log fell short)."""
        self.changes_applied = 0
        """Logged changes applied one by one."""
        self._checked_at_ns = 0
        self._checking = threading.Lock()
        self.sync(force=True)

    def sync(self, *, force: bool = False) -> bool:
        """Catch up with the store if its version changed (``force``: whatever the interval);
        whether the lists changed."""
        now = self.store.clock.now_ns()
        if not force and now - self._checked_at_ns < self.check_interval_ns:
            return False
        if not self._checking.acquire(blocking=force):
            return False
        try:
            self._checked_at_ns = now
            version, changes = self.store.changes(self.version)
            if version == self.version:
                return False
            if changes is None:
                version, lists = self.store.load()
                self.replace_all(lists)
                self.full_loads += 1
            else:
                self._apply([(c.name, c.value, c.entry) for c in changes])
                self.changes_applied += len(changes)
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
