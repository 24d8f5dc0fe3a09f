"""The SQLite engine's turn between processes: the transactions of every process on one
database file queue on an ``flock`` of a lock file beside it (``<database>-turn``) after
their own process's lock and before ``BEGIN IMMEDIATE``, so none meets SQLite's write lock
and sleeps in its busy handler; no way out of a transaction keeps it, and a process killed
while it holds it frees it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import puhui
from puhui.store import _engine, create_engine

from . import turn_child

CHILD = Path(turn_child.__file__).resolve()
ENV = {**os.environ, "PYTHONPATH": str(Path(puhui.__file__).resolve().parents[1])}
CHILD_TIMEOUT_S = 120.0
"""How long a child may take at most (a loaded CI machine); a bound, not a measurement."""


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    return path


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


@contextlib.contextmanager
def _ended(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CHILD_TIMEOUT_S)


def _turn_is_free(database: Path) -> bool:
    """Whether another process could take the turn now (a descriptor of our own)."""
    fd = os.open(_engine.turn_path(database), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # and the lock with it
    return True


def _count(database: Path) -> int:
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())
    finally:
        engine.dispose()


def test_two_processes_writing_one_file_never_meet_sqlites_lock(database: Path) -> None:
    """Two processes, many small transactions each, SQLite's busy timeout at zero: any
    transaction that met the other's write lock would fail with ``database is locked`` at
    once (without the cross-process turn, one of them does within a few transactions)."""
    count = 300
    with (
        _ended(_child("write", str(database), str(count))) as one,
        _ended(_child("write", str(database), str(count))) as two,
    ):
        for proc in (one, two):
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in (one, two):
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = [proc.communicate(timeout=CHILD_TIMEOUT_S) for proc in (one, two)]
    for proc, (out, err) in zip((one, two), outs, strict=True):
        assert proc.returncode == 0, out + err
        assert out.strip() == "done"
    assert _count(database) == 2 * count
    assert _turn_is_free(database)


def test_the_lock_file_is_created_0600_beside_the_database(database: Path) -> None:
    path = _engine.turn_path(database)
    assert path == database.with_name("store.sqlite-turn")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("end", ["commit", "rollback", "exception", "close", "invalidate"])
def test_every_way_out_of_a_transaction_gives_the_turn_back(database: Path, end: str) -> None:
    engine = create_engine(f"sqlite:///{database}")
    try:
        conn = engine.connect()
        transaction = conn.begin()
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert not _turn_is_free(database)
        if end == "commit":
            transaction.commit()
        elif end == "rollback":
            transaction.rollback()
        elif end == "exception":
            with pytest.raises(sa.exc.OperationalError, match="no such table"):
                conn.exec_driver_sql("INSERT INTO nowhere VALUES (1)")
            transaction.rollback()
        elif end == "invalidate":
            conn.invalidate()
        conn.close()  # "close": neither commit nor rollback, the pool's reset rolls back
        assert _turn_is_free(database)
        with engine.begin() as again:  # and this process's own lock is free too
            again.exec_driver_sql("INSERT INTO t VALUES (2)")
    finally:
        engine.dispose()


def test_an_exception_inside_a_with_block_gives_the_turn_back(database: Path) -> None:
    engine = create_engine(f"sqlite:///{database}")
    try:
        with pytest.raises(ZeroDivisionError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert not _turn_is_free(database)
            _ = 1 / 0
        assert _turn_is_free(database)
        assert _count(database) == 0
    finally:
        engine.dispose()


def test_a_holder_killed_holding_the_turn_blocks_nobody_beyond_the_kill(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a child holds the turn, a transaction here waits — bounded by
    ``TURN_TIMEOUT_S`` — and starts as soon as the child is SIGKILLed."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        with _ended(_child("hold", str(database))) as holder:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            monkeypatch.setattr(_engine, "TURN_TIMEOUT_S", 0.2)
            started = time.monotonic()
            with (
                pytest.raises(sa.exc.OperationalError, match="waited too long"),
                engine.begin() as conn,
            ):
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert time.monotonic() - started < CHILD_TIMEOUT_S
            monkeypatch.setattr(_engine, "TURN_TIMEOUT_S", CHILD_TIMEOUT_S)
            ended: list[float] = []

            def write() -> None:
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO t VALUES (2)")
                ended.append(time.monotonic())

            waiter = threading.Thread(target=write)
            waiter.start()
            time.sleep(0.3)
            assert not ended  # still waiting for the holder
            killed = time.monotonic()
            os.kill(holder.pid, signal.SIGKILL)
            waiter.join(CHILD_TIMEOUT_S)
        assert ended and ended[0] >= killed
        assert _count(database) == 1  # the killed child's row was never committed
        assert _turn_is_free(database)  # the helper given up on closed its descriptor
    finally:
        engine.dispose()


def test_a_forked_child_has_a_turn_of_its_own(database: Path) -> None:
    """A child forked with the engine uses its copy of it while the parent holds the turn:
    it must wait for the turn (the inherited descriptor shares the parent's lock: with it
    the child would take the turn at once and meet SQLite's lock instead), and its failed
    wait gives nothing of the parent's back."""
    engine = create_engine(f"sqlite:///{database}")
    held_read, held_write = os.pipe()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # the child: exit 0 if it waited for the turn and timed out
            code = 1
            try:
                os.close(held_write)
                engine.dispose(close=False)  # the parent's connections stay the parent's
                sa.event.listen(engine, "connect", turn_child.busy_timeout_zero)
                _engine.TURN_TIMEOUT_S = 0.2
                os.read(held_read, 1)  # the parent holds the turn now
                try:
                    with engine.begin() as child_conn:
                        child_conn.exec_driver_sql("INSERT INTO t VALUES (2)")
                except sa.exc.OperationalError as error:
                    code = 0 if "waited too long" in str(error) else 2
            finally:
                os._exit(code)
        os.close(held_read)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            os.write(held_write, b"x")
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert not _turn_is_free(database)  # still the parent's
        assert _turn_is_free(database)
        assert _count(database) == 1
    finally:
        os.close(held_write)
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_has_no_lock_file(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_engine_has_no_turn() -> None:
    """PostgreSQL locks rows, not the database: no turn, no lock file (nothing connects)."""
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    try:
        assert len(engine.dispatch.begin) == 0
    finally:
        engine.dispose()


def test_a_postgresql_store_is_written_without_a_turn(postgres_schema_url: str) -> None:
    engine = create_engine(postgres_schema_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        one, two = engine.connect(), engine.connect()
        one.begin()
        two.begin()  # two transactions at once: no turn makes the second wait
        one.exec_driver_sql("INSERT INTO t VALUES (1)")
        two.exec_driver_sql("INSERT INTO t VALUES (2)")
        one.commit()
        two.commit()
        one.close()
        two.close()
    finally:
        engine.dispose()


def test_the_lock_file_cannot_be_opened_is_an_error_at_once(tmp_path: Path) -> None:
    database = tmp_path / "store.sqlite"
    _engine.turn_path(database).mkdir()  # a directory where the lock file should be
    with pytest.raises(OSError) as raised:
        create_engine(f"sqlite:///{database}")
    assert raised.value.errno == errno.EISDIR


@pytest.mark.parametrize("refusal", [errno.EACCES, errno.EROFS])
def test_a_store_where_no_lock_file_can_be_made_is_still_read(
    database: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """A store on read-only media or in another user's directory (this process may not
    create the lock file there; root may anywhere, so the refusal is simulated) opens and
    reads as before, without a turn across processes; any other error is raised."""
    made = create_engine(f"sqlite:///{database}")
    with made.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (7)")
    made.dispose()

    def refuse(path: Path) -> int:
        raise OSError(refusal, os.strerror(refusal), str(path))

    monkeypatch.setattr(_engine, "_open_turn_file", refuse)
    reader = create_engine(f"sqlite:///{database}")
    try:
        with reader.begin() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar() == 7
    finally:
        reader.dispose()

    def broken(path: Path) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(_engine, "_open_turn_file", broken)
    with pytest.raises(OSError, match="Input/output"):
        create_engine(f"sqlite:///{database}")


def test_a_child_forked_after_a_wait_given_up_keeps_no_turn(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait that timed out leaves its helper blocked in ``flock`` on a descriptor of its
    own, which takes the turn once the holder gives it back, and closes it. A child forked
    meanwhile inherited that descriptor: unless it closes its copy, the lock outlives the
    helper's close, and no process gets the turn while the child lives."""
    monkeypatch.setattr(_engine, "TURN_TIMEOUT_S", 0.5)
    holder_engine = create_engine(f"sqlite:///{database}")
    waiter_engine = create_engine(f"sqlite:///{database}")
    held = holder_engine.connect()
    transaction = held.begin()  # the turn held
    try:
        with (
            pytest.raises(sa.exc.OperationalError, match="waited too long"),
            waiter_engine.begin(),
        ):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # a child that lives on (a multiprocessing worker, say)
            time.sleep(5)
            os._exit(0)
        try:
            transaction.commit()
            held.close()
            time.sleep(0.3)  # the helper takes the turn and gives it back
            for engine in (holder_engine, waiter_engine):
                with engine.begin() as conn:
                    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        holder_engine.dispose()
        waiter_engine.dispose()
    assert _count(database) == 2
