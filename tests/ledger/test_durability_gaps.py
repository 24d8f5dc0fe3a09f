"""Durability gaps of the file journal and the row files: damage to rows below a snapshot, a
journal whose last segment lost its tail, the journal's identity written durably."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from puhui.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    Transfer,
    open,
    verify,
)
from puhui.ledger._engine import _RowFile
from puhui.ledger._types import BALANCE_DTYPE, TRANSFER_DTYPE

from .conftest import SMALL_SEGMENT_BYTES, flip, segmented_journal, segments

ALL = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS


def _field(dtype: np.dtype[np.void], name: str) -> int:
    fields = dtype.fields
    assert fields is not None
    return int(fields[name][1])


def _accounts(led: object) -> None:
    results = led.create_accounts(  # type: ignore[attr-defined]
        [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY) for i in (1, 2)]
    )
    assert all(r.status == CreateAccountStatus.CREATED for r in results)


def _transfer(i: int, amount: int = 10) -> Transfer:
    return Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=amount, ledger=1, code=1)


# --- 1. every row below a snapshot is checked, not only the newest ---------------------------


@pytest.mark.parametrize(
    ("name", "offset"),
    [
        ("transfers.dat", _field(TRANSFER_DTYPE, "amount_lo")),  # the first transfer's amount
        ("balances.dat", _field(BALANCE_DTYPE, "debits_posted_lo")),  # its debit side's
        ("transfers.dat", 3 * 128 + _field(TRANSFER_DTYPE, "id_lo")),  # a middle one's id
    ],
)
def test_a_damaged_older_row_is_not_restored(
    tmp_path: Path, name: str, offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A bit flipped in a row below a snapshot's count but not its newest: the snapshot
    checked only the newest transfer row and its balance rows, so the damaged row was loaded
    as truth (a transfer of 26 instead of 10, a balance history that never was, a transfer
    gone from lookups). Every row is checked now; the journal rebuilds the rows."""
    path = tmp_path / "journal"
    state_dir = tmp_path / "state"
    led = open(path, state_dir=state_dir)
    _accounts(led)
    for i in range(1, 7):
        assert led.create_transfers([_transfer(i)])[0].status == CreateTransferStatus.CREATED
    transfers = led.lookup_transfers(list(range(1, 7)))
    history = led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL))
    led.close()  # a snapshot with every row below its count
    flip(state_dir / name, offset)
    with caplog.at_level(logging.WARNING, logger="puhui.ledger"):
        led = open(path, state_dir=state_dir)
    try:
        assert led.lookup_transfers(list(range(1, 7))) == transfers
        assert led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL)) == history
        assert verify(led).ok
    finally:
        led.close()
    assert any("do not hold its rows" in r.getMessage() for r in caplog.records)


SLOT = 64 * 1024


def _append(rows: _RowFile, n: int, count: int) -> int:
    rows.ensure(n + count, n)
    rows.array["amount_lo"][n : n + count] = np.arange(n, n + count)
    rows.array["id_lo"][n : n + count] = np.arange(n, n + count) + 1
    return n + count


def _row_file(path: Path) -> _RowFile:
    return _RowFile(TRANSFER_DTYPE, path, 1024, slot_bytes=SLOT, ring_slots=4)


def test_row_digests_cover_every_piece_across_slots_and_reopenings(tmp_path: Path) -> None:
    """Rows moved to the file slot by slot, some by the helper (``spill``), some by the writer
    (a full ring), some only by ``sync``: the digests ``sync`` gives match the file; after a
    reopening (``verify`` then ``reset``) and more rows, they match again; a byte changed in
    any piece, or the file cut short, fails the check."""
    path = tmp_path / "rows.dat"
    rows = _row_file(path)
    n = 0
    for step in range(30):  # 9,000 rows: 17 slots through a ring of 4
        n = _append(rows, n, 300)
        if step % 3 == 0:
            while rows.spill(n):
                pass
    digests = rows.sync(n - 7)
    assert digests.shape[0] == -(-(n - 7) * 128 // SLOT)
    rows.close()
    again = _row_file(path)
    assert again.verify(n - 7, digests)
    again.reset(n - 7)
    m = n - 7
    for _ in range(10):
        m = _append(again, m, 300)
    while again.spill(m):
        pass
    later = again.sync(m)
    assert np.array_equal(later[: digests.shape[0] - 1], digests[:-1])  # whole pieces kept
    again.close()
    for piece in range(later.shape[0]):
        check = _row_file(path)
        try:
            assert check.verify(m, later)
        finally:
            check.close()
        flip(path, piece * SLOT + 77)
        check = _row_file(path)
        try:
            assert not check.verify(m, later), piece
        finally:
            check.close()
        flip(path, piece * SLOT + 77)  # back as it was
    with path.open("r+b") as f:
        f.truncate(m * 128 - 64)
    check = _row_file(path)
    try:
        assert not check.verify(m, later)
    finally:
        check.close()


# --- 2. a journal that lost records known to be durable is corrupt, not shorter -------------

HEADER = 32


def _record_bytes(payload_length: int) -> int:
    return (HEADER + payload_length + 7) & ~7


@pytest.mark.parametrize("cut", ["at a record", "inside a record"])
def test_a_last_segment_cut_short_is_corruption(tmp_path: Path, cut: str) -> None:
    """The last segment lost its tail after its records were acknowledged (a copy cut short,
    a restore from a partial backup): the journal opened as if the records cut off had never
    been written (the segment's allocated size was recorded nowhere)."""
    from puhui.ledger import JournalCorruptError
    from puhui.ledger._journal import FileJournal

    journal = FileJournal(tmp_path / "j")
    for op in range(1, 6):
        journal.append(op, bytes([op]) * 1000)
    journal.close()
    [segment] = segments(tmp_path / "j")
    end = 3 * _record_bytes(1000) + (0 if cut == "at a record" else 500)
    with segment.open("r+b") as f:
        f.truncate(end)
    with pytest.raises(JournalCorruptError, match="shorter"):
        FileJournal(tmp_path / "j")


def test_a_missing_last_segment_is_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that lacks the newest segment: the journal opened at the end of the one
    before, every acknowledged record of the lost segment gone without a word."""
    from puhui.ledger import JournalCorruptError
    from puhui.ledger._journal import FileJournal

    segmented_journal(tmp_path / "j", monkeypatch)[-1].unlink()
    with pytest.raises(JournalCorruptError, match="missing"):
        FileJournal(tmp_path / "j", segment_bytes=SMALL_SEGMENT_BYTES)


def test_records_lost_after_a_snapshot_counted_them_are_corruption(tmp_path: Path) -> None:
    """The last segment put back as an older copy of itself (same size, the newer records
    zeros): the ledger's snapshot holds the op the journal was durable up to, and the journal
    keeps it too. The journal opened at the older end, and the snapshot was dropped as one
    of a journal rolled back: acknowledged transfers gone."""
    from puhui.ledger import JournalCorruptError

    path = tmp_path / "journal"
    led = open(path, state_dir=tmp_path / "state")
    _accounts(led)
    led.close()
    [segment] = segments(path)
    older = segment.read_bytes()
    led = open(path, state_dir=tmp_path / "state")
    for i in range(1, 4):
        assert led.create_transfers([_transfer(i)])[0].status == CreateTransferStatus.CREATED
    led.close()
    segment.write_bytes(older)
    with pytest.raises(JournalCorruptError, match="durable"):
        open(path, state_dir=tmp_path / "state")
    with pytest.raises(JournalCorruptError, match="durable"):
        open(path, state_dir=tmp_path / "fresh")  # and without the state directory


def test_a_torn_record_after_the_last_snapshot_is_still_forgotten(tmp_path: Path) -> None:
    """What the journal knows to be durable is what a snapshot counted: a record after it,
    torn by a crash while it was written, is still cut and the ledger opens."""
    path = tmp_path / "journal"
    led = open(path, state_dir=tmp_path / "state")
    _accounts(led)
    led.snapshot_now()  # op 1 counted
    assert led.create_transfers([_transfer(1)])[0].status == CreateTransferStatus.CREATED
    # As a crash leaves it: the process gone without closing (no final snapshot).
    shutil.copytree(path, tmp_path / "crashed", ignore=shutil.ignore_patterns("lock"))
    led.close()
    [segment] = segments(tmp_path / "crashed")
    data = bytearray(segment.read_bytes())
    start = _record_bytes(int.from_bytes(data[16:24], "little"))  # record 2
    end = start + _record_bytes(int.from_bytes(data[start + 16 : start + 24], "little"))
    data[start + 20 : end] = bytes(end - start - 20)  # the write cut short in its header
    segment.write_bytes(bytes(data))
    again = open(tmp_path / "crashed", state_dir=tmp_path / "crashed-state")
    try:
        assert again.last_op == 1
        assert again.lookup_transfers([1]) == []
        assert len(again.lookup_accounts([1, 2])) == 2
    finally:
        again.close()


def test_a_journal_written_before_the_checkpoint_opens_and_gains_one(tmp_path: Path) -> None:
    """A journal of the earlier format (no ``checkpoint`` file) opens as before; from then on
    its segments' sizes are known."""
    from puhui.ledger import JournalCorruptError
    from puhui.ledger._journal import FileJournal

    journal = FileJournal(tmp_path / "j")
    for op in range(1, 4):
        journal.append(op, bytes([op]) * 100)
    journal.close()
    (tmp_path / "j" / "checkpoint").unlink()
    again = FileJournal(tmp_path / "j")
    try:
        assert [op for op, _ in again.read(0)] == [1, 2, 3]
    finally:
        again.close()
    assert (tmp_path / "j" / "checkpoint").exists()
    [segment] = segments(tmp_path / "j")
    with segment.open("r+b") as f:
        f.truncate(_record_bytes(100))
    with pytest.raises(JournalCorruptError):
        FileJournal(tmp_path / "j")


def test_a_ledger_written_before_the_row_digests_opens(tmp_path: Path) -> None:
    """A ledger of the earlier format: no journal checkpoint, a snapshot of format 2 (a
    checksum of the newest rows only). It opens with the same state; the old snapshot is
    skipped (its rows cannot be checked) and the state rebuilt from the journal."""
    path = tmp_path / "journal"
    state_dir = tmp_path / "state"
    led = open(path, state_dir=state_dir)
    _accounts(led)
    for i in range(1, 4):
        led.create_transfers([_transfer(i)])
    transfers = led.lookup_transfers([1, 2, 3])
    accounts = led.lookup_accounts([1, 2])
    led.close()
    (path / "checkpoint").unlink()
    [snapshot] = (state_dir / "snapshots").iterdir()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["format"] = 2
    manifest["rows_checksum"] = 12345
    for name in ("transfer_rows", "balance_rows"):
        del manifest["checksums"][name]
        (snapshot / f"{name}.npy").unlink()
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    led = open(path, state_dir=state_dir)
    try:
        assert led.lookup_transfers([1, 2, 3]) == transfers
        assert led.lookup_accounts([1, 2]) == accounts
        assert verify(led).ok
    finally:
        led.close()
    assert (path / "checkpoint").exists()
    # The old snapshot (of the same op as the state now) gave way to one of the new format:
    # it had stayed, every later snapshot of that op was taken as written, and every opening
    # replayed the whole journal.
    [snapshot] = (state_dir / "snapshots").iterdir()
    assert json.loads((snapshot / "manifest.json").read_text())["format"] == 3


# --- 3. the journal's identity is written durably ----------------------------------------


def test_the_identity_is_synced_before_it_is_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``identity`` file was renamed into place without an fsync of its contents: after
    a crash the name could be there with no bytes behind it, an empty identity (every
    snapshot of the journal dropped, any other journal's state of the same empty identity
    taken for its own). Now: write, fsync the file, rename, fsync the directory."""
    from puhui.ledger._journal import FileJournal

    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src: object, dst: object) -> None:
        calls.append(("replace", f"{os.fspath(src)}>{os.fspath(dst)}"))  # type: ignore[call-overload]
        replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    directory = tmp_path / "j"
    FileJournal(directory).close()
    identity, tmp = str(directory / "identity"), str(directory / "identity.tmp")
    renamed = calls.index(("replace", f"{tmp}>{identity}"))
    assert ("fsync", tmp) in calls[:renamed]
    assert ("fsync", str(directory)) in calls[renamed + 1 :]
    assert len((directory / "identity").read_text().strip()) == 36


def test_an_identity_a_crash_left_empty_is_made_anew(tmp_path: Path) -> None:
    """An ``identity`` file left empty by a crash (renamed before its bytes were on disk):
    the journal gets a fresh identity rather than an empty one shared with every such
    journal."""
    from puhui.ledger._journal import FileJournal

    FileJournal(tmp_path / "j").close()
    (tmp_path / "j" / "identity").write_text("")
    journal = FileJournal(tmp_path / "j")
    try:
        assert len(journal.identity) == 36
    finally:
        journal.close()


# --- 4. found nearby ------------------------------------------------------------------------


def test_a_journal_that_fails_to_open_lets_go_of_its_lock(tmp_path: Path) -> None:
    """A file journal found corrupt on opening kept its lock (and descriptors): every later
    open in the same process, a repair tool's or a retry's, got ``ledger_locked`` instead of
    the journal's real state."""
    from puhui.ledger import JournalCorruptError
    from puhui.ledger._journal import FileJournal

    journal = FileJournal(tmp_path / "j")
    for op in range(1, 4):
        journal.append(op, bytes([op]) * 3000)
    journal.close()
    [segment] = segments(tmp_path / "j")
    flip(segment, HEADER + 10)  # inside the first record
    for _ in range(2):
        with pytest.raises(JournalCorruptError):
            FileJournal(tmp_path / "j")
    with pytest.raises(JournalCorruptError):
        open(tmp_path / "j", state_dir=tmp_path / "state")
    flip(segment, HEADER + 10)  # repaired
    again = FileJournal(tmp_path / "j")
    try:
        assert again.last_op() == 3
    finally:
        again.close()


def test_a_ledger_that_fails_to_open_lets_go_of_its_row_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger whose replay fails (``journal_corrupt`` found while recovering, say) used to
    keep its row files' descriptors and mappings open: each retry in the process leaked
    more."""
    from puhui.ledger import JournalCorruptError
    from puhui.ledger._ledger import Ledger

    open(str(tmp_path / "j")).close()

    def corrupt(self: Ledger) -> None:
        raise JournalCorruptError("found while replaying")

    monkeypatch.setattr(Ledger, "_recover", corrupt)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(JournalCorruptError):
            open(str(tmp_path / "j"))
    assert len(os.listdir("/proc/self/fd")) == fds
