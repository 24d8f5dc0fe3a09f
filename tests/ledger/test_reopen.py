"""Opening after a clean close without reading what the snapshot covers, and what is still
checked: journal segments wholly below the snapshot's op are not read at opening but checked
in the background (damage stops the ledger, as it stopped opening before) and by any replay
that reads them; the transfers' id index is built on the pass that checks the row files."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from puhui.ledger import (
    Account,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    JournalCorruptError,
    LedgerFailedError,
    Transfer,
    open,
    verify,
)
from puhui.ledger import _kernel as K
from puhui.ledger._journal import FileJournal

from .conftest import flip, segments

HEADER = 32
TRANSFERS = 120


def _transfer(i: int) -> Transfer:
    return Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=i, ledger=1, code=1)


def _closed_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A ledger closed cleanly (its final snapshot counts every record) whose journal has
    several segments (4 KiB, 8 KiB, ...): one record per transfer. Returns the segments."""
    monkeypatch.setattr(FileJournal, "FIRST_SEGMENT_BYTES", 4096)
    led = open(tmp_path / "journal", state_dir=tmp_path / "state")
    results = led.create_accounts(
        [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY) for i in (1, 2)]
    )
    assert all(r.status == CreateAccountStatus.CREATED for r in results)
    for i in range(1, TRANSFERS + 1):
        assert led.create_transfers([_transfer(i)])[0].status == CreateTransferStatus.CREATED
    led.close()
    found = segments(tmp_path / "journal")
    assert len(found) >= 3
    return found


def _records(segment: Path) -> list[tuple[int, int]]:
    """(offset, length with header and padding) of each record of a segment."""
    data = segment.read_bytes()
    out: list[tuple[int, int]] = []
    offset = 0
    while offset + HEADER <= len(data) and data[offset : offset + HEADER] != bytes(HEADER):
        length = int.from_bytes(data[offset + 16 : offset + 24], "little")
        out.append((offset, (HEADER + length + 7) & ~7))
        offset += out[-1][1]
    return out


def _zero_record(segment: Path, index: int) -> None:
    offset, length = _records(segment)[index]
    with segment.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(length))


def _reopen(tmp_path: Path, state: str = "state") -> object:
    return open(tmp_path / "journal", state_dir=tmp_path / state)


def test_segments_below_the_snapshot_are_not_read_at_opening_and_checked_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = _closed_ledger(tmp_path, monkeypatch)
    journal = FileJournal(tmp_path / "journal")
    try:
        unread = [path for path, _next in journal._unread.values()]
        assert unread == found[:-1]  # all but the last: the snapshot counted every record
        assert journal.known_checksum(journal.last_op()) is not None
        journal.check_unread()
        assert journal._unread == {}
        # Read from the start anyway (a replay from scratch): every record, in order.
        assert [op for op, _ in journal.read(0)] == list(range(1, journal.last_op() + 1))
    finally:
        journal.close()
    led = _reopen(tmp_path)
    try:
        assert led.wait_for_checks(timeout=30)  # type: ignore[attr-defined]
        assert led.lookup_transfers([1])[0].amount == 1  # type: ignore[attr-defined]
        assert verify(led).ok  # type: ignore[arg-type]
    finally:
        led.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("damage", ["a payload bit", "a header bit", "a record zeroed"])
def test_damage_below_the_snapshot_stops_the_ledger_once_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A record of a segment opening did not read, damaged: it opened (the snapshot holds
    the state), the background check finds it, and the ledger stops (fail-stop, as opening
    stopped before) rather than run on a journal that can no longer rebuild it."""
    found = _closed_ledger(tmp_path, monkeypatch)
    offset, _length = _records(found[1])[1]
    if damage == "a payload bit":
        flip(found[1], offset + HEADER + 5)
    elif damage == "a header bit":
        flip(found[1], offset + 8)  # its op
    else:
        _zero_record(found[1], 1)
    led = _reopen(tmp_path)
    try:
        with pytest.raises(JournalCorruptError):
            led.wait_for_checks(timeout=30)  # type: ignore[attr-defined]
        with pytest.raises(LedgerFailedError):
            led.create_transfers([_transfer(TRANSFERS + 1)])  # type: ignore[attr-defined]
    finally:
        led.close()  # type: ignore[attr-defined]
    # Without the snapshot (the state directory lost), replay reads the segment: refused.
    with pytest.raises(JournalCorruptError):
        _reopen(tmp_path, "fresh")
    # The segment not in the journal any more, or cut short, is still found at opening.
    shutil.copy(found[1], tmp_path / "kept")
    with found[1].open("r+b") as f:
        f.truncate(found[1].stat().st_size - 512)
    with pytest.raises(JournalCorruptError, match="shorter"):
        _reopen(tmp_path)
    found[1].unlink()
    with pytest.raises(JournalCorruptError, match="missing"):
        _reopen(tmp_path)


def test_a_record_moved_between_segments_below_the_snapshot_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment's last record zeroed (a segment that ends early: its ops do not run on to
    the next segment's first) is found by the background check and by a replay."""
    found = _closed_ledger(tmp_path, monkeypatch)
    _zero_record(found[0], len(_records(found[0])) - 1)
    journal = FileJournal(tmp_path / "journal")
    try:
        with pytest.raises(JournalCorruptError, match="ends early"):
            journal.check_unread()
        with pytest.raises(JournalCorruptError, match="ends early"):
            list(journal.read(0))
    finally:
        journal.close()


def test_the_index_built_while_checking_the_rows_is_the_one_a_rebuild_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _closed_ledger(tmp_path, monkeypatch)
    led = _reopen(tmp_path)
    try:

        def compare(engine: object) -> None:
            slots = engine.xfer_slots  # type: ignore[attr-defined]
            rebuilt = np.zeros_like(slots)
            K.index_rebuild(rebuilt, engine.transfers, engine.n_transfers)  # type: ignore[attr-defined]
            assert np.array_equal(slots, rebuilt)

        led.read_state(compare)  # type: ignore[attr-defined]
        looked_up = led.lookup_transfers(list(range(1, TRANSFERS + 2)))  # type: ignore[attr-defined]
        assert [t.id for t in looked_up] == list(range(1, TRANSFERS + 1))
        result = led.create_transfers([_transfer(5)])  # type: ignore[attr-defined]
        assert result[0].status == CreateTransferStatus.EXISTS
    finally:
        led.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("damaged", [False, True])
def test_a_crash_replays_through_segments_opening_did_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damaged: bool
) -> None:
    """After a crash the snapshot is older than segments the checkpoint knows durable (it
    records the last op at each rollover): opening skips them, and the replay reads them,
    checked record by record (damage there stops opening, as before)."""
    monkeypatch.setattr(FileJournal, "FIRST_SEGMENT_BYTES", 4096)
    led = open(tmp_path / "journal", state_dir=tmp_path / "state")
    led.create_accounts(
        [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY) for i in (1, 2)]
    )
    led.snapshot_now()  # the state after op 1 only
    for i in range(1, TRANSFERS + 1):
        assert led.create_transfers([_transfer(i)])[0].status == CreateTransferStatus.CREATED
    # As a crash leaves it: the process gone without closing (no final snapshot).
    for name in ("journal", "state"):
        shutil.copytree(
            tmp_path / name, tmp_path / f"crashed-{name}", ignore=shutil.ignore_patterns("lock")
        )
    led.close()
    found = segments(tmp_path / "crashed-journal")
    journal = FileJournal(tmp_path / "crashed-journal")
    try:
        assert found[1] in [path for path, _next in journal._unread.values()]
    finally:
        journal.close()
    if damaged:
        offset, _length = _records(found[1])[2]
        flip(found[1], offset + HEADER + 5)
        with pytest.raises(JournalCorruptError):
            open(tmp_path / "crashed-journal", state_dir=tmp_path / "crashed-state")
        return
    again = open(tmp_path / "crashed-journal", state_dir=tmp_path / "crashed-state")
    try:
        # The replay read them, all but the one the snapshot's op is in (checked after).
        unread = [path for path, _next in again._journal._unread.values()]  # type: ignore[attr-defined]
        assert found[1] not in unread
        assert again.wait_for_checks(timeout=30)
        looked_up = again.lookup_transfers(list(range(1, TRANSFERS + 1)))
        assert [t.amount for t in looked_up] == list(range(1, TRANSFERS + 1))
        assert verify(again).ok
    finally:
        again.close()


def test_the_replay_reads_ahead_in_order_and_raises_where_the_journal_did() -> None:
    """``_read_ahead`` hands over the journal's records in order, bounded in bytes ahead,
    then the journal's error after the records before it; a caller that stops early stops
    the reading thread."""
    from puhui.ledger._ledger import _read_ahead

    def records(fail: bool) -> Iterator[tuple[int, bytes]]:
        for op in range(1, 101):
            yield op, bytes([op]) * 1000
        if fail:
            raise JournalCorruptError("journal record 101 fails its checksum")

    assert [op for op, _ in _read_ahead(records(False), bytes_max=5000)] == list(range(1, 101))
    taken: list[int] = []
    with pytest.raises(JournalCorruptError, match="101"):
        for op, payload in _read_ahead(records(True), bytes_max=5000):
            assert payload == bytes([op]) * 1000
            taken.append(op)
    assert taken == list(range(1, 101))
    reading = _read_ahead(records(False), bytes_max=5000)
    assert next(reading)[0] == 1
    reading.close()  # joins the reading thread, blocked on the bound: it must stop
    assert not any(t.name == "puhui-ledger-read-ahead" for t in threading.enumerate())
