"""The payments service: parties, wallets and the operations that move their money.

Every operation follows one pattern (``docs/payments.md``):

1. check the request (parties, amounts, KYC limits) and ask risk (``decide``);
2. record the operation and its decision in SQL, under the caller's idempotency key, with
   the day's outflow reserved in the same transaction;
3. move the money in the ledger with transfer ids derived from the operation id;
4. record the outcome.

A crash between any two steps leaves a row that ``recover()`` finishes: resubmitting the
same transfer ids can never move money twice (the ledger answers ``EXISTS``), and the bank
is only ever queried about a reference once it may have been sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Final

import sqlalchemy as sa

from puhui import risk
from puhui.clock import Clock
from puhui.ledger import (
    AMOUNT_MAX as LEDGER_AMOUNT_MAX,
)
from puhui.ledger import (
    Account,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    LedgerClient,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
)
from puhui.ledger import id as ledger_id
from puhui.ledger import ids as ledger_ids
from puhui.money import Currency, currency
from puhui.store import payments as t
from puhui.store import unindexed

from . import _outflow
from ._errors import (
    AccountFrozenError,
    CardNotFoundError,
    CustomerNotFoundError,
    IdempotencyKeyReusedError,
    IdentityTakenError,
    InsufficientFundsError,
    InvalidPayloadError,
    KycLevelError,
    KycLimitExceededError,
    MerchantNotFoundError,
    OperationNotFoundError,
    OperationStateError,
    PaymentCodeInvalidError,
    PhoneTakenError,
    SamePartyError,
    StoreLedgerMismatchError,
)
from .funding import BankDirection, BankGateway, BankResult, BankStatus, BankTimeoutError
from .model import (
    FINAL_STATUSES,
    IDEMPOTENCY_KEY_CHARS_MAX,
    NOTE_CHARS_MAX,
    AccountCode,
    AccountKind,
    KycLevel,
    KycLimits,
    OperationKind,
    OperationStatus,
    PaymentsOptions,
    TransferCode,
    account_id,
    business_day,
    check_amount,
    check_text,
    merchant_account_id,
    normalize_phone,
    parse_qr,
    platform_account_id,
    request_fingerprint,
    transfer_id,
    wallet_account_id,
)

log = logging.getLogger("puhui.payments")

Decide = Callable[[Sequence[risk.RiskEvent]], list[risk.RiskDecision]]
FinishHook = Callable[[sa.Connection, "Operation", OperationStatus], None]

INTERNAL = risk.RiskDecision(risk.Decision.ACCEPT, 0, ("platform",), "internal", "internal")
"""The decision recorded on the platform's own movements (escrow releases and refunds):
they only carry out what a customer's decided operation and the order's rules imply."""

_S = OperationStatus
_CREATED_OR_EXISTS = (CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS)
_EXISTS_OTHERWISE: Final = frozenset(
    s for s in CreateTransferStatus if s.name.startswith("EXISTS_WITH_DIFFERENT_")
)
"""Ledger answers meaning the id is taken by a transfer of another shape: for leg 0 of an
accepted payment, recovery's fence or the payment itself (see ``Payments._pay``)."""
_LEG_MOVE = 0
"""Leg 0: the transfer that moves (or holds) the money."""
_LEG_SETTLE = 1
"""Leg 1: the post or void of a held leg 0."""

# Markers of a held operation claimed for one outcome (``pending`` with this error code).
_PASSED = "check_passed"
_FAILED_CHECK = "check_failed"
_REJECTED_REVIEW = "review_rejected_pending"
_LAPSING = "hold_lapsing"
_CHECK_MARKERS = frozenset({_PASSED, _FAILED_CHECK, _REJECTED_REVIEW, _LAPSING})
_POSTED_AFTER_CHECK = frozenset(
    {OperationKind.P2P, OperationKind.MERCHANT_PAYMENT, OperationKind.ORDER_PAYMENT}
)
"""Kinds whose hold is simply posted once the check is passed."""
_FENCED: Final = _POSTED_AFTER_CHECK
"""Kinds whose leg 0, resumed for a party frozen since, is fenced instead (``_pay``): the
payments a passed check simply posts, the same kinds."""
_DRIVEN_ELSEWHERE = frozenset({OperationKind.BILL_PAYMENT})
"""Kinds whose flow another module owns (``Bills`` registers it in ``_drivers``): without
it an operation of the kind is not touched (the plain path would pay a bill the biller
never wrote off, or fail one it did)."""
_FINISHED_ELSEWHERE: Final = {
    OperationKind.ORDER_PAYMENT: "checkout",
    OperationKind.REFUND: "checkout",
    OperationKind.ESCROW_RELEASE: "checkout",
}
"""Kinds whose outcome another module must record beside it, by the finish hook it
registers under this name (``Checkout``: the order paid, refunded, finished): without it an
operation of the kind is not touched (money would reach escrow for an order left unpaid —
closed later as unpaid, the money stuck — or leave it for an order that never learns)."""


opened_cached_max = 1_000_000
"""Most ledger accounts a ``Payments`` remembers as open (unit: accounts, ~110 B each)."""


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    phone: str
    display_name: str
    kyc_level: KycLevel
    frozen: bool
    created_at_ns: int = 0
    """When the customer registered (nanoseconds since the epoch)."""


@dataclass(frozen=True, slots=True)
class BankCard:
    id: int
    customer_id: int
    bank_name: str
    last4: str


@dataclass(frozen=True, slots=True)
class Merchant:
    id: int
    name: str
    category: str
    fee_bps: int
    frozen: bool


@dataclass(frozen=True, slots=True)
class Balance:
    """A ledger account's money, in minor units."""

    posted: int
    """Settled: credits posted minus debits posted."""
    held: int
    """Debits pending (held for a challenge, a review or a bank payout)."""

    @property
    def available(self) -> int:
        return self.posted - self.held


@dataclass(frozen=True, slots=True)
class Operation:
    """One recorded operation (what ``payments_operations`` holds, typed)."""

    id: int
    kind: OperationKind
    status: OperationStatus
    currency: str
    amount: int
    payer_customer_id: int | None
    payee_customer_id: int | None
    merchant_id: int | None
    card_id: int | None
    note: str
    decision: risk.Decision
    risk_score: int
    error_code: str | None
    hold_expires_at_ns: int | None
    order_id: int | None
    refund_id: int | None
    fee: int
    """The platform's fee taken out of ``amount`` (escrow releases, settlements)."""
    biller_id: int | None
    created_at_ns: int
    updated_at_ns: int

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Payee:
    """Who receives a P2P transfer: exactly one of a customer id, a phone number or a QR
    payload."""

    customer_id: int | None = None
    phone: str | None = None
    qr: str | None = None


@dataclass(frozen=True, slots=True)
class Channel:
    """Where a request came from, as risk control sees it (nothing here is stored with the
    operation, and none of it changes what the request means or its idempotency)."""

    device_id: str = ""
    ip: str = ""
    latitude: float | None = None
    """Where the customer is (degrees, WGS 84), when the app shares it."""
    longitude: float | None = None


NO_CHANNEL = Channel()


PAYMENT_CODE_INVALID: Final = "the payment code is unknown, used or expired"


def _party_account(account: int, cur: Currency, code: AccountCode, owner_id: int) -> Account:
    """A customer's wallet or a merchant's receivable: never below zero, with history."""
    return Account(
        id=account,
        ledger=cur.ledger,
        code=code,
        user_data_64=owner_id,
        flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    )


def _hex(value: int) -> str:
    return f"{value:032x}"


class Payments:
    """The payments service over one SQL engine, one ledger and one bank gateway."""

    def __init__(
        self,
        engine: sa.Engine,
        ledger: LedgerClient,
        *,
        clock: Clock,
        bank: BankGateway,
        decide: Decide = risk.decide,
        options: PaymentsOptions | None = None,
        new_id: Callable[[], int] = ledger_id,
        cases: risk.Cases | None = None,
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.bank = bank
        self.decide = decide
        self.options = options or PaymentsOptions()
        submit_timeout_s = getattr(bank, "submit_timeout_s", None)
        if submit_timeout_s is not None and not self.options.recovery_age_s > submit_timeout_s:
            # Recovery takes a reference the bank has not seen after ``recovery_age_s`` for
            # one that never arrived: a request still on its way would be paid as well.
            raise ValueError(
                f"recovery_age_s ({self.options.recovery_age_s} s) must be longer than the"
                f" bank gateway's submit_timeout_s ({submit_timeout_s} s)"
            )
        self.new_id = new_id
        self._platform_ready: set[str] = set()
        self._opened: OrderedDict[int, None] = OrderedDict()
        """Ledger accounts this service has opened or seen exist (accounts never go away),
        at most ``opened_cached_max``: the oldest are forgotten first (opening a forgotten
        one again is a ledger call that answers ``exists``)."""
        self._bind_to_ledger()
        self._drivers: dict[OperationKind, Callable[[Operation], Operation]] = {}
        """Flows other modules own (bills, settlement): ``_drive`` and ``recover`` use them."""
        self._finish_hooks: dict[str, FinishHook] = {}
        """Called in the transaction that records an operation's new status (checkout uses
        it to move its orders along with their money). Keyed by owner: a second ``Checkout``
        over the same service replaces the first's hook instead of running it twice."""
        self.cases = cases
        """Risk's case queue: a payment held for review opens a case (in the transaction
        that records the hold); an analyst's decision on it releases or returns the money."""
        if cases is not None:
            cases.on_decided("operation", self._carry_out_case)
            self._finish_hooks["risk_cases"] = self._open_case

    def new_ids(self, count: int) -> Sequence[int]:
        """``count`` new ids at once: with the default generator one block (one lock and one
        clock read), else ``new_id`` called ``count`` times."""
        if self.new_id is ledger_id:
            return ledger_ids(count)
        return [self.new_id() for _ in range(count)]

    def _bind_to_ledger(self) -> None:
        """A store and a ledger are one pair: record the ledger's identity in the store on
        first use, and refuse a ledger that is not the one the records belong to (account
        ids come from record ids, so customer 1 of a fresh store would otherwise inherit
        the wallet — and the money — of customer 1 of an old ledger)."""
        identity = self.ledger.identity
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(t.meta.c.value).where(t.meta.c.key == "ledger_identity")
            ).first()
            if row is None:
                if self._ledger_has_payments_accounts():
                    raise StoreLedgerMismatchError(
                        "this ledger already holds payments accounts of another SQL store"
                    )
                conn.execute(t.meta.insert().values(key="ledger_identity", value=identity))
                return
        if row.value != identity:
            raise StoreLedgerMismatchError(
                "this SQL store belongs to another ledger (journal identity differs)"
            )

    def _ledger_has_payments_accounts(self) -> bool:
        for code in AccountCode:
            found = self.ledger.query_accounts(
                QueryFilter(0, 0, 0, 0, int(code), 0, 0, 1, QueryFilterFlags.NONE)
            )
            if found:
                return True
        return False

    # --- parties ------------------------------------------------------------------------------

    def register_customer(
        self,
        phone: str,
        display_name: str,
        *,
        namespace: int = 0,
        on_created: Callable[[sa.Connection, int], None] | None = None,
    ) -> Customer:
        """A new customer (KYC level 0). Its phone (and later its national id) must be
        unique within ``namespace`` (0 unless a caller keeps several registries apart, as
        the open API does per tenant). ``on_created(conn, customer_id)`` runs in the
        transaction that creates the customer: what it writes commits with it, or neither."""
        phone = normalize_phone(phone)
        display_name = check_text(display_name, "display_name", 64)
        if type(namespace) is not int or not 0 <= namespace < 1 << 63:
            raise InvalidPayloadError("namespace must be an int from 0 to 2**63 - 1")
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(
                    t.customers.insert().values(
                        namespace=namespace,
                        phone=phone,
                        display_name=display_name,
                        kyc_level=int(KycLevel.UNVERIFIED),
                        national_id_hash=None,
                        frozen=False,
                        created_at_ns=self.clock.now_ns(),
                    )
                ).inserted_primary_key
                assert new_id is not None
                if on_created is not None:
                    on_created(conn, int(new_id[0]))
        except sa.exc.IntegrityError as error:
            raise PhoneTakenError("that phone number already has a customer") from error
        return self.customer(int(new_id[0]))

    def customer(self, customer_id: int) -> Customer:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.customers).where(t.customers.c.id == customer_id)
            ).first()
        if row is None:
            raise CustomerNotFoundError(f"no customer {customer_id}")
        return Customer(
            row.id,
            row.phone,
            row.display_name,
            KycLevel(row.kyc_level),
            row.frozen,
            int(row.created_at_ns),
        )

    def verify_identity(self, customer_id: int, national_id: str) -> Customer:
        """KYC level 1: the name and national id were checked (the id is kept only hashed)."""
        national_id = check_text(national_id, "national_id", 32)
        digest = hashlib.sha256(f"puhui-national-id\0{national_id}".encode()).hexdigest()
        current = self.customer(customer_id)
        namespace_of = (
            sa.select(t.customers.c.namespace)
            .where(t.customers.c.id == customer_id)
            .scalar_subquery()
        )
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(t.customers.c.id).where(
                    t.customers.c.national_id_hash == digest,
                    t.customers.c.namespace == namespace_of,
                )
            ).first()
            if row is not None and row.id != customer_id:
                raise IdentityTakenError("that national id belongs to another customer")
            if current.kyc_level >= KycLevel.BASIC:
                if row is None:
                    raise KycLevelError("the customer's identity is already verified")
                return current
            conn.execute(
                t.customers.update()
                .where(t.customers.c.id == customer_id)
                .values(kyc_level=int(KycLevel.BASIC), national_id_hash=digest)
            )
        return self.customer(customer_id)

    def verify_full(self, customer_id: int, *, biometric_passed: bool) -> Customer:
        """KYC level 2: identity verified, a bank card bound and a biometric check passed."""
        current = self.customer(customer_id)
        if current.kyc_level >= KycLevel.FULL:
            return current
        if current.kyc_level < KycLevel.BASIC:
            raise KycLevelError("verify the customer's identity first (level 1)")
        if not biometric_passed:
            raise KycLevelError("the biometric check did not pass")
        if not self.cards(customer_id):
            raise KycLevelError("bind a bank card first")
        with self.engine.begin() as conn:
            conn.execute(
                t.customers.update()
                .where(t.customers.c.id == customer_id)
                .values(kyc_level=int(KycLevel.FULL))
            )
        return self.customer(customer_id)

    def set_frozen(self, customer_id: int, frozen: bool) -> Customer:
        self.customer(customer_id)
        with self.engine.begin() as conn:
            conn.execute(
                t.customers.update().where(t.customers.c.id == customer_id).values(frozen=frozen)
            )
        return self.customer(customer_id)

    def bind_card(self, customer_id: int, card_token: str, bank_name: str, last4: str) -> BankCard:
        """Bind a bank card (the bank's token for it; the card number never reaches Puhui)."""
        self.customer(customer_id)
        card_token = check_text(card_token, "card_token", 64)
        bank_name = check_text(bank_name, "bank_name", 64)
        if not (isinstance(last4, str) and len(last4) == 4 and last4.isascii() and last4.isdigit()):
            raise InvalidPayloadError("last4 must be the card's last 4 digits")
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(t.bank_cards).where(
                    t.bank_cards.c.customer_id == customer_id,
                    t.bank_cards.c.card_token == card_token,
                )
            ).first()
            if existing is not None:  # binding again: the same card, or a mistake
                if (existing.bank_name, existing.last4) != (bank_name, last4):
                    raise InvalidPayloadError("that card is already bound with other details")
                return BankCard(existing.id, customer_id, existing.bank_name, existing.last4)
            new_id = conn.execute(
                t.bank_cards.insert().values(
                    customer_id=customer_id,
                    card_token=card_token,
                    bank_name=bank_name,
                    last4=last4,
                    created_at_ns=self.clock.now_ns(),
                )
            ).inserted_primary_key
        assert new_id is not None
        return BankCard(int(new_id[0]), customer_id, bank_name, last4)

    def cards(self, customer_id: int) -> list[BankCard]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.bank_cards)
                .where(t.bank_cards.c.customer_id == customer_id)
                .order_by(t.bank_cards.c.id)
            ).all()
        return [BankCard(r.id, r.customer_id, r.bank_name, r.last4) for r in rows]

    def register_merchant(
        self,
        name: str,
        category: str,
        fee_bps: int,
        settlement_card_token: str,
        *,
        on_created: Callable[[sa.Connection, int], None] | None = None,
    ) -> Merchant:
        """A new merchant; ``on_created(conn, merchant_id)`` runs in its transaction."""
        name = check_text(name, "name", 64)
        category = check_text(category, "category", 32)
        if type(fee_bps) is not int or not 0 <= fee_bps <= 10_000:
            raise InvalidPayloadError("fee_bps must be an int from 0 to 10000")
        settlement_card_token = check_text(settlement_card_token, "settlement_card_token", 64)
        with self.engine.begin() as conn:
            new_id = conn.execute(
                t.merchants.insert().values(
                    name=name,
                    category=category,
                    fee_bps=fee_bps,
                    settlement_card_token=settlement_card_token,
                    frozen=False,
                    created_at_ns=self.clock.now_ns(),
                )
            ).inserted_primary_key
            assert new_id is not None
            if on_created is not None:
                on_created(conn, int(new_id[0]))
        return self.merchant(int(new_id[0]))

    def set_merchant_frozen(self, merchant_id: int, frozen: bool) -> Merchant:
        """Freeze a merchant: no payment may reach it (held payments to it stay held), and
        settlement pays it nothing until it thaws (what it is owed waits)."""
        self.merchant(merchant_id)
        with self.engine.begin() as conn:
            conn.execute(
                t.merchants.update().where(t.merchants.c.id == merchant_id).values(frozen=frozen)
            )
        return self.merchant(merchant_id)

    def merchant(self, merchant_id: int) -> Merchant:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.merchants).where(t.merchants.c.id == merchant_id)
            ).first()
        if row is None:
            raise MerchantNotFoundError(f"no merchant {merchant_id}")
        return Merchant(row.id, row.name, row.category, row.fee_bps, row.frozen)

    # --- accounts -----------------------------------------------------------------------------

    def _ensure_platform(self, cur: Currency) -> None:
        if cur.code in self._platform_ready:
            return
        flags = {
            AccountCode.BANK_SETTLEMENT: AccountFlags.HISTORY,
            AccountCode.SUSPENSE: AccountFlags.HISTORY,
            AccountCode.ESCROW: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
            AccountCode.FEE_REVENUE: AccountFlags.HISTORY,
        }
        self._create_accounts(
            [
                Account(id=platform_account_id(code, cur), ledger=cur.ledger, code=code, flags=flag)
                for code, flag in flags.items()
            ]
        )
        self._platform_ready.add(cur.code)

    def _create_accounts(self, accounts: list[Account]) -> None:
        results = self.ledger.create_accounts(accounts)
        for account, result in zip(accounts, results, strict=True):
            if result.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS):
                raise RuntimeError(f"ledger account {account.id:#x}: {result.status.name}")

    def open_wallet(self, customer_id: int, currency_code: str) -> int:
        """The customer's wallet in a currency (opened on first use); returns its ledger id."""
        cur = currency(currency_code)
        account = wallet_account_id(customer_id, cur)
        if account in self._opened:
            return account
        self.customer(customer_id)
        self.open_accounts(wallets=[(customer_id, cur)])
        return account

    def _open_merchant_account(self, merchant_id: int, cur: Currency) -> int:
        account = merchant_account_id(merchant_id, cur)
        if account not in self._opened:
            self.open_accounts(merchants=[(merchant_id, cur)])
        return account

    def open_accounts(
        self,
        *,
        wallets: Iterable[tuple[int, Currency]] = (),
        merchants: Iterable[tuple[int, Currency]] = (),
    ) -> None:
        """Open the wallets of existing customers and the receivable accounts of existing
        merchants that this process has not seen open: one ledger call and one SQL
        transaction for all of them (a batch's new payees do not wait for the ledger's
        commit one by one). The callers have checked the parties exist."""
        accounts: list[Account] = []
        wallet_rows: dict[tuple[int, str], int] = {}
        currencies: dict[str, Currency] = {}
        for customer_id, cur in wallets:
            account = wallet_account_id(customer_id, cur)
            if account in self._opened or (customer_id, cur.code) in wallet_rows:
                continue
            wallet_rows[(customer_id, cur.code)] = account
            currencies[cur.code] = cur
            accounts.append(_party_account(account, cur, AccountCode.CUSTOMER_WALLET, customer_id))
        shops: set[int] = set()
        for merchant_id, cur in merchants:
            account = merchant_account_id(merchant_id, cur)
            if account in self._opened or account in shops:
                continue
            shops.add(account)
            currencies[cur.code] = cur
            accounts.append(
                _party_account(account, cur, AccountCode.MERCHANT_RECEIVABLE, merchant_id)
            )
        if not accounts:
            return
        for cur in currencies.values():
            self._ensure_platform(cur)
        self._create_accounts(accounts)
        if wallet_rows:
            self._record_wallets(wallet_rows)
        for account_ in accounts:
            self._remember_open(account_.id)

    def _record_wallets(self, wallet_rows: Mapping[tuple[int, str], int]) -> None:
        """The ``payments_wallets`` rows of wallets just opened in the ledger, one
        transaction; a row already there (recorded by an earlier or concurrent opening) is
        left as it is."""
        now = self.clock.now_ns()
        with self.engine.begin() as conn:
            mark = "?" if conn.dialect.name == "sqlite" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO {t.wallets.name} (customer_id, currency, account_id, created_at_ns)"
                f" VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT DO NOTHING",
                [
                    (customer_id, code, _hex(account), now)
                    for (customer_id, code), account in sorted(wallet_rows.items())
                ],
            )

    def _remember_open(self, account: int) -> None:
        opened = self._opened
        opened[account] = None
        if len(opened) > opened_cached_max:
            opened.popitem(last=False)

    def _balance_of(self, account: int) -> Balance:
        found = self.ledger.lookup_accounts([account])
        if not found:
            return Balance(0, 0)
        a = found[0]
        return Balance(a.credits_posted - a.debits_posted, a.debits_pending)

    def balance(self, customer_id: int, currency_code: str) -> Balance:
        self.customer(customer_id)
        return self._balance_of(wallet_account_id(customer_id, currency(currency_code)))

    def merchant_balance(self, merchant_id: int, currency_code: str) -> Balance:
        self.merchant(merchant_id)
        return self._balance_of(merchant_account_id(merchant_id, currency(currency_code)))

    def platform_balance(self, code: AccountCode, currency_code: str) -> Balance:
        """A platform account's money, seen from the platform's books: credits minus debits
        (the bank settlement account, an asset, shows a negative figure)."""
        return self._balance_of(platform_account_id(code, currency(currency_code)))

    # --- payment codes (the merchant scans the customer's code) --------------------------------

    def issue_payment_code(self, customer_id: int) -> str:
        """A one-time 18-digit payment code, valid for ``payment_code_ttl_s``."""
        customer = self.customer(customer_id)
        if customer.frozen:
            raise AccountFrozenError("the customer is frozen")
        code = "28" + "".join(str(secrets.randbelow(10)) for _ in range(16))
        with self.engine.begin() as conn:
            conn.execute(
                t.payment_codes.insert().values(
                    code=code,
                    customer_id=customer_id,
                    expires_at_ns=self.clock.now_ns() + self.options.payment_code_ttl_s * 10**9,
                    used=False,
                )
            )
        return code

    def _peek_payment_code(self, code: str) -> int:
        """The customer of a valid payment code (not yet used: see ``_redeem``)."""
        check_text(code, "payment_code", 18)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.payment_codes).where(t.payment_codes.c.code == code)
            ).first()
        if row is None or row.used or row.expires_at_ns <= self.clock.now_ns():
            raise PaymentCodeInvalidError(PAYMENT_CODE_INVALID)
        return int(row.customer_id)

    def payment_code_customer(self, code: str) -> int:
        """The customer whose valid (unused, unexpired) payment code this is, or
        ``PaymentCodeInvalidError``."""
        return self._peek_payment_code(code)

    def _redeem(self, conn: sa.Connection, code: str) -> None:
        """Use a payment code up, in the transaction that records its payment (so a payment
        refused by a check leaves the code valid, and two merchants cannot both use it)."""
        done = conn.execute(
            t.payment_codes.update()
            .where(
                t.payment_codes.c.code == code,
                t.payment_codes.c.used.is_(False),
                t.payment_codes.c.expires_at_ns > self.clock.now_ns(),
            )
            .values(used=True)
        )
        if done.rowcount != 1:
            raise PaymentCodeInvalidError(PAYMENT_CODE_INVALID)

    # --- operations: what callers do ------------------------------------------------------------

    def top_up(
        self,
        customer_id: int,
        card_id: int,
        amount: int,
        currency_code: str,
        *,
        key: str,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """Charge the customer's bank card and credit the wallet once the bank confirms."""
        cur = currency(currency_code)
        amount = check_amount(amount)
        request = {"card_id": card_id, "amount": amount, "currency": cur.code}
        replay = self._replay(f"c:{customer_id}", key, OperationKind.TOP_UP, request)
        if replay is not None:
            return replay
        customer = self._active_customer(customer_id)
        self._card_of(customer_id, card_id)
        self.open_wallet(customer_id, cur.code)
        self._check_balance_cap(customer, cur, amount)
        decision = self._decide(
            risk.EventKind.TOP_UP, customer, amount, cur, f"card:{card_id}", channel
        )
        op = self._record(
            OperationKind.TOP_UP,
            f"c:{customer_id}",
            key,
            request,
            decision,
            cur,
            amount,
            payee_customer_id=customer_id,
            card_id=card_id,
        )
        return self._drive(op)

    def withdraw(
        self,
        customer_id: int,
        card_id: int,
        amount: int,
        currency_code: str,
        *,
        key: str,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """Hold the amount in the wallet, pay it out to the card, then post (or void) the hold."""
        cur = currency(currency_code)
        amount = check_amount(amount)
        request = {"card_id": card_id, "amount": amount, "currency": cur.code}
        replay = self._replay(f"c:{customer_id}", key, OperationKind.WITHDRAWAL, request)
        if replay is not None:
            return replay
        customer = self._active_customer(customer_id)
        self._card_of(customer_id, card_id)
        self._check_single(customer, cur, amount)
        self._check_funds(wallet_account_id(customer_id, cur), amount)
        decision = self._decide(
            risk.EventKind.WITHDRAWAL, customer, amount, cur, f"card:{card_id}", channel
        )
        op = self._record(
            OperationKind.WITHDRAWAL,
            f"c:{customer_id}",
            key,
            request,
            decision,
            cur,
            amount,
            payer=customer,
            card_id=card_id,
        )
        return self._drive(op)

    def transfer(
        self,
        payer_id: int,
        payee: Payee,
        amount: int,
        currency_code: str,
        *,
        key: str,
        note: str = "",
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """P2P: from one wallet to another customer's (by id, phone or QR payload)."""
        cur = currency(currency_code)
        amount = check_amount(amount)
        note = check_text(note, "note", NOTE_CHARS_MAX, empty=True)
        payee_id = self._resolve_payee(payee)
        request = {"payee": payee_id, "amount": amount, "currency": cur.code, "note": note}
        replay = self._replay(f"c:{payer_id}", key, OperationKind.P2P, request)
        if replay is not None:
            return replay
        if payee_id == payer_id:
            raise SamePartyError("a customer cannot pay themselves")
        payer = self._active_customer(payer_id)
        receiver = self._active_customer(payee_id)
        self._check_single(payer, cur, amount)
        self._check_funds(wallet_account_id(payer_id, cur), amount)
        self.open_wallet(payee_id, cur.code)
        self._check_balance_cap(receiver, cur, amount)
        decision = self._decide(risk.EventKind.P2P, payer, amount, cur, f"c:{payee_id}", channel)
        op = self._record(
            OperationKind.P2P,
            f"c:{payer_id}",
            key,
            request,
            decision,
            cur,
            amount,
            payer=payer,
            payee_customer_id=payee_id,
            note=note,
        )
        return self._drive(op)

    def pay_merchant(
        self,
        customer_id: int,
        merchant_qr: str,
        amount: int,
        currency_code: str,
        *,
        key: str,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """The customer scans the merchant's QR code and pays (the fee is taken at settlement)."""
        target = parse_qr(merchant_qr)
        if target.kind is not AccountKind.MERCHANT:
            raise MerchantNotFoundError("that QR code is not a merchant's")
        cur = currency(currency_code)
        amount = check_amount(amount)
        request = {"merchant": target.owner_id, "amount": amount, "currency": cur.code}
        scope = f"c:{customer_id}"
        replay = self._replay(scope, key, OperationKind.MERCHANT_PAYMENT, request)
        if replay is not None:
            return replay
        return self._merchant_payment(
            customer_id, target.owner_id, amount, cur, scope, key, request, channel=channel
        )

    def collect(
        self,
        merchant_id: int,
        payment_code: str,
        amount: int,
        currency_code: str,
        *,
        key: str,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """The merchant scans the customer's payment code and collects the amount."""
        cur = currency(currency_code)
        amount = check_amount(amount)
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
        request = {"code": payment_code, "amount": amount, "currency": cur.code}
        replay = self._replay(f"m:{merchant_id}", key, OperationKind.MERCHANT_PAYMENT, request)
        if replay is not None:
            return replay
        self.merchant(merchant_id)
        customer_id = self._peek_payment_code(payment_code)
        return self._merchant_payment(
            customer_id,
            merchant_id,
            amount,
            cur,
            f"m:{merchant_id}",
            key,
            request,
            payment_code=payment_code,
            channel=channel,
        )

    def _merchant_payment(
        self,
        customer_id: int,
        merchant_id: int,
        amount: int,
        cur: Currency,
        scope: str,
        key: str,
        request: dict[str, Any],
        *,
        payment_code: str | None = None,
        channel: Channel = NO_CHANNEL,
    ) -> Operation:
        """A merchant payment whose input is checked and whose key has no record yet (both
        callers look for a replay first)."""
        customer = self._active_customer(customer_id)
        merchant = self.merchant(merchant_id)
        if merchant.frozen:
            raise AccountFrozenError("the merchant is frozen")
        self._check_single(customer, cur, amount)
        self._check_funds(wallet_account_id(customer_id, cur), amount)
        self._open_merchant_account(merchant_id, cur)
        decision = self._decide(
            risk.EventKind.PAYMENT, customer, amount, cur, f"m:{merchant_id}", channel
        )
        op = self._record(
            OperationKind.MERCHANT_PAYMENT,
            scope,
            key,
            request,
            decision,
            cur,
            amount,
            payer=customer,
            merchant_id=merchant_id,
            payment_code=payment_code,
        )
        return self._drive(op)

    def verify_challenge(
        self, operation_id: int, *, passed: bool, channel: Channel = NO_CHANNEL
    ) -> Operation:
        """The customer's step-up verification: passed releases the held payment, failed
        returns the money. ``channel`` is where the customer answered; a passed answer tells
        risk control that its device is the customer's (``decide.trust_device``, when the
        engine has it), so later events from it are not from a new device."""
        op = self.operation(operation_id)
        if op.status is not _S.CHALLENGED or op.decision is not risk.Decision.CHALLENGE:
            raise OperationStateError(f"operation is {op.status}, not awaiting verification")
        if op.hold_expires_at_ns is not None and op.hold_expires_at_ns <= self.clock.now_ns():
            return self._drive(op)  # too late: the hold lapses, whatever the answer
        if passed:
            self._check_parties_active(op)
        done = self._check_done(op, passed=passed, failure="challenge_failed")
        customer_id = op.payer_customer_id or op.payee_customer_id
        trust = getattr(self.decide, "trust_device", None)
        if passed and channel.device_id and customer_id is not None and trust is not None:
            trust(customer_id, channel.device_id)
        return done

    def decide_review(self, operation_id: int, *, approve: bool) -> Operation:
        """An analyst's decision on a payment held for review."""
        op = self.operation(operation_id)
        if op.status is not _S.CHALLENGED or op.decision is not risk.Decision.REVIEW:
            raise OperationStateError(f"operation is {op.status}, not held for review")
        if approve:
            self._check_parties_active(op)
        return self._check_done(op, passed=approve, failure="review_rejected")

    def _open_case(self, conn: sa.Connection, op: Operation, status: OperationStatus) -> None:
        if self.cases is None or status is not _S.CHALLENGED:
            return
        if op.decision is not risk.Decision.REVIEW:
            return
        self.open_case(conn, op)

    def open_case(self, conn: sa.Connection, op: Operation) -> None:
        """Open the review case of a held operation, in the caller's transaction."""
        if self.cases is None:
            return
        stored = conn.execute(
            sa.select(t.operations.c.risk_reasons).where(t.operations.c.id == _hex(op.id))
        ).scalar_one()
        reasons = json.loads(stored).get("reasons", []) if stored else []
        self.cases.open(
            conn,
            "operation",
            _hex(op.id),
            customer_id=op.payer_customer_id or op.payee_customer_id or 0,
            amount=op.amount,
            currency=op.currency,
            score=op.risk_score,
            reasons=[str(r) for r in reasons],
        )

    def _carry_out_case(self, case: risk.Case) -> None:
        """An analyst decided a case about one of our operations: release or return the
        held money (idempotent: nothing to do once the hold has ended), and freeze an account
        confirmed taken over."""
        op = self.operation(int(case.subject_id, 16))
        if op.status is _S.CHALLENGED and op.decision is risk.Decision.REVIEW:
            # The decision is recorded and final: an approval for a party frozen since the
            # hold is not refused (as ``decide_review`` refuses it) but carried out as a
            # passed check is then — the money not released, ``failed`` with
            # ``account_frozen`` — else the hold would wait, unresolved, for ever.
            approve = case.status == risk.CaseStatus.APPROVED
            self._check_done(op, passed=approve, failure="review_rejected")
        if case.account_takeover and not self.customer(case.customer_id).frozen:
            self.set_frozen(case.customer_id, True)

    def on_bank_result(self, result: BankResult) -> Operation:
        """An asynchronous confirmation from the bank about one of our references."""
        reference = result.reference
        if not (isinstance(reference, str) and len(reference) == 32):
            raise OperationNotFoundError("not a reference of ours")
        try:
            operation_id = int(reference, 16)
        except ValueError:
            raise OperationNotFoundError("not a reference of ours") from None
        op = self.operation(operation_id)
        if op.status is not _S.AWAITING_BANK:
            return op
        return self._apply_bank_result(op, result)

    # --- reading operations ---------------------------------------------------------------------

    def operation(self, operation_id: int) -> Operation:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.operations).where(t.operations.c.id == _hex(operation_id))
            ).first()
        if row is None:
            raise OperationNotFoundError(f"no operation {operation_id:#x}")
        return _operation(row)

    def operations(
        self,
        *,
        status: OperationStatus | None = None,
        order_id: int | None = None,
        limit: int = 100,
    ) -> list[Operation]:
        """Recorded operations, oldest first: all, or those in ``status``, or an order's."""
        query = sa.select(t.operations).order_by(t.operations.c.created_at_ns).limit(limit)
        if status is not None:
            query = query.where(t.operations.c.status == str(status))
        if order_id is not None:
            query = query.where(t.operations.c.order_id == _hex(order_id))
        with self.engine.connect() as conn:
            return [_operation(r) for r in conn.execute(query).all()]

    def customer_operations(
        self,
        customer_id: int,
        *,
        after: tuple[int, int] | None = None,
        limit: int = 100,
    ) -> list[Operation]:
        """A customer's operations (paying or paid), oldest first, a page at a time: those
        after ``after`` (the ``(created_at_ns, id)`` of the last one of the previous page).

        Two index walks, each the page's length at most — the customer as payer, then as
        payee (of an operation it did not also pay) — merged: one query with ``OR`` over
        the two columns would read and sort every operation of the store."""
        ops = t.operations
        position = sa.tuple_(ops.c.created_at_ns, ops.c.id)
        sides = (
            ops.c.payer_customer_id == customer_id,
            sa.and_(
                ops.c.payee_customer_id == customer_id,
                sa.or_(ops.c.payer_customer_id.is_(None), ops.c.payer_customer_id != customer_id),
            ),
        )
        rows: list[sa.Row[Any]] = []
        with self.engine.connect() as conn:
            for side in sides:
                query = (
                    sa.select(ops).where(side).order_by(ops.c.created_at_ns, ops.c.id).limit(limit)
                )
                if after is not None:
                    at_ns, last_id = after
                    query = query.where(position > sa.tuple_(at_ns, _hex(last_id)))
                rows.extend(conn.execute(query).all())
        rows.sort(key=lambda r: (r.created_at_ns, r.id))
        return [_operation(r) for r in rows[:limit]]

    def resolve_payee(self, payee: Payee, *, namespace: int = 0) -> int:
        """The customer id a P2P payee names (by id, phone or QR payload; a phone within
        ``namespace``), or ``CustomerNotFoundError``."""
        return self._resolve_payee(payee, namespace=namespace)

    def merchant_of_qr(self, merchant_qr: str) -> int:
        """The merchant id a merchant QR payload names (the merchant may not exist)."""
        target = parse_qr(merchant_qr)
        if target.kind is not AccountKind.MERCHANT:
            raise MerchantNotFoundError("that QR code is not a merchant's")
        return target.owner_id

    # --- recovery -----------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Finish every operation left half-way (a crash, a bank timeout, an expired hold).

        Safe to run at any time and any number of times: operations younger than
        ``recovery_age_s`` are left to the call that is still running them. Returns how many
        operations ended in each final status, and under ``stuck`` how many could not be
        finished (each is logged with its error; the others are not held up by it).
        """
        now = self.clock.now_ns()
        cutoff = now - self.options.recovery_age_s * 10**9
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.operations)
                .where(
                    t.operations.c.status.in_(
                        [
                            str(_S.PENDING),
                            str(_S.AWAITING_BANK),
                            str(_S.AWAITING_BILLER),
                            str(_S.CHALLENGED),
                        ]
                    )
                )
                .order_by(t.operations.c.created_at_ns)
            ).all()
        outcome: dict[str, int] = {}
        for row in rows:
            op = _operation(row)
            if op.status is _S.CHALLENGED:
                if op.hold_expires_at_ns is None or op.hold_expires_at_ns > now:
                    continue
            elif op.updated_at_ns > cutoff:
                continue
            try:
                done = self._drive(op, resumed=True)
            except Exception:
                # One operation that cannot be finished (a bug, a partner down) must not
                # keep every newer one from recovery: log it loudly, count it, go on.
                log.exception("recovery could not finish operation %032x", op.id)
                outcome["stuck"] = outcome.get("stuck", 0) + 1
                continue
            if done.final:
                outcome[str(done.status)] = outcome.get(str(done.status), 0) + 1
        return outcome

    # --- the steps ------------------------------------------------------------------------------

    def _replay(
        self, scope: str, key: str, kind: OperationKind, request: dict[str, Any]
    ) -> Operation | None:
        """The stored result of an earlier call with the same key (None if there is none)."""
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.operations).where(
                    t.operations.c.scope == scope, t.operations.c.idempotency_key == key
                )
            ).first()
        if row is None:
            return None
        if row.fingerprint != request_fingerprint(kind, request):
            raise IdempotencyKeyReusedError("this idempotency key was used for a different request")
        op = _operation(row)
        if op.status is _S.PENDING:  # the first call died half-way: finish it now
            return self._drive(op, resumed=True)
        return op

    def _active_customer(self, customer_id: int) -> Customer:
        customer = self.customer(customer_id)
        if customer.frozen:
            raise AccountFrozenError("the customer is frozen")
        return customer

    def _check_parties_active(self, op: Operation) -> None:
        """Before held money is released: nobody involved may have been frozen since."""
        for customer_id in (op.payer_customer_id, op.payee_customer_id):
            if customer_id is not None:
                self._active_customer(customer_id)
        if op.merchant_id is not None and self.merchant(op.merchant_id).frozen:
            raise AccountFrozenError("the merchant is frozen")

    def _card_of(self, customer_id: int, card_id: int) -> str:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.bank_cards.c.card_token).where(
                    t.bank_cards.c.id == card_id, t.bank_cards.c.customer_id == customer_id
                )
            ).first()
        if row is None:
            raise CardNotFoundError("that card is not bound to this customer")
        return str(row.card_token)

    def _resolve_payee(self, payee: Payee, *, namespace: int = 0) -> int:
        given = [v for v in (payee.customer_id, payee.phone, payee.qr) if v is not None]
        if len(given) != 1:
            raise InvalidPayloadError("a payee is exactly one of customer_id, phone, qr")
        if payee.customer_id is not None:
            return self.customer(payee.customer_id).id
        if payee.phone is not None:
            phone = normalize_phone(payee.phone)
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(t.customers.c.id).where(
                        t.customers.c.phone == phone, t.customers.c.namespace == namespace
                    )
                ).first()
            if row is None:
                raise CustomerNotFoundError("no customer has that phone number")
            return int(row.id)
        assert payee.qr is not None
        target = parse_qr(payee.qr)
        if target.kind is not AccountKind.CUSTOMER:
            raise CustomerNotFoundError("that QR code is not a customer's")
        return self.customer(target.owner_id).id

    def _limits(self, customer: Customer, cur: Currency) -> KycLimits:
        return self.options.kyc_limits[customer.kyc_level].in_minor_units(cur)

    def _check_single(self, customer: Customer, cur: Currency, amount: int) -> None:
        if amount > self._limits(customer, cur).single_payment:
            raise KycLimitExceededError(
                "the amount is above the customer's single-payment limit", limit="single_payment"
            )

    def _check_balance_cap(self, customer: Customer, cur: Currency, amount: int) -> None:
        """The wallet's cap counts what it holds, what is held on its way in (a challenged
        payment to it) and top-ups not yet answered by the bank."""
        found = self.ledger.lookup_accounts([wallet_account_id(customer.id, cur)])
        incoming = found[0].credits_posted - found[0].debits_posted if found else 0
        incoming += found[0].credits_pending if found else 0
        with self.engine.connect() as conn:
            # Through the status index (top-ups in flight are few), never the payee index
            # (the payee's whole history).
            incoming += conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.operations.c.amount), 0)).where(
                    unindexed(t.operations.c.payee_customer_id) == customer.id,
                    t.operations.c.kind == str(OperationKind.TOP_UP),
                    t.operations.c.currency == cur.code,
                    t.operations.c.status.in_(
                        [str(_S.PENDING), str(_S.AWAITING_BANK), str(_S.CHALLENGED)]
                    ),
                )
            ).scalar_one()
        if incoming + amount > self._limits(customer, cur).wallet_balance:
            raise KycLimitExceededError(
                "the wallet would exceed the customer's balance limit", limit="wallet_balance"
            )

    def _check_funds(self, account: int, amount: int) -> None:
        if self._balance_of(account).available < amount:
            raise InsufficientFundsError("the wallet does not hold enough")

    def _decide(
        self,
        kind: risk.EventKind,
        customer: Customer,
        amount: int,
        cur: Currency,
        counterparty: str,
        channel: Channel = NO_CHANNEL,
    ) -> risk.RiskDecision:
        [decision] = self.decide(
            [self.risk_event(kind, customer, amount, cur, counterparty, channel)]
        )
        return decision

    def risk_event(
        self,
        kind: risk.EventKind,
        customer: Customer,
        amount: int,
        cur: Currency,
        counterparty: str,
        channel: Channel = NO_CHANNEL,
        *,
        at_ns: int | None = None,
    ) -> risk.RiskEvent:
        """What risk control is told about one operation of ``customer``, at ``at_ns``
        (default: now; a batch gives its one clock reading to all its events)."""
        return risk.RiskEvent(
            kind=kind,
            customer_id=customer.id,
            at_ns=self.clock.now_ns() if at_ns is None else at_ns,
            amount=amount,
            currency=cur.code,
            counterparty=counterparty,
            device_id=channel.device_id,
            ip=channel.ip,
            merchant=counterparty if counterparty.startswith("m:") else "",
            latitude=channel.latitude,
            longitude=channel.longitude,
            tz_offset_s=self.options.day_offset_s,
            kyc_level=int(customer.kyc_level),
            account_created_ns=customer.created_at_ns or None,
        )

    def _record(
        self,
        kind: OperationKind,
        scope: str,
        key: str,
        request: dict[str, Any],
        decision: risk.RiskDecision,
        cur: Currency,
        amount: int,
        *,
        payer: Customer | None = None,
        payee_customer_id: int | None = None,
        merchant_id: int | None = None,
        card_id: int | None = None,
        note: str = "",
        payment_code: str | None = None,
        order_id: int | None = None,
        refund_id: int | None = None,
        fee: int = 0,
        biller_id: int | None = None,
        within: Callable[[sa.Connection, int], None] | None = None,
    ) -> Operation:
        """Write the operation (step 2) and reserve the payer's daily outflow with it (and use
        up the payment code it was made with). ``within`` writes other tables in the same
        transaction, never the operation's row: the answer is the row as written here."""
        now = self.clock.now_ns()
        operation_id = self.new_id()
        rejected = decision.decision is risk.Decision.REJECT
        day = business_day(now, self.options)
        values = {
            "id": _hex(operation_id),
            "kind": str(kind),
            "scope": scope,
            "idempotency_key": key,
            "fingerprint": request_fingerprint(kind, request),
            "status": str(_S.REJECTED if rejected else _S.PENDING),
            "currency": cur.code,
            "amount": amount,
            "payer_customer_id": payer.id if payer else None,
            "payee_customer_id": payee_customer_id,
            "merchant_id": merchant_id,
            "card_id": card_id,
            "note": note,
            "day": day,
            "decision": str(decision.decision),
            "risk_score": decision.score,
            "risk_reasons": json.dumps(
                {
                    "reasons": list(decision.reasons),
                    "ruleset": decision.ruleset_version,
                    "model": decision.model_version,
                }
            ),
            "error_code": "risk_rejected" if rejected else None,
            "bank_status": None,
            "bank_sent": False,
            "hold_expires_at_ns": None,
            "order_id": None if order_id is None else _hex(order_id),
            "refund_id": None if refund_id is None else _hex(refund_id),
            "fee": fee,
            "biller_id": biller_id,
            "created_at_ns": now,
            "updated_at_ns": now,
        }
        try:
            with self.engine.begin() as conn:
                if payment_code is not None:
                    self._redeem(conn, payment_code)
                if payer is not None and not rejected:
                    self._reserve_outflow(conn, payer, cur, day, amount)
                conn.execute(t.operations.insert().values(**values))
                if within is not None:
                    within(conn, operation_id)
        except sa.exc.IntegrityError:
            # The same key raced in from another caller: theirs was recorded first.
            replay = self._replay(scope, key, kind, request)
            if replay is None:
                raise
            return replay
        return _operation(SimpleNamespace(**values))  # the row just written, not read back

    def _reserve_outflow(
        self, conn: sa.Connection, payer: Customer, cur: Currency, day: int, amount: int
    ) -> None:
        limit = self._limits(payer, cur).daily_outflow
        if (
            amount > limit
            or _outflow.reserve(conn, [(payer.id, day, cur.code, amount, limit)]) != 1
        ):
            raise KycLimitExceededError(
                "the customer's daily outflow limit would be exceeded", limit="daily_outflow"
            )

    def _release_outflow(self, conn: sa.Connection, op: Operation, day: int) -> None:
        if op.payer_customer_id is None or op.decision is risk.Decision.REJECT:
            return
        d = t.daily_outflow
        conn.execute(
            d.update()
            .where(
                d.c.customer_id == op.payer_customer_id,
                d.c.day == day,
                d.c.currency == op.currency,
            )
            .values(amount=d.c.amount - op.amount)
        )

    def _finish(
        self,
        op: Operation,
        status: OperationStatus,
        *,
        error_code: str | None = None,
        expect: OperationStatus | None = None,
        **extra: Any,
    ) -> Operation:
        """Record an operation's new status (step 4), if nobody else did first."""
        with self.engine.begin() as conn:
            done = conn.execute(
                t.operations.update()
                .where(
                    t.operations.c.id == _hex(op.id),
                    t.operations.c.status == str(expect or op.status),
                )
                .values(
                    status=str(status),
                    error_code=error_code,
                    updated_at_ns=self.clock.now_ns(),
                    **extra,
                )
            )
            if done.rowcount == 1:
                if status in (_S.FAILED, _S.EXPIRED):
                    day = conn.execute(
                        sa.select(t.operations.c.day).where(t.operations.c.id == _hex(op.id))
                    ).scalar_one()
                    self._release_outflow(conn, op, day)
                for hook in self._finish_hooks.values():
                    hook(conn, op, status)
        return self.operation(op.id)

    def _drive(self, op: Operation, *, resumed: bool = False) -> Operation:
        """Take an operation as far as it can go now (step 3 onwards). ``resumed``: not by the
        call that recorded it (recovery, a retry), which may have died or still be running."""
        if op.final:
            return op
        hook = _FINISHED_ELSEWHERE.get(op.kind)
        if (op.kind in _DRIVEN_ELSEWHERE and op.kind not in self._drivers) or (
            hook is not None and hook not in self._finish_hooks
        ):
            # A wiring error, not the operation's: ``recover()`` logs it and goes on; a
            # service with the flow attached finishes the operation.
            raise RuntimeError(f"operation {op.id:#x} ({op.kind}) needs its flow attached")
        if op.status is _S.CHALLENGED:
            return self._expire_hold(op)
        held = op.decision in (risk.Decision.CHALLENGE, risk.Decision.REVIEW)
        if held and op.status is _S.PENDING:
            if op.error_code is None:  # not held yet (or a crash before it was recorded)
                return self._hold(op)
            if op.error_code in _CHECK_MARKERS:
                done = self._after_check(op)
                if done is not None:
                    return done
        driver = self._drivers.get(op.kind)
        if driver is not None:
            return driver(op)
        if op.kind is OperationKind.TOP_UP:
            return self._drive_top_up(op)
        if op.kind in (OperationKind.WITHDRAWAL, OperationKind.SETTLEMENT):
            return self._drive_withdrawal(op)
        if op.kind in _FENCED:
            return self._pay(op, resumed=resumed)
        status = self._move(op, hold_s=None)
        if status not in _CREATED_OR_EXISTS:
            return self._finish(op, _S.FAILED, error_code=self._failure_code(status))
        return self._finish(op, _S.COMPLETED)

    def _legs(self, op: Operation) -> list[tuple[int, int, int, TransferCode]]:
        """The transfers of an operation: (debit, credit, amount, code) each."""
        cur = currency(op.currency)
        escrow = platform_account_id(AccountCode.ESCROW, cur)
        bank = platform_account_id(AccountCode.BANK_SETTLEMENT, cur)
        payer = (
            None if op.payer_customer_id is None else wallet_account_id(op.payer_customer_id, cur)
        )
        payee = (
            None if op.payee_customer_id is None else wallet_account_id(op.payee_customer_id, cur)
        )
        merchant = None if op.merchant_id is None else merchant_account_id(op.merchant_id, cur)
        kind = op.kind
        if kind is OperationKind.P2P and payer and payee:
            return [(payer, payee, op.amount, TransferCode.P2P)]
        if kind is OperationKind.MERCHANT_PAYMENT and payer and merchant:
            return [(payer, merchant, op.amount, TransferCode.MERCHANT_PAYMENT)]
        if kind is OperationKind.TOP_UP and payee:
            return [(bank, payee, op.amount, TransferCode.TOP_UP)]
        if kind is OperationKind.WITHDRAWAL and payer:
            return [(payer, bank, op.amount, TransferCode.WITHDRAWAL)]
        if kind is OperationKind.ORDER_PAYMENT and payer:
            return [(payer, escrow, op.amount, TransferCode.ESCROW_HOLD)]
        if kind is OperationKind.REFUND and payee:
            return [(escrow, payee, op.amount, TransferCode.REFUND)]
        if kind is OperationKind.BILL_PAYMENT and payer and op.biller_id:
            clearing = account_id(AccountKind.BILLER, cur, op.biller_id)
            return [(payer, clearing, op.amount, TransferCode.BILL_PAYMENT)]
        if kind is OperationKind.SETTLEMENT and merchant:
            legs = [(merchant, bank, op.amount, TransferCode.SETTLEMENT_PAYOUT)]
            if op.fee:
                fees = platform_account_id(AccountCode.FEE_REVENUE, cur)
                legs.append((merchant, fees, op.fee, TransferCode.SETTLEMENT_FEE))
            return legs
        if kind is OperationKind.ESCROW_RELEASE and merchant:
            legs = [(escrow, merchant, op.amount - op.fee, TransferCode.ESCROW_RELEASE)]
            if op.fee:
                fees = platform_account_id(AccountCode.FEE_REVENUE, cur)
                legs.append((escrow, fees, op.fee, TransferCode.FEE))
            return legs
        raise RuntimeError(f"operation {op.id:#x} ({kind}) lacks the parties its legs need")

    def _move(self, op: Operation, *, hold_s: int | None) -> CreateTransferStatus:
        """Move the money: leg 0, or leg 0 linked with legs 2, 3, … (all or none); or hold it
        (one pending transfer) when ``hold_s`` is given (0: no time limit).

        Returns leg 0's status. ``EXISTS`` means an earlier attempt did it all: a chain is
        created whole or not at all, and the same ids always carry the same legs.
        """
        results = self.ledger.create_transfers(self._transfers(op, hold_s=hold_s))
        return results[0].status

    def _transfers(self, op: Operation, *, hold_s: int | None) -> list[Transfer]:
        """The ledger transfers ``_move`` creates."""
        legs = self._legs(op)
        ledger = currency(op.currency).ledger
        transfers = []
        for index, (debit, credit, amount, code) in enumerate(legs):
            linked = index < len(legs) - 1
            held = hold_s is not None and index == 0  # only leg 0 is ever held
            transfers.append(
                Transfer(
                    id=transfer_id(op.id, _LEG_MOVE if index == 0 else index + 1),
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount=amount,
                    user_data_128=op.id,
                    ledger=ledger,
                    code=code,
                    timeout=(hold_s or 0) if held else 0,
                    flags=(TransferFlags.PENDING if held else TransferFlags.NONE)
                    | (TransferFlags.LINKED if linked else TransferFlags.NONE),
                )
            )
        return transfers

    def _pay(self, op: Operation, *, resumed: bool) -> Operation:
        """Leg 0 of an accepted P2P, merchant or order payment, and its outcome.

        Resumed (by ``recover()`` or a retry: the call that recorded it may have died before
        the ledger, or may still be on its way there) for a party frozen since, the payment
        is not made: leg 0's id is fenced instead — taken by a pending transfer of 0 — which
        is then voided, and the payment ``failed`` with ``account_frozen``. Whichever of the
        fence and the payment reaches the ledger first holds the id, and the other caller
        follows it: a payment made before the fence is ``completed``, one refused by the
        fence has failed (``account_frozen``, the fence voided by whoever gets there first).
        """
        fencing = resumed and self._party_frozen(op)
        if fencing:
            [fence] = self._transfers(op, hold_s=0)
            [result] = self.ledger.create_transfers([replace(fence, amount=0)])
            status = result.status
        else:
            status = self._move(op, hold_s=None)
        if status in _EXISTS_OTHERWISE:  # the other caller's leg 0 holds the id
            fencing = self._fenced([op.id]) == [True]
            status = CreateTransferStatus.EXISTS
        if status not in _CREATED_OR_EXISTS:
            return self._finish(op, _S.FAILED, error_code=self._failure_code(status))
        if fencing:
            return self._fail_unsent(op)
        return self._finish(op, _S.COMPLETED)

    def _fenced(self, operation_ids: Sequence[int]) -> list[bool]:
        """For accepted payments whose leg 0 the ledger found taken by a transfer of another
        shape: whether it is recovery's fence (a pending transfer of 0: an accepted payment
        is never held, and never of 0), else the payment itself."""
        ids = [transfer_id(i, _LEG_MOVE) for i in operation_ids]
        found = {leg.id: leg for leg in self.ledger.lookup_transfers(ids)}
        return [bool(found[i].flags & TransferFlags.PENDING) and found[i].amount == 0 for i in ids]

    def _settle_hold(self, op: Operation, *, post: bool) -> CreateTransferStatus:
        """Leg 1: post or void the hold of leg 0."""
        [status] = self._settle_holds([op.id], post=post)
        return status

    def _settle_holds(
        self, operation_ids: Sequence[int], *, post: bool
    ) -> list[CreateTransferStatus]:
        """Leg 1 of each operation: post or void the hold of its leg 0 (one ledger call)."""
        flags = TransferFlags.POST_PENDING_TRANSFER if post else TransferFlags.VOID_PENDING_TRANSFER
        results = self.ledger.create_transfers(
            [
                Transfer(
                    id=transfer_id(operation_id, _LEG_SETTLE),
                    pending_id=transfer_id(operation_id, _LEG_MOVE),
                    amount=LEDGER_AMOUNT_MAX if post else 0,
                    flags=flags,
                )
                for operation_id in operation_ids
            ]
        )
        return [result.status for result in results]

    def _failure_code(self, status: CreateTransferStatus) -> str:
        if status in (CreateTransferStatus.EXCEEDS_CREDITS, CreateTransferStatus.ID_ALREADY_FAILED):
            return "insufficient_funds"
        return f"ledger_{status.name.lower()}"

    def _passed(self, op: Operation) -> bool:
        """Whether a held operation's check was passed (it went back to ``pending``)."""
        return op.error_code == _PASSED

    def _hold(self, op: Operation) -> Operation:
        """Risk wants a check first: hold the payer's money (not for top-ups: nothing is
        charged yet) and wait for the customer (challenge) or an analyst (review)."""
        challenge = op.decision is risk.Decision.CHALLENGE
        timeout_s = self.options.challenge_timeout_s if challenge else 0
        if op.kind is not OperationKind.TOP_UP:
            # A payment whose check releases it by posting the hold also expires in the
            # ledger by itself. Where the flow goes on holding the same leg 0 after the
            # check (a withdrawal's payout, a bill's write-off) the hold has no timeout and
            # is voided by us if the check lapses.
            posts = op.kind in _POSTED_AFTER_CHECK
            status = self._move(op, hold_s=timeout_s if posts else 0)
            if status not in _CREATED_OR_EXISTS:
                return self._finish(op, _S.FAILED, error_code=self._failure_code(status))
        expires = self.clock.now_ns() + timeout_s * 10**9 if challenge else None
        return self._finish(op, _S.CHALLENGED, hold_expires_at_ns=expires)

    def _check_done(self, op: Operation, *, passed: bool, failure: str) -> Operation:
        """Claim the held operation for this outcome, then carry it out.

        The claim (``challenged`` → ``pending`` with a marker) is one guarded update, so of
        a customer's answer, an analyst's decision and recovery's lapse only one can win;
        the loser finds the winner's marker and carries out that instead. A crash after the
        claim leaves a ``pending`` operation that ``recover()`` finishes the same way.
        """
        marker = (
            _PASSED
            if passed
            else (_FAILED_CHECK if failure == "challenge_failed" else _REJECTED_REVIEW)
        )
        claimed = self._finish(op, _S.PENDING, error_code=marker, expect=_S.CHALLENGED)
        return self._drive(claimed)

    def _after_check(self, op: Operation) -> Operation | None:
        """Carry out a claimed check outcome (None: passed, and the flow goes on as usual)."""
        marker = op.error_code
        if marker == _PASSED:
            if op.kind in _POSTED_AFTER_CHECK:
                # A party frozen since the check was passed (the answering call died, and
                # recovery carries it out): what ``verify_challenge`` refuses, refused here.
                frozen = self._party_frozen(op)
                failure = AccountFrozenError.code if frozen else "challenge_failed"
                return self._release_hold(op, post=not frozen, failure=failure)
            return None  # top-ups, withdrawals, bills go on with their own flow
        failure = {
            _FAILED_CHECK: "challenge_failed",
            _REJECTED_REVIEW: "review_rejected",
            _LAPSING: "hold_expired",
        }[marker or ""]
        lapsed = marker == _LAPSING
        if op.kind is OperationKind.TOP_UP:  # nothing was held
            return self._finish(op, _S.EXPIRED if lapsed else _S.FAILED, error_code=failure)
        return self._release_hold(op, post=False, failure=failure, lapsed=lapsed)

    def _release_hold(
        self, op: Operation, *, post: bool, failure: str, lapsed: bool = False
    ) -> Operation:
        status = self._settle_hold(op, post=post)
        if status is CreateTransferStatus.EXISTS_WITH_DIFFERENT_FLAGS:
            # Another caller settled the hold the other way (the one that claimed a passed
            # check posted it; recovery, a party frozen since, would void it): the ledger
            # took theirs, and the record follows the ledger.
            [settled] = self.ledger.lookup_transfers([transfer_id(op.id, _LEG_SETTLE)])
            post = bool(settled.flags & TransferFlags.POST_PENDING_TRANSFER)
            failure = failure if post or op.error_code != _PASSED else AccountFrozenError.code
            status = CreateTransferStatus.EXISTS
        if status in _CREATED_OR_EXISTS:
            if post:
                return self._finish(op, _S.COMPLETED)
            return self._finish(op, _S.EXPIRED if lapsed else _S.FAILED, error_code=failure)
        if status is CreateTransferStatus.PENDING_TRANSFER_EXPIRED:
            return self._finish(op, _S.EXPIRED, error_code="hold_expired")
        raise RuntimeError(f"settling the hold of {op.id:#x} failed: {status.name}")

    def _expire_hold(self, op: Operation) -> Operation:
        """A challenged operation whose deadline passed: claim it for the lapse."""
        if op.hold_expires_at_ns is None or op.hold_expires_at_ns > self.clock.now_ns():
            return op
        claimed = self._finish(op, _S.PENDING, error_code=_LAPSING, expect=_S.CHALLENGED)
        return self._drive(claimed)

    # --- bank flows -----------------------------------------------------------------------------

    def _claim_send(self, op: Operation) -> bool:
        """Mark an operation's reference sent to its partner (bank or biller) — once, ever,
        whoever asks first. Only the winner sends; a crash after the mark leaves a
        reference that is only ever queried, never sent again."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                t.operations.update()
                .where(t.operations.c.id == _hex(op.id), t.operations.c.bank_sent.is_(False))
                .values(bank_sent=True, updated_at_ns=self.clock.now_ns())
            ).rowcount
        return bool(claimed == 1)

    def _send_to_bank(self, op: Operation, direction: BankDirection) -> Operation:
        """Mark the reference sent (once, ever), then send it; a crash in between leaves a
        reference that is only ever queried."""
        if not self._claim_send(op):
            return self._query_bank(self.operation(op.id))
        if self._party_frozen(op):
            # Frozen since the operation was checked (a crash, then recovery; a hold for
            # review): the claim is ours, so nobody sends it now, and the bank never has it.
            return self._fail_unsent(op)
        token = self._bank_token(op, direction)
        try:
            result = self.bank.submit(direction, _hex(op.id), token, op.amount, op.currency)
        except BankTimeoutError:
            return self._finish(op, _S.AWAITING_BANK, bank_status="timeout")
        return self._apply_bank_result(op, result)

    def _party_frozen(self, op: Operation) -> bool:
        """Whether a party of the operation is frozen now (its payer, payee or merchant: the
        customer of a withdrawal, a top-up or a bill payment, the merchant of a payout, the
        parties of a payment held for a check)."""
        for customer_id in (op.payer_customer_id, op.payee_customer_id):
            if customer_id is not None and self.customer(customer_id).frozen:
                return True
        return op.merchant_id is not None and self.merchant(op.merchant_id).frozen

    def _fail_unsent(self, op: Operation) -> Operation:
        """An operation its partner (bank, biller) never had, or an accepted payment whose
        leg 0 is fenced (``_pay``), stopped because its party is frozen: the hold or the
        fence (not a top-up's: none) voided, ``failed`` with ``account_frozen``."""
        if op.kind is not OperationKind.TOP_UP:  # nothing is held for a top-up
            status = self._settle_hold(op, post=False)
            if status not in _CREATED_OR_EXISTS:
                raise RuntimeError(f"voiding the hold of {op.id:#x} failed: {status.name}")
        return self._finish(op, _S.FAILED, error_code=AccountFrozenError.code)

    def _bank_token(self, op: Operation, direction: BankDirection) -> str:
        """The bank's token for the card or account at the other end of a bank operation."""
        if op.kind is OperationKind.SETTLEMENT:
            assert op.merchant_id is not None
            with self.engine.connect() as conn:
                return str(
                    conn.execute(
                        sa.select(t.merchants.c.settlement_card_token).where(
                            t.merchants.c.id == op.merchant_id
                        )
                    ).scalar_one()
                )
        assert op.card_id is not None
        customer = (
            op.payee_customer_id if direction is BankDirection.CHARGE else op.payer_customer_id
        )
        assert customer is not None
        return self._card_of(customer, op.card_id)

    def _query_bank(self, op: Operation) -> Operation:
        try:
            result = self.bank.query(_hex(op.id))
        except BankTimeoutError:
            return op
        if result.status is BankStatus.NOT_FOUND:
            # Sent (or about to be) but unknown to the bank: only once it is old enough is
            # it certain that it never arrived; it is never sent again. Judged by the row as
            # it is now, read after the bank's answer: ``op`` may be a copy read before
            # another caller sent the reference (recovery's list), whose request may still be
            # on its way.
            op = self.operation(op.id)
            if op.final or self._recent(op):
                return op
            if self._party_frozen(op):  # never arrived, and must not now: stopped
                return self._fail_unsent(op)
        return self._apply_bank_result(op, result)

    def _recent(self, op: Operation) -> bool:
        """Whether the operation's row changed (was sent, say) within ``recovery_age_s``."""
        return op.updated_at_ns > self.clock.now_ns() - self.options.recovery_age_s * 10**9

    def _apply_bank_result(self, op: Operation, result: BankResult) -> Operation:
        if result.status is BankStatus.PROCESSING:
            if op.status is not _S.AWAITING_BANK:
                return self._finish(op, _S.AWAITING_BANK, bank_status=str(result.status))
            return op
        if op.kind is OperationKind.TOP_UP:
            if result.status is BankStatus.SUCCEEDED:
                status = self._move(op, hold_s=None)
                if status not in _CREATED_OR_EXISTS:
                    raise RuntimeError(f"crediting top-up {op.id:#x} failed: {status.name}")
                return self._finish(op, _S.COMPLETED, bank_status=str(result.status))
            return self._finish(
                op, _S.FAILED, error_code=_bank_failure(result), bank_status=str(result.status)
            )
        # A withdrawal or a settlement payout: post the hold on success, void it otherwise.
        post = result.status is BankStatus.SUCCEEDED
        status = self._settle_hold(op, post=post)
        if status not in _CREATED_OR_EXISTS:
            raise RuntimeError(f"settling withdrawal {op.id:#x} failed: {status.name}")
        if post:
            return self._finish(op, _S.COMPLETED, bank_status=str(result.status))
        return self._finish(
            op, _S.FAILED, error_code=_bank_failure(result), bank_status=str(result.status)
        )

    def _drive_top_up(self, op: Operation) -> Operation:
        if op.status is _S.AWAITING_BANK or self._sent(op):
            return self._query_bank(op)
        return self._send_to_bank(op, BankDirection.CHARGE)

    def _drive_withdrawal(self, op: Operation) -> Operation:
        if op.status is _S.AWAITING_BANK or self._sent(op):
            return self._query_bank(op)
        status = self._move(op, hold_s=0)  # hold the money until the bank answers
        if status not in _CREATED_OR_EXISTS:
            return self._finish(op, _S.FAILED, error_code=self._failure_code(status))
        return self._send_to_bank(op, BankDirection.PAYOUT)

    def _sent(self, op: Operation) -> bool:
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    sa.select(t.operations.c.bank_sent).where(t.operations.c.id == _hex(op.id))
                ).scalar_one()
            )


def _bank_failure(result: BankResult) -> str:
    return "bank_not_reached" if result.status is BankStatus.NOT_FOUND else "bank_declined"


def _operation(row: Any) -> Operation:
    return Operation(
        id=int(row.id, 16),
        kind=OperationKind(row.kind),
        status=OperationStatus(row.status),
        currency=row.currency,
        amount=row.amount,
        payer_customer_id=row.payer_customer_id,
        payee_customer_id=row.payee_customer_id,
        merchant_id=row.merchant_id,
        card_id=row.card_id,
        note=row.note,
        decision=risk.Decision(row.decision),
        risk_score=row.risk_score,
        error_code=row.error_code,
        hold_expires_at_ns=row.hold_expires_at_ns,
        order_id=None if row.order_id is None else int(row.order_id, 16),
        refund_id=None if row.refund_id is None else int(row.refund_id, 16),
        fee=row.fee,
        biller_id=row.biller_id,
        created_at_ns=row.created_at_ns,
        updated_at_ns=row.updated_at_ns,
    )
