"""A process of the cross-process turn's tests (``test_turn.py``), run as a script.

``write DATABASE COUNT``: says ``ready``, waits for a line on stdin, then makes ``COUNT``
small write transactions through ``puhui.store.create_engine`` with SQLite's busy timeout at
zero (a transaction that met SQLite's lock would fail with ``database is locked`` at once
instead of sleeping in the busy handler); says ``done`` or the error.

``hold DATABASE``: begins a write transaction, says ``held`` and waits for ever (the test
kills it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import sqlalchemy as sa

from puhui.store import create_engine


def busy_timeout_zero(connection: Any, _record: Any) -> None:
    """A ``connect`` listener: SQLite's busy handler never waits on this connection."""
    connection.execute("PRAGMA busy_timeout=0")


def no_busy_wait(url: str) -> sa.Engine:
    engine = create_engine(url)
    sa.event.listen(engine, "connect", busy_timeout_zero)
    return engine


def main() -> None:
    mode, database = sys.argv[1], sys.argv[2]
    engine = no_busy_wait(f"sqlite:///{database}")
    if mode == "write":
        count = int(sys.argv[3])
        with engine.connect() as conn:  # connected before the start
            conn.exec_driver_sql("SELECT 1")
            conn.rollback()
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            for n in range(count):
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO t VALUES (?)", (n,))
        except sa.exc.OperationalError as error:
            print(f"failed after {n}: {error.orig}", flush=True)
            sys.exit(1)
        print("done", flush=True)
    elif mode == "hold":
        conn = engine.connect()
        conn.begin()
        conn.exec_driver_sql("INSERT INTO t VALUES (-1)")
        print("held", flush=True)
        while True:
            time.sleep(60)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
