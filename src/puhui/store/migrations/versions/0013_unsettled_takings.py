"""the settlement job's partial indexes hold only what is owed: merchants' completed takings
not settled yet, and declined payouts not carried yet (orders' payments, refunds and
completed payouts stayed in the old index for ever)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The conditions as they were written at this revision (not imported: a later change of the
# tables' module must not change what this migration did).
_OLD = "merchant_id IS NOT NULL AND settlement_id IS NULL"
_UNSETTLED = (
    "settlement_id IS NULL AND status = 'completed'"
    " AND kind IN ('merchant_payment', 'escrow_release')"
)
_DECLINED = "settlement_id IS NULL AND status = 'failed' AND kind = 'settlement'"


def upgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_unsettled")
        batch.create_index(
            "ix_payments_operations_unsettled",
            ["merchant_id", "currency", "day"],
            sqlite_where=sa.text(_UNSETTLED),
            postgresql_where=sa.text(_UNSETTLED),
        )
        batch.create_index(
            "ix_payments_operations_declined_payouts",
            ["merchant_id", "currency", "day"],
            sqlite_where=sa.text(_DECLINED),
            postgresql_where=sa.text(_DECLINED),
        )


def downgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_declined_payouts")
        batch.drop_index("ix_payments_operations_unsettled")
        batch.create_index(
            "ix_payments_operations_unsettled",
            ["status", "day"],
            sqlite_where=sa.text(_OLD),
            postgresql_where=sa.text(_OLD),
        )
