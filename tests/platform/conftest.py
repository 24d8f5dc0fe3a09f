"""A manual clock and a PostgreSQL-only store (the migrated SQL store on each backend,
``engine``, is the suite's: tests/conftest.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.store import create_engine, migrate

from .._locks import PROMPTLY_S

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


@contextlib.contextmanager
def held_at_first_write(
    engine: sa.Engine, thread_prefix: str
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``(reached, go)``: a thread whose name starts with ``thread_prefix`` waits at its
    first write (an INSERT or a SELECT … FOR UPDATE, before it runs) until ``go`` is set;
    ``reached`` tells it got there. Set on leaving, whatever happened."""
    reached, go = threading.Event(), threading.Event()

    def hold(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if reached.is_set() or not threading.current_thread().name.startswith(thread_prefix):
            return
        if statement.lstrip().startswith("INSERT") or "FOR UPDATE" in statement:
            reached.set()
            go.wait(PROMPTLY_S)

    sa.event.listen(engine, "before_cursor_execute", hold)
    try:
        yield reached, go
    finally:
        go.set()
        sa.event.remove(engine, "before_cursor_execute", hold)


@pytest.fixture
def pg_engine(postgres_schema_url: str) -> Iterator[sa.Engine]:
    """A migrated PostgreSQL store (``postgres_schema_url`` skips without one)."""
    engine = create_engine(postgres_schema_url)
    migrate(engine)
    yield engine
    engine.dispose()
