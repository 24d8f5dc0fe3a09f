"""payments: phones and national ids unique per namespace (the open API: per tenant)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 20:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments_customers") as batch:
        batch.add_column(
            sa.Column("namespace", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.drop_constraint("uq_payments_customers_phone", type_="unique")
        batch.drop_constraint("uq_payments_customers_national_id_hash", type_="unique")
        batch.create_unique_constraint(
            "uq_payments_customers_namespace_phone", ["namespace", "phone"]
        )
        batch.create_unique_constraint(
            "uq_payments_customers_namespace_national_id_hash", ["namespace", "national_id_hash"]
        )


def downgrade() -> None:
    with op.batch_alter_table("payments_customers") as batch:
        batch.drop_constraint("uq_payments_customers_namespace_national_id_hash", type_="unique")
        batch.drop_constraint("uq_payments_customers_namespace_phone", type_="unique")
        batch.create_unique_constraint("uq_payments_customers_phone", ["phone"])
        batch.create_unique_constraint(
            "uq_payments_customers_national_id_hash", ["national_id_hash"]
        )
        batch.drop_column("namespace")
