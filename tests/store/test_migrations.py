"""The migrations build exactly the schema the code declares, and can be undone."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from puhui.store import create_engine, current_revision, metadata, migrate
from puhui.store._migrate import _config


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    return create_engine(url)


def test_migrated_schema_equals_the_declared_tables(engine: sa.Engine) -> None:
    assert current_revision(engine) is None
    migrate(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
    head = current_revision(engine)
    assert head is not None
    migrate(engine)  # again: nothing to do
    assert current_revision(engine) == head
    engine.dispose()


def test_every_migration_can_be_undone_and_redone(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.begin() as conn:
        command.downgrade(_config(conn), "base")
    with engine.connect() as conn:
        left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    assert left == set()
    migrate(engine)
    with engine.connect() as conn:
        assert set(metadata.tables) <= set(sa.inspect(conn).get_table_names())
    engine.dispose()
