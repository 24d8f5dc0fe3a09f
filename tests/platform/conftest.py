"""A migrated SQL store (SQLite always, PostgreSQL in CI) and a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    engine = create_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_NS)
