"""risk: cases held for an analyst

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "risk_cases",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("analyst", sa.String(length=64), nullable=True),
        sa.Column("note", sa.String(length=500), server_default="", nullable=False),
        sa.Column("account_takeover", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=True),
        sa.Column("resolved", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("opened_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("decided_at_ns", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'escalated', 'approved', 'rejected')",
            name=op.f("ck_risk_cases_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_cases")),
        sa.UniqueConstraint(
            "subject_kind", "subject_id", name=op.f("uq_risk_cases_subject_kind_subject_id")
        ),
    )
    op.create_index(op.f("ix_risk_cases_status_id"), "risk_cases", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_risk_cases_status_id"), table_name="risk_cases")
    op.drop_table("risk_cases")
