"""Tables of ``puhui.risk`` (only that package reads or writes them).

Cases: what an analyst looks at when risk control holds something for review, and what they
decided (the outcome is a label for training). Times are nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import sqlalchemy as sa

from ._metadata import Id, metadata

CASE_STATUSES = ("open", "escalated", "approved", "rejected")

cases = sa.Table(
    "risk_cases",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    # What is held: ("operation", the payments operation id in hex), for now.
    sa.Column("subject_kind", sa.String(16), nullable=False),
    sa.Column("subject_id", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("analyst", sa.String(64), nullable=True),
    sa.Column("note", sa.String(500), nullable=False, server_default=""),
    sa.Column("account_takeover", sa.Boolean, nullable=False, server_default=sa.false()),
    # 1 fraud, 0 legitimate; NULL while undecided (or only escalated).
    sa.Column("label", sa.SmallInteger, nullable=True),
    # The decision was carried out on its subject (the held payment released or returned).
    sa.Column("resolved", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("opened_at_ns", sa.BigInteger, nullable=False),
    sa.Column("decided_at_ns", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("subject_kind", "subject_id"),
    sa.CheckConstraint("status IN ('open', 'escalated', 'approved', 'rejected')", name="status"),
    sa.Index(None, "status", "id"),
    # Decisions not carried out yet (``Cases.resolve_pending``): the open and the unresolved.
    sa.Index(None, "resolved", "id"),
)

LIST_NAME_CHARS_MAX = 64

list_entries = sa.Table(
    "risk_list_entries",
    metadata,
    # ``blocked_devices``, ``allowed_customers``… (``puhui.risk.LIST_NAMES``).
    sa.Column("list_name", sa.String(LIST_NAME_CHARS_MAX), primary_key=True),
    sa.Column("value", sa.String(200), primary_key=True),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("added_at_ns", sa.BigInteger, nullable=False),
    # The entry matches while now < expires_at_ns; NULL: until removed.
    sa.Column("expires_at_ns", sa.BigInteger, nullable=True),
    sa.CheckConstraint("length(value) > 0", name="value_not_empty"),
    sa.CheckConstraint("length(reason) > 0", name="reason_not_empty"),
)

list_state = sa.Table(
    "risk_list_state",
    metadata,
    # One row (id 1): ``version`` goes up by one with every change to any list, in the
    # change's own transaction, so an engine sees a change by reading one number.
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="one_row"),
)

list_changes = sa.Table(
    "risk_list_changes",
    metadata,
    # One row per changed entry, written in the change's transaction: ``version`` is the
    # state's version that the change made (so engines apply the changes they have not seen,
    # in order, instead of reloading every list). Only the last versions are kept
    # (``ListStore.changes_kept``); an engine further behind reloads every list.
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("list_name", sa.String(LIST_NAME_CHARS_MAX), nullable=False),
    sa.Column("value", sa.String(200), nullable=False),
    # 'add': put on the list (replacing an entry for the value) — 'remove': taken off
    # (removed or purged); a removal has no reason nor times.
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("added_at_ns", sa.BigInteger, nullable=True),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=True),
    sa.CheckConstraint("op IN ('add', 'remove')", name="op"),
    sa.CheckConstraint(
        "(op = 'add') = (reason IS NOT NULL AND added_at_ns IS NOT NULL)", name="add_has_entry"
    ),
)
