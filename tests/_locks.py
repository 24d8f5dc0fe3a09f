"""Watching PostgreSQL's locks from a test: which backend a connection is, and waiting until
some work either ends or waits for a lock that backend holds."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import sqlalchemy as sa

PROMPTLY_S = 10.0
"""How long a statement that must not wait for another transaction may take (a loaded CI
machine); one that waits never ends while the other holds its lock."""


def backend_pid(conn: sa.Connection) -> int | None:
    """The PostgreSQL backend of ``conn`` (None on SQLite); asked of the driver, no query."""
    if conn.dialect.name != "postgresql":
        return None
    dbapi: Any = conn.connection.dbapi_connection
    return int(dbapi.info.backend_pid)


def wait_until_blocked_or_done(
    engine: sa.Engine, holder_pid: int | None, work: Future[Any]
) -> None:
    """Until ``work`` waits for a lock the backend ``holder_pid`` holds, or has ended
    (SQLite, no row locks to see: a moment for the work to reach the one writer's lock)."""
    if holder_pid is None:
        time.sleep(0.2)
        return
    blocked = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
    )
    deadline = time.monotonic() + PROMPTLY_S
    with engine.connect() as probe:
        while not work.done() and not probe.execute(blocked, {"pid": holder_pid}).scalar_one():
            assert time.monotonic() < deadline, "the work neither ended nor waited for a lock"
            probe.rollback()  # a fresh snapshot of pg_stat_activity
            time.sleep(0.01)
