"""The Linux helpers behind row writeback: they work here, and are harmless where they don't."""

from __future__ import annotations

import mmap
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


@linux_only
def test_row_writeback_advances_by_whole_pages_and_keeps_the_rows(tmp_path: Path) -> None:
    page = mmap.PAGESIZE
    n = (3 * page + page // 2) // TRANSFER_DTYPE.itemsize  # three whole pages and a half
    rows = _RowFile(TRANSFER_DTYPE, tmp_path / "rows.dat", n + 1024)
    try:
        rows.array["amount_lo"][:n] = np.arange(n)
        assert rows.write_back(n, chunk_bytes=page) is True  # one page now, more left
        while rows.write_back(n, chunk_bytes=page):
            pass
        assert rows._written_back == 3 * page
        assert rows.write_back(n, chunk_bytes=page) is False  # the partial page waits
        rows.sync()
    finally:
        rows.close()
    data = np.fromfile(tmp_path / "rows.dat", dtype=TRANSFER_DTYPE, count=n)
    assert data["amount_lo"].tolist() == list(range(n))


def test_row_writeback_of_memory_rows_does_nothing() -> None:
    rows = _RowFile(TRANSFER_DTYPE, None, 1024)
    assert rows.write_back(1024, chunk_bytes=4096) is False
