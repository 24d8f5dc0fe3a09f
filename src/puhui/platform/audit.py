"""The hash-chained audit log of every state-changing API request.

Each entry stores the SHA-256 of its own fields and of the entry before it, so editing an
entry, inserting one or deleting one breaks the chain from there on. Deleting the *last*
entries leaves a shorter chain that is valid by itself; the anchor (a one-row table with the
head hash and the count, updated in the same transaction as each append) catches that. Whoever
can rewrite the whole log *and* the anchor can forge a consistent history: keep the head hash
``verify`` reports somewhere else (an operator's log, a notary) to detect that as well.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from puhui.clock import Clock, SystemClock
from puhui.store import platform as tables

from .model import GENESIS_HASH, AuditEntry, AuditReport, audit_hash, verify_chain

route_chars_max = 255
target_chars_max = 255
read_chunk_entries = 5000
"""Entries ``verify`` reads per query (unit: entries); the log is streamed, never loaded."""

_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEntry))
"""An entry's columns, in its order."""

_LOCK_ANCHOR = (
    sa.select(tables.audit_anchor.c.head_hash, tables.audit_anchor.c.count)
    .where(tables.audit_anchor.c.id == 1)
    .with_for_update()
)
_NEW_ANCHOR = {"id": 1, "head_hash": GENESIS_HASH, "count": 0}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape_controls(text: str) -> str:
    """``text`` with each control character as its ``%XX`` escape. A request's path is
    decoded (``%00`` arrives as NUL), and PostgreSQL's text cannot hold a NUL: an entry with
    one failed, and with it the whole group of requests being audited (each a 500)."""
    return _CONTROL.sub(lambda match: f"%{ord(match.group()):02X}", text)


def _dialect_insert(conn: sa.Connection) -> Callable[[sa.Table], Any]:
    """The dialect's ``insert`` (PostgreSQL's or SQLite's: both have ``ON CONFLICT``)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What to audit of one request (the log adds the time, sequence number and hashes)."""

    tenant_id: int | None
    key_id: str | None
    method: str
    route: str
    target: str
    status: int


class AuditLog:
    """Append to the chain and verify it."""

    def __init__(self, engine: sa.Engine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()

    def append(
        self,
        *,
        tenant_id: int | None,
        key_id: str | None,
        method: str,
        route: str,
        target: str,
        status: int,
    ) -> AuditEntry:
        """Add one entry at the head of the chain (and move the anchor), atomically."""
        record = AuditRecord(tenant_id, key_id, method, route, target, status)
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Add entries in order, in one transaction (one sync of the store for all)."""
        log, anchor = tables.audit_log, tables.audit_anchor
        entries: list[AuditEntry] = []
        with self.engine.begin() as conn:
            row = conn.execute(_LOCK_ANCHOR).first()
            if row is None:
                # The store's first append. Another one (a second server) may be making the
                # anchor row at this very moment: ``FOR UPDATE`` locked no row, so both got
                # here. Insert it unless it exists (waiting for an uncommitted one), then
                # lock and read it again: the later append chains after the earlier one
                # instead of failing on the anchor's key.
                conn.execute(_dialect_insert(conn)(anchor).on_conflict_do_nothing(), _NEW_ANCHOR)
                row = conn.execute(_LOCK_ANCHOR).one()
            prev_hash, count = str(row[0]), int(row[1])
            # Under the anchor's lock: appends take their times in chain order (read before
            # it, an append that waited for another came after it with an earlier time).
            now = self.clock.now_ns()
            for record in records:
                count += 1
                method = record.method.upper()[:8]
                route = _escape_controls(record.route)[:route_chars_max]
                target = _escape_controls(record.target)[:target_chars_max]
                digest = audit_hash(
                    seq=count,
                    at_ns=now,
                    tenant_id=record.tenant_id,
                    key_id=record.key_id,
                    method=method,
                    route=route,
                    target=target,
                    status=record.status,
                    prev_hash=prev_hash,
                )
                entries.append(
                    AuditEntry(
                        count,
                        now,
                        record.tenant_id,
                        record.key_id,
                        method,
                        route,
                        target,
                        record.status,
                        prev_hash,
                        digest,
                    )
                )
                prev_hash = digest
            if entries:
                # Each entry's fields as a row (plain ints and strings: ``asdict``'s deep
                # copy of them was most of the statement's preparation).
                conn.execute(log.insert(), [{f: getattr(e, f) for f in _FIELDS} for e in entries])
                conn.execute(
                    anchor.update().where(anchor.c.id == 1).values(head_hash=prev_hash, count=count)
                )
        return entries

    def entries(self, *, after_seq: int | None = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries in order, from ``after_seq + 1`` (None: from the lowest ``seq`` stored,
        however low)."""
        log = tables.audit_log
        query = sa.select(log)
        if after_seq is not None:
            query = query.where(log.c.seq > after_seq)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(log.c.seq).limit(limit)).all()
        return [_entry(row) for row in rows]

    def _stream(self) -> Iterator[AuditEntry]:
        # From the lowest seq stored: also the entries a forger may have given a seq below 1
        # (0 or negative), which the chain never holds.
        after: int | None = None
        while True:
            chunk = self.entries(after_seq=after, limit=read_chunk_entries)
            yield from chunk
            if len(chunk) < read_chunk_entries:
                return
            after = chunk[-1].seq

    def verify(self) -> AuditReport:
        """Check every entry and the anchor; the report names the first bad entry.

        The store may be live (a server appending): the anchor is read before the entries
        and again after them, and the log must reach the first and not pass the second
        (``verify_chain``). Reading the anchor once reported every entry appended while
        the log was read as added past the anchor (``truncated``): a false alarm."""
        count, head = self._anchor()
        return verify_chain(self._stream(), count, head, later_anchor=self._anchor)

    def _anchor(self) -> tuple[int, str]:
        anchor = tables.audit_anchor
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(anchor.c.head_hash, anchor.c.count).where(anchor.c.id == 1)
            ).first()
        return (0, GENESIS_HASH) if row is None else (int(row[1]), str(row[0]))


def _entry(row: sa.Row[tuple[object, ...]]) -> AuditEntry:
    m = row._mapping
    return AuditEntry(
        seq=int(m["seq"]),
        at_ns=int(m["at_ns"]),
        tenant_id=None if m["tenant_id"] is None else int(m["tenant_id"]),
        key_id=None if m["key_id"] is None else str(m["key_id"]),
        method=str(m["method"]),
        route=str(m["route"]),
        target=str(m["target"]),
        status=int(m["status"]),
        prev_hash=str(m["prev_hash"]),
        hash=str(m["hash"]),
    )
