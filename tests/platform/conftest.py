"""A manual clock and a PostgreSQL-only store (the migrated SQL store on each backend,
``engine``, is the suite's: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_NS)


@pytest.fixture
def pg_engine(postgres_schema_url: str) -> Iterator[sa.Engine]:
    """A migrated PostgreSQL store (``postgres_schema_url`` skips without one)."""
    engine = create_engine(postgres_schema_url)
    migrate(engine)
    yield engine
    engine.dispose()
