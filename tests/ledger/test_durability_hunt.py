"""Durability edge cases found by a hunt: damaged journals, a second opener, durable commits,
faults of the disk while writing."""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from pathlib import Path

import pytest

from puhui.clock import ManualClock
from puhui.ledger import (
    Account,
    CreateAccountStatus,
    CreateTransferStatus,
    JournalCorruptError,
    LedgerFailedError,
    LedgerLockedError,
    Transfer,
    TransferFlags,
    open,
    verify,
)
from puhui.ledger import _journal as J
from puhui.ledger._journal import FileJournal, open_journal

from .conftest import SMALL_SEGMENT_BYTES, segmented_journal, segments

HEADER = FileJournal.HEADER.size


def _record_bytes(payload_length: int) -> int:
    return (HEADER + payload_length + 7) & ~7


# --- the file journal: damage must be found, a torn tail forgotten -----------------------


def test_a_zeroed_header_before_acknowledged_records_is_corruption(tmp_path: Path) -> None:
    """A record whose header block reads as zeros (a lost or misdirected write) with records
    after it: those records were acknowledged, so this is not the end of the journal."""
    journal = FileJournal(tmp_path / "j")
    payload = b"p" * (4096 - HEADER)  # one record a block: a block lost is one header lost
    for op in range(1, 5):
        journal.append(op, payload)
    journal.close()
    [segment] = segments(tmp_path / "j")
    with segment.open("r+b") as f:
        f.seek(4096)  # the whole of record 2
        f.write(bytes(4096))
    with pytest.raises(JournalCorruptError):
        FileJournal(tmp_path / "j")


def test_a_journal_missing_its_first_segment_is_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal always starts at op 1 (segments are never pruned): a journal whose first
    segment is gone must not pass for one that starts later."""
    segmented_journal(tmp_path / "j", monkeypatch)[0].unlink()
    with pytest.raises(JournalCorruptError):
        FileJournal(tmp_path / "j", segment_bytes=SMALL_SEGMENT_BYTES)


SECTOR = 512


def _tears(start: int, end: int) -> list[tuple[int, int]]:
    """The byte ranges of a record at ``start``..``end`` that a crash can leave unwritten
    (zeros, as the pre-allocated segment holds): the header cut at any byte; or, a disk
    writing each sector whole or not at all, any sector boundary on, or any one sector."""
    cuts = [(start + k, end) for k in range(HEADER)]
    boundaries = range(start - start % SECTOR + SECTOR, end, SECTOR)
    cuts += [(b, end) for b in boundaries]
    sectors = range(start - start % SECTOR, end, SECTOR)
    cuts += [(max(s, start), min(s + SECTOR, end)) for s in sectors]
    return cuts


@pytest.mark.parametrize("payload_length", [100, 5000])
def test_a_torn_last_record_is_forgotten(tmp_path: Path, payload_length: int) -> None:
    """The final record torn every way a crash can tear it: the journal opens at the record
    before, appends go on from there, and the journal opens again after them."""
    first = os.urandom(3000)
    journal = FileJournal(tmp_path / "j")
    journal.append(1, first)
    journal.append(2, os.urandom(payload_length))
    journal.close()
    [segment] = segments(tmp_path / "j")
    intact = segment.read_bytes()
    start = _record_bytes(len(first))
    tears = _tears(start, start + HEADER + payload_length)
    assert len(tears) > HEADER
    for lo, hi in tears:
        torn = bytearray(intact)
        torn[lo:hi] = bytes(hi - lo)
        segment.write_bytes(torn)
        for appended in ([], [b"after"]):
            again = FileJournal(tmp_path / "j")
            try:
                assert list(again.read(0)) == [(1, first), *enumerate(appended, start=2)], lo
                if not appended:
                    again.append(2, b"after")
            finally:
                again.close()


@pytest.mark.parametrize("at", [0, 700, 4999])
def test_a_damaged_last_record_written_whole_is_corruption(tmp_path: Path, at: int) -> None:
    """The last record acknowledged, then a byte of it changed (decay, a stray write): every
    sector of it was written, so it is no torn write, and dropping it would lose an
    acknowledged group without a word."""
    journal = FileJournal(tmp_path / "j")
    journal.append(1, os.urandom(3000))
    journal.append(2, os.urandom(5000))
    journal.close()
    [segment] = segments(tmp_path / "j")
    with segment.open("r+b") as f:
        f.seek(_record_bytes(3000) + HEADER + at)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(JournalCorruptError):
        FileJournal(tmp_path / "j")


def test_a_header_whose_length_runs_past_the_segment_is_not_a_record(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "j")
    journal.append(1, b"one")
    journal.close()
    [segment] = segments(tmp_path / "j")
    header = FileJournal.HEADER.pack(FileJournal.MAGIC, 0, 2, 1 << 40, 0, 0)
    header = header[:-4] + zlib.crc32(header[:-4]).to_bytes(4, "little")
    with segment.open("r+b") as f:
        f.seek(_record_bytes(3))
        f.write(header)
    again = FileJournal(tmp_path / "j")
    try:
        assert again.last_op() == 1
        assert list(again.read(0)) == [(1, b"one")]
    finally:
        again.close()


# --- one writer per journal -----------------------------------------------------------------


def test_a_sqlite_journal_is_locked_to_one_opener(tmp_path: Path) -> None:
    """Two ledgers over one SQLite journal (each with its own state directory) would each
    number records from their own state: the second must be refused, as for the other
    journals."""
    path = tmp_path / "journal.sqlite"
    first = open_journal(str(path))
    try:
        with pytest.raises(LedgerLockedError):
            open_journal(str(path))
    finally:
        first.close()
    open_journal(str(path)).close()  # released on close


def test_a_ledger_over_a_sqlite_journal_open_elsewhere_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    led = open(path, state_dir=tmp_path / "a")
    try:
        with pytest.raises(LedgerLockedError):
            open(path, state_dir=tmp_path / "b")
    finally:
        led.close()


def test_a_postgres_journal_commits_synchronously(postgres_schema_url: str) -> None:
    """A database or role set to ``synchronous_commit = off`` would acknowledge commits a
    crash of the server can lose: the journal's own session must commit durably."""
    url = postgres_schema_url + "&options=-csynchronous_commit%3Doff"
    journal = J.PostgresJournal(url.replace("postgresql+psycopg://", "postgresql://", 1))
    try:
        row = journal._db.execute("SHOW synchronous_commit").fetchone()
        assert row is not None
        assert row[0] != "off"
    finally:
        journal.close()


# --- faults of the disk -----------------------------------------------------------------------


def _accounts(led: object) -> None:
    results = led.create_accounts(  # type: ignore[attr-defined]
        [Account(id=i, ledger=1, code=1) for i in (1, 2)]
    )
    assert all(r.status == CreateAccountStatus.CREATED for r in results)


def _transfer(i: int) -> Transfer:
    return Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC])
def test_a_failed_journal_sync_is_not_acknowledged_and_never_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """fdatasync failing once: the request fails, the ledger stops without syncing again
    (a retried fsync can report success for pages the kernel dropped), and reopening
    recovers every request that was acknowledged."""
    url = f"file://{tmp_path / 'journal'}"
    clock = ManualClock(1_000)
    led = open(url, state_dir=tmp_path / "state", clock=clock)
    _accounts(led)
    assert led.create_transfers([_transfer(1)])[0].status == CreateTransferStatus.CREATED
    calls: list[int] = []
    real = os.fdatasync

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(LedgerFailedError):
        led.create_transfers([_transfer(2)])
    with pytest.raises(LedgerFailedError):
        led.create_transfers([_transfer(3)])
    assert len(calls) == 1
    led.close()
    monkeypatch.setattr(os, "fdatasync", real)
    again = open(url, state_dir=tmp_path / "state", clock=clock)
    try:
        [one] = again.lookup_transfers([1])
        assert one.amount == 1
        assert again.lookup_transfers([3]) == []
        # The request whose sync failed got `ledger_failed`, yet its record reached the file
        # (the write itself succeeded): replay applies it. Its caller must retry by id.
        assert [t.id for t in again.lookup_transfers([2])] == [2]
        assert verify(again).ok
        assert again.create_transfers([_transfer(4)])[0].status == CreateTransferStatus.CREATED
    finally:
        again.close()


def test_no_room_for_a_new_segment_fails_the_request_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fallocate`` of the next segment failing (the disk full) fails the group that needed
    it; what was acknowledged before is all there after reopening."""
    monkeypatch.setattr(FileJournal, "FIRST_SEGMENT_BYTES", 1 << 16)
    url = f"file://{tmp_path / 'journal'}"
    led = open(url, state_dir=tmp_path / "state")
    _accounts(led)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    acknowledged = []
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(LedgerFailedError):
        for i in range(1, 10_000):
            led.create_transfers([_transfer(i)])
            acknowledged.append(i)
    led.close()
    monkeypatch.undo()
    assert len(acknowledged) > 10
    assert list((tmp_path / "journal").glob("*.tmp")) == []  # no half-made segment left
    again = open(url, state_dir=tmp_path / "state")
    try:
        found = again.lookup_transfers(acknowledged)
        assert [t.id for t in found] == acknowledged
        assert verify(again).ok
    finally:
        again.close()


# --- recovery equals never stopping -------------------------------------------------------------


def _engine_state(led: object) -> tuple[bytes, ...]:
    def read(engine: object) -> tuple[bytes, ...]:
        e = engine
        return (
            e.accounts[: e.n_accounts].tobytes(),  # type: ignore[attr-defined]
            e.transfers[: e.n_transfers].tobytes(),  # type: ignore[attr-defined]
            e.xfer_state[: e.n_transfers].tobytes(),  # type: ignore[attr-defined]
            e.counters.tobytes(),  # type: ignore[attr-defined]
            repr(sorted(e.retired_ids())).encode(),  # type: ignore[attr-defined]
        )

    state: tuple[bytes, ...] = led.read_state(read)  # type: ignore[attr-defined]
    return state


def _pending(i: int, timeout: int) -> Transfer:
    return Transfer(
        id=i,
        debit_account_id=1,
        credit_account_id=2,
        amount=5,
        ledger=1,
        code=1,
        flags=TransferFlags.PENDING,
        timeout=timeout,
    )


def test_a_copy_taken_while_open_recovers_the_same_state_under_any_clock(tmp_path: Path) -> None:
    """A crash-consistent copy (journal and state directory as a crash leaves them: a
    snapshot in the middle, records after it) reopened under a wall clock far behind or
    ahead (before the next deadline) rebuilds byte for byte the state the running ledger
    had, expiries included; so does a replay of the journal alone."""
    clock = ManualClock(10**18)
    url = tmp_path / "run" / "journal"
    led = open(f"file://{url}", state_dir=tmp_path / "run" / "state", clock=clock)
    try:
        _accounts(led)
        led.create_transfers([_pending(i, timeout=1 + i % 3) for i in range(1, 40)])
        clock.set(clock.now_ns() + 2 * 10**9)
        assert led.tick() > 0  # some expired, some still pending
        led.snapshot_now()
        led.create_transfers([_pending(i, timeout=5) for i in range(40, 60)])
        led.create_transfers([_transfer(i) for i in range(60, 70)])
        clock.set(clock.now_ns() + 10 * 10**9)
        assert led.tick() > 0  # expiries after the snapshot, journalled as a pulse
        led.create_transfers([_transfer(i) for i in range(70, 80)])
        led.create_transfers([_pending(i, timeout=1000) for i in range(80, 85)])  # not yet due
        live = _engine_state(led)
        live_op = led.last_op
        for name in ("behind", "ahead"):
            shutil.copytree(
                tmp_path / "run", tmp_path / name, ignore=shutil.ignore_patterns("lock")
            )
    finally:
        led.close()
    for name, offset in (("behind", -(10**17)), ("ahead", 100 * 10**9)):
        copied = tmp_path / name
        # Recovery starts from a snapshot with records after it.
        snapshots = [int(p.name) for p in (copied / "state" / "snapshots").iterdir()]
        assert 0 < max(snapshots) < live_op
        # From the snapshot and the records after it, then from the journal alone.
        for state_dir in (copied / "state", copied / "fresh"):
            again = open(
                f"file://{copied / 'journal'}",
                state_dir=state_dir,
                clock=ManualClock(10**18 + offset),
            )
            try:
                assert again.last_op == live_op
                assert _engine_state(again) == live, (name, state_dir.name)
                assert verify(again).ok
            finally:
                again.close()


def test_a_postgres_connection_lost_fails_the_request_and_recovery_agrees(
    postgres_schema_url: str, tmp_path: Path
) -> None:
    """The journal's connection dropped before a commit: the request is not acknowledged,
    the ledger stops, and reopening has exactly what was acknowledged before."""
    import psycopg

    clock = ManualClock(1_000)
    led = open(postgres_schema_url, state_dir=tmp_path / "state", clock=clock)
    try:
        _accounts(led)
        assert led.create_transfers([_transfer(1)])[0].status == CreateTransferStatus.CREATED
        pid = led.journal._db.info.backend_pid  # type: ignore[attr-defined]
        conninfo = postgres_schema_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(LedgerFailedError):
            led.create_transfers([_transfer(2)])
    finally:
        led.close()
    again = open(postgres_schema_url, state_dir=tmp_path / "state", clock=clock)
    try:
        assert [t.id for t in again.lookup_transfers([1, 2])] == [1]
        assert again.last_op == 2  # the accounts, transfer 1
        assert verify(again).ok
    finally:
        again.close()
