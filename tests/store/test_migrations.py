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


def test_events_written_before_0015_list_first_in_their_order(engine: sa.Engine) -> None:
    """0015 gives each event its transaction's id (``txid``) and lists by ``(txid, seq)``:
    the events already there get 0, so they list first, in ``seq`` order as before, and a
    cursor taken among them (``(0, seq)``) goes on through them, then through every event
    written since (a larger txid). On PostgreSQL the column keeps no default: every writer
    names its transaction."""
    from puhui.platform import EventType, Webhooks

    migrate(engine, "0014")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO platform_tenants (id, name, kind, status, ledger_id_mask,"
                " created_at_ns) VALUES (1, 'Bank', 'bank', 'active', :mask, 1)"
            ),
            {"mask": "0" * 32},
        )
        for n in (1, 2, 3):  # seq 1, 2, 3
            conn.execute(
                sa.text(
                    "INSERT INTO platform_webhook_events (id, tenant_id, type, created_at_ns,"
                    " payload) VALUES (:id, 1, 'order.paid', 1, '{}')"
                ),
                {"id": f"evt_{n:032x}"},
            )
    migrate(engine)
    webhooks = Webhooks(engine)
    with engine.begin() as conn:
        newer = webhooks.record(conn, 1, EventType.ORDER_PAID, {})
    listed = webhooks.events(1)
    assert [(e.id, e.seq, e.txid) for e in listed[:3]] == [
        (f"evt_{n:032x}", n, 0) for n in (1, 2, 3)
    ]
    assert listed[3].id == newer and listed[3].txid > 0
    assert [e.id for e in webhooks.events(1, after=(0, 1))] == [e.id for e in listed[1:]]
    if engine.dialect.name == "postgresql":
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO platform_webhook_events (id, tenant_id, type, created_at_ns,"
                    " payload) VALUES ('evt_x', 1, 'order.paid', 1, '{}')"
                )
            )
    engine.dispose()
