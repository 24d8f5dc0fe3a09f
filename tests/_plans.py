"""SQLite's query plans of the statements a piece of code runs (through SQLAlchemy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


@contextmanager
def captured(engine: sa.Engine, table: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and their parameters) run on ``engine`` inside the block that name
    ``table``, in order."""
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if table in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)


def plan(engine: sa.Engine, statement: str, parameters: Any) -> list[str]:
    """``EXPLAIN QUERY PLAN`` of one statement, a line per step (SQLite only)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return [str(row[3]) for row in rows]


def plans_of(
    engine: sa.Engine, tables: tuple[str, ...], run: Callable[[], object]
) -> list[tuple[str, list[str]]]:
    """Each statement ``run`` makes that names one of ``tables`` (whitespace folded), with
    its plan."""
    with captured(engine, "") as every:
        run()
    out = [
        (" ".join(s.split()), plan(engine, s, p)) for s, p in every if any(t in s for t in tables)
    ]
    assert out, "the code ran no statement on those tables"
    return out


def scans(engine: sa.Engine, tables: tuple[str, ...], run: Callable[[], object]) -> list[str]:
    """The plan lines that scan one of ``tables`` whole, over every statement ``run`` makes
    that names one of them (an empty list: each is an index search)."""
    return [
        f"{line}  <-  {statement[:160]}"
        for statement, lines in plans_of(engine, tables, run)
        for line in lines
        if any(line.startswith(f"SCAN {t}") for t in tables)
    ]
