"""Fixtures for the ledger conformance tests.

``harness`` runs each test once per implementation: the pure-Python reference model, and the
real engine journalling to SQLite and to PostgreSQL (the latter when PUHUI_TEST_DATABASE_URL
is set). Every harness starts with its clock at ``now == 100`` and no accounts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ledger.engine_harness import EngineHarness
from tests.ledger.harness import LedgerHarness, ReferenceHarness

HARNESS_START = 100


@pytest.fixture(params=["reference", "engine-sqlite", "engine-postgresql"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerHarness]:
    name: str = request.param
    if name == "reference":
        yield ReferenceHarness(now=HARNESS_START)
        return
    url = None
    if name == "engine-postgresql":
        url = request.getfixturevalue("postgres_schema_url")
    engine = EngineHarness(tmp_path, now=HARNESS_START, url=url)
    try:
        yield engine
    finally:
        engine.close()
