"""payments: the store remembers its ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:21:23.912118
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments_meta",
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_payments_meta")),
    )


def downgrade() -> None:
    op.drop_table("payments_meta")
