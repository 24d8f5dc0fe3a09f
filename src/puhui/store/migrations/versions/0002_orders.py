"""payments: guaranteed-transaction orders and refunds

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 14:10:05.172104
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payments_orders",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("buyer_customer_id", sa.BigInteger(), nullable=False),
        sa.Column("merchant_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("fulfilment", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("pay_by_ns", sa.BigInteger(), nullable=False),
        sa.Column("paid_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("shipped_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("confirm_by_ns", sa.BigInteger(), nullable=True),
        sa.Column("extended_s", sa.BigInteger(), nullable=False),
        sa.Column("suspended_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("payment_operation_id", sa.String(length=32), nullable=True),
        sa.Column("release_operation_id", sa.String(length=32), nullable=True),
        sa.Column("open_refund_id", sa.String(length=32), nullable=True),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payments_orders_amount_positive")),
        sa.CheckConstraint(
            "refunded >= 0 AND refunded <= amount",
            name=op.f("ck_payments_orders_refunded_within_amount"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_orders")),
        sa.UniqueConstraint(
            "scope", "idempotency_key", name=op.f("uq_payments_orders_scope_idempotency_key")
        ),
    )
    with op.batch_alter_table("payments_orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payments_orders_status_confirm_by_ns"),
            ["status", "confirm_by_ns"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_payments_orders_status_pay_by_ns"), ["status", "pay_by_ns"], unique=False
        )

    op.create_table(
        "payments_refunds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=140), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("after_shipment", sa.Boolean(), nullable=False),
        sa.Column("answer_by_ns", sa.BigInteger(), nullable=False),
        sa.Column("escalate_by_ns", sa.BigInteger(), nullable=True),
        sa.Column("buyer_amount", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("refund_operation_id", sa.String(length=32), nullable=True),
        sa.Column("release_operation_id", sa.String(length=32), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payments_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["payments_orders.id"],
            name=op.f("fk_payments_refunds_order_id_payments_orders"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments_refunds")),
        sa.UniqueConstraint(
            "scope", "idempotency_key", name=op.f("uq_payments_refunds_scope_idempotency_key")
        ),
    )
    with op.batch_alter_table("payments_refunds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payments_refunds_order_id"), ["order_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payments_refunds_status_answer_by_ns"),
            ["status", "answer_by_ns"],
            unique=False,
        )

    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("refund_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("fee", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("payments_operations", schema=None) as batch_op:
        batch_op.drop_column("fee")
        batch_op.drop_column("refund_id")
        batch_op.drop_column("order_id")

    with op.batch_alter_table("payments_refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_refunds_status_answer_by_ns"))
        batch_op.drop_index(batch_op.f("ix_payments_refunds_order_id"))

    op.drop_table("payments_refunds")
    with op.batch_alter_table("payments_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_orders_status_pay_by_ns"))
        batch_op.drop_index(batch_op.f("ix_payments_orders_status_confirm_by_ns"))

    op.drop_table("payments_orders")
