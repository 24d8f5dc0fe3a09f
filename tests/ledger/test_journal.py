"""Journal adapters: ordering, checksums, torn tails, segment rollover, identity, locking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from puhui.ledger import JournalCorruptError, LedgerLockedError
from puhui.ledger._journal import FileJournal, Journal, SqliteJournal, open_journal


def _records(journal: Journal, after: int = 0) -> list[tuple[int, bytes]]:
    return list(journal.read(after))


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_append_and_read_back_in_order(tmp_path: Path, kind: str) -> None:
    url = str(tmp_path / "j.sqlite") if kind == "sqlite" else f"file://{tmp_path / 'j'}"
    journal = open_journal(url)
    payloads = [os.urandom(n) for n in (1, 100, 70_000, 8)]
    for op, payload in enumerate(payloads, start=1):
        journal.append(op, payload)
    assert journal.last_op() == 4
    assert _records(journal) == list(enumerate(payloads, start=1))
    assert _records(journal, 2) == [(3, payloads[2]), (4, payloads[3])]
    identity = journal.identity
    journal.close()
    again = open_journal(url)
    try:
        assert again.identity == identity
        assert again.last_op() == 4
        assert _records(again) == list(enumerate(payloads, start=1))
        again.append(5, b"five")
        assert _records(again, 4) == [(5, b"five")]
    finally:
        again.close()


def test_file_journal_rolls_over_segments(tmp_path: Path) -> None:
    FileJournal.FIRST_SEGMENT_BYTES, saved = 4096, FileJournal.FIRST_SEGMENT_BYTES
    try:
        journal = FileJournal(tmp_path / "j", segment_bytes=16384)
        payloads = [bytes([op % 251]) * (1000 + op * 37) for op in range(1, 60)]
        for op, payload in enumerate(payloads, start=1):
            journal.append(op, payload)
        journal.close()
        segments = sorted((tmp_path / "j").glob("*.seg"))
        assert len(segments) > 3
        again = FileJournal(tmp_path / "j", segment_bytes=16384)
        assert again.last_op() == len(payloads)
        assert _records(again) == list(enumerate(payloads, start=1))
        assert _records(again, 50) == list(enumerate(payloads, start=1))[50:]
        again.close()
    finally:
        FileJournal.FIRST_SEGMENT_BYTES = saved


def test_file_journal_discards_a_torn_final_record(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "j")
    journal.append(1, b"a" * 5000)
    journal.append(2, b"b" * 5000)
    journal.close()
    [segment] = (tmp_path / "j").glob("*.seg")
    # Tear the last record: part of its payload never reached the disk.
    header = FileJournal.HEADER.size
    second = (header + 5000 + 7) & ~7
    with segment.open("r+b") as f:
        f.seek(second + header + 4096)
        f.write(bytes(5000 - 4096))
    again = FileJournal(tmp_path / "j")
    try:
        assert again.last_op() == 1
        assert _records(again) == [(1, b"a" * 5000)]
        again.append(2, b"c")  # appends go on after the torn record
        assert _records(again) == [(1, b"a" * 5000), (2, b"c")]
    finally:
        again.close()


def test_file_journal_reports_damage_before_the_end(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "j")
    for op in range(1, 4):
        journal.append(op, bytes([op]) * 3000)
    journal.close()
    [segment] = (tmp_path / "j").glob("*.seg")
    with segment.open("r+b") as f:
        f.seek(FileJournal.HEADER.size + 10)  # inside the first record's payload
        f.write(b"\xff")
    with pytest.raises(JournalCorruptError):
        FileJournal(tmp_path / "j")


def test_sqlite_journal_detects_a_gap(tmp_path: Path) -> None:
    import sqlite3

    journal = SqliteJournal(tmp_path / "j.sqlite")
    for op in range(1, 4):
        journal.append(op, b"x")
    journal.close()
    db = sqlite3.connect(tmp_path / "j.sqlite")
    db.execute("DELETE FROM journal WHERE op = 2")
    db.commit()
    db.close()
    again = SqliteJournal(tmp_path / "j.sqlite")
    try:
        with pytest.raises(JournalCorruptError):
            _records(again)
    finally:
        again.close()


def test_file_journal_is_locked_to_one_process(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "j")
    try:
        with pytest.raises(LedgerLockedError):
            FileJournal(tmp_path / "j")
    finally:
        journal.close()


def test_append_out_of_order_is_refused(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path / "j")
    try:
        journal.append(1, b"x")
        with pytest.raises(JournalCorruptError):
            journal.append(3, b"y")
    finally:
        journal.close()


def test_plain_paths_choose_the_journal_kind(tmp_path: Path) -> None:
    chosen = {}
    for name in ("ledger", "ledger.sqlite", "ledger.db"):
        journal = open_journal(str(tmp_path / name))
        chosen[name] = type(journal)
        journal.close()
    assert chosen == {
        "ledger": FileJournal,
        "ledger.sqlite": SqliteJournal,
        "ledger.db": SqliteJournal,
    }
    existing = tmp_path / "legacy"  # an existing SQLite file without a suffix stays SQLite
    SqliteJournal(existing).close()
    again = open_journal(str(existing))
    assert isinstance(again, SqliteJournal)
    again.close()
