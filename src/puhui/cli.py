"""The `puhui` command line: the operators' entry point and a composition root.

Commands:

- `puhui demo`: a guided tour of the ledger (accounts in two currencies, top-ups, an FX
  conversion as a linked chain, a chain that fails on purpose, two-phase payments, a rejected
  overdraft), then of the payments service on the same ledger and the SQL store (KYC, top-up,
  P2P, a QR payment, orders with escrow, auto-confirm and a refund, a withdrawal, the
  accounting identity; `puhui._demo_payments`), then `verify`.
- `puhui ledger verify` and `puhui ledger info`: check and describe a ledger.
- `puhui version`.

Exit codes: 0 success; 1 the command ran but found a problem (`verify` failed, or a demo step
did not end as expected); 2 an error (`error: <code>: <message>` on stderr, no traceback; a
wrong command line too: `invalid_usage`).
With `--json` the last line of stdout is one JSON object for machines (on an error,
`{"error": {"code": ..., "message": ...}}`); 128-bit integers
(ids, amounts in minor units) are written as decimal strings; the demo's `payments` part
writes its amounts (at most 2**63 - 1, the payments service's range) as JSON integers.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import puhui.ledger as tb
from puhui._cli_common import (
    EXIT_OK,
    EXIT_PROBLEM,
    DataDirUnavailableError,
    OneLineErrorsGroup,
    opened_store,
)
from puhui._cli_common import console as _console
from puhui._cli_common import emit_json as _emit_json
from puhui._cli_common import make_data_dir as _make_data_dir
from puhui._cli_common import reported_errors as _reported_errors
from puhui._cli_platform import register as register_platform_commands
from puhui._cli_risk import risk_app
from puhui._cli_sim import sim_app
from puhui._demo_payments import PaymentsTour, payments_service, print_payments
from puhui._demo_risk import RiskTour, print_risk
from puhui.clock import ManualClock
from puhui.config import Settings
from puhui.errors import InvalidInputError
from puhui.money import (
    Currency,
    UnknownCurrencyError,
    currency,
    currency_for_ledger,
    format_amount,
    parse_amount,
)

__all__ = ["DataDirUnavailableError", "app", "main"]

STATUS_COLUMN_CHARS: Final = 20
"""Width of the status column in the demo's step listing (unit: characters)."""

POSTGRES_SCHEMES: Final = ("postgresql://", "postgresql+psycopg://", "postgres://")
"""The ledger URLs of a PostgreSQL journal (as `puhui.ledger.open` takes them)."""

DEMO_RUNNING: Final = "running the tours (the first run compiles the kernels: a minute or two)"
"""What the demo shows on a terminal while the tours run, before it prints them (one line of
an 80-column terminal)."""

HISTORY_SHOWN_MAX: Final = 20
"""Most balance-history rows the demo prints (unit: rows)."""

app = typer.Typer(
    name="puhui",
    cls=OneLineErrorsGroup,
    help="Puhui: an open-source platform for inclusive finance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
ledger_app = typer.Typer(
    help="Check and describe a ledger (a journal directory, a SQLite file or a PostgreSQL URL).",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(sim_app, name="sim")
app.add_typer(risk_app, name="risk")


class LedgerNotFoundError(InvalidInputError):
    """A command that reads a ledger was given a local journal that does not exist."""

    code = "ledger_not_found"


# --- plumbing -------------------------------------------------------------------------------


def _local_journal(url: str) -> Path | None:
    """Where a local journal named by `url` lives (None for a journal on a server).

    A SQLite journal is a file (`*.sqlite` or `sqlite:///path`); a file journal (a plain
    directory path or `file:///dir`) is a directory of segments.
    """
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" not in url:
        return Path(url)
    return None


def _display_url(url: str) -> str:
    """The ledger location with any password hidden (safe to print and log)."""
    if not url.startswith(POSTGRES_SCHEMES):
        return url
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def _holds_no_journal(path: Path) -> bool:
    """Whether an existing local `path` plainly holds no journal: a directory without the
    file journal's `identity`, or a SQLite file without the journal's table (an empty file
    is such a database). Anything else is for `tb.open` to judge."""
    if path.is_dir():
        return not (path / "identity").is_file()
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal_meta'").fetchone()
    except sqlite3.Error:
        return False  # not a SQLite file at all: the journal's own error says what it is
    return found is None


def _postgres_holds_no_journal(url: str) -> bool:
    """Whether the PostgreSQL database of `url` plainly holds no journal (no journal table in
    its search path, or no identity in it), read without creating anything. A database that
    cannot be reached (or a URL libpq does not take) is for `tb.open` to judge."""
    import psycopg

    try:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as db:
            table = db.execute("SELECT to_regclass('puhui_journal_meta')").fetchone()
            if table is None or table[0] is None:
                return True
            query = "SELECT 1 FROM puhui_journal_meta WHERE key = 'identity'"
            return db.execute(query).fetchone() is None
    except psycopg.Error:
        return False


def _open_existing(url: str) -> tb.Ledger:
    """Open a ledger that must already exist (reading commands never create one, not even
    in an existing empty directory, file or PostgreSQL database)."""
    local = _local_journal(url)
    if local is not None and (not local.exists() or _holds_no_journal(local)):
        raise LedgerNotFoundError(
            f"no ledger journal at {str(local)!r} (run `puhui demo` to create one)"
        )
    if url.startswith(POSTGRES_SCHEMES) and _postgres_holds_no_journal(url):
        raise LedgerNotFoundError(
            f"no ledger journal in the PostgreSQL database {_display_url(url)} (`puhui demo`"
            " with PUHUI_LEDGER_URL set to it creates one)"
        )
    return tb.open(url)


def _currency_code(ledger: int) -> str:
    try:
        return currency_for_ledger(ledger).code
    except UnknownCurrencyError:
        return "-"


def _amount_text(amount: int, ledger: int) -> str:
    """Major units when the ledger is a registered currency, else raw minor units."""
    try:
        return format_amount(amount, currency_for_ledger(ledger), group=True)
    except UnknownCurrencyError:
        return f"{amount:,}"


def _status_name(status: enum.Enum) -> str:
    return status.name.lower()


# --- demo: the cast ---------------------------------------------------------------------------


class AccountCode(enum.IntEnum):
    """Account types of the demo (the `code` field of a ledger account; never zero)."""

    BANK_SETTLEMENT = 1
    CUSTOMER_WALLET = 2
    MERCHANT = 3
    FX_POSITION = 4


class TransferCode(enum.IntEnum):
    """Transfer types of the demo (the `code` field of a ledger transfer; never zero)."""

    TOP_UP = 1
    FX_CONVERSION = 2
    PAYMENT = 3


DEMO_CURRENCIES: Final = ("CNY", "USD")
FX_RATE_CNY_PER_USD: Final = Decimal("7.10")
"""The demo's exchange rate: CNY paid for one USD."""
ESCROW_TIMEOUT_S: Final = 86_400
"""How long a guaranteed-transaction hold lasts before it expires by itself (unit: seconds)."""
NO_OVERDRAFT: Final = tb.AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@dataclass(frozen=True, slots=True)
class _Role:
    key: str
    label: str
    code: AccountCode
    flags: tb.AccountFlags


_ROLES: Final = (
    _Role("bank", "Bank settlement", AccountCode.BANK_SETTLEMENT, tb.AccountFlags.NONE),
    _Role("alice", "Alice wallet", AccountCode.CUSTOMER_WALLET, NO_OVERDRAFT),
    _Role("bob", "Bob wallet", AccountCode.CUSTOMER_WALLET, NO_OVERDRAFT),
    _Role("merchant", "Merchant", AccountCode.MERCHANT, tb.AccountFlags.HISTORY),
    _Role("fx", "FX desk", AccountCode.FX_POSITION, NO_OVERDRAFT),
)


@dataclass(frozen=True, slots=True)
class _DemoAccount:
    key: str
    label: str
    currency: Currency
    id: int
    code: AccountCode
    flags: tb.AccountFlags


@dataclass(slots=True)
class _Step:
    name: str
    title: str
    lines: list[str]
    statuses: list[str]
    expected: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def as_expected(self) -> bool:
        return self.statuses == self.expected


def _derive_id(run_id: int, name: str) -> int:
    """A 128-bit id that is a pure function of the run and a name: retries reuse it."""
    digest = hashlib.blake2b(
        run_id.to_bytes(16, "little") + name.encode(), digest_size=16, person=b"puhui-demo"
    ).digest()
    value = int.from_bytes(digest, "little")
    if value in (0, tb.AMOUNT_MAX):  # reserved by the ledger; 2**-127 odds, but never wrong
        raise RuntimeError("derived a reserved id; run the demo again")
    return value


def _fx_convert(amount: int, source: Currency, target: Currency, rate: Decimal) -> int:
    """`amount` of `source` in `target` at `rate` (source per target), rounded down.

    Rounding down is the one named rounding: the customer never receives more than the rate
    gives; the unconverted fraction stays in the FX desk's source-currency account.
    """
    scale = Decimal(10) ** (target.exponent - source.exponent)
    exact = Decimal(amount) * scale / rate
    return int(exact.to_integral_value(rounding=ROUND_DOWN))


class _Demo:
    """One run of the demo on an open ledger; every id derives from `run_id`."""

    def __init__(self, ledger: tb.Ledger, run_id: int) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.accounts: dict[str, _DemoAccount] = {}
        for code in DEMO_CURRENCIES:
            unit = currency(code)
            for role in _ROLES:
                key = f"{role.key}_{code.lower()}"
                self.accounts[key] = _DemoAccount(
                    key=key,
                    label=role.label,
                    currency=unit,
                    id=_derive_id(run_id, f"account:{key}"),
                    code=role.code,
                    flags=role.flags,
                )
        self.steps: list[_Step] = []

    # -- helpers --

    def money(self, text: str, code: str) -> int:
        return parse_amount(text, code)

    def transfer(
        self,
        name: str,
        debit: str,
        credit: str,
        amount: int,
        code: TransferCode,
        flags: tb.TransferFlags = tb.TransferFlags.NONE,
        *,
        pending_id: int = 0,
        timeout_s: int = 0,
    ) -> tb.Transfer:
        debit_account, credit_account = self.accounts[debit], self.accounts[credit]
        return tb.Transfer(
            id=_derive_id(self.run_id, f"transfer:{name}"),
            debit_account_id=debit_account.id,
            credit_account_id=credit_account.id,
            amount=amount,
            pending_id=pending_id,
            user_data_128=self.run_id,
            timeout=timeout_s,
            ledger=debit_account.currency.ledger,
            code=code,
            flags=flags,
        )

    def describe(self, transfer: tb.Transfer) -> str:
        debit = self._by_id(transfer.debit_account_id)
        credit = self._by_id(transfer.credit_account_id)
        amount = format_amount(transfer.amount, debit.currency, group=True)
        kind = ""
        if transfer.flags & tb.TransferFlags.PENDING:
            kind = " (pending)"
        elif transfer.flags & tb.TransferFlags.POST_PENDING_TRANSFER:
            kind = " (post)"
        elif transfer.flags & tb.TransferFlags.VOID_PENDING_TRANSFER:
            kind = " (void)"
        return f"{debit.label} -> {credit.label}: {amount} {debit.currency.code}{kind}"

    def _by_id(self, account_id: int) -> _DemoAccount:
        return next(a for a in self.accounts.values() if a.id == account_id)

    def balance(self, key: str) -> tb.Account:
        found = self.ledger.lookup_accounts([self.accounts[key].id])
        if len(found) != 1:
            raise RuntimeError(f"demo account {key} is missing from the ledger")
        return found[0]

    def net_text(self, key: str) -> str:
        account = self.balance(key)
        net = account.credits_posted - account.debits_posted
        unit = self.accounts[key].currency
        return f"{format_amount(net, unit, group=True)} {unit.code}"

    def submit(
        self, name: str, title: str, transfers: Sequence[tb.Transfer], expected: Sequence[str]
    ) -> _Step:
        results = self.ledger.create_transfers(transfers)
        step = _Step(
            name=name,
            title=title,
            lines=[self.describe(t) for t in transfers],
            statuses=[_status_name(r.status) for r in results],
            expected=list(expected),
        )
        self.steps.append(step)
        return step

    # -- the story --

    def run(self) -> None:
        self.open_accounts()
        self.top_up()
        self.convert_currency()
        self.convert_currency_without_liquidity()
        self.pay_with_escrow()
        self.cancel_order()
        self.overdraw()

    def open_accounts(self) -> None:
        accounts = [
            tb.Account(
                id=a.id,
                user_data_128=self.run_id,
                ledger=a.currency.ledger,
                code=a.code,
                flags=a.flags,
            )
            for a in self.accounts.values()
        ]
        results = self.ledger.create_accounts(accounts)
        self.steps.append(
            _Step(
                name="open_accounts",
                title="Open accounts: a bank settlement account, two customer wallets "
                "(no overdraft), a merchant (with balance history) and an FX desk, per currency",
                lines=[
                    f"{a.label} ({a.currency.code}, ledger {a.currency.ledger})"
                    for a in self.accounts.values()
                ],
                statuses=[_status_name(r.status) for r in results],
                expected=["created"] * len(accounts),
            )
        )

    def top_up(self) -> None:
        self.submit(
            "top_ups",
            "Top-ups from the bank: three single transfers in one batch",
            [
                self.transfer(
                    "top_up:alice",
                    "bank_cny",
                    "alice_cny",
                    self.money("2000.00", "CNY"),
                    TransferCode.TOP_UP,
                ),
                self.transfer(
                    "top_up:bob",
                    "bank_cny",
                    "bob_cny",
                    self.money("10000.00", "CNY"),
                    TransferCode.TOP_UP,
                ),
                self.transfer(
                    "top_up:fx_float",
                    "bank_usd",
                    "fx_usd",
                    self.money("1000.00", "USD"),
                    TransferCode.TOP_UP,
                ),
            ],
            ["created"] * 3,
        )

    def _fx_chain(self, name: str, who: str, cny_text: str) -> list[tb.Transfer]:
        cny, usd = currency("CNY"), currency("USD")
        cny_amount = self.money(cny_text, "CNY")
        usd_amount = _fx_convert(cny_amount, cny, usd, FX_RATE_CNY_PER_USD)
        return [
            self.transfer(
                f"{name}:sell_cny",
                f"{who}_cny",
                "fx_cny",
                cny_amount,
                TransferCode.FX_CONVERSION,
                tb.TransferFlags.LINKED,
            ),
            self.transfer(
                f"{name}:buy_usd", "fx_usd", f"{who}_usd", usd_amount, TransferCode.FX_CONVERSION
            ),
        ]

    def convert_currency(self) -> None:
        self.submit(
            "fx_conversion",
            f"FX: Alice converts CNY to USD at {FX_RATE_CNY_PER_USD} CNY/USD, "
            "as two linked transfers (all or nothing)",
            self._fx_chain("fx:alice", "alice", "710.00"),
            ["created", "created"],
        )

    def convert_currency_without_liquidity(self) -> None:
        before = self.net_text("bob_cny")
        chain = self._fx_chain("fx:bob", "bob", "7810.00")
        step = self.submit(
            "fx_conversion_fails",
            "FX that fails on purpose: Bob asks for more USD than the FX desk holds",
            chain,
            ["linked_event_failed", "exceeds_credits"],
        )
        after = self.net_text("bob_cny")
        found = self.ledger.lookup_transfers([t.id for t in chain])
        step.notes.append(
            f"nothing moved: Bob's CNY wallet was {before} and is {after}; "
            f"{len(found)} of {len(chain)} transfers of the chain exist"
        )

    def pay_with_escrow(self) -> None:
        hold = self.transfer(
            "escrow:hold",
            "alice_cny",
            "merchant_cny",
            self.money("300.00", "CNY"),
            TransferCode.PAYMENT,
            tb.TransferFlags.PENDING,
            timeout_s=ESCROW_TIMEOUT_S,
        )
        step = self.submit(
            "escrow_hold",
            "Guaranteed transaction: Alice's 300.00 CNY is held (pending) until she confirms "
            "receipt",
            [hold],
            ["created"],
        )
        alice = self.balance("alice_cny")
        step.notes.append(
            f"Alice's wallet: {format_amount(alice.debits_pending, 'CNY', group=True)} CNY held; "
            f"the merchant sees it as incoming, not yet spendable"
        )
        post = self.transfer(
            "escrow:post",
            "alice_cny",
            "merchant_cny",
            self.money("250.00", "CNY"),
            TransferCode.PAYMENT,
            tb.TransferFlags.POST_PENDING_TRANSFER,
            pending_id=hold.id,
        )
        step = self.submit(
            "escrow_partial_post",
            "Alice confirms receipt of part of the order: 250.00 CNY is posted to the merchant, "
            "the other 50.00 CNY returns to her",
            [post],
            ["created"],
        )
        step.notes.append(f"Alice's wallet is now {self.net_text('alice_cny')}")

    def cancel_order(self) -> None:
        amount = self.money("120.00", "CNY")
        hold = self.transfer(
            "order:hold",
            "bob_cny",
            "merchant_cny",
            amount,
            TransferCode.PAYMENT,
            tb.TransferFlags.PENDING,
            timeout_s=ESCROW_TIMEOUT_S,
        )
        self.submit(
            "order_hold",
            "Bob orders for 120.00 CNY: the amount is held (pending)",
            [hold],
            ["created"],
        )
        void = self.transfer(
            "order:void",
            "bob_cny",
            "merchant_cny",
            amount,
            TransferCode.PAYMENT,
            tb.TransferFlags.VOID_PENDING_TRANSFER,
            pending_id=hold.id,
        )
        step = self.submit(
            "order_void", "Bob cancels the order: the hold is voided", [void], ["created"]
        )
        bob = self.balance("bob_cny")
        step.notes.append(
            f"Bob's wallet: {self.net_text('bob_cny')}, "
            f"{format_amount(bob.debits_pending, 'CNY', group=True)} CNY held"
        )

    def overdraw(self) -> None:
        self.submit(
            "overdraft_rejected",
            "Bob tries to pay the merchant 50.00 USD with an empty USD wallet",
            [
                self.transfer(
                    "overdraft:bob",
                    "bob_usd",
                    "merchant_usd",
                    self.money("50.00", "USD"),
                    TransferCode.PAYMENT,
                )
            ],
            ["exceeds_credits"],
        )

    # -- reading back --

    def balances(self) -> list[tuple[_DemoAccount, tb.Account]]:
        ids = [a.id for a in self.accounts.values()]
        by_id = {account.id: account for account in self.ledger.lookup_accounts(ids)}
        return [(a, by_id[a.id]) for a in self.accounts.values() if a.id in by_id]

    def merchant_history(self) -> list[tb.AccountBalance]:
        query = tb.AccountFilter(
            account_id=self.accounts["merchant_cny"].id,
            user_data_128=0,
            user_data_64=0,
            user_data_32=0,
            code=0,
            timestamp_min=0,
            timestamp_max=0,
            limit=HISTORY_SHOWN_MAX,
            flags=tb.AccountFilterFlags.DEBITS | tb.AccountFilterFlags.CREDITS,
        )
        return self.ledger.get_account_balances(query)


def _flag_names(flags: tb.AccountFlags) -> list[str]:
    return [f.name.lower() for f in tb.AccountFlags if f.value and f.name and f in flags]


_FLAG_LABELS: Final = {
    tb.AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS: "no overdraft",
    tb.AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS: "no overcredit",
    tb.AccountFlags.HISTORY: "history",
    tb.AccountFlags.CLOSED: "closed",
}


def _flag_labels(flags: tb.AccountFlags) -> str:
    return ", ".join(label for flag, label in _FLAG_LABELS.items() if flag in flags) or "-"


def _balance_row(demo_account: _DemoAccount, account: tb.Account) -> dict[str, Any]:
    unit = demo_account.currency
    net = account.credits_posted - account.debits_posted
    return {
        "key": demo_account.key,
        "label": demo_account.label,
        "id": str(account.id),
        "ledger": account.ledger,
        "currency": unit.code,
        "code": int(account.code),
        "flags": _flag_names(account.flags),
        "debits_pending": str(account.debits_pending),
        "debits_posted": str(account.debits_posted),
        "credits_pending": str(account.credits_pending),
        "credits_posted": str(account.credits_posted),
        "net": format_amount(net, unit),
    }


def _print_steps(console: Console, steps: Sequence[_Step]) -> None:
    for number, step in enumerate(steps, start=1):
        verdict = "[green]as expected[/]" if step.as_expected else "[bold red]UNEXPECTED[/]"
        console.print(f"\n[bold]{number}. {escape(step.title)}[/]  ({verdict})")
        for line, status, expected in zip(step.lines, step.statuses, step.expected, strict=False):
            style = "green" if status == "created" else "yellow"
            shown = f"[{style}]{status:<{STATUS_COLUMN_CHARS}}[/]"
            if status != expected:
                shown += f"[bold red](expected {expected})[/] "
            console.print(f"   {shown} {escape(line)}")
        for note in step.notes:
            console.print(f"   [dim]-> {escape(note)}[/]")


def _print_balances(console: Console, rows: Sequence[tuple[_DemoAccount, tb.Account]]) -> None:
    table = Table(
        title="Balances (net = credits posted - debits posted)",
        title_justify="left",
        caption="Wallets are what the operator owes its customers, so they are credit-normal; "
        "the bank settlement account mirrors money at the bank and is debit-normal.",
        caption_justify="left",
    )
    table.add_column("Account", no_wrap=True)
    table.add_column("Cur")
    table.add_column("Rules", no_wrap=True)
    for heading in ("Debits posted", "Credits posted", "Held (dr pend.)", "Incoming", "Net"):
        table.add_column(heading, justify="right", overflow="fold")
    for demo_account, account in rows:
        unit = demo_account.currency

        def text(amount: int, unit: Currency = unit) -> str:
            return format_amount(amount, unit, group=True)

        table.add_row(
            demo_account.label,
            unit.code,
            _flag_labels(account.flags),
            text(account.debits_posted),
            text(account.credits_posted),
            text(account.debits_pending),
            text(account.credits_pending),
            text(account.credits_posted - account.debits_posted),
        )
    console.print()
    console.print(table)


def _print_history(console: Console, history: Sequence[tb.AccountBalance]) -> None:
    table = Table(
        title="Merchant CNY balance history (the account has the `history` flag)",
        title_justify="left",
    )
    table.add_column("After transfer at (ns)", justify="right")
    table.add_column("Incoming (cr pending)", justify="right")
    table.add_column("Credits posted", justify="right")
    for entry in history:
        table.add_row(
            str(entry.timestamp),
            format_amount(entry.credits_pending, "CNY", group=True),
            format_amount(entry.credits_posted, "CNY", group=True),
        )
    console.print()
    console.print(table)


def _verify_table(report: tb.VerifyReport) -> Table:
    table = Table(title="Per-ledger sums", title_justify="left")
    table.add_column("Ledger", justify="right")
    table.add_column("Cur")
    for heading in ("Debits posted", "Credits posted", "Debits pending", "Credits pending"):
        table.add_column(heading, justify="right", overflow="fold")
    table.add_column("Balanced")
    for ledger, sums in sorted(report.ledgers.items()):
        balanced = (
            sums["debits_posted"] == sums["credits_posted"]
            and sums["debits_pending"] == sums["credits_pending"]
        )
        table.add_row(
            str(ledger),
            _currency_code(ledger),
            *(
                _amount_text(sums[name], ledger)
                for name in ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
            ),
            "[green]yes[/]" if balanced else "[bold red]NO[/]",
        )
    return table


def _print_verify(console: Console, report: tb.VerifyReport) -> None:
    console.print()
    console.print(_verify_table(report))
    console.print(
        f"{report.accounts:,} accounts, {report.transfers:,} transfers, "
        f"{report.journal_ops:,} journal operations checked"
    )
    if report.ok:
        console.print(
            "[bold green]verify: ok[/] - debits equal credits in every ledger, every balance "
            "equals the sum of its transfers, and a full replay of the journal rebuilds the state"
        )
        return
    console.print(f"[bold red]verify: FAILED[/] - {len(report.problems)} problem(s):")
    for problem in report.problems:
        console.print(f"   - {escape(problem)}")


# --- commands -------------------------------------------------------------------------------


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Directory for the demo's data; the ledger journal is <data-dir>/ledger and "
            "the SQL store <data-dir>/puhui.sqlite. Default: $PUHUI_DATA_DIR or ./puhui-data "
            "(with $PUHUI_LEDGER_URL and $PUHUI_DATABASE_URL if set).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Also print one JSON object as the last line.")
    ] = False,
) -> None:
    """Tour the ledger (two currencies, FX, a failing chain, two-phase payments), then the
    payments service (KYC, top-up, P2P, QR, escrow with auto-confirm and a refund,
    withdrawal), then risk control (step-up, a case, a takeover stopped), then verify."""
    with _reported_errors():
        settings = Settings.from_env()
        if data_dir is not None:
            _make_data_dir(data_dir)
            url = str(data_dir / "ledger")
            database_url = f"sqlite:///{data_dir / 'puhui.sqlite'}"
        else:
            _make_data_dir(settings.data_dir)
            url = settings.ledger_url
            database_url = settings.database_url
        console = _console()
        # One clock for the ledger and the payments service: it starts at the real time (the
        # ledger never goes back in time) and jumps when the payments tour waits for a timer.
        clock = ManualClock(time.time_ns())
        with opened_store(database_url):
            pass  # a store that cannot be opened stops the demo before it writes the ledger
        run_id = tb.id()
        console.print(f"[bold]Puhui demo[/] - ledger {escape(_display_url(url))}")
        console.print(f"run {run_id} (all ids of this run derive from it)")
        # On a terminal, a line that says why the first run is quiet for a minute or two: the
        # kernels compile then (once per checkout). Not printed elsewhere (transient).
        with console.status(DEMO_RUNNING), tb.open(url, clock=clock) as ledger:
            tour = _Demo(ledger, run_id)
            tour.run()
            balances = tour.balances()
            history = tour.merchant_history()
            with payments_service(database_url, ledger, clock) as payments:
                payments_tour = PaymentsTour(payments, clock, run_id)
                payments_tour.run()
                report = tb.verify(ledger)
                payments_tour.check_books(report)
            risk_tour = RiskTour(database_url, ledger, clock, run_id, data_dir or settings.data_dir)
            risk_tour.run()
            report = tb.verify(ledger)
        console.rule("[bold]Ledger[/]")
        _print_steps(console, tour.steps)
        _print_balances(console, balances)
        _print_history(console, history)
        print_payments(console, payments_tour, _display_url(database_url))
        print_risk(console, risk_tour)
        console.print()
        console.rule("[bold]Verify the whole ledger[/]")
        _print_verify(console, report)
        steps_ok = (
            all(step.as_expected for step in tour.steps) and payments_tour.ok and risk_tour.ok
        )
        if not steps_ok:
            console.print("[bold red]demo: a step did not end as expected[/]")
        ok = report.ok and steps_ok
        if as_json:
            _emit_json(
                {
                    "command": "demo",
                    "ok": ok,
                    "ledger": _display_url(url),
                    "run_id": str(run_id),
                    "steps": [
                        {
                            "name": step.name,
                            "statuses": step.statuses,
                            "expected": step.expected,
                            "as_expected": step.as_expected,
                        }
                        for step in tour.steps
                    ],
                    "balances": [_balance_row(a, account) for a, account in balances],
                    "verify": report.to_dict(),
                    "payments": {
                        "database": _display_url(database_url),
                        **payments_tour.to_json(),
                    },
                    "risk": risk_tour.to_json(),
                }
            )
        raise typer.Exit(EXIT_OK if ok else EXIT_PROBLEM)


PathOrUrl = Annotated[
    str | None,
    typer.Argument(
        help="Ledger journal: a SQLite file, sqlite:///path or postgresql+psycopg://... "
        "Default: $PUHUI_LEDGER_URL, else <data dir>/ledger "
        "(data dir: $PUHUI_DATA_DIR, else ./puhui-data/).",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Also print one JSON object as the last line.")
]


@ledger_app.command("verify")
def ledger_verify(path_or_url: PathOrUrl = None, as_json: AsJson = False) -> None:
    """Check the ledger's invariants; exit 0 if they hold, 1 if not (a damaged journal
    included: the report names its `journal_corrupt` problem)."""
    with _reported_errors():
        url = path_or_url or Settings.from_env().ledger_url
        try:
            with _open_existing(url) as ledger:
                report = tb.verify(ledger)
        except tb.JournalCorruptError as error:  # what verify is there to find: a failed check
            report = tb.VerifyReport(
                ok=False,
                accounts=0,
                transfers=0,
                journal_ops=0,
                problems=[f"{error.code}: {error.message}"],
            )
        console = _console()
        console.print(f"[bold]Ledger[/] {escape(_display_url(url))}")
        _print_verify(console, report)
        if as_json:
            _emit_json(
                {"command": "ledger verify", "ledger": _display_url(url), **report.to_dict()}
            )
        raise typer.Exit(EXIT_OK if report.ok else EXIT_PROBLEM)


@ledger_app.command("info")
def ledger_info(path_or_url: PathOrUrl = None, as_json: AsJson = False) -> None:
    """Describe a ledger: accounts, transfers, last journal operation, state directory."""
    with _reported_errors():
        url = path_or_url or Settings.from_env().ledger_url
        with _open_existing(url) as ledger:

            def counts(engine: Any) -> tuple[int, int]:
                return int(engine.n_accounts), int(engine.n_transfers)

            accounts, transfers = ledger.read_state(counts)
            info: dict[str, Any] = {
                "ledger": _display_url(url),
                "journal_identity": ledger.journal.identity,
                "last_journal_op": ledger.last_op,
                "accounts": accounts,
                "transfers": transfers,
                "state_dir": str(ledger.state_dir),
            }
        table = Table(show_header=False, title="Ledger", title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in info.items():
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            table.add_row(key.replace("_", " "), escape(shown))
        _console().print(table)
        if as_json:
            _emit_json({"command": "ledger info", **info})


@app.command()
def version(as_json: AsJson = False) -> None:
    """Print Puhui's version."""
    try:
        number = metadata.version("puhui")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        number = "0+unknown"
    typer.echo(f"puhui {number}")
    if as_json:
        _emit_json({"command": "version", "version": number})


register_platform_commands(app)  # serve, tenant, key, audit (puhui._cli_platform)


def main() -> None:
    """Entry point of the `puhui` console script."""
    app(prog_name="puhui")


if __name__ == "__main__":
    main()
