"""payments: customers, cards, merchants, wallets, operations

Revision ID: 0001
Revises:
Create Date: 2026-11-26 13:55:24.313234
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments_customers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("kyc_level", sa.SmallInteger(), nullable=False),
        sa.Column("national_id_hash", sa.String(length=64), nullable=True),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kyc_level BETWEEN 0 AND 2", name=op.f("ck_payments_customers_kyc_level")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_customers")),
        sa.UniqueConstraint(
            "national_id_hash", name=op.f("uq_payments_customers_national_id_hash")
        ),
        sa.UniqueConstraint("phone", name=op.f("uq_payments_customers_phone")),
    )
    op.create_table(
        "payments_daily_outflow",
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "amount >= 0", name=op.f("ck_payments_daily_outflow_amount_not_negative")
        ),
        sa.PrimaryKeyConstraint(
            "customer_id", "day", "currency", name=op.f("pk_payments_daily_outflow")
        ),
    )
    op.create_table(
        "payments_merchants",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("settlement_card_token", sa.String(length=64), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "fee_bps BETWEEN 0 AND 10000", name=op.f("ck_payments_merchants_fee_bps")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_merchants")),
    )
    op.create_table(
        "payments_operations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("payer_customer_id", sa.BigInteger(), nullable=True),
        sa.Column("payee_customer_id", sa.BigInteger(), nullable=True),
        sa.Column("merchant_id", sa.BigInteger(), nullable=True),
        sa.Column("card_id", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.String(length=140), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("risk_score", sa.Integer(), nullable=False),
        sa.Column("risk_reasons", sa.Text(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("bank_status", sa.String(length=16), nullable=True),
        sa.Column("bank_sent", sa.Boolean(), nullable=False),
        sa.Column("hold_expires_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payments_operations_amount_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_operations")),
        sa.UniqueConstraint(
            "scope", "idempotency_key", name=op.f("uq_payments_operations_scope_idempotency_key")
        ),
    )
    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payments_operations_payer_customer_id_created_at_ns"),
            ["payer_customer_id", "created_at_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_payments_operations_status_created_at_ns"),
            ["status", "created_at_ns"],
            unique=False,
        )

    op.create_table(
        "payments_bank_cards",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("card_token", sa.String(length=64), nullable=False),
        sa.Column("bank_name", sa.String(length=64), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["payments_customers.id"],
            name=op.f("fk_payments_bank_cards_customer_id_payments_customers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_bank_cards")),
        sa.UniqueConstraint(
            "customer_id", "card_token", name=op.f("uq_payments_bank_cards_customer_id_card_token")
        ),
    )
    op.create_table(
        "payments_payment_codes",
        sa.Column("code", sa.String(length=18), nullable=False),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["payments_customers.id"],
            name=op.f("fk_payments_payment_codes_customer_id_payments_customers"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_payments_payment_codes")),
    )
    op.create_table(
        "payments_wallets",
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["payments_customers.id"],
            name=op.f("fk_payments_wallets_customer_id_payments_customers"),
        ),
        sa.PrimaryKeyConstraint("customer_id", "currency", name=op.f("pk_payments_wallets")),
        sa.UniqueConstraint("account_id", name=op.f("uq_payments_wallets_account_id")),
    )


def downgrade() -> None:
    op.drop_table("payments_wallets")
    op.drop_table("payments_payment_codes")
    op.drop_table("payments_bank_cards")
    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_operations_status_created_at_ns"))
        batch_op.drop_index(batch_op.f("ix_payments_operations_payer_customer_id_created_at_ns"))

    op.drop_table("payments_operations")
    op.drop_table("payments_merchants")
    op.drop_table("payments_daily_outflow")
    op.drop_table("payments_customers")
