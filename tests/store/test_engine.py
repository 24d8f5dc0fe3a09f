"""The SQLite engine's turn: a process's transactions queue on a lock held from BEGIN until
SQLite's COMMIT or ROLLBACK has returned, and no way out of a transaction keeps it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from puhui.store import _engine, create_engine

WAIT_S = 0.05
"""How long the second transaction waits for the turn here (a bound, not a measurement)."""


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    monkeypatch.setattr(_engine, "TURN_TIMEOUT_S", WAIT_S)
    made = create_engine(f"sqlite:///{tmp_path / 'turn.sqlite'}")
    with made.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    return made


def _begin_elsewhere(engine: sa.Engine) -> BaseException | None:
    """Try a transaction from another thread; what it raised (None: it went through)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        except BaseException as error:  # handed to the test
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join()
    return outcome[0]


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_the_turn_is_held_until_sqlite_has_ended_the_transaction(
    engine: sa.Engine, end: str
) -> None:
    """SQLAlchemy's ``commit``/``rollback`` events fire before the statement runs: a
    transaction started then would meet SQLite's write lock (and sleep in its busy handler)
    instead of waiting for the turn."""
    seen: list[BaseException | None] = []

    def during(_connection: sa.Connection) -> None:
        seen.append(_begin_elsewhere(engine))

    sa.event.listen(engine, end, during)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            if end == "rollback":
                conn.get_transaction().rollback()  # type: ignore[union-attr]
    finally:
        sa.event.remove(engine, end, during)
    [error] = seen
    assert isinstance(error, sa.exc.OperationalError)
    assert "waited too long for a transaction" in str(error)
    assert _begin_elsewhere(engine) is None  # given back once the statement returned
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT x FROM t ORDER BY x").scalars().all()
    assert rows == ([1, 2] if end == "commit" else [2])


def test_a_connection_closed_inside_a_transaction_gives_the_turn_back(engine: sa.Engine) -> None:
    conn = engine.connect()
    conn.begin()
    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    conn.close()  # neither commit nor rollback: the pool's reset rolls back
    assert _begin_elsewhere(engine) is None
    with engine.connect() as check:
        assert check.exec_driver_sql("SELECT x FROM t").scalars().all() == [2]


def test_an_invalidated_connection_gives_the_turn_back(engine: sa.Engine) -> None:
    conn = engine.connect()
    transaction = conn.begin()
    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    conn.invalidate()  # its SQLite connection is closed: no ROLLBACK will run on it
    transaction.rollback()
    conn.close()
    assert _begin_elsewhere(engine) is None
    with engine.connect() as check:
        assert check.exec_driver_sql("SELECT x FROM t").scalars().all() == [2]


def test_a_postgresql_connection_that_died_while_idle_is_replaced_unseen(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ended a pooled connection while it sat idle (a restart, an idle timeout):
    the next caller gets a live connection, not an error. One used moments ago is handed out
    without a ping (no round trip per transaction)."""
    engine = create_engine(postgres_schema_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            first_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        pings: list[object] = []
        do_ping = engine.dialect.do_ping

        def counted_ping(dbapi_connection: object) -> bool:
            pings.append(dbapi_connection)
            return bool(do_ping(dbapi_connection))  # type: ignore[arg-type]

        monkeypatch.setattr(engine.dialect, "do_ping", counted_ping)
        with engine.connect() as conn:  # given back moments ago: no ping
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == first_pid
        assert pings == []
        killer = create_engine(postgres_schema_url)
        with killer.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({first_pid})")
        killer.dispose()
        monkeypatch.setattr(_engine, "PING_AFTER_IDLE_S", 0.0)  # as if it sat idle a while
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert len(pings) >= 1 and pid != first_pid
    finally:
        engine.dispose()
