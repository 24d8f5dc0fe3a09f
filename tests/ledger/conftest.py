"""Fixtures for the ledger conformance tests.

``harness`` runs each test once per implementation: the pure-Python reference model, the
real engine journalling to SQLite and to PostgreSQL (the latter when PUHUI_TEST_DATABASE_URL
is set), and the SQLite engine served on a Unix socket and driven through ``connect``. Every
harness starts with its clock at ``now == 100`` and no accounts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from puhui.ledger._journal import FileJournal
from tests.ledger.engine_harness import EngineHarness
from tests.ledger.harness import LedgerHarness, ReferenceHarness
from tests.ledger.remote_harness import RemoteHarness

HARNESS_START = 100


@pytest.fixture(params=["reference", "engine-sqlite", "engine-postgresql", "remote-sqlite"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerHarness]:
    name: str = request.param
    if name == "reference":
        yield ReferenceHarness(now=HARNESS_START)
        return
    url = None
    if name == "engine-postgresql":
        url = request.getfixturevalue("postgres_schema_url")
    engine: EngineHarness | RemoteHarness
    if name == "remote-sqlite":
        engine = RemoteHarness(tmp_path, now=HARNESS_START)
    else:
        engine = EngineHarness(tmp_path, now=HARNESS_START, url=url)
    try:
        yield engine
    finally:
        engine.close()


SMALL_SEGMENT_BYTES = 8192
"""The largest segment of ``segmented_journal``'s journal (its first is 4 KiB)."""


def flip(path: Path, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` of ``path`` (flipping it again repairs it)."""
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def segments(directory: Path) -> list[Path]:
    """A file journal's segment files, in order."""
    return sorted(directory.glob("*.seg"))


def segmented_journal(directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """A closed file journal of 19 records of 1,500 bytes in small segments (more than two;
    reopen it with ``segment_bytes=SMALL_SEGMENT_BYTES``): its segment files, in order."""
    monkeypatch.setattr(FileJournal, "FIRST_SEGMENT_BYTES", 4096)
    journal = FileJournal(directory, segment_bytes=SMALL_SEGMENT_BYTES)
    for op in range(1, 20):
        journal.append(op, bytes([op]) * 1500)
    journal.close()
    found = segments(directory)
    assert len(found) > 2
    return found
