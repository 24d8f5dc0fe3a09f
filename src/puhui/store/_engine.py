"""The SQL engine factory: SQLite (the embedded default, WAL) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

TURN_TIMEOUT_S = 30.0
"""Longest a transaction waits for its turn (for the others of this process and of the other
processes on the same database file), as long as SQLite's busy timeout."""
TURN_FILE_SUFFIX = "-turn"
"""The cross-process turn's lock file is the database's path with this added (as SQLite's
``-wal`` and ``-shm``)."""
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


def turn_path(database: Path) -> Path:
    """The lock file of a SQLite database file's cross-process turn."""
    return database.with_name(database.name + TURN_FILE_SUFFIX)


def _waited_too_long() -> sa.exc.OperationalError:
    return sa.exc.OperationalError(
        "BEGIN IMMEDIATE", None, TimeoutError("waited too long for a transaction")
    )


class _Turn:
    """One engine's turn to write: a lock of this process, then (for a database file) an
    exclusive ``flock`` of the lock file beside it, on this engine's own descriptor.

    ``flock`` rather than ``fcntl``/``lockf`` record locks: a record lock belongs to the
    process, so a second engine (or any code) closing any descriptor of the file in this
    process would drop it silently, and threads of one process do not exclude each other;
    a ``flock`` belongs to the open file description, which only this object uses. The
    kernel drops it when the holder's last descriptor is closed — a process that dies
    holding the turn (even by SIGKILL) frees it at once.

    The wait is a blocking ``flock`` in the kernel (a waiter wakes the moment the turn is
    given back), bounded by ``TURN_TIMEOUT_S`` as SQLite's busy timeout bounds its own: the
    kernel call has no timeout, and a signal cannot end it in a thread other than the main
    one (Python retries the call), so when the turn is taken the blocking call is made in a
    helper thread (the GIL released while it waits) that the caller waits for with a
    timeout. A helper given up on keeps waiting on its descriptor, gives the turn back as
    soon as it gets it, and closes that descriptor; the engine opens a new one (a new open
    file description: the helper's late lock is never mistaken for the next caller's).
    An uncontended turn costs one non-blocking ``flock`` and no thread.

    A child made by ``os.fork`` gets a fresh lock and its own descriptor (see
    ``_after_fork``): the inherited descriptor shares the parent's lock, so with it the
    child would take the turn the parent holds, or give it back for the parent."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fd = [-1]  # boxed: the finalizer closes whichever descriptor is current
        weakref.finalize(self, _close_current, self._fd)
        if path is not None:
            try:
                self._fd[0] = _open_turn_file(path)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                # A store in a place this process may not write (read-only media, another
                # user's directory) is one it cannot write either: nothing to take turns at.
                self.path = None
        _TURNS.add(self)

    def take(self, timeout_s: float) -> int:
        """Wait for the turn (at most ``timeout_s`` in all, else SQLAlchemy's
        ``OperationalError``); the holder's token for ``give_back`` (this process's id)."""
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            raise _waited_too_long()
        try:
            if self.path is not None:
                self._take_file(deadline)
        except BaseException:
            self._lock.release()
            raise
        return self._pid

    def give_back(self, holder: int) -> None:
        """End the turn ``take`` gave ``holder`` (any thread may): the file's lock first,
        then this process's, so the next thread here never finds the file still locked.
        A turn taken in the parent before a fork is not the child's to give back."""
        if holder != self._pid:
            return
        if self.path is not None:
            fcntl.flock(self._fd[0], fcntl.LOCK_UN)
        self._lock.release()

    def _take_file(self, deadline: float) -> None:
        """The file's lock (this process's lock held: one caller at a time here)."""
        if self._fd[0] < 0:  # the first turn since a fork, or after a wait given up on
            assert self.path is not None
            self._fd[0] = _open_turn_file(self.path)
        fd = self._fd[0]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass  # another process has the turn: wait in the kernel, bounded
        wait = _FileWait(fd)
        try:
            taken = wait.taken.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:  # interrupted (KeyboardInterrupt): the turn must not stay taken
            if wait.give_up():
                self._fd[0] = -1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            raise
        if taken or not wait.give_up():
            if wait.error is not None:
                raise wait.error
            return
        self._fd[0] = -1  # the helper closes it; the next turn opens another
        raise _waited_too_long()

    def _after_fork(self) -> None:
        """In a child of ``os.fork``: nobody holds this copy's turn; the inherited
        descriptor (the parent's lock) is closed, which leaves the parent's lock alone."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if self._fd[0] >= 0:
            os.close(self._fd[0])
            self._fd[0] = -1


class _FileWait:
    """A helper thread blocked in ``flock(LOCK_EX)`` on ``fd`` for a caller that waits for
    it with a timeout; ``give_up`` hands the descriptor over to the helper."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.taken = threading.Event()
        self.error: OSError | None = None
        self._state = "waiting"  # then "taken" or "given up", under _lock
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="puhui-sqlite-turn", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as error:
            self.error = error
        with self._lock:
            if self._state == "given up":
                with _FORK_LOCK:  # no fork between forgetting it and closing it
                    _ABANDONED.discard(self.fd)
                    os.close(self.fd)  # its only descriptor here: the lock goes with it
                return
            self._state = "taken"
        self.taken.set()

    def give_up(self) -> bool:
        """Stop waiting (True), or False when the lock was taken in the meantime (the
        caller has it after all)."""
        with self._lock:
            if self._state == "taken":
                return False
            self._state = "given up"
            with _FORK_LOCK:
                _ABANDONED.add(self.fd)
            return True


def _open_turn_file(path: Path) -> int:
    """A new descriptor (its own open file description) of the lock file, created 0600."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _close_current(box: list[int]) -> None:
    if box[0] >= 0:
        os.close(box[0])
        box[0] = -1


_TURNS: weakref.WeakSet[_Turn] = weakref.WeakSet()


_ABANDONED: set[int] = set()
"""Descriptors of waits given up on, each still blocked in (or holding) a ``flock`` until
its helper closes it. A child of ``os.fork`` must close its copies: a copy keeps the open
file description, and with it the lock the helper takes, for as long as the child lives."""
_FORK_LOCK = threading.Lock()
"""Held across ``os.fork`` and around changes to ``_ABANDONED`` and its descriptors."""


def _before_fork() -> None:
    _FORK_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _FORK_LOCK.release()


def _after_fork_in_child() -> None:
    for fd in _ABANDONED:
        with contextlib.suppress(OSError):
            os.close(fd)
    _ABANDONED.clear()
    _FORK_LOCK.release()
    for turn in list(_TURNS):
        turn._after_fork()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


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

        # Transactions queue for a turn before SQLite's write lock: first on a lock of
        # this process, then — for a database file — on an exclusive ``flock`` of a lock
        # file beside it, shared by every process that opens the store (``_Turn``). A
        # waiting transaction starts the moment the turn is free, instead of sleeping in
        # SQLite's busy handler (1, 2, 5 … 100 ms steps, blind to when the lock frees: two
        # processes sharing it lost up to 1.6 s a transaction, docs/benchmarks.md). A
        # writer that does not take the turn (the ``sqlite3`` shell, another program) still
        # meets SQLite's lock and its busy timeout. The in-process lock is a plain lock
        # (any thread may release it) so that a connection dropped without commit or
        # rollback still gives it back when the pool resets it; waiting is bounded like
        # SQLite's own.
        #
        # The turn is given back once SQLite's COMMIT or ROLLBACK has returned (the
        # dialect's ``do_commit`` / ``do_rollback``), not at SQLAlchemy's ``commit`` and
        # ``rollback`` events: those fire before the statement runs, and a COMMIT (its WAL
        # sync, an automatic checkpoint) still holds SQLite's write lock, so the next
        # transaction's BEGIN IMMEDIATE would meet it and sleep in the busy handler.
        turn = _Turn(turn_path(path) if path is not None else None)

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(connection: sa.Connection) -> None:
            # Take the write lock at BEGIN: two writers never deadlock on a lock upgrade.
            holder = turn.take(TURN_TIMEOUT_S)
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                turn.give_back(holder)
                raise
            connection.info["puhui_turn"] = holder

        def _end(info: dict[Any, Any]) -> None:
            holder = info.pop("puhui_turn", None)
            if holder is not None:
                turn.give_back(holder)

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
