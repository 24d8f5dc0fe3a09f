"""Tables of ``puhui.payments`` (only that package reads or writes them).

Money is never stored here: balances live in the ledger. Amounts are minor units in
``BIGINT`` columns with ``CHECK`` constraints, a second guard behind the service's own checks.
Times are nanoseconds since the Unix epoch (``*_at_ns``), from the service's clock.
"""

from __future__ import annotations

import sqlalchemy as sa

from ._metadata import Id, metadata

customers = sa.Table(
    "payments_customers",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    # Phones and national ids are unique within a namespace: 0 for payments' own callers;
    # the open API registers each tenant's customers in the tenant's number, so a tenant
    # cannot learn from a refusal that another tenant has a customer with that phone.
    sa.Column("namespace", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("phone", sa.String(16), nullable=False),
    sa.Column("display_name", sa.String(64), nullable=False),
    sa.Column("kyc_level", sa.SmallInteger, nullable=False),
    sa.Column("national_id_hash", sa.String(64), nullable=True),
    sa.Column("frozen", sa.Boolean, nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.CheckConstraint("kyc_level BETWEEN 0 AND 2", name="kyc_level"),
    sa.UniqueConstraint("namespace", "phone"),
    sa.UniqueConstraint("namespace", "national_id_hash"),
)

bank_cards = sa.Table(
    "payments_bank_cards",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey(customers.c.id), nullable=False),
    sa.Column("card_token", sa.String(64), nullable=False),
    sa.Column("bank_name", sa.String(64), nullable=False),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("customer_id", "card_token"),
)

merchants = sa.Table(
    "payments_merchants",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("fee_bps", sa.Integer, nullable=False),
    sa.Column("settlement_card_token", sa.String(64), nullable=False),
    sa.Column("frozen", sa.Boolean, nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.CheckConstraint("fee_bps BETWEEN 0 AND 10000", name="fee_bps"),
)

wallets = sa.Table(
    "payments_wallets",
    metadata,
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey(customers.c.id), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("account_id", sa.String(32), nullable=False, unique=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
)

UNSETTLED_TERMS = (
    "settlement_id IS NULL",
    "status = 'completed'",
    "kind IN ('merchant_payment', 'escrow_release')",
)
"""The condition of the partial index of merchants' takings not settled yet (completed
merchant payments and escrow releases), term by term: a query names each term verbatim (as
text, constants included) for SQLite to use the index. Only those rows are in it: a row
leaves it when settled, and no other kind of merchant operation (an order's payment, a
refund, a payout) ever enters it, so the daily walk reads what is owed, not the history."""
DECLINED_TERMS = (
    "settlement_id IS NULL",
    "status = 'failed'",
    "kind = 'settlement'",
)
"""The condition of the partial index of settlement payouts the bank declined and no later
settlement has carried yet (term by term, as ``UNSETTLED_TERMS``)."""
UNBOOKED_TERMS = (
    "bank_day IS NULL",
    "status = 'completed'",
    "kind IN ('top_up', 'withdrawal', 'settlement')",
)
"""The condition of the partial index of money moved through the bank that no bank statement
has booked yet (completed top-ups, withdrawals and settlement payouts without a
``bank_day``), term by term as ``UNSETTLED_TERMS``: reconciliation walks it, and a row
leaves it when a day's statement books it."""
BOOKED_TERMS = ("bank_day IS NOT NULL",)
"""The condition of the partial index of operations a bank statement booked, by its day."""
_UNSETTLED = sa.text(" AND ".join(UNSETTLED_TERMS))
_DECLINED = sa.text(" AND ".join(DECLINED_TERMS))
_UNBOOKED = sa.text(" AND ".join(UNBOOKED_TERMS))
_BOOKED = sa.text(" AND ".join(BOOKED_TERMS))

operations = sa.Table(
    "payments_operations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("payer_customer_id", sa.BigInteger, nullable=True),
    sa.Column("payee_customer_id", sa.BigInteger, nullable=True),
    sa.Column("merchant_id", sa.BigInteger, nullable=True),
    sa.Column("card_id", sa.BigInteger, nullable=True),
    sa.Column("note", sa.String(140), nullable=False),
    sa.Column("day", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("risk_score", sa.Integer, nullable=False),
    sa.Column("risk_reasons", sa.Text, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("bank_status", sa.String(16), nullable=True),
    sa.Column("bank_sent", sa.Boolean, nullable=False),
    sa.Column("hold_expires_at_ns", sa.BigInteger, nullable=True),
    sa.Column("order_id", sa.String(32), nullable=True),
    sa.Column("refund_id", sa.String(32), nullable=True),
    sa.Column("fee", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("biller_id", sa.BigInteger, nullable=True),
    sa.Column("settlement_id", sa.String(32), nullable=True),
    # The business day of the bank's statement that booked this operation (top-ups,
    # withdrawals, settlement payouts), set by reconciliation: it may be a later day than
    # the operation's own (a payout sent before midnight and confirmed after it).
    sa.Column("bank_day", sa.Integer, nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("scope", "idempotency_key"),
    sa.Index(None, "status", "created_at_ns"),
    # A customer's history, a page at a time (``Payments.customer_operations``): each side
    # walked in creation order (only rows created in the same instant, one batch's, are
    # sorted by id), so a page reads about its own rows.
    sa.Index(None, "payer_customer_id", "created_at_ns"),
    sa.Index(None, "payee_customer_id", "created_at_ns"),
    sa.Index(None, "merchant_id", "settlement_id"),
    # Merchants' takings not settled yet, by merchant, currency and day (the settlement
    # job's walk, and one merchant's due rows); a row leaves it when settled. The
    # condition's terms must stand verbatim in a query's WHERE for SQLite to use it.
    sa.Index(
        "ix_payments_operations_unsettled",
        "merchant_id",
        "currency",
        "day",
        sqlite_where=_UNSETTLED,
        postgresql_where=_UNSETTLED,
    ),
    # Payouts the bank declined, not carried into a later settlement yet.
    sa.Index(
        "ix_payments_operations_declined_payouts",
        "merchant_id",
        "currency",
        "day",
        sqlite_where=_DECLINED,
        postgresql_where=_DECLINED,
    ),
    # Money moved through the bank that no statement has booked yet, by the operation's day
    # (reconciliation: what a day's statement may book); a row leaves it when booked.
    sa.Index(
        "ix_payments_operations_unbooked",
        "day",
        sqlite_where=_UNBOOKED,
        postgresql_where=_UNBOOKED,
    ),
    # What a day's statement booked (reconciling the day again undoes it first).
    sa.Index(
        "ix_payments_operations_booked",
        "bank_day",
        sqlite_where=_BOOKED,
        postgresql_where=_BOOKED,
    ),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
)

daily_outflow = sa.Table(
    "payments_daily_outflow",
    metadata,
    sa.Column("customer_id", sa.BigInteger, primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.CheckConstraint("amount >= 0", name="amount_not_negative"),
)

payment_codes = sa.Table(
    "payments_payment_codes",
    metadata,
    sa.Column("code", sa.String(18), primary_key=True),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey(customers.c.id), nullable=False),
    sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False),
)

orders = sa.Table(
    "payments_orders",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("buyer_customer_id", sa.BigInteger, nullable=False),
    sa.Column("merchant_id", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("fee_bps", sa.Integer, nullable=False),
    sa.Column("fulfilment", sa.String(16), nullable=False),
    sa.Column("title", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("refunded", sa.BigInteger, nullable=False),
    sa.Column("pay_by_ns", sa.BigInteger, nullable=False),
    sa.Column("paid_at_ns", sa.BigInteger, nullable=True),
    sa.Column("shipped_at_ns", sa.BigInteger, nullable=True),
    sa.Column("confirm_by_ns", sa.BigInteger, nullable=True),
    sa.Column("extended_s", sa.BigInteger, nullable=False),
    sa.Column("suspended_at_ns", sa.BigInteger, nullable=True),
    sa.Column("payment_operation_id", sa.String(32), nullable=True),
    sa.Column("release_operation_id", sa.String(32), nullable=True),
    sa.Column("open_refund_id", sa.String(32), nullable=True),
    sa.Column("close_reason", sa.String(32), nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("scope", "idempotency_key"),
    sa.Index(None, "status", "pay_by_ns"),
    sa.Index(None, "status", "confirm_by_ns"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("refunded >= 0 AND refunded <= amount", name="refunded_within_amount"),
)

refunds = sa.Table(
    "payments_refunds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey(orders.c.id), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(140), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("after_shipment", sa.Boolean, nullable=False),
    sa.Column("answer_by_ns", sa.BigInteger, nullable=False),
    sa.Column("escalate_by_ns", sa.BigInteger, nullable=True),
    sa.Column("buyer_amount", sa.BigInteger, nullable=True),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("refund_operation_id", sa.String(32), nullable=True),
    sa.Column("release_operation_id", sa.String(32), nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("scope", "idempotency_key"),
    sa.Index(None, "status", "answer_by_ns"),
    sa.Index(None, "order_id"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
)

billers = sa.Table(
    "payments_billers",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("code", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
)

bill_bindings = sa.Table(
    "payments_bill_bindings",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey(customers.c.id), nullable=False),
    sa.Column("biller_id", sa.BigInteger, sa.ForeignKey(billers.c.id), nullable=False),
    sa.Column("household_account", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(32), nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("customer_id", "biller_id", "household_account"),
)

bill_payments = sa.Table(
    "payments_bill_payments",
    metadata,
    sa.Column("operation_id", sa.String(32), primary_key=True),
    sa.Column("binding_id", sa.BigInteger, sa.ForeignKey(bill_bindings.c.id), nullable=False),
    sa.Column("biller_id", sa.BigInteger, nullable=False),
    sa.Column("household_account", sa.String(32), nullable=False),
    sa.Column("bill_id", sa.String(64), nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("receipt_no", sa.String(40), nullable=True, unique=True),
    sa.Column("written_off_at_ns", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("biller_id", "bill_id"),
)

settlements = sa.Table(
    "payments_settlements",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("merchant_id", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("day", sa.Integer, nullable=False),
    sa.Column("gross", sa.BigInteger, nullable=False),
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("payout", sa.BigInteger, nullable=False),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("operation_id", sa.String(32), nullable=True),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("merchant_id", "currency", "day"),
    sa.Index(None, "day", "merchant_id", "currency"),
    sa.CheckConstraint("payout >= 0 AND fee >= 0", name="amounts_not_negative"),
)

reconciliations = sa.Table(
    "payments_reconciliations",
    metadata,
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("statement_sha256", sa.String(64), nullable=False),
    sa.Column("matched", sa.Integer, nullable=False),
    sa.Column("mismatches", sa.Integer, nullable=False),
    sa.Column("created_at_ns", sa.BigInteger, nullable=False),
)

reconciliation_items = sa.Table(
    "payments_reconciliation_items",
    metadata,
    sa.Column("day", sa.Integer, sa.ForeignKey(reconciliations.c.day), primary_key=True),
    sa.Column("reference", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ours", sa.BigInteger, nullable=True),
    sa.Column("bank", sa.BigInteger, nullable=True),
)

meta = sa.Table(
    "payments_meta",
    metadata,
    sa.Column("key", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(64), nullable=False),
)
"""Facts about the store itself: ``ledger_identity``, the journal this store's records
belong to (a store and a ledger are one pair: customer 1's wallet is the same ledger account
only within the pair)."""
