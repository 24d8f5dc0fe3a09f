"""The payments service's rules and unhappy paths: every refusal names its error and moves
nothing; every operation that fails after it was recorded ends final with its money back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from puhui import risk
from puhui.errors import PuhuiError
from puhui.money import UnknownCurrencyError
from puhui.payments import (
    AccountCode,
    AccountFrozenError,
    AmountOutOfRangeError,
    Balance,
    BankResult,
    BankStatus,
    CardNotFoundError,
    CustomerNotFoundError,
    IdempotencyKeyReusedError,
    IdentityTakenError,
    InsufficientFundsError,
    InvalidPayloadError,
    InvalidPhoneError,
    KycLevel,
    KycLevelError,
    KycLimitExceededError,
    MerchantNotFoundError,
    Operation,
    OperationNotFoundError,
    OperationStateError,
    OperationStatus,
    Payee,
    PaymentCodeInvalidError,
    PhoneTakenError,
    SamePartyError,
    customer_qr,
    merchant_qr,
)
from puhui.payments.model import (
    AMOUNT_MAX,
    OperationKind,
    merchant_payment_fingerprint,
    p2p_fingerprint,
    request_fingerprint,
)
from puhui.store import payments as tables

from .conftest import World

S = OperationStatus
CNY = "CNY"
SECOND_NS = 10**9
DAY_NS = 86_400 * SECOND_NS
UNKNOWN_ID = 999_999
UNFINISHED = (S.PENDING, S.AWAITING_BANK, S.CHALLENGED)


# --- helpers (copied from test_flows, plus the books) -------------------------------------------


def _customer(world: World, phone: str, *, level: KycLevel = KycLevel.FULL) -> int:
    p = world.payments
    c = p.register_customer(phone, f"Customer {phone[-4:]}")
    if level >= KycLevel.BASIC:
        p.verify_identity(c.id, f"ID{phone}")
    card = p.bind_card(c.id, f"tok-{phone}", "Rural Bank", phone[-4:])
    if level >= KycLevel.FULL:
        p.verify_full(c.id, biometric_passed=True)
    assert card.customer_id == c.id
    return c.id


def _card(world: World, customer_id: int) -> int:
    return world.payments.cards(customer_id)[0].id


def _fund(world: World, customer_id: int, amount: int, key: str = "fund") -> None:
    op = world.payments.top_up(customer_id, _card(world, customer_id), amount, CNY, key=key)
    assert op.status is S.COMPLETED, op


def _shop(world: World) -> int:
    return world.payments.register_merchant("Noodle Shop", "food", 60, "tok-shop").id


def _ref(op: Operation) -> str:
    return f"{op.id:032x}"


def _freeze_merchant(world: World, merchant_id: int) -> None:
    assert world.payments.set_merchant_frozen(merchant_id, True).frozen


def _outflow(world: World, customer_id: int) -> int:
    """The customer's reserved daily outflow, summed over all days (CNY, minor units)."""
    d = tables.daily_outflow
    with world.engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(d.c.amount), 0)).where(
                d.c.customer_id == customer_id
            )
        ).scalar_one()
    return int(total)


def _unfinished(world: World) -> list[Operation]:
    return [op for status in UNFINISHED for op in world.payments.operations(status=status)]


def _books(world: World) -> dict[str, Any]:
    """Everything a refused request must leave as it was: every wallet, merchant and platform
    balance, the operations recorded, the daily outflow reserved and the bank's sends."""
    p = world.payments
    with world.engine.connect() as conn:
        customer_ids = conn.execute(sa.select(tables.customers.c.id)).scalars().all()
        merchant_ids = conn.execute(sa.select(tables.merchants.c.id)).scalars().all()
        outflow = conn.execute(sa.select(tables.daily_outflow)).all()
    return {
        "wallets": {c: p.balance(c, CNY) for c in customer_ids},
        "merchants": {m: p.merchant_balance(m, CNY) for m in merchant_ids},
        "platform": {code: p.platform_balance(code, CNY) for code in AccountCode},
        "operations": sorted(p.operations(limit=10_000), key=lambda op: op.id),
        "outflow": sorted(tuple(row) for row in outflow),
        "bank_sends": dict(world.bank.sends),
    }


@contextlib.contextmanager
def _refused(
    world: World, error: type[PuhuiError], code: str | None = None, **details: object
) -> Iterator[None]:
    """The block raises exactly ``error`` (with ``code`` and ``details``, if given) and leaves
    the books as they were: no money moved, nothing recorded, nothing sent to the bank."""
    before = _books(world)
    with pytest.raises(error) as caught:
        yield
    assert type(caught.value) is error, caught.value
    if code is not None:
        assert caught.value.code == code
    for name, value in details.items():
        assert caught.value.details[name] == value, caught.value.details
    assert _books(world) == before


# --- invalid input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [0, -1, -100_00, 1.5, 100.0, True, False, "100", None, AMOUNT_MAX + 1],
    ids=repr,
)
def test_an_amount_must_be_a_positive_int_up_to_amount_max(world: World, amount: Any) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.top_up(alice, card, amount, CNY, key="k"),
        lambda: p.withdraw(alice, card, amount, CNY, key="k"),
        lambda: p.transfer(alice, Payee(customer_id=bob), amount, CNY, key="k"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), amount, CNY, key="k"),
        lambda: p.collect(shop, code, amount, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, AmountOutOfRangeError, "amount_out_of_range"):
            call()
    # The refused collect did not use up the customer's payment code.
    assert p.collect(shop, code, 1_00, CNY, key="k").status is S.COMPLETED


def test_amount_max_is_valid_input_and_stopped_by_the_kyc_limit(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    with _refused(world, KycLimitExceededError, limit="single_payment"):
        p.transfer(alice, Payee(customer_id=bob), AMOUNT_MAX, CNY, key="k")
    with _refused(world, KycLimitExceededError, limit="wallet_balance"):
        p.top_up(alice, _card(world, alice), AMOUNT_MAX, CNY, key="k")


@pytest.mark.parametrize("currency_code", ["XXX", "cny", "", "CNYX"])
def test_an_unknown_currency_is_refused(world: World, currency_code: str) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.top_up(alice, card, 10_00, currency_code, key="k"),
        lambda: p.withdraw(alice, card, 10_00, currency_code, key="k"),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, currency_code, key="k"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 10_00, currency_code, key="k"),
        lambda: p.collect(shop, code, 10_00, currency_code, key="k"),
        lambda: p.balance(alice, currency_code),
        lambda: p.merchant_balance(shop, currency_code),
        lambda: p.open_wallet(alice, currency_code),
    ]
    for call in calls:
        with _refused(world, UnknownCurrencyError, "unknown_currency"):
            call()


def test_a_note_longer_than_140_chars_is_refused(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    with _refused(world, InvalidPayloadError, "invalid_payload"):
        p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k", note="x" * 141)
    with _refused(world, InvalidPayloadError):
        p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k", note=None)  # type: ignore[arg-type]
    longest = p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k", note="好" * 140)
    assert longest.status is S.COMPLETED and longest.note == "好" * 140


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256-chars"])
def test_an_idempotency_key_must_be_1_to_255_chars(world: World, key: str) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.top_up(alice, card, 10_00, CNY, key=key),
        lambda: p.withdraw(alice, card, 10_00, CNY, key=key),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key=key),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 10_00, CNY, key=key),
        lambda: p.collect(shop, code, 10_00, CNY, key=key),
    ]
    for call in calls:
        with _refused(world, InvalidPayloadError, "invalid_payload"):
            call()
    longest = p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k" * 255)
    assert longest.status is S.COMPLETED


@pytest.mark.parametrize(
    "phone",
    [
        "",
        "12345",
        "1234567890123456",
        "138-0000-000a",
        "+",
        "++8613800000001",
        "\uff11\uff13\uff1800000001",  # full-width digits
    ],
)
def test_a_malformed_phone_is_refused(world: World, phone: str) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    with _refused(world, InvalidPhoneError, "invalid_phone"):
        p.register_customer(phone, "Mallory")
    with _refused(world, InvalidPhoneError, "invalid_phone"):
        p.transfer(alice, Payee(phone=phone), 1_00, CNY, key="k")


MALFORMED_QR = [
    "",
    "puhui://",
    "puhui://m/",
    "puhui://m/0",
    "puhui://m/01",
    "puhui://m/-1",
    "puhui://m/1a",
    "puhui://m/abc",
    "puhui://m/1/",
    "puhui://m/1 ",
    " puhui://m/1",
    "puhui://m/1\n",
    "puhui://x/1",
    "PUHUI://m/1",
    "http://m/1",
    "puhui:/m/1",
    "puhui://m/9223372036854775808",  # one above the largest id
    "puhui://m/" + "1" * 600,
]


def test_malformed_qr_payloads_are_refused(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _customer(world, "13800000002")
    _shop(world)
    _fund(world, alice, 100_00)
    for payload in MALFORMED_QR:
        with _refused(world, InvalidPayloadError, "invalid_payload"):
            p.pay_merchant(alice, payload, 1_00, CNY, key="k")
        as_customer = payload.replace("/m/", "/c/")
        with _refused(world, InvalidPayloadError, "invalid_payload"):
            p.transfer(alice, Payee(qr=as_customer), 1_00, CNY, key="k")


def test_a_customer_qr_is_not_a_merchant_to_pay(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _shop(world)
    _fund(world, alice, 100_00)
    with _refused(world, MerchantNotFoundError, "merchant_not_found"):
        p.pay_merchant(alice, customer_qr(bob), 1_00, CNY, key="k")


def test_a_merchant_qr_is_not_a_p2p_payee(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    with _refused(world, CustomerNotFoundError, "customer_not_found"):
        p.transfer(alice, Payee(qr=merchant_qr(shop)), 1_00, CNY, key="k")


def test_a_payee_names_exactly_one_party(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    payees = [
        Payee(),
        Payee(customer_id=bob, phone="13800000002"),
        Payee(customer_id=bob, qr=customer_qr(bob)),
        Payee(phone="13800000002", qr=customer_qr(bob)),
        Payee(customer_id=bob, phone="13800000002", qr=customer_qr(bob)),
    ]
    for payee in payees:
        with _refused(world, InvalidPayloadError, "invalid_payload"):
            p.transfer(alice, payee, 1_00, CNY, key="k")


@pytest.mark.parametrize("fee_bps", [-1, 10_001, 1.5, True, "60", None])
def test_a_merchant_fee_is_an_int_from_0_to_10000_bps(world: World, fee_bps: Any) -> None:
    p = world.payments
    with _refused(world, InvalidPayloadError, "invalid_payload"):
        p.register_merchant("Noodle Shop", "food", fee_bps, "tok-shop")
    assert p.register_merchant("Free", "food", 0, "tok-a").fee_bps == 0
    assert p.register_merchant("Dear", "food", 10_000, "tok-b").fee_bps == 10_000


@pytest.mark.parametrize(
    "last4", ["", "123", "12345", "12a4", "12 4", "\u0661\u0662\u0663\u0664", 1234, None]
)
def test_a_card_last4_is_four_ascii_digits(world: World, last4: Any) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    with _refused(world, InvalidPayloadError, "invalid_payload"):
        p.bind_card(alice, "tok-a", "Rural Bank", last4)
    assert p.cards(alice) == []


# --- parties ------------------------------------------------------------------------------------


def test_a_phone_number_has_one_customer(world: World) -> None:
    p = world.payments
    first = p.register_customer("13800000001", "Alice")
    for same in ("13800000001", "138 0000 0001", "138-0000-0001"):
        with _refused(world, PhoneTakenError, "phone_taken"):
            p.register_customer(same, "Mallory")
    assert p.customer(first.id).display_name == "Alice"


def test_a_national_id_belongs_to_one_customer(world: World) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    mallory = p.register_customer("13800000002", "Mallory").id
    p.verify_identity(alice, "110101199003074514")
    with _refused(world, IdentityTakenError, "identity_taken"):
        p.verify_identity(mallory, "110101199003074514")
    assert p.customer(mallory).kyc_level is KycLevel.UNVERIFIED
    # Verifying the same id again is a no-op; another id for a verified customer is refused.
    assert p.verify_identity(alice, "110101199003074514").kyc_level is KycLevel.BASIC
    with _refused(world, KycLevelError, "kyc_level_invalid"):
        p.verify_identity(alice, "110101199003079999")


def test_full_verification_needs_level_one_first(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    with _refused(world, KycLevelError, "kyc_level_invalid"):
        p.verify_full(alice, biometric_passed=True)
    assert p.customer(alice).kyc_level is KycLevel.UNVERIFIED


def test_full_verification_needs_a_bound_card(world: World) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    p.verify_identity(alice, "ID1")
    with _refused(world, KycLevelError, "kyc_level_invalid"):
        p.verify_full(alice, biometric_passed=True)
    assert p.customer(alice).kyc_level is KycLevel.BASIC


def test_full_verification_needs_a_passed_biometric_check(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.BASIC)
    with _refused(world, KycLevelError, "kyc_level_invalid"):
        p.verify_full(alice, biometric_passed=False)
    assert p.customer(alice).kyc_level is KycLevel.BASIC


def test_an_unknown_customer_is_not_found(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.customer(UNKNOWN_ID),
        lambda: p.balance(UNKNOWN_ID, CNY),
        lambda: p.verify_identity(UNKNOWN_ID, "ID"),
        lambda: p.verify_full(UNKNOWN_ID, biometric_passed=True),
        lambda: p.set_frozen(UNKNOWN_ID, True),
        lambda: p.bind_card(UNKNOWN_ID, "tok", "Rural Bank", "1234"),
        lambda: p.open_wallet(UNKNOWN_ID, CNY),
        lambda: p.issue_payment_code(UNKNOWN_ID),
        lambda: p.top_up(UNKNOWN_ID, card, 1_00, CNY, key="k"),
        lambda: p.withdraw(UNKNOWN_ID, card, 1_00, CNY, key="k"),
        lambda: p.transfer(UNKNOWN_ID, Payee(customer_id=alice), 1_00, CNY, key="k"),
        lambda: p.pay_merchant(UNKNOWN_ID, merchant_qr(shop), 1_00, CNY, key="k"),
        lambda: p.transfer(alice, Payee(customer_id=UNKNOWN_ID), 1_00, CNY, key="k"),
        lambda: p.transfer(alice, Payee(phone="13900000000"), 1_00, CNY, key="k"),
        lambda: p.transfer(alice, Payee(qr=customer_qr(UNKNOWN_ID)), 1_00, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, CustomerNotFoundError, "customer_not_found"):
            call()


def test_an_unknown_merchant_is_not_found(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    calls: list[Callable[[], object]] = [
        lambda: p.merchant(UNKNOWN_ID),
        lambda: p.merchant_balance(UNKNOWN_ID, CNY),
        lambda: p.pay_merchant(alice, merchant_qr(UNKNOWN_ID), 1_00, CNY, key="k"),
        lambda: p.collect(UNKNOWN_ID, code, 1_00, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, MerchantNotFoundError, "merchant_not_found"):
            call()


def test_a_card_must_be_bound_to_the_customer(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    for card in (UNKNOWN_ID, _card(world, bob)):  # unknown, and Bob's card
        with _refused(world, CardNotFoundError, "card_not_found"):
            p.top_up(alice, card, 10_00, CNY, key="k")
        with _refused(world, CardNotFoundError, "card_not_found"):
            p.withdraw(alice, card, 10_00, CNY, key="k")


def test_a_frozen_customer_cannot_pay(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)  # issued before the freeze
    assert p.set_frozen(alice, True).frozen
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 1_00, CNY, key="k"),
        lambda: p.withdraw(alice, card, 1_00, CNY, key="k"),
        lambda: p.top_up(alice, card, 1_00, CNY, key="k"),
        lambda: p.issue_payment_code(alice),
    ]
    for call in calls:
        with _refused(world, AccountFrozenError, "account_frozen"):
            call()
    with _refused(world, AccountFrozenError, "account_frozen"):
        p.collect(shop, code, 1_00, CNY, key="k")
    p.set_frozen(alice, False)
    assert p.transfer(alice, Payee(customer_id=bob), 1_00, CNY, key="k").status is S.COMPLETED


def test_a_frozen_customer_cannot_be_paid(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    p.set_frozen(bob, True)
    for payee in (Payee(customer_id=bob), Payee(phone="13800000002"), Payee(qr=customer_qr(bob))):
        with _refused(world, AccountFrozenError, "account_frozen"):
            p.transfer(alice, payee, 1_00, CNY, key="k")


def test_a_frozen_merchant_cannot_be_paid(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    _freeze_merchant(world, shop)
    with _refused(world, AccountFrozenError, "account_frozen"):
        p.pay_merchant(alice, merchant_qr(shop), 1_00, CNY, key="k")
    with _refused(world, AccountFrozenError, "account_frozen"):
        p.collect(shop, code, 1_00, CNY, key="k")


def test_a_customer_cannot_pay_themselves(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    for me in (
        Payee(customer_id=alice),
        Payee(phone="138 0000 0001"),
        Payee(qr=customer_qr(alice)),
    ):
        with _refused(world, SamePartyError, "same_party"):
            p.transfer(alice, me, 1_00, CNY, key="k")


def test_binding_the_same_card_again_returns_it(world: World) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    first = p.bind_card(alice, "tok-a", "Rural Bank", "1234")
    assert p.bind_card(alice, "tok-a", "Rural Bank", "1234") == first
    assert p.cards(alice) == [first]


def test_binding_a_second_card_with_the_same_last4_returns_the_new_card(world: World) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    first = p.bind_card(alice, "tok-a", "Rural Bank", "1234")
    second = p.bind_card(alice, "tok-b", "City Bank", "1234")
    assert [c.id for c in p.cards(alice)] == [first.id, second.id]
    assert second.id != first.id and second.bank_name == "City Bank"


def test_rebinding_a_card_with_another_last4_is_answered(world: World) -> None:
    p = world.payments
    alice = p.register_customer("13800000001", "Alice").id
    first = p.bind_card(alice, "tok-a", "Rural Bank", "1234")
    # Either the bound card comes back or a PuhuiError says why not; nothing else.
    with contextlib.suppress(PuhuiError):
        assert p.bind_card(alice, "tok-a", "Rural Bank", "9999") == first
    assert p.cards(alice) == [first]


# --- KYC limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "limit"),
    [(KycLevel.UNVERIFIED, 200_00), (KycLevel.BASIC, 5_000_00), (KycLevel.FULL, 50_000_00)],
)
def test_the_single_payment_limit_of_each_kyc_level(
    world: World, level: KycLevel, limit: int
) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=level)
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, limit + 1)
    code = p.issue_payment_code(alice)
    card = _card(world, alice)
    calls: list[Callable[[], object]] = [
        lambda: p.transfer(alice, Payee(customer_id=bob), limit + 1, CNY, key="k"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), limit + 1, CNY, key="k"),
        lambda: p.withdraw(alice, card, limit + 1, CNY, key="k"),
        lambda: p.collect(shop, code, limit + 1, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, KycLimitExceededError, "kyc_limit_exceeded", limit="single_payment"):
            call()
    assert p.transfer(alice, Payee(customer_id=bob), limit, CNY, key="k").status is S.COMPLETED
    assert p.balance(bob, CNY).posted == limit


def _spend_the_day(world: World, alice: int, bob: int, shop: int) -> None:
    """An unverified customer's whole daily outflow (500 CNY) in three kinds of payment."""
    p = world.payments
    assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="d1").status is S.COMPLETED
    assert p.pay_merchant(alice, merchant_qr(shop), 200_00, CNY, key="d2").status is S.COMPLETED
    assert p.withdraw(alice, _card(world, alice), 100_00, CNY, key="d3").status is S.COMPLETED


def test_the_daily_outflow_adds_up_over_payments_of_every_kind(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 1_000_00)
    _spend_the_day(world, alice, bob, shop)
    assert p.balance(alice, CNY) == Balance(500_00, 0)
    code = p.issue_payment_code(alice)
    calls: list[Callable[[], object]] = [
        lambda: p.transfer(alice, Payee(customer_id=bob), 1, CNY, key="k"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 1, CNY, key="k"),
        lambda: p.withdraw(alice, _card(world, alice), 1, CNY, key="k"),
        lambda: p.collect(shop, code, 1, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, KycLimitExceededError, "kyc_limit_exceeded", limit="daily_outflow"):
            call()
    # Money coming in is not outflow.
    _fund(world, alice, 100_00, key="more")


def test_the_daily_outflow_resets_at_midnight_utc_plus_8(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 1_000_00)
    _spend_the_day(world, alice, bob, shop)
    # The fixture starts at 2026-01-01T00:00Z = 08:00 in UTC+8; that day ends 16 hours later.
    world.clock.advance(16 * 3600 * SECOND_NS - SECOND_NS)
    with _refused(world, KycLimitExceededError, limit="daily_outflow"):
        p.transfer(alice, Payee(customer_id=bob), 1, CNY, key="k")
    world.clock.advance(SECOND_NS)
    assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="n1").status is S.COMPLETED
    assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="n2").status is S.COMPLETED


def test_the_daily_outflow_is_fresh_a_day_later(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    _fund(world, alice, 1_000_00)
    _spend_the_day(world, alice, bob, shop)
    world.clock.advance(DAY_NS)
    for i in range(2):
        op = p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key=f"next{i}")
        assert op.status is S.COMPLETED
    op = p.pay_merchant(alice, merchant_qr(shop), 100_00, CNY, key="next2")
    assert op.status is S.COMPLETED
    _fund(world, alice, 100_00, key="more")  # money in; the day's outflow is spent
    with _refused(world, KycLimitExceededError, limit="daily_outflow"):
        p.transfer(alice, Payee(customer_id=bob), 1, CNY, key="k")


def test_a_declined_withdrawal_gives_the_daily_allowance_back(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    bob = _customer(world, "13800000002")
    _fund(world, alice, 1_000_00)
    for key in ("a", "b"):
        assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key=key).status is S.COMPLETED
    world.bank.failure_rate = 1.0
    declined = p.withdraw(alice, _card(world, alice), 100_00, CNY, key="w1")
    assert (declined.status, declined.error_code) == (S.FAILED, "bank_declined")
    assert p.balance(alice, CNY) == Balance(600_00, 0)
    assert _outflow(world, alice) == 400_00
    world.bank.failure_rate = 0.0
    # 100 CNY of the day's 500 are still there: the declined 100 did not use them up.
    paid = p.withdraw(alice, _card(world, alice), 100_00, CNY, key="w2")
    assert paid.status is S.COMPLETED
    with _refused(world, KycLimitExceededError, limit="daily_outflow"):
        p.transfer(alice, Payee(customer_id=bob), 1, CNY, key="k")


def test_rejected_and_failed_challenges_use_no_daily_allowance(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)
    bob = _customer(world, "13800000002")
    _fund(world, alice, 1_000_00)
    world.risk.next = [risk.Decision.REJECT, risk.Decision.CHALLENGE]
    rejected = p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="r")
    assert rejected.status is S.REJECTED
    challenged = p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key="c")
    assert challenged.status is S.CHALLENGED
    assert _outflow(world, alice) == 200_00  # reserved while held
    failed = p.verify_challenge(challenged.id, passed=False)
    assert (failed.status, failed.error_code) == (S.FAILED, "challenge_failed")
    assert _outflow(world, alice) == 0
    for key in ("a", "b"):
        assert p.transfer(alice, Payee(customer_id=bob), 200_00, CNY, key=key).status is S.COMPLETED
    assert p.transfer(alice, Payee(customer_id=bob), 100_00, CNY, key="c2").status is S.COMPLETED
    assert p.balance(alice, CNY) == Balance(500_00, 0)


def test_the_wallet_balance_cap_stops_a_top_up(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)  # cap: 1,000 CNY
    card = _card(world, alice)
    with _refused(world, KycLimitExceededError, "kyc_limit_exceeded", limit="wallet_balance"):
        p.top_up(alice, card, 1_000_01, CNY, key="k")
    _fund(world, alice, 1_000_00)
    with _refused(world, KycLimitExceededError, limit="wallet_balance"):
        p.top_up(alice, card, 1, CNY, key="k")
    assert p.balance(alice, CNY) == Balance(1_000_00, 0)
    assert len(world.bank.sends) == 1  # only the accepted top-up reached the bank


def test_the_wallet_balance_cap_stops_an_incoming_p2p(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002", level=KycLevel.UNVERIFIED)  # cap: 1,000 CNY
    _fund(world, alice, 500_00)
    _fund(world, bob, 900_00)
    with _refused(world, KycLimitExceededError, "kyc_limit_exceeded", limit="wallet_balance"):
        p.transfer(alice, Payee(customer_id=bob), 100_01, CNY, key="k")
    assert p.transfer(alice, Payee(customer_id=bob), 100_00, CNY, key="k").status is S.COMPLETED
    assert p.balance(bob, CNY) == Balance(1_000_00, 0)


def test_the_wallet_balance_cap_counts_incoming_payments_still_held(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002", level=KycLevel.UNVERIFIED)  # cap: 1,000 CNY
    _fund(world, alice, 1_000_00)
    _fund(world, bob, 500_00)
    world.risk.next = [risk.Decision.CHALLENGE, risk.Decision.CHALLENGE]
    first = p.transfer(alice, Payee(customer_id=bob), 300_00, CNY, key="h1")
    assert first.status is S.CHALLENGED
    # 500 posted + 300 on its way + 300 more would be 1,100 CNY: above Bob's cap.
    with _refused(world, KycLimitExceededError, limit="wallet_balance"):
        p.transfer(alice, Payee(customer_id=bob), 300_00, CNY, key="h2")


def test_the_wallet_balance_cap_counts_top_ups_awaiting_the_bank(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001", level=KycLevel.UNVERIFIED)  # cap: 1,000 CNY
    world.bank.processing_rate = 1.0
    first = p.top_up(alice, _card(world, alice), 600_00, CNY, key="t1")
    assert first.status is S.AWAITING_BANK
    # 600 CNY on their way + 600 more would be 1,200 CNY: above the cap.
    with _refused(world, KycLimitExceededError, limit="wallet_balance"):
        p.top_up(alice, _card(world, alice), 600_00, CNY, key="t2")


# --- idempotency --------------------------------------------------------------------------------


def test_a_replay_returns_the_equal_operation_and_moves_nothing(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    shop = _shop(world)
    card = _card(world, alice)
    code = p.issue_payment_code(alice)
    calls: list[Callable[[], Operation]] = [
        lambda: p.top_up(alice, card, 100_00, CNY, key="t"),
        lambda: p.withdraw(alice, card, 10_00, CNY, key="w"),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="p", note="tea"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 10_00, CNY, key="m"),
        lambda: p.collect(shop, code, 10_00, CNY, key="c"),
    ]
    firsts = []
    for call in calls:
        first = call()
        assert first.status is S.COMPLETED, first
        books = _books(world)
        assert call() == first
        assert _books(world) == books
        firsts.append(first)
    # The same P2P by phone or QR is the same request (the payee resolves to the same id).
    p2p = firsts[2]
    assert p.transfer(alice, Payee(phone="13800000002"), 10_00, CNY, key="p", note="tea") == p2p
    assert p.transfer(alice, Payee(qr=customer_qr(bob)), 10_00, CNY, key="p", note="tea") == p2p
    assert p.balance(alice, CNY) == Balance(100_00 - 4 * 10_00, 0)
    assert p.balance(bob, CNY).posted == 10_00
    assert world.bank.sends == {_ref(o): 1 for o in p.operations() if o.card_id is not None}


def test_the_same_key_for_a_different_request_is_refused(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    carol = _customer(world, "13800000003")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k", note="tea")
    calls: list[Callable[[], object]] = [
        lambda: p.transfer(alice, Payee(customer_id=bob), 11_00, CNY, key="k", note="tea"),
        lambda: p.transfer(alice, Payee(customer_id=carol), 10_00, CNY, key="k", note="tea"),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k", note="cake"),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k"),
        lambda: p.transfer(alice, Payee(customer_id=bob), 10_00, "USD", key="k", note="tea"),
        lambda: p.pay_merchant(alice, merchant_qr(shop), 10_00, CNY, key="k"),
        lambda: p.withdraw(alice, _card(world, alice), 10_00, CNY, key="k"),
        lambda: p.top_up(alice, _card(world, alice), 10_00, CNY, key="k"),
    ]
    for call in calls:
        with _refused(world, IdempotencyKeyReusedError, "idempotency_key_reused"):
            call()
    code = p.issue_payment_code(alice)
    p.collect(shop, code, 5_00, CNY, key="c")
    with _refused(world, IdempotencyKeyReusedError, "idempotency_key_reused"):
        p.collect(shop, code, 6_00, CNY, key="c")
    assert p.balance(bob, CNY).posted == 10_00
    assert p.merchant_balance(shop, CNY).posted == 5_00


def test_the_same_key_from_two_customers_is_two_operations(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    carol = _customer(world, "13800000003")
    _fund(world, alice, 100_00)
    _fund(world, bob, 100_00)  # both used the key "fund" already: two top-ups
    from_alice = p.transfer(alice, Payee(customer_id=carol), 10_00, CNY, key="same")
    from_bob = p.transfer(bob, Payee(customer_id=carol), 10_00, CNY, key="same")
    assert from_alice.id != from_bob.id
    assert (from_alice.payer_customer_id, from_bob.payer_customer_id) == (alice, bob)
    assert p.balance(carol, CNY).posted == 20_00
    assert p.balance(alice, CNY).posted == p.balance(bob, CNY).posted == 90_00


def test_a_replay_of_a_failed_operation_returns_it_and_moves_nothing(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.bank.failure_rate = 1.0
    failed = p.top_up(alice, _card(world, alice), 50_00, CNY, key="t")
    assert (failed.status, failed.error_code) == (S.FAILED, "bank_declined")
    world.bank.failure_rate = 0.0  # the bank would now accept: the replay must not resend
    books = _books(world)
    assert p.top_up(alice, _card(world, alice), 50_00, CNY, key="t") == failed
    assert _books(world) == books
    assert world.bank.sends == {_ref(failed): 1}
    assert p.balance(alice, CNY) == Balance(0, 0)
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY) == Balance(0, 0)


# --- payment codes ------------------------------------------------------------------------------


def test_a_payment_code_collects_once(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    assert len(code) == 18 and code.isdigit()
    paid = p.collect(shop, code, 12_00, CNY, key="c1")
    assert (paid.status, paid.payer_customer_id, paid.merchant_id) == (S.COMPLETED, alice, shop)
    with _refused(world, PaymentCodeInvalidError, "payment_code_invalid"):
        p.collect(shop, code, 12_00, CNY, key="c2")
    assert p.balance(alice, CNY).posted == 88_00
    assert p.merchant_balance(shop, CNY).posted == 12_00


def test_a_payment_refused_by_a_check_leaves_its_payment_code_valid(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    with _refused(world, InsufficientFundsError, "insufficient_funds"):
        p.collect(shop, code, 500_00, CNY, key="c1")
    paid = p.collect(shop, code, 12_00, CNY, key="c2")  # the same code, now for what she has
    assert paid.status is S.COMPLETED
    assert p.balance(alice, CNY).posted == 88_00


def test_an_unknown_payment_code_is_invalid(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    p.issue_payment_code(alice)
    with _refused(world, PaymentCodeInvalidError, "payment_code_invalid"):
        p.collect(shop, "280000000000000000", 1_00, CNY, key="k")
    for malformed in ("", "2" * 19):
        with _refused(world, InvalidPayloadError, "invalid_payload"):
            p.collect(shop, malformed, 1_00, CNY, key="k")


def test_an_expired_payment_code_is_invalid(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    shop = _shop(world)
    _fund(world, alice, 100_00)
    code = p.issue_payment_code(alice)
    world.clock.advance((p.options.payment_code_ttl_s + 1) * SECOND_NS)
    with _refused(world, PaymentCodeInvalidError, "payment_code_invalid"):
        p.collect(shop, code, 1_00, CNY, key="k")


# --- holds: challenges and reviews --------------------------------------------------------------


def _challenged_p2p(world: World, decision: risk.Decision = risk.Decision.CHALLENGE) -> Operation:
    """Alice (100 CNY) pays Bob 20 CNY, held by risk's ``decision``."""
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    world.risk.next = [decision]
    op = world.payments.transfer(alice, Payee(customer_id=bob), 20_00, CNY, key="held")
    assert op.status is S.CHALLENGED and op.decision == decision, op
    assert world.payments.balance(alice, CNY) == Balance(100_00, 20_00)
    return op


def _assert_back(world: World, op: Operation) -> None:
    """The held money went back to the payer; the payee got nothing."""
    p = world.payments
    assert op.payer_customer_id is not None and op.payee_customer_id is not None
    assert p.balance(op.payer_customer_id, CNY) == Balance(100_00, 0)
    assert p.balance(op.payee_customer_id, CNY) == Balance(0, 0)
    assert _outflow(world, op.payer_customer_id) == 0
    assert _unfinished(world) == []


def test_verify_challenge_needs_a_challenged_operation(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    bob = _customer(world, "13800000002")
    _fund(world, alice, 100_00)
    done = p.transfer(alice, Payee(customer_id=bob), 10_00, CNY, key="k")
    for passed in (True, False):
        with _refused(world, OperationStateError, "operation_state_invalid"):
            p.verify_challenge(done.id, passed=passed)
    with _refused(world, OperationNotFoundError, "operation_not_found"):
        p.verify_challenge(UNKNOWN_ID, passed=True)
    assert p.operation(done.id) == done


def test_a_challenge_verified_twice_moves_the_money_once(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world)
    assert op.payer_customer_id is not None and op.payee_customer_id is not None
    assert p.verify_challenge(op.id, passed=True).status is S.COMPLETED
    for passed in (True, False):
        with _refused(world, OperationStateError, "operation_state_invalid"):
            p.verify_challenge(op.id, passed=passed)
    assert p.balance(op.payee_customer_id, CNY) == Balance(20_00, 0)
    assert p.balance(op.payer_customer_id, CNY) == Balance(80_00, 0)


def test_a_failed_challenge_returns_the_money(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world)
    failed = p.verify_challenge(op.id, passed=False)
    assert (failed.status, failed.error_code) == (S.FAILED, "challenge_failed")
    _assert_back(world, failed)


def test_a_lapsed_challenge_expires_and_returns_the_money(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world)
    assert op.hold_expires_at_ns == op.created_at_ns + p.options.challenge_timeout_s * SECOND_NS
    assert p.recover() == {}  # not due yet
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    world.ledger.tick()
    assert p.recover() == {"expired": 1}
    expired = p.operation(op.id)
    assert (expired.status, expired.error_code) == (S.EXPIRED, "hold_expired")
    _assert_back(world, expired)
    with _refused(world, OperationStateError, "operation_state_invalid"):
        p.verify_challenge(op.id, passed=True)
    assert p.recover() == {}


def test_a_lapsed_challenged_withdrawal_voids_its_hold_without_paying_out(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w")
    assert op.status is S.CHALLENGED and p.balance(alice, CNY) == Balance(100_00, 30_00)
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    world.ledger.tick()
    assert p.recover() == {"expired": 1}
    assert p.operation(op.id).status is S.EXPIRED
    assert p.balance(alice, CNY) == Balance(100_00, 0)
    assert _ref(op) not in world.bank.sends
    with _refused(world, OperationStateError):
        p.verify_challenge(op.id, passed=True)


def test_a_p2p_challenge_passed_after_its_deadline_expires(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world)
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    # No tick, no recovery: the ledger itself refuses to post a lapsed hold.
    late = p.verify_challenge(op.id, passed=True)
    assert (late.status, late.error_code) == (S.EXPIRED, "hold_expired")
    _assert_back(world, late)


def test_a_challenge_passed_after_its_deadline_does_not_pay_out(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w")
    world.clock.advance((p.options.challenge_timeout_s + 1) * SECOND_NS)
    # Recovery has not run yet; the customer answers late. Refusing or expiring are both
    # fine, paying out is not.
    with contextlib.suppress(OperationStateError):
        p.verify_challenge(op.id, passed=True)
    assert _ref(op) not in world.bank.sends
    p.recover()
    assert p.operation(op.id).status is S.EXPIRED
    assert p.balance(alice, CNY) == Balance(100_00, 0)


def test_a_review_approved_completes_the_payment(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world, risk.Decision.REVIEW)
    assert op.payer_customer_id is not None and op.payee_customer_id is not None
    assert op.hold_expires_at_ns is None
    # An analyst's review has no deadline: a day later recovery still leaves it alone.
    world.clock.advance(DAY_NS)
    world.ledger.tick()
    assert p.recover() == {}
    assert p.operation(op.id).status is S.CHALLENGED
    done = p.decide_review(op.id, approve=True)
    assert (done.status, done.error_code) == (S.COMPLETED, None)
    assert p.balance(op.payer_customer_id, CNY) == Balance(80_00, 0)
    assert p.balance(op.payee_customer_id, CNY) == Balance(20_00, 0)
    with _refused(world, OperationStateError):
        p.decide_review(op.id, approve=True)


def test_a_review_rejected_fails_and_returns_the_money(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world, risk.Decision.REVIEW)
    rejected = p.decide_review(op.id, approve=False)
    assert (rejected.status, rejected.error_code) == (S.FAILED, "review_rejected")
    _assert_back(world, rejected)
    with _refused(world, OperationStateError):
        p.decide_review(op.id, approve=True)


def test_decide_review_is_only_for_operations_held_for_review(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world, risk.Decision.CHALLENGE)
    for approve in (True, False):
        with _refused(world, OperationStateError, "operation_state_invalid"):
            p.decide_review(op.id, approve=approve)
    assert p.operation(op.id).status is S.CHALLENGED
    with _refused(world, OperationNotFoundError):
        p.decide_review(UNKNOWN_ID, approve=True)


def test_the_customer_cannot_pass_a_review_with_verify_challenge(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world, risk.Decision.REVIEW)
    with _refused(world, OperationStateError, "operation_state_invalid"):
        p.verify_challenge(op.id, passed=True)
    assert p.operation(op.id).status is S.CHALLENGED


def test_a_payer_frozen_during_a_challenge_cannot_release_the_payment(world: World) -> None:
    p = world.payments
    op = _challenged_p2p(world)
    assert op.payer_customer_id is not None and op.payee_customer_id is not None
    p.set_frozen(op.payer_customer_id, True)
    # Refusing (the hold then lapses) or failing the operation are both fine; paying is not.
    with contextlib.suppress(AccountFrozenError):
        p.verify_challenge(op.id, passed=True)
    assert p.balance(op.payee_customer_id, CNY) == Balance(0, 0)
    assert p.balance(op.payer_customer_id, CNY).posted == 100_00


def test_a_challenged_withdrawal_passed_pays_out_once(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w")
    assert op.status is S.CHALLENGED
    assert _ref(op) not in world.bank.sends  # nothing goes to the bank before the check
    done = p.verify_challenge(op.id, passed=True)
    assert done.status is S.COMPLETED
    assert p.balance(alice, CNY) == Balance(70_00, 0)
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY).posted == -70_00
    with _refused(world, OperationStateError):
        p.verify_challenge(op.id, passed=True)
    assert p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w") == done  # a replay
    assert p.recover() == {}
    assert world.bank.sends[_ref(op)] == 1
    assert p.balance(alice, CNY) == Balance(70_00, 0)


def test_a_challenged_top_up_failed_charges_nothing(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.risk.next = [risk.Decision.CHALLENGE]
    op = p.top_up(alice, _card(world, alice), 50_00, CNY, key="t")
    assert op.status is S.CHALLENGED
    failed = p.verify_challenge(op.id, passed=False)
    assert (failed.status, failed.error_code) == (S.FAILED, "challenge_failed")
    assert world.bank.sends == {}
    assert world.bank.records() == []
    assert p.balance(alice, CNY) == Balance(0, 0)
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY) == Balance(0, 0)
    assert _unfinished(world) == []


# --- the bank -----------------------------------------------------------------------------------


def test_a_declined_top_up_credits_nothing(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.bank.failure_rate = 1.0
    op = p.top_up(alice, _card(world, alice), 50_00, CNY, key="t")
    assert (op.status, op.error_code) == (S.FAILED, "bank_declined")
    assert world.bank.sends == {_ref(op): 1}
    assert p.balance(alice, CNY) == Balance(0, 0)
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY) == Balance(0, 0)
    assert _unfinished(world) == []


def test_a_lost_withdrawal_fails_as_not_reached_and_is_never_resent(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    world.bank.lost_rate = 1.0  # the request never reaches the bank
    op = p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w")
    assert op.status is S.AWAITING_BANK
    assert p.balance(alice, CNY) == Balance(100_00, 30_00)
    assert p.recover() == {}  # too young: the bank may still be working on it
    assert p.operation(op.id).status is S.AWAITING_BANK
    world.clock.advance((p.options.recovery_age_s + 1) * SECOND_NS)
    assert p.recover() == {"failed": 1}
    failed = p.operation(op.id)
    assert (failed.status, failed.error_code) == (S.FAILED, "bank_not_reached")
    assert p.balance(alice, CNY) == Balance(100_00, 0)  # the hold was voided
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY).posted == -100_00
    assert world.bank.sends[_ref(op)] == 1
    assert world.bank.query(_ref(op)).status is BankStatus.NOT_FOUND
    assert _outflow(world, alice) == 0
    assert _unfinished(world) == []
    # Recovery again, and a retry of the request, change nothing.
    books = _books(world)
    assert p.recover() == {}
    assert p.withdraw(alice, _card(world, alice), 30_00, CNY, key="w") == failed
    assert _books(world) == books


def test_a_lost_top_up_fails_as_not_reached_and_credits_nothing(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.bank.lost_rate = 1.0
    op = p.top_up(alice, _card(world, alice), 50_00, CNY, key="t")
    assert op.status is S.AWAITING_BANK
    world.clock.advance((p.options.recovery_age_s + 1) * SECOND_NS)
    assert p.recover() == {"failed": 1}
    assert p.recover() == {}
    failed = p.operation(op.id)
    assert (failed.status, failed.error_code) == (S.FAILED, "bank_not_reached")
    assert world.bank.sends == {_ref(op): 1}
    assert p.balance(alice, CNY) == Balance(0, 0)
    assert p.platform_balance(AccountCode.BANK_SETTLEMENT, CNY) == Balance(0, 0)
    assert _unfinished(world) == []


def test_a_bank_notice_for_an_unknown_reference_is_not_found(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    for reference in ("0" * 32, "f" * 32, "1" * 40):
        with _refused(world, OperationNotFoundError, "operation_not_found"):
            p.on_bank_result(BankResult(reference, BankStatus.SUCCEEDED))


def test_a_bank_notice_with_a_malformed_reference_is_a_payments_error(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    _fund(world, alice, 100_00)
    books = _books(world)
    for reference in ("", "not-a-reference"):
        with pytest.raises((OperationNotFoundError, InvalidPayloadError)):
            p.on_bank_result(BankResult(reference, BankStatus.SUCCEEDED))
    assert _books(world) == books


def test_a_late_bank_notice_does_not_change_a_final_operation(world: World) -> None:
    p = world.payments
    alice = _customer(world, "13800000001")
    world.bank.failure_rate = 1.0
    declined = p.top_up(alice, _card(world, alice), 50_00, CNY, key="t")
    assert declined.status is S.FAILED
    books = _books(world)
    assert p.on_bank_result(BankResult(_ref(declined), BankStatus.SUCCEEDED)) == declined
    assert _books(world) == books
    assert p.balance(alice, CNY) == Balance(0, 0)


@given(
    party=st.integers(min_value=1, max_value=(1 << 63) - 1),
    amount=st.integers(min_value=1, max_value=AMOUNT_MAX),
    currency_code=st.sampled_from(["CNY", "JPY", "KWD", "USD"]),
    note=st.text(max_size=140),
)
@settings(max_examples=200, deadline=None)
def test_the_batch_fingerprints_are_the_request_fingerprints(
    party: int, amount: int, currency_code: str, note: str
) -> None:
    """The batch path's fingerprints (no dict, no encoder per payment) hash the very text
    ``request_fingerprint`` hashes: a retry through either path finds the other's record."""
    p2p = {"payee": party, "amount": amount, "currency": currency_code, "note": note}
    assert p2p_fingerprint(party, amount, currency_code, note) == request_fingerprint(
        OperationKind.P2P, p2p
    )
    shop = {"merchant": party, "amount": amount, "currency": currency_code}
    assert merchant_payment_fingerprint(party, amount, currency_code) == request_fingerprint(
        OperationKind.MERCHANT_PAYMENT, shop
    )
