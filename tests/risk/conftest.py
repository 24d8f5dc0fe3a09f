"""A migrated SQL store for the risk tests that keep lists in SQL (SQLite always, PostgreSQL
in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from puhui.store import create_engine, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    sql = create_engine(url)
    migrate(sql)
    yield sql
    sql.dispose()
