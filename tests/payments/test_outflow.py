"""The day's outflow reservation (``puhui.payments._outflow.reserve``) on both stores."""

from __future__ import annotations

import sqlalchemy as sa

from puhui.payments import _outflow
from puhui.store import payments as tables

from .conftest import World

DAY = 20_000


def _reserved(world: World) -> dict[int, int]:
    d = tables.daily_outflow
    with world.engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.customer_id, d.c.amount).where(d.c.day == DAY))
        return {int(r.customer_id): int(r.amount) for r in rows}


def test_rows_are_inserted_then_added_to_within_their_limit_and_counted(world: World) -> None:
    with world.engine.begin() as conn:
        first = [(1, DAY, "CNY", 10, 100), (2, DAY, "CNY", 10, 100), (3, DAY, "CNY", 10, 100)]
        assert _outflow.reserve(conn, first) == 3
    assert _reserved(world) == {1: 10, 2: 10, 3: 10}
    with world.engine.begin() as conn:
        # 2's addition would pass its limit: left out, and the count says so.
        more = [(1, DAY, "CNY", 50, 100), (2, DAY, "CNY", 95, 100), (3, DAY, "CNY", 90, 100)]
        assert _outflow.reserve(conn, more) == 2
    assert _reserved(world) == {1: 60, 2: 10, 3: 100}  # exactly at the limit is within it
    with world.engine.begin() as conn:
        assert _outflow.reserve(conn, [(1, DAY, "CNY", 41, 100)]) == 0
        assert _outflow.reserve(conn, []) == 0
    assert _reserved(world) == {1: 60, 2: 10, 3: 100}
