"""payments: bills, settlements, reconciliation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:17:00.371043
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments_billers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_billers")),
        sa.UniqueConstraint("code", name=op.f("uq_payments_billers_code")),
    )
    op.create_table(
        "payments_reconciliations",
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("statement_sha256", sa.String(length=64), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("mismatches", sa.Integer(), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_payments_reconciliations")),
    )
    op.create_table(
        "payments_settlements",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("payout", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("operation_id", sa.String(length=32), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "payout >= 0 AND fee >= 0", name=op.f("ck_payments_settlements_amounts_not_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_settlements")),
        sa.UniqueConstraint(
            "merchant_id",
            "currency",
            "day",
            name=op.f("uq_payments_settlements_merchant_id_currency_day"),
        ),
    )
    op.create_table(
        "payments_bill_bindings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("biller_id", sa.BigInteger(), nullable=False),
        sa.Column("household_account", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=32), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["biller_id"],
            ["payments_billers.id"],
            name=op.f("fk_payments_bill_bindings_biller_id_payments_billers"),
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["payments_customers.id"],
            name=op.f("fk_payments_bill_bindings_customer_id_payments_customers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_bill_bindings")),
        sa.UniqueConstraint(
            "customer_id",
            "biller_id",
            "household_account",
            name=op.f("uq_payments_bill_bindings_customer_id_biller_id_household_account"),
        ),
    )
    op.create_table(
        "payments_reconciliation_items",
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ours", sa.BigInteger(), nullable=True),
        sa.Column("bank", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["day"],
            ["payments_reconciliations.day"],
            name=op.f("fk_payments_reconciliation_items_day_payments_reconciliations"),
        ),
        sa.PrimaryKeyConstraint("day", "reference", name=op.f("pk_payments_reconciliation_items")),
    )
    op.create_table(
        "payments_bill_payments",
        sa.Column("operation_id", sa.String(length=32), nullable=False),
        sa.Column("binding_id", sa.BigInteger(), nullable=False),
        sa.Column("biller_id", sa.BigInteger(), nullable=False),
        sa.Column("household_account", sa.String(length=32), nullable=False),
        sa.Column("bill_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("receipt_no", sa.String(length=40), nullable=True),
        sa.Column("written_off_at_ns", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["binding_id"],
            ["payments_bill_bindings.id"],
            name=op.f("fk_payments_bill_payments_binding_id_payments_bill_bindings"),
        ),
        sa.PrimaryKeyConstraint("operation_id", name=op.f("pk_payments_bill_payments")),
        sa.UniqueConstraint(
            "biller_id", "bill_id", name=op.f("uq_payments_bill_payments_biller_id_bill_id")
        ),
        sa.UniqueConstraint("receipt_no", name=op.f("uq_payments_bill_payments_receipt_no")),
    )
    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("biller_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("settlement_id", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_payments_operations_merchant_id_settlement_id"),
            ["merchant_id", "settlement_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_operations_merchant_id_settlement_id"))
        batch_op.drop_column("settlement_id")
        batch_op.drop_column("biller_id")

    op.drop_table("payments_bill_payments")
    op.drop_table("payments_reconciliation_items")
    op.drop_table("payments_bill_bindings")
    op.drop_table("payments_settlements")
    op.drop_table("payments_reconciliations")
    op.drop_table("payments_billers")
