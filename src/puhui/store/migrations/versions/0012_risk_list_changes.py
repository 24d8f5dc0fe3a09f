"""risk: the log of list changes, so that engines apply changes instead of reloading lists

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Empty at first: an engine that finds no change for the versions it missed reloads every
    # list, as before.
    op.create_table(
        "risk_list_changes",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("list_name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("added_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("expires_at_ns", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("op IN ('add', 'remove')", name=op.f("ck_risk_list_changes_op")),
        sa.CheckConstraint(
            "(op = 'add') = (reason IS NOT NULL AND added_at_ns IS NOT NULL)",
            name=op.f("ck_risk_list_changes_add_has_entry"),
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_risk_list_changes")),
    )


def downgrade() -> None:
    op.drop_table("risk_list_changes")
