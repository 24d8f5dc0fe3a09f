"""platform: tenants, API keys, idempotency records, the audit log and its anchor

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "platform_tenants",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("ledger_id_mask", sa.String(length=32), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('bank', 'fund_company', 'insurer', 'merchant_acquirer', 'biller', "
            "'operator')",
            name=op.f("ck_platform_tenants_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'suspended')", name=op.f("ck_platform_tenants_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_platform_tenants_name")),
    )
    op.create_table(
        "platform_api_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=255), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ns", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform_tenants.id"],
            name=op.f("fk_platform_api_keys_tenant_id_platform_tenants"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_api_keys")),
    )
    op.create_index(
        op.f("ix_platform_api_keys_tenant_id_created_at_ns"),
        "platform_api_keys",
        ["tenant_id", "created_at_ns"],
        unique=False,
    )
    op.create_table(
        "platform_idempotency",
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("locked_until_ns", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "state IN ('in_progress', 'done')", name=op.f("ck_platform_idempotency_state")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["platform_tenants.id"],
            name=op.f("fk_platform_idempotency_tenant_id_platform_tenants"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_platform_idempotency")),
    )
    op.create_index(
        op.f("ix_platform_idempotency_expires_at_ns"),
        "platform_idempotency",
        ["expires_at_ns"],
        unique=False,
    )
    op.create_table(
        "platform_audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at_ns", sa.BigInteger(), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("route", sa.String(length=255), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_platform_audit_log")),
    )
    op.create_table(
        "platform_audit_anchor",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_platform_audit_anchor_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_audit_anchor")),
    )


def downgrade() -> None:
    op.drop_table("platform_audit_anchor")
    op.drop_table("platform_audit_log")
    op.drop_index(op.f("ix_platform_idempotency_expires_at_ns"), table_name="platform_idempotency")
    op.drop_table("platform_idempotency")
    op.drop_index(
        op.f("ix_platform_api_keys_tenant_id_created_at_ns"), table_name="platform_api_keys"
    )
    op.drop_table("platform_api_keys")
    op.drop_table("platform_tenants")
