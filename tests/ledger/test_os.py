"""The Linux helpers behind row writeback: they work here, and are harmless where they don't."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from puhui.ledger._engine import _RowFile
from puhui.ledger._os import lower_io_priority, write_back
from puhui.ledger._types import TRANSFER_DTYPE

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="Linux system calls")


@linux_only
def test_a_thread_can_lower_its_own_io_priority() -> None:
    import threading

    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(lower_io_priority()))
    thread.start()
    thread.join()
    assert outcome == [True]


@linux_only
def test_write_back_accepts_a_range_and_rejects_a_closed_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"x" * 8192, 0)
    assert write_back(fd, 0, 8192)
    os.close(fd)
    assert not write_back(fd, 0, 8192)


SLOT = 64 * 1024
PER_SLOT = SLOT // TRANSFER_DTYPE.itemsize


def _append(rows: _RowFile, n: int, count: int) -> int:
    """Write rows n..n+count as the writer does (room first, then the rows)."""
    rows.ensure(n + count, n)
    rows.array["amount_lo"][n : n + count] = np.arange(n, n + count)
    rows.array["id_lo"][n : n + count] = 1
    return n + count


@linux_only
def test_full_slots_move_to_the_file_and_read_the_same(tmp_path: Path) -> None:
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 10_000, slot_bytes=SLOT, ring_slots=4)
    try:
        n = 0
        for _ in range(6):
            n = _append(rows, n, 300)
        assert rows.spill(n) is True  # one slot moved; another is full
        while rows.spill(n):
            pass
        assert rows.hot_start == (n // PER_SLOT) * SLOT  # every full slot, not the partial one
        assert rows.spill(n) is False
        # The moved rows now come from the file, the rest from the ring: the same values.
        assert rows.array["amount_lo"][:n].tolist() == list(range(n))
        on_file = np.fromfile(tmp_path / "rows.dat", dtype=TRANSFER_DTYPE, count=n)
        assert on_file["amount_lo"][: rows.hot_start // 128].tolist() == list(
            range(rows.hot_start // 128)
        )
        rows.sync(n)  # the partial slot too
        on_file = np.fromfile(tmp_path / "rows.dat", dtype=TRANSFER_DTYPE, count=n)
        assert on_file["amount_lo"].tolist() == list(range(n))
    finally:
        rows.close()


@linux_only
def test_the_writer_moves_slots_itself_when_the_ring_is_full(tmp_path: Path) -> None:
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 1024, slot_bytes=SLOT, ring_slots=4)
    try:
        n = 0
        for _ in range(40):  # 12,000 rows: 23 slots through a ring of 4, and two growths
            n = _append(rows, n, 300)
        assert rows.hot_start >= (n * 128 - 4 * SLOT)
        assert rows.array["amount_lo"][:n].tolist() == list(range(n))
        assert np.all(rows.array["id_lo"][n : n + 200] == 0)  # reused memory comes back zeroed
    finally:
        rows.close()


@linux_only
def test_rows_never_published_stay_in_the_ring(tmp_path: Path) -> None:
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 10_000, slot_bytes=SLOT, ring_slots=4)
    try:
        n = _append(rows, 0, 3 * PER_SLOT)
        assert rows.spill(PER_SLOT - 1) is False  # the first slot is not all final yet
        assert rows.hot_start == 0
        with pytest.raises(RuntimeError, match="does not fit the ring"):
            rows.ensure(n + 2 * PER_SLOT, n - 3 * PER_SLOT)  # would move unfinished rows
    finally:
        rows.close()


@linux_only
def test_reset_brings_back_the_partial_slot_from_the_file(tmp_path: Path) -> None:
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 10_000, slot_bytes=SLOT, ring_slots=4)
    n = 0
    for _ in range(7):
        n = _append(rows, n, 300)
    while rows.spill(n):
        pass
    rows.sync(n)
    # Rows past the count (written, never covered by a snapshot) must not come back.
    _append(rows, n, 100)
    rows.sync(n + 100)
    rows.close()
    again = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 1024, slot_bytes=SLOT, ring_slots=4)
    try:
        again.reset(n)
        assert again.hot_start == (n // PER_SLOT) * SLOT
        assert again.array["amount_lo"][:n].tolist() == list(range(n))
        assert np.all(again.array["id_lo"][n : n + 100] == 0)
        m = _append(again, n, 300)
        assert again.array["amount_lo"][:m].tolist() == list(range(m))
    finally:
        again.close()


@linux_only
def test_a_view_held_after_close_reads_zeros(tmp_path: Path) -> None:
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 1024, slot_bytes=SLOT, ring_slots=4)
    _append(rows, 0, 100)
    view = rows.array
    rows.close()
    assert int(view["amount_lo"][:100].sum()) == 0


def test_memory_rows_have_nothing_to_move() -> None:
    rows = _RowFile(TRANSFER_DTYPE, None, 1024)
    rows.ensure(2000, 0)
    assert rows.array.shape[0] >= 2000
    assert rows.spill(1024) is False
    rows.sync(1024)
    rows.close()


@linux_only
def test_final_rows_go_to_the_file_a_chunk_at_a_time(tmp_path: Path) -> None:
    slot = 2 << 20  # two chunks of 1 MiB
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", 40_000, slot_bytes=slot, ring_slots=2)
    try:
        per_mib = (1 << 20) // 128
        n = _append(rows, 0, per_mib + per_mib // 2)  # a chunk and a half
        assert rows.spill(n) is True  # the first chunk
        assert rows.spill(n) is False  # the second holds rows not yet written
        assert rows.hot_start == 0  # the slot stays in the ring until all of it is on file
        on_file = np.fromfile(tmp_path / "rows.dat", dtype=TRANSFER_DTYPE, count=per_mib)
        assert on_file["amount_lo"].tolist() == list(range(per_mib))
        n = _append(rows, n, per_mib // 2)
        assert rows.spill(n) is True  # the second chunk
        assert rows.spill(n) is True  # then the slot is remapped onto the file
        assert rows.hot_start == slot
        assert rows.array["amount_lo"][:n].tolist() == list(range(n))
    finally:
        rows.close()
