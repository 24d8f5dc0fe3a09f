"""``puhui.money``: the currency registry and exact text <-> minor-unit conversion."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puhui import limits
from puhui.errors import InvalidInputError
from puhui.money import (
    Currency,
    InvalidAmountError,
    UnknownCurrencyError,
    currencies,
    currency,
    currency_for_ledger,
    format_amount,
    parse_amount,
)

AMOUNT_MAX = (1 << 128) - 1  # the ledger's largest amount

# ISO 4217: alphabetic code -> (numeric code, minor-unit exponent).
ISO_4217 = {
    "CNY": (156, 2),
    "USD": (840, 2),
    "EUR": (978, 2),
    "JPY": (392, 0),
    "KWD": (414, 3),
    "KES": (404, 2),
    "INR": (356, 2),
    "IDR": (360, 2),
    "PHP": (608, 2),
    "NGN": (566, 2),
    "THB": (764, 2),
    "BRL": (986, 2),
}


@pytest.mark.parametrize(("code", "expected"), sorted(ISO_4217.items()))
def test_registry_has_iso_numbers_and_exponents(code: str, expected: tuple[int, int]) -> None:
    unit = currency(code)
    assert (unit.number, unit.exponent) == expected
    assert unit.ledger == unit.number
    assert currency_for_ledger(unit.ledger) is unit


def test_registry_codes_and_numbers_are_unique_and_well_formed() -> None:
    units = currencies()
    assert len({u.code for u in units}) == len(units)
    assert len({u.number for u in units}) == len(units)
    for unit in units:
        assert len(unit.code) == limits.currency_code_chars
        assert unit.code.isascii() and unit.code.isupper()
        assert 0 < unit.number < 1000
        assert unit.exponent in (0, 2, 3)


def test_currency_is_frozen() -> None:
    with pytest.raises(AttributeError):
        currency("CNY").exponent = 3  # type: ignore[misc]


def test_currency_accepts_a_currency() -> None:
    cny = currency("CNY")
    assert currency(cny) is cny


@pytest.mark.parametrize("code", ["cny", "XXX", "", "CNY ", "RMB"])
def test_unknown_currency_codes_are_rejected(code: str) -> None:
    with pytest.raises(UnknownCurrencyError) as caught:
        currency(code)
    assert caught.value.code == "unknown_currency"
    assert isinstance(caught.value, InvalidInputError)


@pytest.mark.parametrize("ledger", [0, 1, 999, 1 << 32])
def test_unknown_ledgers_are_rejected(ledger: int) -> None:
    with pytest.raises(UnknownCurrencyError):
        currency_for_ledger(ledger)


@pytest.mark.parametrize(
    ("amount", "code", "text"),
    [
        (0, "CNY", "0.00"),
        (5, "CNY", "0.05"),
        (12345, "CNY", "123.45"),
        (-12345, "CNY", "-123.45"),
        (-5, "USD", "-0.05"),
        (100, "JPY", "100"),
        (-100, "JPY", "-100"),
        (1234567, "KWD", "1234.567"),
        (1, "KWD", "0.001"),
        (AMOUNT_MAX, "CNY", "3402823669209384634633746074317682114.55"),
    ],
)
def test_format_amount(amount: int, code: str, text: str) -> None:
    assert format_amount(amount, code) == text
    assert format_amount(amount, currency(code)) == text


def test_format_amount_groups_thousands_for_display() -> None:
    assert format_amount(123456789, "CNY", group=True) == "1,234,567.89"
    assert format_amount(-1234567, "KWD", group=True) == "-1,234.567"
    assert format_amount(1000000, "JPY", group=True) == "1,000,000"
    assert format_amount(99, "CNY", group=True) == "0.99"


@pytest.mark.parametrize(
    ("text", "code", "amount"),
    [
        ("0", "CNY", 0),
        ("1", "CNY", 100),
        ("1.5", "CNY", 150),
        ("123.45", "CNY", 12345),
        ("-0.05", "CNY", -5),
        ("+7", "USD", 700),
        ("007.10", "USD", 710),
        ("100", "JPY", 100),
        ("1234.567", "KWD", 1234567),
        ("0.1", "KWD", 100),
        ("3402823669209384634633746074317682114.55", "CNY", AMOUNT_MAX),
    ],
)
def test_parse_amount(text: str, code: str, amount: int) -> None:
    assert parse_amount(text, code) == amount


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("1.234", "CNY"),  # more decimals than the currency has: never rounded
        ("1.230", "CNY"),  # even when the extra digit is zero
        ("1.5", "JPY"),
        ("100.0", "JPY"),
        ("1.2345", "KWD"),
        ("", "CNY"),
        (" 1", "CNY"),
        ("1 ", "CNY"),
        ("1,000.00", "CNY"),
        ("1_000", "CNY"),
        ("1.", "CNY"),
        (".5", "CNY"),
        ("1e3", "CNY"),
        ("NaN", "CNY"),
        ("Infinity", "CNY"),
        ("-", "CNY"),
        ("--1", "CNY"),
        ("0x10", "CNY"),
        ("\uff11\uff12\uff13", "CNY"),  # full-width digits, as an IME may type them
        ("\u0661\u0662\u0663", "CNY"),  # Arabic-Indic digits
        ("1" * (limits.amount_text_chars_max + 1), "CNY"),
    ],
)
def test_parse_amount_rejects_bad_text(text: str, code: str) -> None:
    with pytest.raises(InvalidAmountError) as caught:
        parse_amount(text, code)
    assert caught.value.code == "invalid_amount"
    assert isinstance(caught.value, InvalidInputError)


@pytest.mark.parametrize("value", [1.0, 0.1, 12.34, float("nan"), float("inf")])
def test_no_float_is_accepted(value: float) -> None:
    with pytest.raises(InvalidAmountError):
        format_amount(value, "CNY")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmountError):
        parse_amount(value, "CNY")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, Decimal("1.00"), Fraction(1, 2), "100", None])
def test_format_amount_takes_only_int(value: object) -> None:
    with pytest.raises(InvalidAmountError):
        format_amount(value, "CNY")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [Decimal("1.00"), b"1.00", 100, None])
def test_parse_amount_takes_only_str(value: object) -> None:
    with pytest.raises(InvalidAmountError):
        parse_amount(value, "CNY")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [156, None, b"CNY"])
def test_currency_codes_must_be_strings(code: object) -> None:
    with pytest.raises(UnknownCurrencyError):
        currency(code)  # type: ignore[arg-type]


currency_strategy = st.sampled_from(currencies())
amount_strategy = st.integers(min_value=-AMOUNT_MAX, max_value=AMOUNT_MAX)


@given(amount=amount_strategy, unit=currency_strategy)
def test_format_then_parse_round_trips(amount: int, unit: Currency) -> None:
    text = format_amount(amount, unit)
    assert parse_amount(text, unit) == amount
    assert len(text) <= limits.amount_text_chars_max


@given(amount=amount_strategy, unit=currency_strategy)
def test_grouped_text_is_the_same_number(amount: int, unit: Currency) -> None:
    grouped = format_amount(amount, unit, group=True)
    assert parse_amount(grouped.replace(",", ""), unit) == amount


@given(
    unit=currency_strategy,
    whole=st.integers(min_value=0, max_value=10**30),
    data=st.data(),
)
def test_parse_agrees_with_integer_arithmetic(
    unit: Currency, whole: int, data: st.DataObject
) -> None:
    places = data.draw(st.integers(min_value=0, max_value=unit.exponent))
    fraction = data.draw(st.integers(min_value=0, max_value=10**places - 1))
    text = f"{whole}.{fraction:0{places}d}" if places else str(whole)
    expected = whole * 10**unit.exponent + fraction * 10 ** (unit.exponent - places)
    assert parse_amount(text, unit) == expected
    assert parse_amount(f"-{text}", unit) == -expected
    # The canonical text of the parsed amount is the same number, padded to the exponent.
    assert Decimal(format_amount(parse_amount(text, unit), unit)) == Decimal(text)


@given(unit=currency_strategy, whole=st.integers(min_value=0, max_value=10**6), data=st.data())
def test_parse_rejects_every_extra_decimal(unit: Currency, whole: int, data: st.DataObject) -> None:
    extra = data.draw(st.integers(min_value=1, max_value=4))
    size = unit.exponent + extra
    digits = data.draw(st.text(alphabet="0123456789", min_size=size, max_size=size))
    with pytest.raises(InvalidAmountError):
        parse_amount(f"{whole}.{digits}", unit)
