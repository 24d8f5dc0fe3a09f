"""JSON shapes of the payments routes. Amounts are integers in minor units (below 2**63) with
an ISO 4217 currency; customer, merchant, card and binding ids are integers; operation,
order and refund ids are 128-bit and travel as decimal text."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from puhui.payments import Bill, Binding, Customer, Merchant, Operation, Order, Receipt, Refund

from ._schemas import U128Text, _In

AMOUNT_MAX = (1 << 63) - 1
OBJECT_ID_MAX = (1 << 63) - 1

Amount = Annotated[
    int, Field(gt=0, le=AMOUNT_MAX, description="Minor units of the currency (cents, fen).")
]
CurrencyCode = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.", examples=["CNY"])
]
ObjectId = Annotated[int, Field(ge=1, le=OBJECT_ID_MAX)]


class RegisterCustomerIn(_In):
    phone: str = Field(max_length=20, examples=["+8613800000001"])
    display_name: str = Field(max_length=64)


class VerifyIdentityIn(_In):
    national_id: str = Field(max_length=32)


class VerifyFullIn(_In):
    biometric_passed: bool


class BindCardIn(_In):
    card_token: str = Field(max_length=64, description="The bank's token for the card.")
    bank_name: str = Field(max_length=64)
    last4: str = Field(pattern=r"^[0-9]{4}$")


class RegisterMerchantIn(_In):
    name: str = Field(max_length=64)
    category: str = Field(max_length=32)
    fee_bps: int = Field(ge=0, le=10_000, description="Fee in basis points.")
    settlement_card_token: str = Field(max_length=64)


class ChannelIn(_In):
    """Where the customer made the request, as risk control sees it: the customer's device
    and network, not the partner's server. Optional, each field too; what is not given is
    unknown to risk control (a payment with no device is never from a *trusted* one). None
    of it changes what the request means, and none of it is stored with the operation."""

    device_id: str = Field(
        "", max_length=128, description="The customer's device (an app install's id)."
    )
    ip: str = Field(
        "", max_length=45, description="The customer's IP address (IPv4 or IPv6).", examples=[]
    )
    latitude: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    longitude: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    """Where the customer is (degrees, WGS 84), when the app shares it: both or neither."""

    @field_validator("ip")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if not value:
            return value
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
        # Risk control matches addresses as text (block lists, per-address features): an
        # IPv4 address that a dual-stack socket wrote as IPv6 (``::ffff:a.b.c.d``) is that
        # IPv4 address, and a zone id (``%eth0``) names an interface of the host that saw
        # the address, not part of the customer's address.
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            if address.scope_id is not None:
                address = ipaddress.IPv6Address(address.packed)
        return str(address)

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude go together")
        return self


ChannelField = Annotated[
    ChannelIn | None,
    Field(description="Where the customer made the request (for risk control); optional."),
]


class CardMoneyIn(_In):
    card_id: ObjectId
    amount: Amount
    currency: CurrencyCode
    channel: ChannelField = None


class PayeeIn(_In):
    """Exactly one of ``customer_id``, ``phone``, ``qr``."""

    customer_id: ObjectId | None = None
    phone: str | None = Field(None, max_length=20)
    qr: str | None = Field(None, max_length=64)


class TransferIn(_In):
    payee: PayeeIn
    amount: Amount
    currency: CurrencyCode
    note: str = Field("", max_length=140)
    channel: ChannelField = None


class MerchantPaymentIn(_In):
    merchant_qr: str = Field(max_length=64, examples=["puhui://m/1"])
    amount: Amount
    currency: CurrencyCode
    channel: ChannelField = None


class CollectIn(_In):
    payment_code: str = Field(max_length=18, description="The customer's one-time code.")
    amount: Amount
    currency: CurrencyCode
    channel: ChannelField = None
    """The merchant's terminal that scanned the code."""


class VerificationIn(_In):
    passed: bool
    channel: ChannelField = None
    """Where the customer answered: a passed answer makes its device a trusted one."""


class PayOrderIn(_In):
    channel: ChannelField = None


class CreateOrderIn(_In):
    buyer_customer_id: ObjectId
    merchant_id: ObjectId
    amount: Amount
    currency: CurrencyCode
    fulfilment: str = Field(
        max_length=16, description="instant | auto_delivery | virtual | express | surface_mail"
    )
    title: str = Field(max_length=128)


class ExtendIn(_In):
    extra_s: int = Field(gt=0, le=365 * 86_400)


class RequestRefundIn(_In):
    amount: Amount
    reason: str = Field(max_length=200)


class AnswerRefundIn(_In):
    approve: bool


class ArbitrateIn(_In):
    decision: str = Field(max_length=16, description="refund | release | split")
    buyer_amount: Amount | None = None


class BindBillIn(_In):
    biller_code: str = Field(max_length=32)
    household_account: str = Field(max_length=32)
    alias: str = Field("", max_length=32)


class PayBillIn(_In):
    bill_id: str = Field(max_length=64)
    amount: Amount | None = None
    """What the customer was shown; refused with ``bill_amount_changed`` if the bill now
    asks another amount."""
    channel: ChannelField = None


# --- answers ----------------------------------------------------------------------------------


class CustomerOut(BaseModel):
    id: int
    phone: str
    display_name: str
    kyc_level: int
    frozen: bool
    created_at_ns: int


class CardOut(BaseModel):
    id: int
    customer_id: int
    bank_name: str
    last4: str


class CardsOut(BaseModel):
    data: list[CardOut]


class MerchantOut(BaseModel):
    id: int
    name: str
    category: str
    fee_bps: int
    frozen: bool
    qr: str


class BalanceOut(BaseModel):
    currency: str
    posted: int
    held: int
    available: int


class PaymentCodeOut(BaseModel):
    payment_code: str


class OperationOut(BaseModel):
    id: U128Text
    kind: str
    status: str
    currency: str
    amount: int
    fee: int
    payer_customer_id: int | None
    payee_customer_id: int | None
    merchant_id: int | None
    card_id: int | None
    note: str
    decision: str
    risk_score: int
    error_code: str | None
    hold_expires_at_ns: int | None
    order_id: str | None
    refund_id: str | None
    created_at_ns: int
    updated_at_ns: int


class OperationPage(BaseModel):
    data: list[OperationOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


class OrderOut(BaseModel):
    id: str
    buyer_customer_id: int
    merchant_id: int
    currency: str
    amount: int
    fee_bps: int
    fulfilment: str
    title: str
    status: str
    refunded: int
    in_escrow: int
    pay_by_ns: int
    paid_at_ns: int | None
    shipped_at_ns: int | None
    confirm_by_ns: int | None
    open_refund_id: str | None
    close_reason: str | None
    payment_operation_id: str | None
    release_operation_id: str | None


class RefundOut(BaseModel):
    id: str
    order_id: str
    amount: int
    reason: str
    status: str
    after_shipment: bool
    answer_by_ns: int
    escalate_by_ns: int | None
    outcome: str | None
    buyer_amount: int | None


class BindingOut(BaseModel):
    id: int
    customer_id: int
    biller_id: int
    household_account: str
    alias: str


class BillOut(BaseModel):
    bill_id: str
    household_account: str
    period: str
    amount: int
    currency: str


class BillQueryOut(BaseModel):
    bill: BillOut | None = Field(description="The bill due, or null when nothing is due.")


class ReceiptOut(BaseModel):
    receipt_no: str
    operation_id: str
    biller_code: str
    household_account: str
    bill_id: str
    period: str
    amount: int
    currency: str
    written_off_at_ns: int | None


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def customer_out(c: Customer) -> CustomerOut:
    return CustomerOut(
        id=c.id,
        phone=c.phone,
        display_name=c.display_name,
        kyc_level=int(c.kyc_level),
        frozen=c.frozen,
        created_at_ns=c.created_at_ns,
    )


def merchant_out(m: Merchant, qr: str) -> MerchantOut:
    return MerchantOut(
        id=m.id, name=m.name, category=m.category, fee_bps=m.fee_bps, frozen=m.frozen, qr=qr
    )


def operation_out(op: Operation) -> OperationOut:
    return OperationOut(
        id=str(op.id),
        kind=str(op.kind),
        status=str(op.status),
        currency=op.currency,
        amount=op.amount,
        fee=op.fee,
        payer_customer_id=op.payer_customer_id,
        payee_customer_id=op.payee_customer_id,
        merchant_id=op.merchant_id,
        card_id=op.card_id,
        note=op.note,
        decision=str(op.decision),
        risk_score=op.risk_score,
        error_code=op.error_code,
        hold_expires_at_ns=op.hold_expires_at_ns,
        order_id=_text(op.order_id),
        refund_id=_text(op.refund_id),
        created_at_ns=op.created_at_ns,
        updated_at_ns=op.updated_at_ns,
    )


def order_out(o: Order) -> OrderOut:
    return OrderOut(
        id=str(o.id),
        buyer_customer_id=o.buyer_customer_id,
        merchant_id=o.merchant_id,
        currency=o.currency,
        amount=o.amount,
        fee_bps=o.fee_bps,
        fulfilment=str(o.fulfilment),
        title=o.title,
        status=str(o.status),
        refunded=o.refunded,
        in_escrow=o.in_escrow,
        pay_by_ns=o.pay_by_ns,
        paid_at_ns=o.paid_at_ns,
        shipped_at_ns=o.shipped_at_ns,
        confirm_by_ns=o.confirm_by_ns,
        open_refund_id=_text(o.open_refund_id),
        close_reason=o.close_reason,
        payment_operation_id=_text(o.payment_operation_id),
        release_operation_id=_text(o.release_operation_id),
    )


def refund_out(r: Refund) -> RefundOut:
    return RefundOut(
        id=str(r.id),
        order_id=str(r.order_id),
        amount=r.amount,
        reason=r.reason,
        status=str(r.status),
        after_shipment=r.after_shipment,
        answer_by_ns=r.answer_by_ns,
        escalate_by_ns=r.escalate_by_ns,
        outcome=r.outcome,
        buyer_amount=r.buyer_amount,
    )


def binding_out(b: Binding) -> BindingOut:
    return BindingOut(
        id=b.id,
        customer_id=b.customer_id,
        biller_id=b.biller_id,
        household_account=b.household_account,
        alias=b.alias,
    )


def bill_out(b: Bill) -> BillOut:
    return BillOut(
        bill_id=b.bill_id,
        household_account=b.household_account,
        period=b.period,
        amount=b.amount,
        currency=b.currency,
    )


def receipt_out(r: Receipt) -> ReceiptOut:
    return ReceiptOut(
        receipt_no=r.receipt_no,
        operation_id=str(r.operation_id),
        biller_code=r.biller_code,
        household_account=r.household_account,
        bill_id=r.bill_id,
        period=r.period,
        amount=r.amount,
        currency=r.currency,
        written_off_at_ns=r.written_off_at_ns,
    )
