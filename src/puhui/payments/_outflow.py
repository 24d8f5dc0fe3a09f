"""The day's outflow of each payer: reserved in the transaction that records a payment.

One statement for both stores (SQLite ≥ 3.24 and PostgreSQL share the upsert's spelling): a
payer's first payment of the day inserts its row, later ones add to it, and an addition
that would pass the payer's limit changes nothing (the ``WHERE`` of ``DO UPDATE``). Two
callers reserving a new payer's first outflow at the same moment no longer meet a unique
violation: the second one's insert becomes an update of the first one's row (on PostgreSQL
after waiting for the first transaction, whose row it then sees).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from puhui.store import payments as t

_TABLE = t.daily_outflow.name


def reserve(conn: sa.Connection, rows: Sequence[tuple[int, int, str, int, int]]) -> int:
    """Add each row's amount to the payer's outflow of the day, within its limit, in the
    caller's transaction. ``rows`` hold (customer id, day, currency, amount, limit), every
    amount positive and at most its limit; give them sorted (one lock order for concurrent
    callers). Returns how many rows were reserved: fewer than given means some addition
    would have passed its limit and was left out — the caller rolls back."""
    if not rows:
        return 0
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    done = conn.exec_driver_sql(
        f"INSERT INTO {_TABLE} (customer_id, day, currency, amount)"
        f" VALUES ({mark}, {mark}, {mark}, {mark})"
        " ON CONFLICT (customer_id, day, currency) DO UPDATE"
        f" SET amount = {_TABLE}.amount + excluded.amount"
        f" WHERE {_TABLE}.amount + excluded.amount <= {mark}",
        list(rows) if len(rows) > 1 else rows[0],
    )
    return int(done.rowcount)
