"""Tables of ``puhui.platform`` (only that package reads or writes them).

Tenants (partner institutions), their API keys (hashes only, never secrets), the records of
the API's ``Idempotency-Key`` header, and the hash-chained audit log with its anchor. Times are
nanoseconds since the Unix epoch (``*_at_ns``), from the platform's clock.
"""

from __future__ import annotations

import sqlalchemy as sa

from ._metadata import Id, metadata

TENANT_KINDS = ("bank", "fund_company", "insurer", "merchant_acquirer", "biller", "operator")
"""Every kind of tenant (the CHECK constraint below lists the same)."""

tenants = sa.Table(
    "platform_tenants",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # 128 random bits (hex) that scramble the tenant's ledger ids (see puhui.platform.model).
    sa.Column("ledger_id_mask", sa.String(32), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.CheckConstraint(
        "kind IN ('bank', 'fund_company', 'insurer', 'merchant_acquirer', 'biller', 'operator')",
        name="kind",
    ),
    sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),
)

api_keys = sa.Table(
    "platform_api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey(tenants.c.id), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(255), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("revoked_at_ns", sa.BigInteger, nullable=True),
    sa.Index(None, "tenant_id", "created_at_ns"),
)

idempotency = sa.Table(
    "platform_idempotency",
    metadata,
    sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey(tenants.c.id), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("content_type", sa.String(64), nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("locked_until_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
    sa.Index(None, "expires_at_ns"),
    sa.CheckConstraint("state IN ('in_progress', 'done')", name="state"),
)

audit_log = sa.Table(
    "platform_audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("tenant_id", sa.BigInteger, nullable=True),
    sa.Column("key_id", sa.String(16), nullable=True),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("route", sa.String(255), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_anchor = sa.Table(
    "platform_audit_anchor",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("head_hash", sa.String(64), nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)

# --- webhooks ---------------------------------------------------------------------------------

webhook_endpoints = sa.Table(
    "platform_webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey(tenants.c.id), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    # The event types wanted, space separated and sorted; "*" for every type.
    sa.Column("event_types", sa.String(1024), nullable=False),
    # The signing secret itself (HMAC needs it): see puhui.platform.webhooks for why.
    sa.Column("secret", sa.String(80), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("disabled_at_ns", sa.BigInteger, nullable=True),
    sa.Index(None, "tenant_id", "created_at_ns"),
)

webhook_events = sa.Table(
    "platform_webhook_events",
    metadata,
    # The order events were written in (deliveries key by it; it orders one transaction's
    # events in the listing).
    sa.Column("seq", Id, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey(tenants.c.id), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # The writing transaction's id on PostgreSQL (pg_current_xact_id()); 0 on SQLite and for
    # events written before it was kept. The listing (and its cursor) orders by (txid, seq).
    sa.Column("txid", sa.BigInteger, nullable=False),
    sa.Index(None, "tenant_id", "txid", "seq"),
    sa.Index(None, "created_at_ns"),
)

webhook_deliveries = sa.Table(
    "platform_webhook_deliveries",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("event_seq", sa.BigInteger, sa.ForeignKey(webhook_events.c.seq), nullable=False),
    sa.Column("endpoint_id", sa.String(32), sa.ForeignKey(webhook_endpoints.c.id), nullable=False),
    sa.Column("tenant_id", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # Due time; while an attempt is in flight, the end of its lease.
    sa.Column("next_attempt_at_ns", sa.BigInteger, nullable=False),
    sa.Column("lease", sa.String(32), nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    sa.Column("last_attempt_at_ns", sa.BigInteger, nullable=True),
    sa.Column("delivered_at_ns", sa.BigInteger, nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("event_seq", "endpoint_id"),
    sa.Index(None, "state", "next_attempt_at_ns"),
    sa.Index(None, "tenant_id", "state", "id"),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'dead')", name="state"),
    sa.CheckConstraint("attempts >= 0", name="attempts"),
)

PAYMENT_OWNER_KINDS = ("customer", "merchant")
"""What a tenant may own in payments (the CHECK constraint below lists the same)."""

payment_owners = sa.Table(
    "platform_payment_owners",
    metadata,
    # Which tenant owns each payments customer or merchant (payments' tables have no tenant
    # column: the platform keeps who owns what, and the API checks it on every route).
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("object_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.BigInteger, sa.ForeignKey(tenants.c.id), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kind IN ('customer', 'merchant')", name="kind"),
    sa.Index(None, "tenant_id", "kind", "object_id"),
)
