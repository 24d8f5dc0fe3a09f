"""reconciliation keys the bank's money by the day the bank booked it (``bank_day``, from
its statement), not by the day the operation was recorded: a payout sent before midnight
and confirmed after it was missing on one day and extra on the next

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# The conditions as they were written at this revision (not imported: a later change of the
# tables' module must not change what this migration did).
_BANK_KINDS = "kind IN ('top_up', 'withdrawal', 'settlement')"
_UNBOOKED = f"bank_day IS NULL AND status = 'completed' AND {_BANK_KINDS}"
_BOOKED = "bank_day IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.add_column(sa.Column("bank_day", sa.Integer, nullable=True))
    # What was moved before this revision stays keyed as it was reconciled: by its own day.
    op.execute(
        f"UPDATE payments_operations SET bank_day = day"
        f" WHERE status = 'completed' AND {_BANK_KINDS}"
    )
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_day_kind")
        batch.create_index(
            "ix_payments_operations_unbooked",
            ["day"],
            sqlite_where=sa.text(_UNBOOKED),
            postgresql_where=sa.text(_UNBOOKED),
        )
        batch.create_index(
            "ix_payments_operations_booked",
            ["bank_day"],
            sqlite_where=sa.text(_BOOKED),
            postgresql_where=sa.text(_BOOKED),
        )


def downgrade() -> None:
    with op.batch_alter_table("payments_operations") as batch:
        batch.drop_index("ix_payments_operations_booked")
        batch.drop_index("ix_payments_operations_unbooked")
        batch.create_index("ix_payments_operations_day_kind", ["day", "kind"])
        batch.drop_column("bank_day")
