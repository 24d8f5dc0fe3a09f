"""payments: a customer's history through an index on the payee side too

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 08:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.create_index(
            "ix_payments_operations_payee_customer_id_created_at_ns",
            ["payee_customer_id", "created_at_ns"],
        )


def downgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_payee_customer_id_created_at_ns")
