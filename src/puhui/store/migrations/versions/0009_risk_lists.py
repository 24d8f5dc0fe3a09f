"""risk: block and allow lists in SQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 20:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "risk_list_entries",
        sa.Column("list_name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("added_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ns", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "length(reason) > 0", name=op.f("ck_risk_list_entries_reason_not_empty")
        ),
        sa.CheckConstraint("length(value) > 0", name=op.f("ck_risk_list_entries_value_not_empty")),
        sa.PrimaryKeyConstraint("list_name", "value", name=op.f("pk_risk_list_entries")),
    )
    state = op.create_table(
        "risk_list_state",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_risk_list_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_list_state")),
    )
    op.bulk_insert(state, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("risk_list_state")
    op.drop_table("risk_list_entries")
