"""platform: webhook endpoints, the event outbox and deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 17:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "platform_webhook_endpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_types", sa.String(length=1024), nullable=False),
        sa.Column("secret", sa.String(length=80), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("disabled_at_ns", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform_tenants.id"],
            name=op.f("fk_platform_webhook_endpoints_tenant_id_platform_tenants"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_webhook_endpoints")),
    )
    op.create_index(
        op.f("ix_platform_webhook_endpoints_tenant_id_created_at_ns"),
        "platform_webhook_endpoints",
        ["tenant_id", "created_at_ns"],
        unique=False,
    )
    op.create_table(
        "platform_webhook_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform_tenants.id"],
            name=op.f("fk_platform_webhook_events_tenant_id_platform_tenants"),
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_platform_webhook_events")),
        sa.UniqueConstraint("id", name=op.f("uq_platform_webhook_events_id")),
    )
    op.create_index(
        op.f("ix_platform_webhook_events_tenant_id_seq"),
        "platform_webhook_events",
        ["tenant_id", "seq"],
        unique=False,
    )
    op.create_index(
        op.f("ix_platform_webhook_events_created_at_ns"),
        "platform_webhook_events",
        ["created_at_ns"],
        unique=False,
    )
    op.create_table(
        "platform_webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("lease", sa.String(length=32), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("last_attempt_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("delivered_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'dead')",
            name=op.f("ck_platform_webhook_deliveries_state"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_platform_webhook_deliveries_attempts")),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["platform_webhook_endpoints.id"],
            name=op.f("fk_platform_webhook_deliveries_endpoint_id_platform_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["event_seq"],
            ["platform_webhook_events.seq"],
            name=op.f("fk_platform_webhook_deliveries_event_seq_platform_webhook_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_webhook_deliveries")),
        sa.UniqueConstraint(
            "event_seq",
            "endpoint_id",
            name=op.f("uq_platform_webhook_deliveries_event_seq_endpoint_id"),
        ),
    )
    op.create_index(
        op.f("ix_platform_webhook_deliveries_state_next_attempt_at_ns"),
        "platform_webhook_deliveries",
        ["state", "next_attempt_at_ns"],
        unique=False,
    )
    op.create_index(
        op.f("ix_platform_webhook_deliveries_tenant_id_state_id"),
        "platform_webhook_deliveries",
        ["tenant_id", "state", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_platform_webhook_deliveries_tenant_id_state_id"),
        table_name="platform_webhook_deliveries",
    )
    op.drop_index(
        op.f("ix_platform_webhook_deliveries_state_next_attempt_at_ns"),
        table_name="platform_webhook_deliveries",
    )
    op.drop_table("platform_webhook_deliveries")
    op.drop_index(
        op.f("ix_platform_webhook_events_tenant_id_seq"), table_name="platform_webhook_events"
    )
    op.drop_index(
        op.f("ix_platform_webhook_events_created_at_ns"), table_name="platform_webhook_events"
    )
    op.drop_table("platform_webhook_events")
    op.drop_index(
        op.f("ix_platform_webhook_endpoints_tenant_id_created_at_ns"),
        table_name="platform_webhook_endpoints",
    )
    op.drop_table("platform_webhook_endpoints")
