"""Money: the currency registry and exact conversion between minor units and text.

An amount is an ``int`` of minor units (fen, cents, fils, ...) in one currency; a currency's
minor-unit exponent comes from this registry and nowhere else. Each currency has its own
ledger, numbered with its ISO 4217 numeric code (CNY is ledger 156, USD is 840), so a transfer
between two currencies is impossible by construction and goes through FX accounts instead.

``float`` never touches money: ``format_amount`` takes only ``int`` and ``parse_amount`` only
``str``; both reject anything else with ``InvalidAmountError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from puhui import limits
from puhui.errors import InvalidInputError

__all__ = [
    "Currency",
    "InvalidAmountError",
    "UnknownCurrencyError",
    "currencies",
    "currency",
    "currency_for_ledger",
    "format_amount",
    "parse_amount",
]


class UnknownCurrencyError(InvalidInputError):
    """A currency code or ledger number that is not in the registry."""

    code = "unknown_currency"


class InvalidAmountError(InvalidInputError):
    """An amount that is not an exact number of minor units of its currency."""

    code = "invalid_amount"


@dataclass(frozen=True, slots=True)
class Currency:
    """One ISO 4217 currency: its alphabetic code, numeric code and minor-unit exponent."""

    code: str
    """ISO 4217 alphabetic code, e.g. ``"CNY"``."""
    number: int
    """ISO 4217 numeric code, e.g. ``156``; also the currency's ledger number."""
    exponent: int
    """Digits after the decimal point: 2 for CNY (1 yuan = 100 fen), 0 for JPY, 3 for KWD."""
    name: str
    """English name, for people."""

    @property
    def ledger(self) -> int:
        """The ledger that holds this currency's accounts (its ISO 4217 numeric code)."""
        return self.number

    @property
    def minor_units_per_major(self) -> int:
        """``10 ** exponent``: 100 for CNY, 1 for JPY, 1000 for KWD."""
        scale: int = 10**self.exponent
        return scale


_CURRENCIES: tuple[Currency, ...] = (
    # The platform's home currency and the main settlement currencies.
    Currency("CNY", 156, 2, "Chinese yuan renminbi"),
    Currency("USD", 840, 2, "US dollar"),
    Currency("EUR", 978, 2, "Euro"),
    Currency("GBP", 826, 2, "Pound sterling"),
    Currency("HKD", 344, 2, "Hong Kong dollar"),
    Currency("JPY", 392, 0, "Japanese yen"),
    Currency("KRW", 410, 0, "South Korean won"),
    Currency("SGD", 702, 2, "Singapore dollar"),
    # Markets of partners and of mobile money (South and South-East Asia, Africa, Latin America).
    Currency("INR", 356, 2, "Indian rupee"),
    Currency("PKR", 586, 2, "Pakistani rupee"),
    Currency("BDT", 50, 2, "Bangladeshi taka"),
    Currency("IDR", 360, 2, "Indonesian rupiah"),
    Currency("PHP", 608, 2, "Philippine peso"),
    Currency("THB", 764, 2, "Thai baht"),
    Currency("MYR", 458, 2, "Malaysian ringgit"),
    Currency("VND", 704, 0, "Vietnamese dong"),
    Currency("KES", 404, 2, "Kenyan shilling"),
    Currency("TZS", 834, 2, "Tanzanian shilling"),
    Currency("UGX", 800, 0, "Ugandan shilling"),
    Currency("NGN", 566, 2, "Nigerian naira"),
    Currency("GHS", 936, 2, "Ghanaian cedi"),
    Currency("ZAR", 710, 2, "South African rand"),
    Currency("EGP", 818, 2, "Egyptian pound"),
    Currency("BRL", 986, 2, "Brazilian real"),
    Currency("MXN", 484, 2, "Mexican peso"),
    # Three-decimal currencies, to keep every code path honest about the exponent.
    Currency("KWD", 414, 3, "Kuwaiti dinar"),
    Currency("BHD", 48, 3, "Bahraini dinar"),
)

_BY_CODE: Mapping[str, Currency] = MappingProxyType({c.code: c for c in _CURRENCIES})
_BY_LEDGER: Mapping[int, Currency] = MappingProxyType({c.ledger: c for c in _CURRENCIES})

if len(_BY_CODE) != len(_CURRENCIES) or len(_BY_LEDGER) != len(_CURRENCIES):
    raise RuntimeError("the currency registry repeats a code or a number")

_AMOUNT_TEXT = re.compile(r"(?P<sign>[+-]?)(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?", re.ASCII)


def currencies() -> tuple[Currency, ...]:
    """Every registered currency, in a stable order."""
    return _CURRENCIES


def currency(code: str | Currency) -> Currency:
    """The registered currency with this ISO 4217 alphabetic code (e.g. ``"CNY"``).

    Codes are upper case, as ISO 4217 writes them; ``"cny"`` is unknown. A ``Currency`` is
    returned as it is, so functions can take either.
    """
    if isinstance(code, Currency):
        return code
    if not isinstance(code, str):
        raise UnknownCurrencyError(
            f"a currency code is a {limits.currency_code_chars}-letter string, "
            f"not {type(code).__name__}"
        )
    found = _BY_CODE.get(code)
    if found is None:
        shown = code[: limits.currency_code_chars + 1]
        raise UnknownCurrencyError(f"unknown currency code {shown!r}", currency=shown)
    return found


def currency_for_ledger(ledger: int) -> Currency:
    """The currency whose accounts live on ``ledger`` (its ISO 4217 numeric code)."""
    if not isinstance(ledger, int) or isinstance(ledger, bool):
        raise UnknownCurrencyError(f"a ledger number is an int, not {type(ledger).__name__}")
    found = _BY_LEDGER.get(ledger)
    if found is None:
        raise UnknownCurrencyError(f"no currency on ledger {ledger}", ledger=ledger)
    return found


def format_amount(amount: int, currency_or_code: Currency | str, *, group: bool = False) -> str:
    """Minor units as exact text in major units: ``format_amount(12345, "CNY") == "123.45"``.

    Negative amounts (a net position) get a leading ``-``. With ``group=True`` the whole part is
    grouped in thousands (``"12,345.67"``), for display only: ``parse_amount`` reads the
    ungrouped form back.
    """
    unit = currency(currency_or_code)
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidAmountError(f"an amount is an int of minor units, not {type(amount).__name__}")
    whole, fraction = divmod(abs(amount), unit.minor_units_per_major)
    whole_text = f"{whole:,}" if group else str(whole)
    sign = "-" if amount < 0 else ""
    if unit.exponent == 0:
        return f"{sign}{whole_text}"
    return f"{sign}{whole_text}.{fraction:0{unit.exponent}d}"


def parse_amount(text: str, currency_or_code: Currency | str) -> int:
    """Decimal text in major units as exact minor units: ``parse_amount("123.45", "CNY") == 12345``.

    Accepts an optional sign, ASCII digits and at most ``exponent`` digits after a ``.``; no
    spaces, grouping separators, exponents, ``NaN`` or infinities. More decimals than the
    currency has (``"1.234"`` for CNY, ``"1.5"`` for JPY) are rejected, never rounded.
    """
    unit = currency(currency_or_code)
    if not isinstance(text, str):
        raise InvalidAmountError(f"an amount to parse is a str, not {type(text).__name__}")
    if len(text) > limits.amount_text_chars_max:
        raise InvalidAmountError(
            f"amount text is longer than {limits.amount_text_chars_max} characters"
        )
    match = _AMOUNT_TEXT.fullmatch(text)
    if match is None:
        raise InvalidAmountError(f"{text!r} is not a decimal amount such as 12.34")
    fraction = match["fraction"] or ""
    if len(fraction) > unit.exponent:
        raise InvalidAmountError(
            f"{text!r} has {len(fraction)} decimal places; {unit.code} has {unit.exponent}",
            currency=unit.code,
        )
    try:
        value = Decimal(text)
    except InvalidOperation as error:  # unreachable after the pattern; kept as a guard
        raise InvalidAmountError(f"{text!r} is not a decimal amount") from error
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity; unreachable after the pattern
        raise InvalidAmountError(f"{text!r} is not a finite amount")
    scale: int = 10 ** (exponent + unit.exponent)  # >= 1: the pattern capped the decimals
    magnitude = int("".join(map(str, digits))) * scale
    return -magnitude if sign else magnitude
