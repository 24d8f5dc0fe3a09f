"""platform: which tenant owns each payments customer and merchant

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 17:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "platform_payment_owners",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('customer', 'merchant')", name=op.f("ck_platform_payment_owners_kind")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform_tenants.id"],
            name=op.f("fk_platform_payment_owners_tenant_id_platform_tenants"),
        ),
        sa.PrimaryKeyConstraint("kind", "object_id", name=op.f("pk_platform_payment_owners")),
    )
    op.create_index(
        op.f("ix_platform_payment_owners_tenant_id_kind_object_id"),
        "platform_payment_owners",
        ["tenant_id", "kind", "object_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_platform_payment_owners_tenant_id_kind_object_id"),
        table_name="platform_payment_owners",
    )
    op.drop_table("platform_payment_owners")
