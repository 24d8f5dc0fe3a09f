"""Payments' pure rules: the chart of accounts, id derivation, KYC limits, request fingerprints.

Nothing here does I/O; ``service.py`` does. See ``docs/accounts.md`` for the chart of accounts
and ``docs/payments.md`` for the operations and their limits.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from puhui.money import Currency

from ._errors import (
    AmountOutOfRangeError,
    InvalidPayloadError,
    InvalidPhoneError,
)

# --- the chart of accounts -------------------------------------------------------------------


class AccountCode(IntEnum):
    """The ledger ``code`` of each kind of account (the chart of accounts' number)."""

    BANK_SETTLEMENT = 1010
    """Asset: the platform's money at its settlement bank (debit balance)."""
    SUSPENSE = 1090
    """Asset/liability: amounts the platform cannot yet attribute (reconciliation)."""
    CUSTOMER_WALLET = 2010
    """Liability: what the platform owes a customer (credit balance)."""
    MERCHANT_RECEIVABLE = 2020
    """Liability: what the platform owes a merchant until settlement (credit balance)."""
    ESCROW = 2030
    """Liability: buyers' money held for guaranteed transactions (credit balance)."""
    BILLER_CLEARING = 2040
    """Liability: bill payments owed to one biller (credit balance)."""
    FEE_REVENUE = 4010
    """Income: fees the platform has earned (credit balance)."""


class AccountKind(IntEnum):
    """The top byte of a ledger account id: whose account it is."""

    PLATFORM = 1
    CUSTOMER = 2
    MERCHANT = 3
    BILLER = 4


class TransferCode(IntEnum):
    """The ledger ``code`` of each kind of transfer (what moved the money)."""

    TOP_UP = 1
    WITHDRAWAL = 2
    P2P = 3
    MERCHANT_PAYMENT = 4
    ESCROW_HOLD = 5
    """A buyer pays a guaranteed-transaction order: wallet → escrow."""
    ESCROW_RELEASE = 6
    """The order finishes: escrow → merchant (less the fee)."""
    REFUND = 7
    """Escrow → the buyer's wallet."""
    FEE = 8
    """The platform's fee on a release: escrow → fee revenue."""
    BILL_PAYMENT = 9
    """Wallet → the biller's clearing account (held until the biller writes the bill off)."""
    SETTLEMENT_PAYOUT = 10
    """Merchant receivable → bank settlement (held until the bank pays the merchant)."""
    SETTLEMENT_FEE = 11
    """Merchant receivable → fee revenue: the fee on merchant payments, taken at settlement."""


OWNER_ID_MAX: Final = (1 << 63) - 1
"""Largest customer, merchant or biller id (they are SQL ``BIGINT`` keys)."""


def account_id(kind: AccountKind, currency: Currency, owner: int) -> int:
    """The ledger id of an account: ``kind`` (8 bits) | ledger (16 bits) | 40 zero bits |
    owner (64 bits). Platform accounts use their ``AccountCode`` as the owner."""
    if not 0 < owner <= OWNER_ID_MAX:
        raise ValueError(f"owner id {owner} out of range")
    return (int(kind) << 120) | (currency.ledger << 104) | owner


def platform_account_id(code: AccountCode, currency: Currency) -> int:
    return account_id(AccountKind.PLATFORM, currency, int(code))


def wallet_account_id(customer_id: int, currency: Currency) -> int:
    return account_id(AccountKind.CUSTOMER, currency, customer_id)


def merchant_account_id(merchant_id: int, currency: Currency) -> int:
    return account_id(AccountKind.MERCHANT, currency, merchant_id)


def transfer_id(operation_id: int, leg: int) -> int:
    """The ledger id of transfer ``leg`` of an operation: a hash of both, so a retry or a
    recovery of the same operation always resubmits the same ids (never moves money twice)."""
    digest = hashlib.blake2b(
        operation_id.to_bytes(16, "little") + leg.to_bytes(2, "little"),
        digest_size=16,
        person=b"puhui-transfer",
    ).digest()
    value = int.from_bytes(digest, "little")
    if value in (0, (1 << 128) - 1):  # reserved by the ledger; 2**-127 odds
        raise RuntimeError("derived transfer id is reserved")
    return value


# --- operations ------------------------------------------------------------------------------


class OperationKind(StrEnum):
    TOP_UP = "top_up"
    WITHDRAWAL = "withdrawal"
    P2P = "p2p"
    MERCHANT_PAYMENT = "merchant_payment"
    ORDER_PAYMENT = "order_payment"
    ESCROW_RELEASE = "escrow_release"
    REFUND = "refund"
    BILL_PAYMENT = "bill_payment"
    SETTLEMENT = "settlement"


class BillerKind(StrEnum):
    WATER = "water"
    ELECTRICITY = "electricity"
    GAS = "gas"
    PHONE = "phone"
    BROADBAND = "broadband"


class Fulfilment(StrEnum):
    """How an order's goods reach the buyer; sets the auto-confirm timer after shipment."""

    INSTANT = "instant"
    AUTO_DELIVERY = "auto_delivery"
    VIRTUAL = "virtual"
    EXPRESS = "express"
    SURFACE_MAIL = "surface_mail"


DEFAULT_AUTO_CONFIRM_S: Final = {
    Fulfilment.INSTANT: 0,
    Fulfilment.AUTO_DELIVERY: 24 * 3600,
    Fulfilment.VIRTUAL: 3 * 86_400,
    Fulfilment.EXPRESS: 10 * 86_400,
    Fulfilment.SURFACE_MAIL: 30 * 86_400,
}


class OrderStatus(StrEnum):
    CREATED = "created"
    PAID = "paid"
    """The buyer's money is in escrow."""
    SHIPPED = "shipped"
    FINISHED = "finished"
    """Released to the seller (final)."""
    CLOSED = "closed"
    """Cancelled, unpaid in time, or refunded in full (final)."""


class RefundStatus(StrEnum):
    REQUESTED = "requested"
    """Waiting for the seller's answer (approved by itself when none comes in time)."""
    REJECTED = "rejected"
    """The seller said no; the buyer may escalate within the window."""
    ESCALATED = "escalated"
    """Waiting for the platform's arbitration."""
    REFUNDED = "refunded"
    """Money went back to the buyer (final)."""
    DENIED = "denied"
    """No refund: rejected and not escalated in time, or arbitration released to the seller
    (final)."""


class Arbitration(StrEnum):
    REFUND = "refund"
    """The buyer gets the amount asked for."""
    RELEASE = "release"
    """No refund: everything left in escrow goes to the seller now."""
    SPLIT = "split"
    """The buyer gets ``buyer_amount``; the rest of the escrow goes to the seller now."""


class CheckoutChange(StrEnum):
    """A change of an order or refund that ``Checkout`` tells its change hooks about
    (``Checkout.on_change``), in the transaction that records it."""

    ORDER_PAID = "order.paid"
    ORDER_SHIPPED = "order.shipped"
    ORDER_FINISHED = "order.finished"
    ORDER_CLOSED = "order.closed"
    REFUND_REQUESTED = "refund.requested"
    REFUND_REJECTED = "refund.rejected"
    REFUND_ESCALATED = "refund.escalated"
    REFUND_REFUNDED = "refund.refunded"
    REFUND_DENIED = "refund.denied"


class OperationStatus(StrEnum):
    """Where an operation is. Final: ``completed``, ``failed``, ``rejected``, ``expired``."""

    PENDING = "pending"
    """Recorded; money not yet moved (or moved and not yet recorded: recovery decides)."""
    AWAITING_BANK = "awaiting_bank"
    """Sent to the bank, whose answer is not in yet (queried, never sent again)."""
    AWAITING_BILLER = "awaiting_biller"
    """A bill payment sent to the biller, whose write-off is not confirmed yet."""
    CHALLENGED = "challenged"
    """Risk asked for step-up verification; the money is held (a pending transfer)."""
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    """Risk rejected it; nothing moved."""
    EXPIRED = "expired"
    """A challenge that was not passed in time; the held money went back."""


FINAL_STATUSES: Final = frozenset(
    {
        OperationStatus.COMPLETED,
        OperationStatus.FAILED,
        OperationStatus.REJECTED,
        OperationStatus.EXPIRED,
    }
)


def request_fingerprint(kind: OperationKind, request: dict[str, Any]) -> str:
    """A stable hash of what was asked, to tell a retry from a different request."""
    text = json.dumps({"kind": str(kind), **request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_json_text = encode_basestring_ascii  # what ``json.dumps`` writes for a str


def p2p_fingerprint(payee_id: int, amount: int, currency_code: str, note: str) -> str:
    """``request_fingerprint(OperationKind.P2P, {...})`` of a P2P request, without building
    a dict and an encoder for each of a batch's payments (the same text, the same hash)."""
    text = (
        f'{{"amount":{amount},"currency":{_json_text(currency_code)},"kind":"p2p",'
        f'"note":{_json_text(note)},"payee":{payee_id}}}'
    )
    return hashlib.sha256(text.encode()).hexdigest()


def merchant_payment_fingerprint(merchant_id: int, amount: int, currency_code: str) -> str:
    """``request_fingerprint(OperationKind.MERCHANT_PAYMENT, {...})`` of a merchant payment
    (scanned QR), the same way as ``p2p_fingerprint``."""
    text = (
        f'{{"amount":{amount},"currency":{_json_text(currency_code)},'
        f'"kind":"merchant_payment","merchant":{merchant_id}}}'
    )
    return hashlib.sha256(text.encode()).hexdigest()


IDEMPOTENCY_KEY_CHARS_MAX: Final = 255
NOTE_CHARS_MAX: Final = 140
PAYLOAD_CHARS_MAX: Final = 512
AMOUNT_MAX: Final = (1 << 63) - 1
"""Largest amount of one operation, in minor units (a SQL ``BIGINT``)."""


def check_amount(amount: object) -> int:
    if type(amount) is not int:  # bool and float are not amounts
        raise AmountOutOfRangeError("an amount is an int of minor units", amount=repr(amount))
    if not 0 < amount <= AMOUNT_MAX:
        raise AmountOutOfRangeError(f"amount must be between 1 and {AMOUNT_MAX} minor units")
    return amount


# --- know your customer ----------------------------------------------------------------------


class KycLevel(IntEnum):
    UNVERIFIED = 0
    BASIC = 1
    """Name and national id checked."""
    FULL = 2
    """Bank card verified and biometric check passed."""


@dataclass(frozen=True, slots=True)
class KycLimits:
    """Limits of one KYC level, in major units of any currency (scaled by its exponent)."""

    single_payment: int
    daily_outflow: int
    wallet_balance: int

    def in_minor_units(self, currency: Currency) -> KycLimits:
        scale = currency.minor_units_per_major
        return KycLimits(
            self.single_payment * scale, self.daily_outflow * scale, self.wallet_balance * scale
        )


DEFAULT_KYC_LIMITS: Final = {
    KycLevel.UNVERIFIED: KycLimits(single_payment=200, daily_outflow=500, wallet_balance=1_000),
    KycLevel.BASIC: KycLimits(single_payment=5_000, daily_outflow=10_000, wallet_balance=50_000),
    KycLevel.FULL: KycLimits(
        single_payment=50_000, daily_outflow=200_000, wallet_balance=1_000_000
    ),
}


@dataclass(frozen=True, slots=True)
class PaymentsOptions:
    """Limits and timers of the payments service (units last in each name)."""

    kyc_limits: dict[KycLevel, KycLimits] = field(default_factory=lambda: dict(DEFAULT_KYC_LIMITS))
    challenge_timeout_s: int = 600
    """How long a challenged payment's money is held for step-up verification."""
    payment_code_ttl_s: int = 60
    """How long a customer's payment code (merchant scans it) stays valid."""
    day_offset_s: int = 8 * 3600
    """Business days start at midnight of this UTC offset (UTC+8 by default)."""
    recovery_age_s: int = 30
    """``recover()`` leaves alone operations younger than this (they may still be running)."""
    batch_operations_max: int = 8189
    """Most operations in one batch call."""
    auto_confirm_s: dict[Fulfilment, int] = field(
        default_factory=lambda: dict(DEFAULT_AUTO_CONFIRM_S)
    )
    """After shipment, how long until receipt is confirmed by itself, by fulfilment."""
    unpaid_close_s: int = 86_400
    """An order not paid within this closes by itself."""
    extension_max_s: int = 30 * 86_400
    """The most a seller may extend an order's confirmation timer, in all."""
    refund_answer_before_shipment_s: int = 24 * 3600
    """A refund asked for before shipment is approved by itself if the seller does not
    answer within this."""
    refund_answer_after_shipment_s: int = 36 * 3600
    escalation_window_s: int = 5 * 86_400
    """How long a buyer whose refund was rejected may escalate to arbitration."""


def business_day(now_ns: int, options: PaymentsOptions) -> int:
    """The business day (days since 1970-01-01 in the service's time zone) of an instant."""
    return (now_ns // 1_000_000_000 + options.day_offset_s) // 86_400


# --- payees ----------------------------------------------------------------------------------

_PHONE = re.compile(r"\+?[0-9]{6,15}", re.ASCII)


def normalize_phone(phone: str) -> str:
    """E.164-like digits with an optional leading ``+``; spaces and dashes are dropped."""
    cleaned = re.sub(r"[ \-]", "", phone) if isinstance(phone, str) else ""
    if not _PHONE.fullmatch(cleaned):
        raise InvalidPhoneError("a phone number is 6 to 15 digits, optionally after +")
    return cleaned


QR_PREFIX: Final = "puhui://"


@dataclass(frozen=True, slots=True)
class QrTarget:
    """What a QR payload points at: a customer (personal code) or a merchant (shop code)."""

    kind: AccountKind
    owner_id: int


def customer_qr(customer_id: int) -> str:
    return f"{QR_PREFIX}c/{customer_id}"


def merchant_qr(merchant_id: int) -> str:
    return f"{QR_PREFIX}m/{merchant_id}"


def parse_qr(payload: str) -> QrTarget:
    """Read a Puhui QR payload (``puhui://c/<customer id>`` or ``puhui://m/<merchant id>``)."""
    if not isinstance(payload, str) or len(payload) > PAYLOAD_CHARS_MAX:
        raise InvalidPayloadError("not a Puhui QR payload")
    match = re.fullmatch(r"puhui://([cm])/([1-9][0-9]{0,18})", payload, re.ASCII)
    if match is None:
        raise InvalidPayloadError("not a Puhui QR payload")
    owner = int(match.group(2))
    if owner > OWNER_ID_MAX:
        raise InvalidPayloadError("not a Puhui QR payload")
    kind = AccountKind.CUSTOMER if match.group(1) == "c" else AccountKind.MERCHANT
    return QrTarget(kind, owner)


def check_text(value: object, name: str, chars_max: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > chars_max or (not empty and not value):
        raise InvalidPayloadError(
            f"{name} must be text of {'0' if empty else '1'} to {chars_max} characters"
        )
    if "\x00" in value:  # PostgreSQL's text cannot hold it: refused the same everywhere
        raise InvalidPayloadError(f"{name} must not contain a NUL character")
    return value


def fee(amount: int, fee_bps: int) -> int:
    """A fee of ``fee_bps`` basis points, rounded half up to the minor unit (one rounding)."""
    return (amount * fee_bps + 5_000) // 10_000
