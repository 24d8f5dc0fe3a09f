"""webhook events keep the id of the transaction that wrote them (PostgreSQL's
pg_current_xact_id()); the events listing orders by (txid, seq) and its index follows

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_TABLE = "platform_webhook_events"


def upgrade() -> None:
    # Events written before get txid 0: they list first, in seq order (their seq ascended in
    # commit order under the advisory lock this revision's code no longer takes).
    op.add_column(
        _TABLE, sa.Column("txid", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )
    if op.get_bind().dialect.name == "postgresql":
        # Every writer names its txid: a forgotten one must fail, not list as 0. (SQLite
        # keeps the default: dropping it means rebuilding the table, which the deliveries'
        # foreign key to it makes unsafe; its one writer, Webhooks.record_many, names it.)
        op.alter_column(_TABLE, "txid", server_default=None)
    op.create_index(
        "ix_platform_webhook_events_tenant_id_txid_seq", _TABLE, ["tenant_id", "txid", "seq"]
    )
    op.drop_index("ix_platform_webhook_events_tenant_id_seq", _TABLE)


def downgrade() -> None:
    op.create_index("ix_platform_webhook_events_tenant_id_seq", _TABLE, ["tenant_id", "seq"])
    op.drop_index("ix_platform_webhook_events_tenant_id_txid_seq", _TABLE)
    op.drop_column(_TABLE, "txid")  # SQLite >= 3.35 drops it in place
