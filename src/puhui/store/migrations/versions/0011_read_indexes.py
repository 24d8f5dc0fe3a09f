"""indexes for the reads that scanned whole tables: a customer's history (payee side),
the settlement job's unsettled operations and its day, a settlement's statement, a day's
reconciliation, risk cases not carried out

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UNSETTLED = "merchant_id IS NOT NULL AND settlement_id IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.create_index(
            "ix_payments_operations_payee_customer_id_created_at_ns",
            ["payee_customer_id", "created_at_ns"],
        )
        batch.create_index(
            "ix_payments_operations_unsettled",
            ["status", "day"],
            sqlite_where=sa.text(_UNSETTLED),
            postgresql_where=sa.text(_UNSETTLED),
        )
        batch.create_index("ix_payments_operations_day_kind", ["day", "kind"])
    with op.batch_alter_table("payments_settlements") as batch:
        batch.create_index(
            "ix_payments_settlements_day_merchant_id_currency", ["day", "merchant_id", "currency"]
        )
    with op.batch_alter_table("risk_cases") as batch:
        batch.create_index("ix_risk_cases_resolved_id", ["resolved", "id"])


def downgrade() -> None:
    with op.batch_alter_table("risk_cases") as batch:
        batch.drop_index("ix_risk_cases_resolved_id")
    with op.batch_alter_table("payments_settlements") as batch:
        batch.drop_index("ix_payments_settlements_day_merchant_id_currency")
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_day_kind")
        batch.drop_index("ix_payments_operations_unsettled")
        batch.drop_index("ix_payments_operations_payee_customer_id_created_at_ns")
