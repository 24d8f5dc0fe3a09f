"""Payments over HTTP: customers and their KYC, merchants, wallets, top-up and withdrawal,
P2P and merchant payments, operations, escrow orders with refunds, and bills.

Payments' tables carry no tenant. Every customer and merchant created here is owned by the
caller's tenant (``puhui.platform.PaymentOwners``), and every route first resolves each
customer, merchant, operation (through its parties) and order (through its buyer) it
touches: one owned by another tenant is answered exactly as one that does not exist (the
same code, status and message). Orders and P2P payments join parties of one tenant only.

A single payment (P2P, merchant payment) goes through ``PaymentCoalescer``: concurrent
requests share one batch — one risk call, one ledger call, two SQL commits.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPBearer

from puhui.errors import InvalidInputError
from puhui.payments import (
    Channel,
    CustomerNotFoundError,
    Merchant,
    MerchantNotFoundError,
    Operation,
    OperationNotFoundError,
    Order,
    OrderNotFoundError,
    Payee,
    PaymentCodeInvalidError,
    PaymentRequest,
    RefundNotFoundError,
    merchant_qr,
)
from puhui.payments.service import PAYMENT_CODE_INVALID
from puhui.platform import OwnedKind, Scope

from ._context import ApiContext
from ._guards import decode_cursor, encode_cursor, page_size
from ._ledger_routes import PROBLEM_RESPONSES
from ._payments_context import PaymentsContext
from ._payments_schemas import (
    AnswerRefundIn,
    ArbitrateIn,
    BalanceOut,
    BillQueryOut,
    BindBillIn,
    BindCardIn,
    BindingOut,
    CardMoneyIn,
    CardOut,
    CardsOut,
    ChannelIn,
    CollectIn,
    CreateOrderIn,
    CustomerOut,
    ExtendIn,
    MerchantOut,
    MerchantPaymentIn,
    OperationOut,
    OperationPage,
    OrderOut,
    PayBillIn,
    PaymentCodeOut,
    PayOrderIn,
    ReceiptOut,
    RefundOut,
    RegisterCustomerIn,
    RegisterMerchantIn,
    RequestRefundIn,
    TransferIn,
    VerificationIn,
    VerifyFullIn,
    VerifyIdentityIn,
    bill_out,
    binding_out,
    customer_out,
    merchant_out,
    operation_out,
    order_out,
    receipt_out,
    refund_out,
)
from ._problems import InvalidCursorError
from ._route import PlatformRoute, endpoint, principal_of
from ._schemas import U128Text

T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="An API key: `pk_<key id>_<secret>`.")

router = APIRouter(
    prefix="/v1/payments",
    tags=["payments"],
    route_class=PlatformRoute,
    responses={
        **PROBLEM_RESPONSES,
        404: {**PROBLEM_RESPONSES[409], "description": "No such object for this tenant"},
    },
    dependencies=[Depends(bearer)],
)

CurrencyPath = Annotated[str, Path(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")]
CustomerId = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
MerchantId = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
BindingId = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
Limit = Annotated[int | None, Query(ge=1, description="Page size (default 100, at most 1000).")]
Cursor = Annotated[str | None, Query(max_length=512, description="From the previous page.")]

# One answer for "does not exist" and "is another tenant's": no id in it, nothing to tell.
_NO_CUSTOMER = "no such customer"
_NO_MERCHANT = "no such merchant"
_NO_OPERATION = "no such operation"
_NO_ORDER = "no such order"
_NO_REFUND = "no such refund"


def _ctx(request: Request) -> PaymentsContext:
    context: ApiContext = request.app.state.puhui
    return context.payments


def _tenant(request: Request) -> int:
    return principal_of(request).tenant.id


def _channel(given: ChannelIn | None) -> Channel:
    """The service's ``Channel`` of a request body's ``channel`` (absent: nothing known)."""
    if given is None:
        return Channel()
    return Channel(
        device_id=given.device_id,
        ip=given.ip,
        latitude=given.latitude,
        longitude=given.longitude,
    )


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking service call, in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _service_key(request: Request) -> str:
    """The payments service's idempotency key: the request's ``Idempotency-Key`` (the
    platform checked it), else a fresh one (a request without a key is not retry-safe)."""
    return request.headers.get("idempotency-key") or f"api-{secrets.token_hex(16)}"


def _u128(text: str) -> int:
    value = int(text)
    if value >= 1 << 128:
        raise InvalidInputError("an id is at most 2**128 - 1")
    return value


# --- ownership -------------------------------------------------------------------------------


async def _owned(request: Request, kind: OwnedKind, object_id: int) -> bool:
    owners = _ctx(request).owners
    owner = owners.known(kind, object_id)
    if owner is None:
        owner = await _call(owners.owner, kind, object_id)
    return owner == _tenant(request)


async def _customer(request: Request, customer_id: int) -> int:
    if not await _owned(request, OwnedKind.CUSTOMER, customer_id):
        raise CustomerNotFoundError(_NO_CUSTOMER)
    return customer_id


async def _merchant(request: Request, merchant_id: int) -> int:
    if not await _owned(request, OwnedKind.MERCHANT, merchant_id):
        raise MerchantNotFoundError(_NO_MERCHANT)
    return merchant_id


async def _operation(request: Request, operation_id: str) -> Operation:
    payments = _ctx(request).payments
    try:
        op = await _call(payments.operation, _u128(operation_id))
    except OperationNotFoundError:
        raise OperationNotFoundError(_NO_OPERATION) from None
    parties = [
        (OwnedKind.CUSTOMER, op.payer_customer_id),
        (OwnedKind.CUSTOMER, op.payee_customer_id),
        (OwnedKind.MERCHANT, op.merchant_id),
    ]
    for kind, object_id in parties:
        if object_id is not None and await _owned(request, kind, object_id):
            return op
    raise OperationNotFoundError(_NO_OPERATION)


async def _order(request: Request, order_id: str) -> Order:
    checkout = _ctx(request).checkout
    try:
        order = await _call(checkout.order, _u128(order_id))
    except OrderNotFoundError:
        raise OrderNotFoundError(_NO_ORDER) from None
    if not await _owned(request, OwnedKind.CUSTOMER, order.buyer_customer_id):
        raise OrderNotFoundError(_NO_ORDER)
    return order


async def _refund_order(request: Request, refund_id: str) -> tuple[int, Order]:
    checkout = _ctx(request).checkout
    try:
        refund = await _call(checkout.refund, _u128(refund_id))
        order = await _order(request, str(refund.order_id))
    except (RefundNotFoundError, OrderNotFoundError):
        raise RefundNotFoundError(_NO_REFUND) from None
    return refund.id, order


async def _payee(request: Request, payee: Payee) -> int:
    if payee.customer_id is not None and payee.phone is None and payee.qr is None:
        # Owned means registered: no need to ask the service (the payment checks it again).
        return await _customer(request, payee.customer_id)
    payments = _ctx(request).payments
    try:  # a phone names a customer of this tenant only (phones are unique per tenant)
        payee_id = await _call(payments.resolve_payee, payee, namespace=_tenant(request))
    except CustomerNotFoundError:
        raise CustomerNotFoundError(_NO_CUSTOMER) from None
    return await _customer(request, payee_id)


def _merchant_out(merchant: Merchant) -> MerchantOut:
    return merchant_out(merchant, merchant_qr(merchant.id))


# --- customers -------------------------------------------------------------------------------


@router.post("/customers", response_model=CustomerOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def register_customer(body: RegisterCustomerIn, request: Request) -> CustomerOut:
    """Register a customer (KYC level 0), owned by the caller's tenant."""
    ctx, tenant = _ctx(request), _tenant(request)

    def owned(conn: sa.Connection, customer_id: int) -> None:
        ctx.owners.claim_in(conn, tenant, OwnedKind.CUSTOMER, customer_id)

    # Phones are unique per tenant (the tenant's number is the customer's namespace): a
    # phone registered by another tenant is nothing this tenant can tell. The owner row is
    # written in the customer's own transaction: no customer without an owner.
    customer = await _call(
        ctx.payments.register_customer,
        body.phone,
        body.display_name,
        namespace=tenant,
        on_created=owned,
    )
    ctx.owners.remember(tenant, OwnedKind.CUSTOMER, customer.id)
    return customer_out(customer)


@router.get("/customers/{customer_id}", response_model=CustomerOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def get_customer(customer_id: CustomerId, request: Request) -> CustomerOut:
    await _customer(request, customer_id)
    return customer_out(await _call(_ctx(request).payments.customer, customer_id))


@router.post("/customers/{customer_id}/identity", response_model=CustomerOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def verify_identity(
    customer_id: CustomerId, body: VerifyIdentityIn, request: Request
) -> CustomerOut:
    """KYC level 1: name and national id checked (the id is kept only hashed)."""
    await _customer(request, customer_id)
    payments = _ctx(request).payments
    return customer_out(await _call(payments.verify_identity, customer_id, body.national_id))


@router.post("/customers/{customer_id}/full-verification", response_model=CustomerOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def verify_full(customer_id: CustomerId, body: VerifyFullIn, request: Request) -> CustomerOut:
    """KYC level 2: identity verified, a card bound and a biometric check passed."""
    await _customer(request, customer_id)
    payments = _ctx(request).payments
    customer = await _call(
        payments.verify_full, customer_id, biometric_passed=body.biometric_passed
    )
    return customer_out(customer)


@router.post("/customers/{customer_id}/cards", response_model=CardOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def bind_card(customer_id: CustomerId, body: BindCardIn, request: Request) -> CardOut:
    """Bind a bank card by the bank's token (the card number never reaches Puhui)."""
    await _customer(request, customer_id)
    payments = _ctx(request).payments
    card = await _call(payments.bind_card, customer_id, body.card_token, body.bank_name, body.last4)
    return CardOut(
        id=card.id, customer_id=card.customer_id, bank_name=card.bank_name, last4=card.last4
    )


@router.get("/customers/{customer_id}/cards", response_model=CardsOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def list_cards(customer_id: CustomerId, request: Request) -> CardsOut:
    await _customer(request, customer_id)
    cards = await _call(_ctx(request).payments.cards, customer_id)
    return CardsOut(
        data=[
            CardOut(id=c.id, customer_id=c.customer_id, bank_name=c.bank_name, last4=c.last4)
            for c in cards
        ]
    )


@router.get("/customers/{customer_id}/wallets/{currency}", response_model=BalanceOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def wallet_balance(
    customer_id: CustomerId, currency: CurrencyPath, request: Request
) -> BalanceOut:
    """The wallet's money: posted, held (pending debits) and available."""
    await _customer(request, customer_id)
    balance = await _call(_ctx(request).payments.balance, customer_id, currency)
    return BalanceOut(
        currency=currency, posted=balance.posted, held=balance.held, available=balance.available
    )


@router.post(
    "/customers/{customer_id}/payment-codes", response_model=PaymentCodeOut, status_code=201
)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def issue_payment_code(customer_id: CustomerId, request: Request) -> PaymentCodeOut:
    """A one-time code the customer shows a merchant, who collects with it."""
    await _customer(request, customer_id)
    code = await _call(_ctx(request).payments.issue_payment_code, customer_id)
    return PaymentCodeOut(payment_code=code)


@router.post("/customers/{customer_id}/top-ups", response_model=OperationOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def top_up(customer_id: CustomerId, body: CardMoneyIn, request: Request) -> OperationOut:
    """Charge a bound card and credit the wallet once the bank confirms."""
    await _customer(request, customer_id)
    op = await _call(
        _ctx(request).payments.top_up,
        customer_id,
        body.card_id,
        body.amount,
        body.currency,
        key=_service_key(request),
        channel=_channel(body.channel),
    )
    return operation_out(op)


@router.post("/customers/{customer_id}/withdrawals", response_model=OperationOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def withdraw(customer_id: CustomerId, body: CardMoneyIn, request: Request) -> OperationOut:
    """Hold the amount, pay it out to a bound card, then post (or void) the hold."""
    await _customer(request, customer_id)
    op = await _call(
        _ctx(request).payments.withdraw,
        customer_id,
        body.card_id,
        body.amount,
        body.currency,
        key=_service_key(request),
        channel=_channel(body.channel),
    )
    return operation_out(op)


@router.post("/customers/{customer_id}/transfers", response_model=OperationOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def transfer(customer_id: CustomerId, body: TransferIn, request: Request) -> OperationOut:
    """P2P: to another customer of this tenant, by customer id, phone or QR payload."""
    await _customer(request, customer_id)
    given = Payee(customer_id=body.payee.customer_id, phone=body.payee.phone, qr=body.payee.qr)
    payee_id = await _payee(request, given)
    payment = PaymentRequest(
        payer_id=customer_id,
        amount=body.amount,
        currency=body.currency,
        key=_service_key(request),
        payee=Payee(customer_id=payee_id),
        note=body.note,
        channel=_channel(body.channel),
    )
    return operation_out(await _ctx(request).pay(payment))


@router.post(
    "/customers/{customer_id}/merchant-payments", response_model=OperationOut, status_code=201
)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def pay_merchant(
    customer_id: CustomerId, body: MerchantPaymentIn, request: Request
) -> OperationOut:
    """The customer scans a merchant's QR code and pays (the fee is taken at settlement)."""
    await _customer(request, customer_id)
    ctx = _ctx(request)
    try:
        merchant_id = ctx.payments.merchant_of_qr(body.merchant_qr)
    except MerchantNotFoundError:
        raise MerchantNotFoundError(_NO_MERCHANT) from None
    await _merchant(request, merchant_id)
    payment = PaymentRequest(
        payer_id=customer_id,
        amount=body.amount,
        currency=body.currency,
        key=_service_key(request),
        merchant_qr=merchant_qr(merchant_id),
        channel=_channel(body.channel),
    )
    return operation_out(await ctx.pay(payment))


@router.get("/customers/{customer_id}/operations", response_model=OperationPage)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def list_operations(
    customer_id: CustomerId, request: Request, limit: Limit = None, cursor: Cursor = None
) -> OperationPage:
    """The customer's operations (paying or paid), oldest first, a page at a time."""
    await _customer(request, customer_id)
    page = page_size(request.app.state.puhui.options, limit)
    after: tuple[int, int] | None = None
    if cursor is not None:
        position = decode_cursor("customer_operations", cursor)
        at_ns, last = position.get("t"), position.get("i")
        # ``isdigit`` alone takes "²", which ``int`` refuses; ids are 128-bit.
        if (
            not isinstance(at_ns, int)
            or not isinstance(last, str)
            or not (last.isascii() and last.isdigit() and len(last) <= 39)
            or int(last) >> 128
        ):
            raise InvalidCursorError("malformed cursor")
        after = (at_ns, int(last))
    ops = await _call(
        _ctx(request).payments.customer_operations, customer_id, after=after, limit=page
    )
    next_cursor = None
    if len(ops) == page:
        next_cursor = encode_cursor(
            "customer_operations", {"t": ops[-1].created_at_ns, "i": str(ops[-1].id)}
        )
    return OperationPage(data=[operation_out(op) for op in ops], next_cursor=next_cursor)


# --- merchants -------------------------------------------------------------------------------


@router.post("/merchants", response_model=MerchantOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def register_merchant(body: RegisterMerchantIn, request: Request) -> MerchantOut:
    """Register a merchant, owned by the caller's tenant; the answer carries its QR payload."""
    ctx, tenant = _ctx(request), _tenant(request)

    def owned(conn: sa.Connection, merchant_id: int) -> None:
        ctx.owners.claim_in(conn, tenant, OwnedKind.MERCHANT, merchant_id)

    merchant = await _call(
        ctx.payments.register_merchant,
        body.name,
        body.category,
        body.fee_bps,
        body.settlement_card_token,
        on_created=owned,
    )
    ctx.owners.remember(tenant, OwnedKind.MERCHANT, merchant.id)
    return _merchant_out(merchant)


@router.get("/merchants/{merchant_id}", response_model=MerchantOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def get_merchant(merchant_id: MerchantId, request: Request) -> MerchantOut:
    await _merchant(request, merchant_id)
    return _merchant_out(await _call(_ctx(request).payments.merchant, merchant_id))


@router.get("/merchants/{merchant_id}/balances/{currency}", response_model=BalanceOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def merchant_balance(
    merchant_id: MerchantId, currency: CurrencyPath, request: Request
) -> BalanceOut:
    """What the platform owes the merchant until settlement."""
    await _merchant(request, merchant_id)
    balance = await _call(_ctx(request).payments.merchant_balance, merchant_id, currency)
    return BalanceOut(
        currency=currency, posted=balance.posted, held=balance.held, available=balance.available
    )


@router.post("/merchants/{merchant_id}/collections", response_model=OperationOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def collect(merchant_id: MerchantId, body: CollectIn, request: Request) -> OperationOut:
    """The merchant scans a customer's payment code and collects the amount (a customer of
    this tenant: another tenant's code is answered as an invalid one)."""
    await _merchant(request, merchant_id)
    payments = _ctx(request).payments
    customer_id = await _call(payments.payment_code_customer, body.payment_code)
    if not await _owned(request, OwnedKind.CUSTOMER, customer_id):
        raise PaymentCodeInvalidError(PAYMENT_CODE_INVALID)
    op = await _call(
        payments.collect,
        merchant_id,
        body.payment_code,
        body.amount,
        body.currency,
        key=_service_key(request),
        channel=_channel(body.channel),
    )
    return operation_out(op)


# --- operations ------------------------------------------------------------------------------

OperationIdPath = Annotated[U128Text, Path()]


@router.get("/operations/{operation_id}", response_model=OperationOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def get_operation(operation_id: OperationIdPath, request: Request) -> OperationOut:
    return operation_out(await _operation(request, operation_id))


@router.post("/operations/{operation_id}/verification", response_model=OperationOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def verify_challenge(
    operation_id: OperationIdPath, body: VerificationIn, request: Request
) -> OperationOut:
    """The customer's step-up verification of a challenged payment: passed releases the held
    money, failed returns it."""
    op = await _operation(request, operation_id)
    payments = _ctx(request).payments
    return operation_out(
        await _call(
            payments.verify_challenge, op.id, passed=body.passed, channel=_channel(body.channel)
        )
    )


# --- escrow orders (担保交易) ------------------------------------------------------------------

OrderIdPath = Annotated[U128Text, Path()]
RefundIdPath = Annotated[U128Text, Path()]


@router.post("/orders", response_model=OrderOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def create_order(body: CreateOrderIn, request: Request) -> OrderOut:
    """An order from a buyer to a merchant, both of this tenant; nothing moves until paid."""
    await _customer(request, body.buyer_customer_id)
    await _merchant(request, body.merchant_id)
    order = await _call(
        _ctx(request).checkout.create_order,
        body.buyer_customer_id,
        body.merchant_id,
        body.amount,
        body.currency,
        body.fulfilment,
        body.title,
        key=_service_key(request),
    )
    return order_out(order)


@router.get("/orders/{order_id}", response_model=OrderOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def get_order(order_id: OrderIdPath, request: Request) -> OrderOut:
    return order_out(await _order(request, order_id))


@router.post("/orders/{order_id}/pay", response_model=OperationOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def pay_order(
    order_id: OrderIdPath, request: Request, body: PayOrderIn | None = None
) -> OperationOut:
    """The buyer pays: the money is held in escrow. The body is optional (its ``channel``)."""
    order = await _order(request, order_id)
    op = await _call(
        _ctx(request).checkout.pay_order,
        order.id,
        order.buyer_customer_id,
        key=_service_key(request),
        channel=_channel(body.channel if body is not None else None),
    )
    return operation_out(op)


@router.post("/orders/{order_id}/ship", response_model=OrderOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def ship_order(order_id: OrderIdPath, request: Request) -> OrderOut:
    """The seller ships: the auto-confirm timer starts."""
    order = await _order(request, order_id)
    checkout = _ctx(request).checkout
    return order_out(await _call(checkout.ship_order, order.id, order.merchant_id))


@router.post("/orders/{order_id}/extend", response_model=OrderOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def extend_confirmation(order_id: OrderIdPath, body: ExtendIn, request: Request) -> OrderOut:
    """The seller pushes the auto-confirm time back by ``extra_s`` seconds."""
    order = await _order(request, order_id)
    checkout = _ctx(request).checkout
    return order_out(
        await _call(checkout.extend_confirmation, order.id, order.merchant_id, body.extra_s)
    )


@router.post("/orders/{order_id}/confirm", response_model=OrderOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def confirm_receipt(order_id: OrderIdPath, request: Request) -> OrderOut:
    """The buyer confirms receipt: escrow is released to the seller (less the fee)."""
    order = await _order(request, order_id)
    checkout = _ctx(request).checkout
    return order_out(await _call(checkout.confirm_receipt, order.id, order.buyer_customer_id))


@router.post("/orders/{order_id}/cancel", response_model=OrderOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def cancel_order(order_id: OrderIdPath, request: Request) -> OrderOut:
    """The buyer cancels an unpaid order."""
    order = await _order(request, order_id)
    checkout = _ctx(request).checkout
    return order_out(await _call(checkout.cancel_order, order.id, order.buyer_customer_id))


@router.post("/orders/{order_id}/refunds", response_model=RefundOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def request_refund(
    order_id: OrderIdPath, body: RequestRefundIn, request: Request
) -> RefundOut:
    """The buyer asks for a full or partial refund."""
    order = await _order(request, order_id)
    refund = await _call(
        _ctx(request).checkout.request_refund,
        order.id,
        order.buyer_customer_id,
        body.amount,
        body.reason,
        key=_service_key(request),
    )
    return refund_out(refund)


@router.get("/refunds/{refund_id}", response_model=RefundOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def get_refund(refund_id: RefundIdPath, request: Request) -> RefundOut:
    found, _ = await _refund_order(request, refund_id)
    return refund_out(await _call(_ctx(request).checkout.refund, found))


@router.post("/refunds/{refund_id}/answer", response_model=RefundOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def answer_refund(
    refund_id: RefundIdPath, body: AnswerRefundIn, request: Request
) -> RefundOut:
    """The seller approves (the money goes back) or rejects the refund."""
    found, order = await _refund_order(request, refund_id)
    checkout = _ctx(request).checkout
    return refund_out(
        await _call(checkout.answer_refund, found, order.merchant_id, approve=body.approve)
    )


@router.post("/refunds/{refund_id}/escalate", response_model=RefundOut)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def escalate_refund(refund_id: RefundIdPath, request: Request) -> RefundOut:
    """The buyer takes a rejected refund to platform arbitration."""
    found, order = await _refund_order(request, refund_id)
    checkout = _ctx(request).checkout
    return refund_out(await _call(checkout.escalate_refund, found, order.buyer_customer_id))


@router.post("/refunds/{refund_id}/arbitration", response_model=RefundOut)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True)
async def arbitrate(refund_id: RefundIdPath, body: ArbitrateIn, request: Request) -> RefundOut:
    """A platform operator decides an escalated dispute (``platform:admin`` only; operators
    see every tenant's refunds)."""
    checkout = _ctx(request).checkout
    try:
        found = await _call(checkout.refund, _u128(refund_id))
    except RefundNotFoundError:
        raise RefundNotFoundError(_NO_REFUND) from None
    refund = await _call(
        checkout.arbitrate, found.id, body.decision, buyer_amount=body.buyer_amount
    )
    return refund_out(refund)


# --- bills (水电煤) ----------------------------------------------------------------------------


@router.post("/customers/{customer_id}/bill-bindings", response_model=BindingOut, status_code=201)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def bind_bill(customer_id: CustomerId, body: BindBillIn, request: Request) -> BindingOut:
    """Bind a household account number (户号) of a biller to the customer (idempotent)."""
    await _customer(request, customer_id)
    binding = await _call(
        _ctx(request).bills.bind,
        customer_id,
        body.biller_code,
        body.household_account,
        body.alias,
    )
    return binding_out(binding)


@router.get("/customers/{customer_id}/bill-bindings/{binding_id}/bill", response_model=BillQueryOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def query_bill(
    customer_id: CustomerId, binding_id: BindingId, request: Request
) -> BillQueryOut:
    """The household's bill due now, from the biller (null when nothing is due)."""
    await _customer(request, customer_id)
    bill = await _call(_ctx(request).bills.query_bill, customer_id, binding_id)
    return BillQueryOut(bill=None if bill is None else bill_out(bill))


@router.post(
    "/customers/{customer_id}/bill-bindings/{binding_id}/payments",
    response_model=OperationOut,
    status_code=201,
)
@endpoint(Scope.PAYMENTS_WRITE, changes_state=True)
async def pay_bill(
    customer_id: CustomerId, binding_id: BindingId, body: PayBillIn, request: Request
) -> OperationOut:
    """Pay the bill due (its ``bill_id`` as the query returned it)."""
    await _customer(request, customer_id)
    op = await _call(
        _ctx(request).bills.pay,
        customer_id,
        binding_id,
        body.bill_id,
        key=_service_key(request),
        amount=body.amount,
        channel=_channel(body.channel),
    )
    return operation_out(op)


@router.get("/operations/{operation_id}/receipt", response_model=ReceiptOut)
@endpoint(Scope.PAYMENTS_READ, changes_state=False)
async def bill_receipt(operation_id: OperationIdPath, request: Request) -> ReceiptOut:
    """The e-receipt of a completed bill payment."""
    op = await _operation(request, operation_id)
    return receipt_out(await _call(_ctx(request).bills.receipt, op.id))
