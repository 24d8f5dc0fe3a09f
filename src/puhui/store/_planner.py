"""Keeping a query planner off an index it would choose wrongly."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def unindexed(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``column`` as an expression no index answers (``column + 0``, or ``column || ''`` for
    text): the same values, compared the same way, but the planner must find the rows by
    another term of the ``WHERE``.

    For a term whose index is broad where another term's is narrow. SQLite, without table
    statistics, picks an index by the shape of the terms, not by how many rows each matches:
    a status index over every completed operation, or a payee index over a customer's whole
    history, where the primary key or a narrower index would read a handful of rows. The
    raw SQL of ``puhui.payments.batch`` writes the same two forms by hand."""
    if isinstance(column.type, sa.String):
        return column + ""
    return column + 0
