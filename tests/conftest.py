"""Fixtures shared by the whole suite: journal backends and a migrated SQL store (SQLite
always, PostgreSQL in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

POSTGRES_ENV = "PUHUI_TEST_DATABASE_URL"


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def _psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (dropped afterwards)."""
    url = postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (CI sets it; .ci/run exports it)")
    import psycopg

    schema = f"puhui_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_conninfo(url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_psycopg_conninfo(url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "file", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """The journal of a fresh ledger, on each backend."""
    from pathlib import Path

    if request.param == "sqlite":
        return str(Path(str(tmp_path)) / "journal.sqlite")
    if request.param == "file":
        return f"file://{Path(str(tmp_path)) / 'journal'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQL store, on each backend (a directory's own ``engine`` overrides it)."""
    from puhui.store import create_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    sql = create_engine(url)
    migrate(sql)
    yield sql
    sql.dispose()
