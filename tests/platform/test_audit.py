"""The audit chain in the SQL store: verify finds an edited, inserted or deleted entry,
also at the end (the anchor)."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.platform import AuditLog, AuditProblemKind, AuditRecord
from puhui.platform.model import AuditEntry, audit_hash
from puhui.store import platform as tables

from .._locks import PROMPTLY_S
from .conftest import held, is_write

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


def _forge(engine: sa.Engine, clock: ManualClock, seq: int, prev_hash: str) -> None:
    """A well-formed entry written straight into the table (a forger with write access)."""
    fields: dict[str, Any] = {
        "seq": seq,
        "at_ns": clock.now_ns(),
        "tenant_id": 2,
        "key_id": None,
        "method": "POST",
        "route": "/v1/x",
        "target": "/forged",
        "status": 200,
        "prev_hash": prev_hash,
    }
    with engine.begin() as conn:
        conn.execute(log_table.insert().values(fields | {"hash": audit_hash(**fields)}))


def test_an_entry_inserted_below_the_first_is_found(engine: sa.Engine, clock: ManualClock) -> None:
    """A forger adds a well-formed entry with a negative sequence number, out of the way of
    the chain: verify reads the whole table, not only from 0, and finds it."""
    audit = _log(engine, clock)
    _forge(engine, clock, -7, "0" * 64)
    assert _kind_at(audit) == (-7, AuditProblemKind.CHAIN_BROKEN)


@pytest.mark.postgres
def test_two_first_appends_on_postgresql_at_once_make_one_chain(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """Two servers append the store's first entries at the same moment: both read "no anchor
    yet" (``FOR UPDATE`` locks no row that does not exist). The second used to insert the
    anchor too and fail on its key (the request answered 500); now the anchor row is made
    once, and the second waits for the first and chains after it."""
    audit = AuditLog(pg_engine, clock=clock)
    read_anchor = threading.Barrier(2, timeout=PROMPTLY_S)
    first_reads = itertools.count()

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            statement.startswith("SELECT")
            and "platform_audit_anchor" in statement
            and next(first_reads) < 2
        ):
            read_anchor.wait()  # both appends have read "no anchor" before either goes on

    def append(i: int) -> None:
        audit.append(
            tenant_id=1, key_id=None, method="POST", route="/v1/x", target=f"/{i}", status=200
        )

    sa.event.listen(pg_engine, "after_cursor_execute", after_execute)
    try:
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(append, i) for i in range(2)]:
                done.result()
    finally:
        sa.event.remove(pg_engine, "after_cursor_execute", after_execute)
    report = audit.verify()
    assert report.ok and report.entries == 2, report


def _locks_the_anchor(statement: str) -> bool:
    return tables.audit_anchor.name in statement and is_write(statement)


@pytest.mark.postgres
def test_entries_appended_at_once_on_postgresql_are_in_time_order(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """An append read the clock, then waited for the anchor while another server appended
    a second later: its entry came after that one in the chain with an earlier time (the
    log's "when" went backwards). The time is now read under the anchor's lock."""
    audit = _log(pg_engine, clock, 1)

    def append(target: str) -> None:
        audit.append(
            tenant_id=1, key_id=None, method="POST", route="/v1/x", target=target, status=200
        )

    with (
        held(pg_engine, "late", _locks_the_anchor) as hold,
        ThreadPoolExecutor(1, thread_name_prefix="late") as pool,
    ):
        late = pool.submit(append, "/late")
        assert hold.reached.wait(PROMPTLY_S)
        clock.advance(10**9)
        append("/meanwhile")
        hold.go.set()
        late.result(PROMPTLY_S)
    entries = audit.entries()
    assert [e.target for e in entries[1:]] == ["/meanwhile", "/late"]
    assert [e.at_ns for e in entries] == sorted(e.at_ns for e in entries)
    assert audit.verify().ok


def test_appends_from_two_threads_keep_one_chain(engine: sa.Engine, clock: ManualClock) -> None:
    audit = AuditLog(engine, clock=clock)

    def append(i: int) -> None:
        audit.append(
            tenant_id=1, key_id=None, method="POST", route="/v1/x", target=f"/{i}", status=200
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append, range(40)))
    report = audit.verify()
    assert report.ok and report.entries == 40, report


def test_a_path_with_control_characters_is_audited_escaped(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """A request's path is decoded: ``POST /v1/payments/customers/%00/top-ups`` matches its
    route (and is refused 422) with a NUL in its target. PostgreSQL's text cannot hold one:
    the append failed, and with it every request of its group commit (all answered 500,
    none audited). Control characters are now kept as their ``%XX`` escapes."""
    audit = _log(engine, clock, 1)
    audit.append_many(
        [
            AuditRecord(1, None, "POST", "/v1/x/{id}", "/v1/x/\x00/y\x1f\x7f", 422),
            AuditRecord(2, None, "POST", "/v1/x/{id}", "/v1/x/1", 200),
        ]
    )
    assert [e.target for e in audit.entries()][1:] == ["/v1/x/%00/y%1F%7F", "/v1/x/1"]
    report = audit.verify()
    assert report.ok and report.entries == 3


class _LiveLog(AuditLog):
    """An audit log that a server appends to while ``verify`` reads it (between the anchor
    and the entries: the window a verify of a live store always has)."""

    def __init__(self, engine: sa.Engine, clock: ManualClock, appends: int) -> None:
        super().__init__(engine, clock=clock)
        self.appends = appends

    def _stream(self) -> Iterator[AuditEntry]:
        server = AuditLog(self.engine, clock=self.clock)
        for i in range(self.appends):
            server.append(
                tenant_id=1, key_id=None, method="POST", route="/v1/x", target=f"/{i}", status=200
            )
        self.appends = 0
        yield from super()._stream()


def test_verify_while_a_server_appends_is_not_a_false_alarm(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """``puhui audit verify`` on a live store: entries appended after it read the anchor
    used to make the log longer than the anchor said, reported as ``truncated`` (exit 1)
    though nothing was wrong. The anchor is read again after the entries: a log between
    the two anchors is whole."""
    _log(engine, clock, 3)
    report = _LiveLog(engine, clock, 2).verify()
    assert report.ok, report
    assert (report.entries, report.anchor_count) == (5, 5)
    assert report.head_hash == report.anchor_head_hash
    assert AuditLog(engine, clock=clock).verify().ok


def test_entries_appended_past_the_anchor_by_a_forger_are_found(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """A well-chained entry added at the end without moving the anchor (a forger without
    the anchor's row) is still found, by the anchor read after the entries."""
    audit = _log(engine, clock, 3)
    [last] = audit.entries(after_seq=2)
    _forge(engine, clock, 4, last.hash)
    assert _kind_at(audit) == (4, AuditProblemKind.TRUNCATED)
