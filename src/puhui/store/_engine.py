"""The SQL engine factory: SQLite (the embedded default, WAL) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

TURN_TIMEOUT_S = 30.0
"""Longest a transaction waits for another of the same process (SQLite's busy timeout)."""
SQLITE_CACHE_KIB = 16 * 1024
"""Page cache of each SQLite connection. SQLite's default (2 MiB, 500 pages) is smaller
than what one batch of 1,000 payments changes (about 1,200 pages: a row touches a page of
each of the operations table's random-order indexes), so the transaction spilled pages to
the WAL before its commit and read them back."""
SQLITE_CHECKPOINT_PAGES = 10_000
"""WAL size (pages, ~40 MiB) at which a commit copies the WAL back into the database
(SQLite's default is 1,000). A page changed by many commits between two checkpoints is
copied once; with the default, every few batches copied again most pages they changed."""


def sqlite_path(database: str | None) -> Path | None:
    """The file of a SQLite URL's database part: a path, or a ``file:`` URI's path (with
    ``?uri=true``); None for an in-memory database."""
    if not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        uri = urlsplit(database)
        if not uri.path or uri.path == ":memory:" or "mode=memory" in uri.query:
            return None
        return Path(uri.path)
    return Path(database)


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for ``url``. SQLite files get WAL, full sync, foreign keys and a busy
    timeout, and their directory is created; PostgreSQL connections are checked before use.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed.database)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
            cursor.close()
            # pysqlite's own implicit BEGIN is off, so the one below is the only one.
            connection.isolation_level = None

        # Transactions of this process queue on a lock of their own before SQLite's: a
        # waiting thread starts the moment the lock is free, instead of sleeping in
        # SQLite's busy handler (1, 2, 5 … 100 ms steps). Other processes still meet
        # SQLite's lock and its busy timeout. A plain lock (any thread may release it) so
        # that a connection dropped without commit or rollback still gives it back when the
        # pool resets it; waiting is bounded like SQLite's own.
        #
        # The lock is given back once SQLite's COMMIT or ROLLBACK has returned (the
        # dialect's ``do_commit`` / ``do_rollback``), not at SQLAlchemy's ``commit`` and
        # ``rollback`` events: those fire before the statement runs, and a COMMIT (its WAL
        # sync, an automatic checkpoint) still holds SQLite's write lock, so the next
        # transaction's BEGIN IMMEDIATE would meet it and sleep in the busy handler.
        turn = threading.Lock()

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(connection: sa.Connection) -> None:
            # Take the write lock at BEGIN: two writers never deadlock on a lock upgrade.
            if not turn.acquire(timeout=TURN_TIMEOUT_S):
                raise sa.exc.OperationalError(
                    "BEGIN IMMEDIATE", None, TimeoutError("waited too long for a transaction")
                )
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                turn.release()
                raise
            connection.info["puhui_turn"] = True

        def _end(info: dict[Any, Any]) -> None:
            if info.pop("puhui_turn", False):
                turn.release()

        def _end_of(dbapi_connection: Any) -> None:
            try:
                info = dbapi_connection.info
            except NotImplementedError:  # the dialect's first connect: no pool record
                return
            _end(info)

        dialect = engine.dialect
        dialect_class = type(dialect)

        def _do_commit(dbapi_connection: Any) -> None:
            try:
                dialect_class.do_commit(dialect, dbapi_connection)
            finally:
                _end_of(dbapi_connection)

        def _do_rollback(dbapi_connection: Any) -> None:
            try:
                dialect_class.do_rollback(dialect, dbapi_connection)
            finally:
                _end_of(dbapi_connection)

        # The pool's reset on return calls the same two (given the pooled connection,
        # whose ``info`` is the one the transaction marked).
        setattr(dialect, "do_commit", _do_commit)  # noqa: B010 (assigning to a method)
        setattr(dialect, "do_rollback", _do_rollback)  # noqa: B010

        def _invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
            _end(record.info)  # its SQLite connection is closed, and SQLite's lock with it

        def _reset(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
            if not reset_state.asyncio_safe:  # no rollback follows: give it back now
                _end(record.info)

        sa.event.listen(engine.pool, "invalidate", _invalidate)
        sa.event.listen(engine.pool, "reset", _reset)
        return engine
    engine = sa.create_engine(url, **kwargs)
    _ping_after_idle(engine)
    return engine


PING_AFTER_IDLE_S = 10.0
"""A PostgreSQL connection that sat in the pool longer than this is pinged before it is
handed out; one given back moments ago is not."""


def _ping_after_idle(engine: sa.Engine) -> None:
    """Check a pooled connection that sat idle (the server restarted, or closed it for being
    idle) before handing it out: a dead one is replaced, and the caller never sees it.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip before every
    transaction and every read, about a ninth of a single payment's time on PostgreSQL
    (py-spy, `docs/benchmarks.md`). A connection used within the last ``PING_AFTER_IDLE_S``
    is handed out as it is; if the server went away in that window, the first statement
    fails, SQLAlchemy invalidates the pool (every connection older than the failure is
    replaced at its next checkout), and that one call gets the error."""

    @sa.event.listens_for(engine.pool, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["puhui_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine.pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("puhui_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return  # new, or given back moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool drops this connection and hands out another (a fresh one if need be).
            raise sa.exc.DisconnectionError(f"a pooled connection was dead: {error}") from error
