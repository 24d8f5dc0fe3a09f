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


def test_money_moved_before_0014_stays_booked_on_its_own_day(engine: sa.Engine) -> None:
    """0014 keys reconciliation by the day the bank booked a reference (``bank_day``): the
    operations completed before it keep the key they were reconciled by, their own day; the
    others (not moved through the bank, or not completed) have none."""
    migrate(engine, "0013")
    columns = (
        "id, kind, scope, idempotency_key, fingerprint, status, currency, amount, note, day,"
        " decision, risk_score, risk_reasons, bank_sent, fee, created_at_ns, updated_at_ns"
    )
    rows = [
        ("a" * 32, "withdrawal", "completed", 20_000),
        ("b" * 32, "top_up", "completed", 20_001),
        ("c" * 32, "settlement", "awaiting_bank", 20_001),
        ("d" * 32, "p2p", "completed", 20_002),
    ]
    with engine.begin() as conn:
        for key, kind, status, day in rows:
            conn.execute(
                sa.text(
                    f"INSERT INTO payments_operations ({columns}) VALUES (:id, :kind, 's', :id,"
                    " 'f', :status, 'CNY', 100, '', :day, 'accept', 0, '{}', true, 0, 1, 1)"
                ),
                {"id": key, "kind": kind, "status": status, "day": day},
            )
    migrate(engine)
    with engine.connect() as conn:
        booked = conn.execute(
            sa.text("SELECT id, bank_day FROM payments_operations ORDER BY id")
        ).all()
    assert [tuple(r) for r in booked] == [
        ("a" * 32, 20_000),
        ("b" * 32, 20_001),
        ("c" * 32, None),
        ("d" * 32, None),
    ]
    engine.dispose()
