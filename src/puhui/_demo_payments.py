"""The payments part of ``puhui demo``: the payments service (issue #4) on the demo's ledger.

After the ledger tour, ``puhui demo`` opens the SQL store (by default a SQLite file in the
data directory) and walks a buyer, a second customer and a merchant through the service:
KYC, a bank top-up, P2P by phone number, a payment by scanning the merchant's QR code, two
marketplace orders with escrow (one confirmed by the auto-confirm timer, one partly
refunded), a withdrawal, and last the accounting identity of the run.

One ``ManualClock`` drives the service and the ledger, so the tour can jump ten days ahead
for the auto-confirm timer. Phone numbers, national ids, card tokens and idempotency keys
derive from the run id, so the demo can run again and again on the same data. Platform
accounts (bank settlement, escrow, fee revenue) are shared by every run: the identity is
checked on what changed during this run.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import puhui.ledger as tb
from puhui._cli_common import opened_store
from puhui.clock import ManualClock
from puhui.money import format_amount, parse_amount
from puhui.payments import (
    AccountCode,
    BankCard,
    BillerKind,
    Bills,
    Checkout,
    Customer,
    Fulfilment,
    KycLevel,
    Merchant,
    Operation,
    OperationKind,
    OperationStatus,
    Order,
    Payee,
    Payments,
    SimulatedBank,
    SimulatedBiller,
    merchant_qr,
)

__all__ = ["PaymentsTour", "payments_service", "print_payments"]

CURRENCY: Final = "CNY"
MERCHANT_FEE_BPS: Final = 60
BILLER_CODE: Final = "DEMO-WATER"
WATER_BILL: Final = 86_40
"""The demo household's water bill (unit: fen; 86.40 CNY)."""
"""The demo's water company (shared by every run, like the platform's accounts)."""
"""The merchant's fee on escrow releases (unit: basis points; 60 = 0.60 %)."""
NS_PER_S: Final = 10**9
STATUS_COLUMN_CHARS: Final = 20
"""Width of the status column in the step listing, as in the ledger tour (unit: characters)."""
COMPLETED: Final = str(OperationStatus.COMPLETED)
NEW_ACCOUNTS: Final = ("buyer_wallet", "friend_wallet", "merchant_receivable")
"""The tour's accounts that belong to parties registered in this run."""


@contextlib.contextmanager
def payments_service(
    database_url: str, ledger: tb.Ledger, clock: ManualClock
) -> Iterator[Payments]:
    """The payments service on the SQL store at ``database_url`` (migrated to the newest
    schema) and ``ledger``, with a simulated bank that always succeeds; the engine is disposed
    on exit. (``PaymentsTour`` finishes what a crashed earlier run left half-way, once its
    checkout and bill flows are attached: they carry orders' and bills' operations.)"""
    with opened_store(database_url) as engine:
        yield Payments(engine, ledger, clock=clock, bank=SimulatedBank(clock))


@dataclass(slots=True)
class PaymentStep:
    """One step of the tour: what was done (one line each), how each ended and how each was
    expected to end."""

    name: str
    title: str
    lines: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def as_expected(self) -> bool:
        return self.statuses == self.expected

    def add(self, line: str, status: str, expected: str) -> None:
        self.lines.append(line)
        self.statuses.append(str(status))  # plain text, also for a StrEnum status
        self.expected.append(expected)


@dataclass(frozen=True, slots=True)
class BalanceRow:
    """An account's posted balance (credits - debits, minor units) before and after the run."""

    key: str
    label: str
    before: int
    after: int

    @property
    def change(self) -> int:
        return self.after - self.before


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """The run's accounting identity, on what changed during the run (minor units):
    wallets + merchant + escrow + fee revenue == -(bank settlement) == top-ups - withdrawals."""

    books: int
    """Change of the wallets, the merchant's receivable, escrow and fee revenue together."""
    bank_settlement: int
    """Change of the bank settlement account (negative: money arrived at the bank)."""
    top_ups_minus_withdrawals: int
    """Completed top-ups minus completed withdrawals of this run."""
    verify_ok: bool

    @property
    def holds(self) -> bool:
        return self.books == -self.bank_settlement == self.top_ups_minus_withdrawals

    @property
    def ok(self) -> bool:
        return self.holds and self.verify_ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "holds": self.holds,
            "books": self.books,
            "bank_settlement": self.bank_settlement,
            "top_ups_minus_withdrawals": self.top_ups_minus_withdrawals,
            "verify_ok": self.verify_ok,
        }


def _cny(amount: int) -> str:
    return f"{format_amount(amount, CURRENCY, group=True)} {CURRENCY}"


def _signed(amount: int) -> str:
    return ("+" if amount > 0 else "") + _cny(amount)


def _when(now_ns: int) -> str:
    return datetime.fromtimestamp(now_ns // NS_PER_S, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


class PaymentsTour:
    """One run of the payments tour on an open service; everything derives from ``run_id``."""

    buyer: Customer
    buyer_card: BankCard
    friend: Customer
    merchant: Merchant

    def __init__(self, payments: Payments, clock: ManualClock, run_id: int) -> None:
        self.payments = payments
        self.checkout = Checkout(payments)
        self.bills = Bills(payments, SimulatedBiller(clock, amount=WATER_BILL))
        self.bills.register_biller(BILLER_CODE, "City Water", BillerKind.WATER)
        payments.recover()  # what a crashed earlier run left half-way, its flows attached
        self.clock = clock
        self.run_id = run_id
        self.steps: list[PaymentStep] = []
        self.funding: list[Operation] = []
        """Top-ups and withdrawals of this run (the money that crossed the bank)."""
        self.before: dict[str, int] = {}
        self.balances: list[BalanceRow] = []
        self.identity: IdentityCheck | None = None

    # -- helpers --

    def money(self, text: str) -> int:
        return parse_amount(text, CURRENCY)

    def key(self, name: str) -> str:
        """An idempotency key of this run."""
        return f"demo-{self.run_id:032x}-{name}"

    def digits(self, name: str, count: int) -> str:
        """``count`` decimal digits that are a pure function of the run and ``name``."""
        digest = hashlib.blake2b(
            self.run_id.to_bytes(16, "little") + name.encode(),
            digest_size=16,
            person=b"puhui-demo-pay",
        ).digest()
        return f"{int.from_bytes(digest, 'little') % 10**count:0{count}d}"

    def step(self, name: str, title: str) -> PaymentStep:
        step = PaymentStep(name, title)
        self.steps.append(step)
        return step

    def wallet(self, customer: Customer) -> int:
        return self.payments.balance(customer.id, CURRENCY).posted

    def receivable(self) -> int:
        return self.payments.merchant_balance(self.merchant.id, CURRENCY).posted

    def platform(self, code: AccountCode) -> int:
        return self.payments.platform_balance(code, CURRENCY).posted

    def accounts(self) -> dict[str, tuple[str, int]]:
        """The accounts the tour watches: key -> (label, posted balance now)."""
        return {
            "buyer_wallet": (
                f"{self.buyer.display_name}'s wallet (buyer)",
                self.wallet(self.buyer),
            ),
            "friend_wallet": (f"{self.friend.display_name}'s wallet", self.wallet(self.friend)),
            "merchant_receivable": (f"{self.merchant.name}'s receivable", self.receivable()),
            "escrow": ("Escrow (platform)", self.platform(AccountCode.ESCROW)),
            "fee_revenue": ("Fee revenue (platform)", self.platform(AccountCode.FEE_REVENUE)),
            "biller_clearing": (
                "City Water's clearing (owed to the biller)",
                self.bills.clearing_balance(BILLER_CODE, CURRENCY).posted,
            ),
            "bank_settlement": (
                "Bank settlement (platform)",
                self.platform(AccountCode.BANK_SETTLEMENT),
            ),
        }

    def changed(self, key: str) -> int:
        """How much an account's balance changed since the tour's money started to move."""
        return self.accounts()[key][1] - self.before[key]

    # -- the story --

    def run(self) -> None:
        self.register_parties()
        self.before = {key: balance for key, (_, balance) in self.accounts().items()}
        self.check_new_accounts_empty()
        self.top_up()
        self.pay_a_friend()
        self.pay_by_qr()
        order = self.order_with_escrow()
        order = self.ship(order)
        self.auto_confirm(order)
        order = self.second_order()
        self.partial_refund(order)
        self.confirm_rest(order)
        self.pay_water_bill()
        self.withdraw()

    def register_parties(self) -> None:
        step = self.step(
            "register_parties",
            "Two customers verified to KYC level 2 and a merchant with a 0.60 % fee",
        )
        self.buyer, self.buyer_card = self._verified_customer(step, "buyer", "Mei Lin", "138")
        self.friend, _ = self._verified_customer(step, "friend", "Jun Wang", "139")
        p = self.payments
        self.merchant = p.register_merchant(
            "Tea Garden", "food", MERCHANT_FEE_BPS, f"demo-settle-{self.run_id:032x}"
        )
        fee_ok = self.merchant.fee_bps == MERCHANT_FEE_BPS
        step.add(
            f"{self.merchant.name} (merchant, fee {self.merchant.fee_bps} bps), "
            f"QR code {merchant_qr(self.merchant.id)}",
            "registered" if fee_ok else f"fee {self.merchant.fee_bps} bps",
            "registered",
        )
        limits = p.options.kyc_limits[KycLevel.FULL]
        step.notes.append(
            f"level 2 allows up to {limits.single_payment:,} {CURRENCY} a payment and "
            f"{limits.daily_outflow:,} {CURRENCY} a day"
        )

    def check_new_accounts_empty(self) -> None:
        """The new parties' ledger accounts hold nothing yet (they would if the SQL store were
        younger than the ledger: account ids derive from the customers' and merchants' SQL
        ids, which a new store hands out again)."""
        step = self.steps[-1]
        held = {key: self.before[key] for key in NEW_ACCOUNTS if self.before[key]}
        step.add(
            "their wallets and the merchant's receivable start empty",
            "empty" if not held else "not empty",
            "empty",
        )
        if held:
            step.notes.append(
                "the ledger already holds money for these new parties: the SQL store is younger "
                "than the ledger (delete both, or neither); the checks below count only changes"
            )

    def _verified_customer(
        self, step: PaymentStep, role: str, name: str, prefix: str
    ) -> tuple[Customer, BankCard]:
        p = self.payments
        customer = p.register_customer(prefix + self.digits(f"phone:{role}", 8), name)
        p.verify_identity(customer.id, self.digits(f"national-id:{role}", 18))
        card = p.bind_card(
            customer.id,
            f"demo-card-{self.run_id:032x}-{role}",
            "Rural Credit Bank",
            self.digits(f"last4:{role}", 4),
        )
        customer = p.verify_full(customer.id, biometric_passed=True)
        step.add(
            f"{name} ({customer.phone}): ID checked, card ending {card.last4} bound, "
            "biometric check passed",
            f"kyc {customer.kyc_level.name.lower()}",
            "kyc full",
        )
        return customer, card

    def top_up(self) -> None:
        amount = self.money("2000.00")
        op = self.payments.top_up(
            self.buyer.id, self.buyer_card.id, amount, CURRENCY, key=self.key("top-up")
        )
        self.funding.append(op)
        step = self.step(
            "top_up",
            "Top-up: Mei charges her card; the wallet is credited once the (simulated) bank "
            "confirms",
        )
        step.add(
            f"card ending {self.buyer_card.last4} -> Mei's wallet: {_cny(amount)}",
            op.status,
            COMPLETED,
        )
        step.notes.append(f"Mei's wallet: {_cny(self.wallet(self.buyer))}")

    def pay_a_friend(self) -> None:
        amount = self.money("150.00")
        op = self.payments.transfer(
            self.buyer.id,
            Payee(phone=self.friend.phone),
            amount,
            CURRENCY,
            key=self.key("p2p"),
            note="Dinner on Friday, thanks!",
        )
        step = self.step("p2p", "P2P: Mei sends money to Jun, found by his phone number")
        step.add(
            f"Mei -> Jun ({self.friend.phone}): {_cny(amount)}, note {op.note!r}",
            op.status,
            COMPLETED,
        )
        step.notes.append(f"Jun's wallet: {_cny(self.wallet(self.friend))}")

    def pay_by_qr(self) -> None:
        amount = self.money("38.50")
        qr = merchant_qr(self.merchant.id)
        op = self.payments.pay_merchant(self.buyer.id, qr, amount, CURRENCY, key=self.key("qr"))
        step = self.step("qr_payment", "In the shop: Mei scans Tea Garden's QR code and pays")
        step.add(f"Mei -> Tea Garden ({qr}): {_cny(amount)}", op.status, COMPLETED)
        step.notes.append(
            f"Tea Garden's receivable: {_cny(self.receivable())} (no fee yet: the fee on a "
            "merchant payment is taken when the merchant is settled)"
        )

    def order_with_escrow(self) -> Order:
        c = self.checkout
        amount = self.money("299.00")
        order = c.create_order(
            self.buyer.id,
            self.merchant.id,
            amount,
            CURRENCY,
            Fulfilment.EXPRESS,
            "Longjing tea, 250 g",
            key=self.key("order-1"),
        )
        step = self.step(
            "order_paid",
            "Order with escrow (guaranteed transaction): Mei pays, the money waits in escrow",
        )
        step.add(
            f"order {order.title!r} from Tea Garden, {_cny(amount)}, {order.fulfilment} delivery",
            str(order.status),
            "created",
        )
        op = c.pay_order(order.id, self.buyer.id, key=self.key("pay-order-1"))
        step.add(f"Mei pays: her wallet -> escrow {_cny(amount)}", op.status, COMPLETED)
        order = c.order(order.id)
        step.add("the order, once the money is in escrow", str(order.status), "paid")
        step.notes.append(
            f"escrow holds {_cny(order.in_escrow)} for this order "
            f"(escrow account {_signed(self.changed('escrow'))} in this run); Tea Garden's "
            f"receivable is still {_cny(self.receivable())}"
        )
        return order

    def ship(self, order: Order) -> Order:
        shipped = self.checkout.ship_order(order.id, self.merchant.id)
        step = self.step(
            "order_shipped", "Tea Garden ships the order: the auto-confirm timer starts"
        )
        step.add(f"ship {order.title!r} ({order.fulfilment})", str(shipped.status), "shipped")
        assert shipped.confirm_by_ns is not None
        days = (shipped.confirm_by_ns - self.clock.now_ns()) / (86_400 * NS_PER_S)
        step.notes.append(
            f"receipt confirms itself on {_when(shipped.confirm_by_ns)} ({days:g} days for "
            f"{order.fulfilment} delivery) unless Mei confirms or asks for a refund first"
        )
        return shipped

    def auto_confirm(self, order: Order) -> None:
        assert order.confirm_by_ns is not None
        merchant_before = self.receivable()
        fees_before = self.platform(AccountCode.FEE_REVENUE)
        start = self.clock.now_ns()
        self.clock.set(max(start, order.confirm_by_ns))
        self.payments.ledger.tick()
        self.checkout.run_timers()
        days = (self.clock.now_ns() - start) / (86_400 * NS_PER_S)
        step = self.step(
            "auto_confirm",
            f"{days:g} days later, no word from Mei: run_timers() confirms receipt (auto-confirm)",
        )
        finished = self.checkout.order(order.id)
        step.add("the order, after auto-confirm", str(finished.status), "finished")
        self._check_release(step, order.amount, merchant_before, fees_before)
        step.notes.append(
            f"the demo's clock jumped from {_when(start)} to {_when(self.clock.now_ns())}"
        )

    def _check_release(
        self, step: PaymentStep, amount: int, merchant_before: int, fees_before: int
    ) -> None:
        """The seller got ``amount`` less a 0.60 % fee and the fee went to fee revenue."""
        expected_fee = (amount * MERCHANT_FEE_BPS + 5_000) // 10_000  # half up, to the fen
        got = self.receivable() - merchant_before
        earned = self.platform(AccountCode.FEE_REVENUE) - fees_before
        step.add(
            f"escrow -> Tea Garden: {_cny(got)} ({_cny(amount)} less the fee)",
            "credited" if got == amount - expected_fee else f"got {_cny(got)}",
            "credited",
        )
        step.add(
            f"escrow -> fee revenue: {_cny(earned)} (0.60 % of {_cny(amount)}, "
            "rounded half up to the fen)",
            "credited" if earned == expected_fee else f"got {_cny(earned)}",
            "credited",
        )

    def second_order(self) -> Order:
        c = self.checkout
        amount = self.money("120.00")
        order = c.create_order(
            self.buyer.id,
            self.merchant.id,
            amount,
            CURRENCY,
            Fulfilment.EXPRESS,
            "Celadon tea set, 4 cups",
            key=self.key("order-2"),
        )
        step = self.step("second_order", "A second order: Mei pays and Tea Garden ships it")
        op = c.pay_order(order.id, self.buyer.id, key=self.key("pay-order-2"))
        step.add(
            f"Mei pays {order.title!r}: her wallet -> escrow {_cny(amount)}", op.status, COMPLETED
        )
        shipped = c.ship_order(order.id, self.merchant.id)
        step.add("Tea Garden ships it", str(shipped.status), "shipped")
        return shipped

    def partial_refund(self, order: Order) -> None:
        c = self.checkout
        amount = self.money("40.00")
        step = self.step(
            "partial_refund",
            "Partial refund: a cup arrived broken; Mei asks for part of the money back",
        )
        refund = c.request_refund(
            order.id, self.buyer.id, amount, "One cup arrived broken", key=self.key("refund")
        )
        step.add(
            f"Mei asks for {_cny(amount)} back: {refund.reason!r}", str(refund.status), "requested"
        )
        answered = c.answer_refund(refund.id, self.merchant.id, approve=True)
        step.add(
            f"Tea Garden approves: escrow -> Mei {_cny(amount)}", str(answered.status), "refunded"
        )
        left = c.order(order.id).in_escrow
        step.notes.append(
            f"escrow still holds {_cny(left)} for the order (the auto-confirm timer stands "
            "still while a refund is open)"
        )

    def confirm_rest(self, order: Order) -> None:
        c = self.checkout
        in_escrow = c.order(order.id).in_escrow
        merchant_before = self.receivable()
        fees_before = self.platform(AccountCode.FEE_REVENUE)
        step = self.step(
            "confirm_receipt",
            "Mei confirms receipt: escrow pays Tea Garden what is left, less the fee",
        )
        finished = c.confirm_receipt(order.id, self.buyer.id)
        step.add("the order, after Mei confirms", str(finished.status), "finished")
        self._check_release(step, in_escrow, merchant_before, fees_before)

    def pay_water_bill(self) -> None:
        household = self.digits("household", 10)
        binding = self.bills.bind(self.buyer.id, BILLER_CODE, household, "home")
        bill = self.bills.query_bill(self.buyer.id, binding.id)
        step = self.step(
            "water_bill",
            "Utility bill: Mei binds her household's water account, the bill is queried and "
            "paid; the biller writes it off and an e-receipt is issued",
        )
        if bill is None:
            step.add(f"the water bill of household {household}", "nothing due", "due")
            return
        op = self.bills.pay(self.buyer.id, binding.id, bill.bill_id, key=self.key("water"))
        step.add(
            f"Mei's wallet -> City Water, household {household}, {bill.period}: "
            f"{_cny(bill.amount)}",
            op.status,
            COMPLETED,
        )
        if op.status is OperationStatus.COMPLETED:
            receipt = self.bills.receipt(op.id)
            step.notes.append(f"e-receipt {receipt.receipt_no} for bill {receipt.bill_id}")
        again = self.bills.query_bill(self.buyer.id, binding.id)
        step.add("the same bill queried again", "paid" if again is None else "still due", "paid")

    def withdraw(self) -> None:
        amount = self.money("500.00")
        op = self.payments.withdraw(
            self.buyer.id, self.buyer_card.id, amount, CURRENCY, key=self.key("withdrawal")
        )
        self.funding.append(op)
        step = self.step(
            "withdrawal",
            "Withdrawal: held in Mei's wallet until the bank pays out to her card, then posted",
        )
        step.add(
            f"Mei's wallet -> card ending {self.buyer_card.last4}: {_cny(amount)}",
            op.status,
            COMPLETED,
        )
        step.notes.append(f"Mei's wallet: {_cny(self.wallet(self.buyer))}")

    def check_books(self, report: tb.VerifyReport) -> None:
        """The last step: balances, the run's accounting identity and the ledger's verify."""
        now = self.accounts()
        self.balances = [
            BalanceRow(key, label, self.before[key], balance)
            for key, (label, balance) in now.items()
        ]
        change = {row.key: row.change for row in self.balances}

        def completed(kind: OperationKind) -> int:
            return sum(
                op.amount
                for op in self.funding
                if op.kind is kind and op.status is OperationStatus.COMPLETED
            )

        books = sum(
            change[k]
            for k in (
                "buyer_wallet",
                "friend_wallet",
                "merchant_receivable",
                "escrow",
                "fee_revenue",
                "biller_clearing",
            )
        )
        identity = IdentityCheck(
            books=books,
            bank_settlement=change["bank_settlement"],
            top_ups_minus_withdrawals=completed(OperationKind.TOP_UP)
            - completed(OperationKind.WITHDRAWAL),
            verify_ok=report.ok,
        )
        self.identity = identity
        step = self.step(
            "accounting_identity",
            "Check the books of this run, then verify the ledger",
        )
        step.add(
            f"books {_cny(identity.books)} = at the bank {_cny(-identity.bank_settlement)} = "
            f"top-ups - withdrawals {_cny(identity.top_ups_minus_withdrawals)}",
            "holds" if identity.holds else "broken",
            "holds",
        )
        step.add(
            "verify the whole ledger (details at the end)", "ok" if report.ok else "failed", "ok"
        )
        step.notes.extend(
            [
                "books: what this run added to the wallets, the merchant's receivable, escrow, "
                "fee revenue and the biller's clearing account; at the bank: minus the change "
                "of the bank settlement account",
                f"top-ups {_cny(completed(OperationKind.TOP_UP))}, withdrawals "
                f"{_cny(completed(OperationKind.WITHDRAWAL))}; escrow changed by "
                f"{_cny(change['escrow'])}"
                + (": every order of the run is finished" if change["escrow"] == 0 else ""),
            ]
        )

    # -- reading back --

    @property
    def ok(self) -> bool:
        return (
            all(step.as_expected for step in self.steps)
            and self.identity is not None
            and self.identity.ok
        )

    def to_json(self) -> dict[str, Any]:
        """The tour for ``--json``: amounts are integers in minor units of ``currency``."""
        return {
            "ok": self.ok,
            "currency": CURRENCY,
            "steps": [
                {
                    "name": step.name,
                    "statuses": step.statuses,
                    "expected": step.expected,
                    "as_expected": step.as_expected,
                }
                for step in self.steps
            ],
            "balances": [
                {
                    "key": row.key,
                    "label": row.label,
                    "currency": CURRENCY,
                    "balance": row.after,
                    "change": row.change,
                }
                for row in self.balances
            ],
            "identity": None if self.identity is None else self.identity.to_json(),
        }


def _print_steps(console: Console, steps: Sequence[PaymentStep]) -> None:
    for number, step in enumerate(steps, start=1):
        verdict = "[green]as expected[/]" if step.as_expected else "[bold red]UNEXPECTED[/]"
        console.print(f"\n[bold]{number}. {escape(step.title)}[/]  ({verdict})")
        for line, status, expected in zip(step.lines, step.statuses, step.expected, strict=True):
            style = "green" if status == expected else "bold red"
            shown = f"[{style}]{escape(status):<{STATUS_COLUMN_CHARS}}[/]"
            if status != expected:
                shown += f"[bold red](expected {escape(expected)})[/] "
            console.print(f"   {shown} {escape(line)}")
        for note in step.notes:
            console.print(f"   [dim]-> {escape(note)}[/]")


def _balances_table(rows: Sequence[BalanceRow]) -> Table:
    table = Table(
        title=f"Payments balances in {CURRENCY} (credits posted - debits posted)",
        title_justify="left",
        caption="Customers and the merchant are new in every run; the platform's accounts are "
        "shared by all runs, so their balance includes earlier runs. The bank settlement "
        "account mirrors money at the bank (an asset), hence negative.",
        caption_justify="left",
    )
    table.add_column("Account", no_wrap=True)
    table.add_column("Before this run", justify="right")
    table.add_column("Change", justify="right")
    table.add_column("Balance", justify="right")
    for row in rows:
        table.add_row(
            escape(row.label),
            format_amount(row.before, CURRENCY, group=True),
            ("+" if row.change > 0 else "") + format_amount(row.change, CURRENCY, group=True),
            format_amount(row.after, CURRENCY, group=True),
        )
    return table


def print_payments(console: Console, tour: PaymentsTour, database: str) -> None:
    """The tour's steps and balances, for people."""
    console.print()
    console.rule("[bold]Payments service[/]")
    console.print(
        f"SQL store {escape(database)} (customers, orders, operations); the money moves in "
        "the ledger above. One manual clock drives the service and the ledger, so the tour "
        "can jump days ahead."
    )
    _print_steps(console, tour.steps)
    console.print()
    console.print(_balances_table(tour.balances))
