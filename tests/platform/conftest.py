"""A manual clock and a PostgreSQL-only store (the migrated SQL store on each backend,
``engine``, is the suite's: tests/conftest.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.store import create_engine, migrate

from .._locks import PROMPTLY_S, backend_pid

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_NS)


class SteppedClock:
    """A wall clock that the machine's time service may step back (a ``ManualClock`` never
    goes back): ``now`` is what it reads."""

    def __init__(self, now_ns: int = START_NS) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


def is_write(statement: str) -> bool:
    """An INSERT, or a SELECT … FOR [NO KEY] UPDATE."""
    return statement.lstrip().startswith("INSERT") or any(
        lock in statement for lock in ("FOR UPDATE", "FOR NO KEY UPDATE")
    )


@dataclass
class Hold:
    reached: threading.Event
    """The held thread got to its statement."""
    go: threading.Event
    """Set to let it go on."""
    pid: int | None = None
    """Its PostgreSQL backend (None on SQLite)."""


@contextlib.contextmanager
def held(
    engine: sa.Engine,
    thread_prefix: str,
    at: Callable[[str], bool] = is_write,
    *,
    after: bool = False,
) -> Iterator[Hold]:
    """A thread whose name starts with ``thread_prefix`` waits at its first statement that
    ``at`` takes (before it runs; ``after``: once it has run) until ``go`` is set. Set on
    leaving, whatever happened."""
    hold = Hold(threading.Event(), threading.Event())

    def wait(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if hold.reached.is_set() or not threading.current_thread().name.startswith(thread_prefix):
            return
        if at(statement):
            hold.pid = backend_pid(conn)
            hold.reached.set()
            hold.go.wait(PROMPTLY_S)

    event = "after_cursor_execute" if after else "before_cursor_execute"
    sa.event.listen(engine, event, wait)
    try:
        yield hold
    finally:
        hold.go.set()
        sa.event.remove(engine, event, wait)


@pytest.fixture
def pg_engine(postgres_schema_url: str) -> Iterator[sa.Engine]:
    """A migrated PostgreSQL store (``postgres_schema_url`` skips without one)."""
    engine = create_engine(postgres_schema_url)
    migrate(engine)
    yield engine
    engine.dispose()
