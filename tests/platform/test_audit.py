"""The audit chain in the SQL store: verify finds an edited, inserted or deleted entry,
also at the end (the anchor)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.platform import AuditLog, AuditProblemKind
from puhui.platform.model import AuditEntry, audit_hash
from puhui.store import platform as tables

log_table = tables.audit_log


def _log(engine: sa.Engine, clock: ManualClock, n: int = 5) -> AuditLog:
    audit = AuditLog(engine, clock=clock)
    for i in range(n):
        clock.advance(1000)
        audit.append(
            tenant_id=1,
            key_id="0123456789abcdef",
            method="post",
            route="/v1/ledger/transfers",
            target=f"/v1/ledger/transfers#{i}",
            status=200,
        )
    return audit


def _kind_at(audit: AuditLog) -> tuple[int, AuditProblemKind]:
    report = audit.verify()
    assert not report.ok and report.problem is not None
    return report.problem.seq, report.problem.kind


def test_an_intact_chain_verifies(engine: sa.Engine, clock: ManualClock) -> None:
    audit = _log(engine, clock)
    report = audit.verify()
    assert report.ok and report.entries == 5 and report.problem is None
    entries = audit.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].method == "POST"
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(entries))
    assert report.head_hash == entries[-1].hash == report.anchor_head_hash


def test_an_edited_entry_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    audit = _log(engine, clock)
    with engine.begin() as conn:
        conn.execute(log_table.update().where(log_table.c.seq == 3).values(status=201))
    assert _kind_at(audit) == (3, AuditProblemKind.EDITED)


def test_a_deleted_entry_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    audit = _log(engine, clock)
    with engine.begin() as conn:
        conn.execute(log_table.delete().where(log_table.c.seq == 2))
    assert _kind_at(audit) == (2, AuditProblemKind.MISSING)


def test_deleting_the_last_entries_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    audit = _log(engine, clock)
    with engine.begin() as conn:
        conn.execute(log_table.delete().where(log_table.c.seq >= 4))
    assert _kind_at(audit) == (4, AuditProblemKind.TRUNCATED)


def test_an_inserted_entry_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    """A forger shifts entries 3.. up by one and puts a well-formed entry at 3, chained
    to entry 2: entry 4 (the old 3) no longer follows it."""
    audit = _log(engine, clock)
    entries = audit.entries()
    with engine.begin() as conn:
        for entry in reversed(entries[2:]):
            conn.execute(
                log_table.update().where(log_table.c.seq == entry.seq).values(seq=entry.seq + 1)
            )
        forged = AuditEntry(
            3, entries[1].at_ns + 1, 2, None, "POST", "/v1/x", "/forged", 200, entries[1].hash, ""
        )
        digest = audit_hash(
            seq=3,
            at_ns=forged.at_ns,
            tenant_id=2,
            key_id=None,
            method="POST",
            route="/v1/x",
            target="/forged",
            status=200,
            prev_hash=forged.prev_hash,
        )
        conn.execute(log_table.insert().values(dataclasses.asdict(forged) | {"hash": digest}))
    # The forged entry 3 is well-formed; the old entry 3, now 4, was hashed with seq 3.
    assert _kind_at(audit) == (4, AuditProblemKind.EDITED)


def test_appends_continue_the_chain_after_verify(engine: sa.Engine, clock: ManualClock) -> None:
    audit = _log(engine, clock, 2)
    assert audit.verify().ok
    _log(engine, clock, 2)
    report = audit.verify()
    assert report.ok and report.entries == 4


def test_an_entry_inserted_below_the_first_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    """A forger adds a well-formed entry with a negative sequence number, out of the way of
    the chain: verify reads the whole table, not only from 0, and finds it."""
    audit = _log(engine, clock)
    fields: dict[str, Any] = {
        "seq": -7,
        "at_ns": clock.now_ns(),
        "tenant_id": 2,
        "key_id": None,
        "method": "POST",
        "route": "/v1/x",
        "target": "/forged",
        "status": 200,
        "prev_hash": "0" * 64,
    }
    with engine.begin() as conn:
        conn.execute(log_table.insert().values(fields | {"hash": audit_hash(**fields)}))
    assert _kind_at(audit) == (-7, AuditProblemKind.CHAIN_BROKEN)
