"""P2P and merchant payments in batches: the same rules and records, a fraction of the cost.

``PaymentBatches.pay_many(requests)`` does what ``Payments.transfer`` / ``pay_merchant`` do
for each request — checks, risk, the record under the idempotency key with the day's
outflow reserved, the ledger transfer, the outcome — but each step once for the whole batch:
one query per kind of fact, one risk call, one SQL transaction to record, one ledger call,
one SQL transaction for the outcomes. A request the rules refuse gets its error in its slot
of the answer; the others go on. The crash pattern is unchanged (recorded before the money
moves; ``Payments.recover`` finishes what a crash left ``pending``).

If recording the batch collides with another caller (the same idempotency key arriving
from elsewhere at the same moment), the batch falls back to one request at a time through
the single-operation path, which sorts the collision out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from puhui import risk
from puhui.errors import PuhuiError
from puhui.ledger import CreateTransferStatus, Transfer, TransferFlags
from puhui.money import Currency, currency
from puhui.store import payments as t

from ._errors import (
    AccountFrozenError,
    CustomerNotFoundError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidPayloadError,
    KycLimitExceededError,
    MerchantNotFoundError,
    PaymentsError,
    SamePartyError,
)
from .model import (
    IDEMPOTENCY_KEY_CHARS_MAX,
    NOTE_CHARS_MAX,
    AccountKind,
    KycLevel,
    OperationKind,
    OperationStatus,
    TransferCode,
    business_day,
    check_amount,
    check_text,
    merchant_account_id,
    normalize_phone,
    parse_qr,
    request_fingerprint,
    transfer_id,
    wallet_account_id,
)
from .service import (
    NO_CHANNEL,
    Channel,
    Customer,
    Operation,
    Payee,
    Payments,
    _hex,
    _operation,
)

_S = OperationStatus
_IN_FLIGHT = (_S.PENDING, _S.AWAITING_BANK, _S.CHALLENGED)
"""Statuses of a top-up whose money may still arrive."""


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One payment of a batch: to a customer (``payee``) or to a merchant (``merchant_qr``)."""

    payer_id: int
    amount: int
    currency: str
    key: str
    payee: Payee | None = None
    merchant_qr: str | None = None
    note: str = ""
    channel: Channel = NO_CHANNEL
    """Where the request came from (for risk control only)."""


@dataclass(slots=True)
class _Item:
    index: int
    request: PaymentRequest
    kind: OperationKind = OperationKind.P2P
    cur: Currency | None = None
    payee_id: int | None = None
    merchant_id: int | None = None
    fingerprint: str = ""
    scope: str = ""
    operation_id: int = 0
    decision: risk.RiskDecision | None = None
    status: OperationStatus = _S.PENDING
    error_code: str | None = None
    hold_expires_at_ns: int | None = None
    day: int = 0
    """The business day the payment counts in (its outflow's day)."""
    copies: list[int] = field(default_factory=list)
    """Slots of the same request sent again in the same batch: they get this answer."""
    extra: dict[str, object] = field(default_factory=dict)


class PaymentBatches:
    """Batched P2P and merchant payments over a ``Payments`` service."""

    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.engine = payments.engine
        self.clock = payments.clock

    def pay_many(self, requests: Sequence[PaymentRequest]) -> list[Operation | PuhuiError]:
        """One answer per request, in order: its ``Operation``, or the error that refused it
        (nothing recorded, nothing moved for that request)."""
        options = self.payments.options
        if len(requests) > options.batch_operations_max:
            raise InvalidPayloadError(
                f"at most {options.batch_operations_max} payments in one batch"
            )
        answers: list[Operation | PuhuiError | None] = [None] * len(requests)
        fresh = self._replays(self._parse(requests, answers), answers)
        items = self._check(fresh, answers)
        if items:
            self._decide(items)
            try:
                self._record(items)
            except (sa.exc.IntegrityError, KycLimitExceededError):
                # A key or the day's allowance raced with another caller: go one by one.
                for item in items:
                    answers[item.index] = self._one(item.request)
            else:
                self._move(items)
                self._finish(items)
                for item in items:
                    answers[item.index] = self._operation(item)
        return self._done(answers, fresh)

    # --- steps ----------------------------------------------------------------------------------

    def _parse(
        self, requests: Sequence[PaymentRequest], answers: list[Operation | PuhuiError | None]
    ) -> list[_Item]:
        items: list[_Item] = []
        phones: dict[str, int] = {}
        wanted = {
            normalize_phone(r.payee.phone)
            for r in requests
            if r.payee is not None and r.payee.phone is not None and _phone_ok(r.payee.phone)
        }
        if wanted:
            with self.engine.connect() as conn:
                phones = {
                    row.phone: int(row.id)
                    for row in conn.execute(
                        sa.select(t.customers.c.id, t.customers.c.phone).where(
                            t.customers.c.phone.in_(sorted(wanted)),
                            t.customers.c.namespace == 0,  # as Payments.resolve_payee
                        )
                    )
                }
        for index, request in enumerate(requests):
            item = _Item(index, request)
            try:
                item.cur = currency(request.currency)
                check_amount(request.amount)
                check_text(request.key, "idempotency key", IDEMPOTENCY_KEY_CHARS_MAX)
                check_text(request.note, "note", NOTE_CHARS_MAX, empty=True)
                if (request.payee is None) == (request.merchant_qr is None):
                    raise InvalidPayloadError("a payment goes to a payee or to a merchant")
                if request.payee is not None:
                    item.kind = OperationKind.P2P
                    item.payee_id = _payee_id(request.payee, phones)
                    fields: dict[str, object] = {
                        "payee": item.payee_id,
                        "amount": request.amount,
                        "currency": item.cur.code,
                        "note": request.note,
                    }
                else:
                    assert request.merchant_qr is not None
                    target = parse_qr(request.merchant_qr)
                    if target.kind is not AccountKind.MERCHANT:
                        raise MerchantNotFoundError("that QR code is not a merchant's")
                    item.kind = OperationKind.MERCHANT_PAYMENT
                    item.merchant_id = target.owner_id
                    fields = {
                        "merchant": item.merchant_id,
                        "amount": request.amount,
                        "currency": item.cur.code,
                    }
                item.scope = f"c:{request.payer_id}"
                item.fingerprint = request_fingerprint(item.kind, fields)
            except PaymentsError as error:
                answers[index] = error
                continue
            except PuhuiError as error:  # puhui.money's own input errors (unknown currency)
                answers[index] = error
                continue
            items.append(item)
        return items

    def _replays(
        self, items: list[_Item], answers: list[Operation | PuhuiError | None]
    ) -> list[_Item]:
        """Answer retries from the records; refuse keys reused for another request (also
        within the batch)."""
        if not items:
            return items
        pairs = sorted({(i.scope, i.request.key) for i in items})
        found: dict[tuple[str, str], Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(pairs), 4096):
                for row in _rows_with_keys(conn, pairs[start : start + 4096]):
                    found[(row.scope, row.idempotency_key)] = row
        fresh: list[_Item] = []
        seen: dict[tuple[str, str], _Item] = {}
        for item in items:
            pair = (item.scope, item.request.key)
            known = found.get(pair)
            if known is not None:
                if known.fingerprint != item.fingerprint:
                    answers[item.index] = IdempotencyKeyReusedError(
                        "this idempotency key was used for a different request"
                    )
                else:
                    answers[item.index] = self.payments._drive(_operation(known))
                continue
            first = seen.get(pair)
            if first is not None:  # the same key twice in one batch
                if first.fingerprint != item.fingerprint:
                    answers[item.index] = IdempotencyKeyReusedError(
                        "this idempotency key was used for a different request"
                    )
                else:  # answered with the first one's answer (see ``_done``)
                    first.copies.append(item.index)
                continue
            seen[pair] = item
            fresh.append(item)
        return fresh

    @staticmethod
    def _arriving(conn: sa.Connection, payees: set[int | None]) -> dict[tuple[int, str], int]:
        """Top-ups to these customers still waiting for the bank (or for step-up), by
        (customer, currency): a wallet's cap counts them, as ``Payments`` does one at a time."""
        if not payees:
            return {}
        ops = t.operations.c
        rows = conn.execute(
            sa.select(ops.payee_customer_id, ops.currency, sa.func.sum(ops.amount))
            .where(
                ops.status.in_([str(s) for s in _IN_FLIGHT]),
                ops.kind == str(OperationKind.TOP_UP),
                ops.payee_customer_id.in_(sorted(p for p in payees if p is not None)),
            )
            .group_by(ops.payee_customer_id, ops.currency)
        )
        return {(int(r[0]), str(r[1])): int(r[2]) for r in rows}

    def _check(
        self, items: list[_Item], answers: list[Operation | PuhuiError | None]
    ) -> list[_Item]:
        """Parties, KYC limits, funds and caps, in request order within the batch."""
        if not items:
            return items
        payments = self.payments
        people = {i.request.payer_id for i in items} | {
            i.payee_id for i in items if i.payee_id is not None
        }
        shops = {i.merchant_id for i in items if i.merchant_id is not None}
        with self.engine.connect() as conn:
            customers = {
                int(r.id): Customer(
                    int(r.id), "", "", KycLevel(r.kyc_level), bool(r.frozen), int(r.created_at_ns)
                )
                for r in conn.execute(
                    sa.select(
                        t.customers.c.id,
                        t.customers.c.kyc_level,
                        t.customers.c.frozen,
                        t.customers.c.created_at_ns,
                    ).where(t.customers.c.id.in_(sorted(people)))
                )
            }
            merchants = {
                int(r.id): bool(r.frozen)
                for r in conn.execute(
                    sa.select(t.merchants.c.id, t.merchants.c.frozen).where(
                        t.merchants.c.id.in_(sorted(shops))
                    )
                )
            }
            arriving = self._arriving(conn, {i.payee_id for i in items} - {None})
        self._open_accounts(items, customers, merchants)
        accounts: list[int] = []
        for i in items:
            assert i.cur is not None
            accounts.append(wallet_account_id(i.request.payer_id, i.cur))
            if i.payee_id is not None and i.payee_id in customers:
                accounts.append(wallet_account_id(i.payee_id, i.cur))
        balances = {a.id: a for a in payments.ledger.lookup_accounts(sorted(set(accounts)))}
        day = business_day(self.clock.now_ns(), payments.options)
        outflow = self._outflow(items, day)
        spent: dict[int, int] = {}
        received: dict[int, int] = {}
        checked: list[_Item] = []
        for item in items:
            request, cur = item.request, item.cur
            assert cur is not None
            try:
                payer = customers.get(request.payer_id)
                if payer is None:
                    raise CustomerNotFoundError(f"no customer {request.payer_id}")
                item.extra["payer"] = payer
                if payer.frozen:
                    raise AccountFrozenError("the customer is frozen")
                limits = payments.options.kyc_limits[payer.kyc_level].in_minor_units(cur)
                if item.payee_id is not None:
                    payee = customers.get(item.payee_id)
                    if payee is None:
                        raise CustomerNotFoundError(f"no customer {item.payee_id}")
                    if item.payee_id == request.payer_id:
                        raise SamePartyError("a customer cannot pay themselves")
                    if payee.frozen:
                        raise AccountFrozenError("the payee is frozen")
                else:
                    assert item.merchant_id is not None
                    frozen = merchants.get(item.merchant_id)
                    if frozen is None:
                        raise MerchantNotFoundError(f"no merchant {item.merchant_id}")
                    if frozen:
                        raise AccountFrozenError("the merchant is frozen")
                if request.amount > limits.single_payment:
                    raise KycLimitExceededError(
                        "the amount is above the customer's single-payment limit",
                        limit="single_payment",
                    )
                wallet = wallet_account_id(request.payer_id, cur)
                account = balances.get(wallet)
                available = (
                    0
                    if account is None
                    else account.credits_posted - account.debits_posted - account.debits_pending
                )
                if available - spent.get(wallet, 0) < request.amount:
                    raise InsufficientFundsError("the wallet does not hold enough")
                key = (request.payer_id, cur.code)
                if outflow.get(key, 0) + request.amount > limits.daily_outflow:
                    raise KycLimitExceededError(
                        "the customer's daily outflow limit would be exceeded",
                        limit="daily_outflow",
                    )
                if item.payee_id is not None:
                    payee_level = customers[item.payee_id].kyc_level
                    cap = payments.options.kyc_limits[payee_level].in_minor_units(cur)
                    target = wallet_account_id(item.payee_id, cur)
                    held = balances.get(target)
                    incoming = arriving.get((item.payee_id, cur.code), 0) + (
                        0
                        if held is None
                        else held.credits_posted - held.debits_posted + held.credits_pending
                    )
                    if incoming + received.get(target, 0) + request.amount > cap.wallet_balance:
                        raise KycLimitExceededError(
                            "the wallet would exceed the customer's balance limit",
                            limit="wallet_balance",
                        )
                    received[target] = received.get(target, 0) + request.amount
            except PaymentsError as error:
                answers[item.index] = error
                continue
            spent[wallet] = spent.get(wallet, 0) + request.amount
            outflow[key] = outflow.get(key, 0) + request.amount
            checked.append(item)
        for item in checked:
            item.day = day
        return checked

    def _outflow(self, items: list[_Item], day: int) -> dict[tuple[int, str], int]:
        d = t.daily_outflow.c
        payers = sorted({i.request.payer_id for i in items})
        with self.engine.connect() as conn:
            return {
                (int(r.customer_id), str(r.currency)): int(r.amount)
                for r in conn.execute(
                    sa.select(d.customer_id, d.currency, d.amount).where(
                        d.day == day, d.customer_id.in_(payers)
                    )
                )
            }

    def _open_accounts(
        self, items: list[_Item], customers: Mapping[int, object], merchants: Mapping[int, object]
    ) -> None:
        """Open the payees' wallets and merchants' accounts this process has not seen yet."""
        payments = self.payments
        for item in items:
            cur = item.cur
            assert cur is not None
            if cur.code not in payments._platform_ready:
                payments._ensure_platform(cur)
            if item.payee_id is not None and item.payee_id in customers:
                payments.open_wallet(item.payee_id, cur.code)  # cached once open
            if item.merchant_id is not None and item.merchant_id in merchants:
                payments._open_merchant_account(item.merchant_id, cur)  # cached once open

    def _decide(self, items: list[_Item]) -> None:
        payments = self.payments
        events = []
        for item in items:
            assert item.cur is not None
            payer = item.extra["payer"]
            assert isinstance(payer, Customer)
            counterparty = (
                f"c:{item.payee_id}" if item.payee_id is not None else f"m:{item.merchant_id}"
            )
            kind = risk.EventKind.P2P if item.payee_id is not None else risk.EventKind.PAYMENT
            events.append(
                payments.risk_event(
                    kind, payer, item.request.amount, item.cur, counterparty, item.request.channel
                )
            )
        for item, decision in zip(items, self.payments.decide(events), strict=True):
            item.decision = decision

    def _record(self, items: list[_Item]) -> None:
        """Step 2 for the whole batch: the records and the day's outflow, one transaction."""
        now = self.clock.now_ns()
        day = items[0].day
        rows = []
        outflow: dict[tuple[int, str], int] = {}
        for item in items:
            decision = item.decision
            assert decision is not None and item.cur is not None
            rejected = decision.decision is risk.Decision.REJECT
            item.operation_id = self.payments.new_id()
            item.status = _S.REJECTED if rejected else _S.PENDING
            item.error_code = "risk_rejected" if rejected else None
            if not rejected:
                key = (item.request.payer_id, item.cur.code)
                outflow[key] = outflow.get(key, 0) + item.request.amount
            rows.append(
                {
                    "id": _hex(item.operation_id),
                    "kind": str(item.kind),
                    "scope": item.scope,
                    "idempotency_key": item.request.key,
                    "fingerprint": item.fingerprint,
                    "status": str(item.status),
                    "currency": item.cur.code,
                    "amount": item.request.amount,
                    "payer_customer_id": item.request.payer_id,
                    "payee_customer_id": item.payee_id,
                    "merchant_id": item.merchant_id,
                    "card_id": None,
                    "note": item.request.note,
                    "day": item.day,
                    "decision": str(decision.decision),
                    "risk_score": decision.score,
                    "risk_reasons": json.dumps(
                        {
                            "reasons": list(decision.reasons),
                            "ruleset": decision.ruleset_version,
                            "model": decision.model_version,
                        }
                    ),
                    "error_code": item.error_code,
                    "bank_status": None,
                    "bank_sent": False,
                    "hold_expires_at_ns": None,
                    "order_id": None,
                    "refund_id": None,
                    "fee": 0,
                    "biller_id": None,
                    "settlement_id": None,
                    "created_at_ns": now,
                    "updated_at_ns": now,
                }
            )
        d = t.daily_outflow
        with self.engine.begin() as conn:
            existing = {
                (int(r.customer_id), str(r.currency)): int(r.amount)
                for r in conn.execute(
                    sa.select(d.c.customer_id, d.c.currency, d.c.amount).where(
                        d.c.day == day,
                        d.c.customer_id.in_(sorted({k[0] for k in outflow})),
                    )
                )
            }
            updates, inserts = [], []
            for (customer_id, code), amount in outflow.items():
                if (customer_id, code) in existing:
                    updates.append({"b_c": customer_id, "b_k": code, "b_a": amount})
                else:
                    inserts.append(
                        {
                            "customer_id": customer_id,
                            "day": item.day,
                            "currency": code,
                            "amount": amount,
                        }
                    )
            if updates:
                _add_outflow(conn, day, updates, sign=1)
            if inserts:
                conn.execute(d.insert(), inserts)
            # The allowance was checked against what was there before; a concurrent caller
            # may have used some meanwhile: check again now that the rows are locked.
            over = self._over_limit(conn, outflow, day)
            if over:
                raise KycLimitExceededError("daily outflow raced", limit="daily_outflow")
            _insert_many(conn, t.operations, rows)

    def _over_limit(
        self, conn: sa.Connection, outflow: dict[tuple[int, str], int], day: int
    ) -> bool:
        d = t.daily_outflow.c
        levels = {
            int(r.id): KycLevel(r.kyc_level)
            for r in conn.execute(
                sa.select(t.customers.c.id, t.customers.c.kyc_level).where(
                    t.customers.c.id.in_(sorted({k[0] for k in outflow}))
                )
            )
        }
        for r in conn.execute(
            sa.select(d.customer_id, d.currency, d.amount).where(
                d.day == day, d.customer_id.in_(sorted({k[0] for k in outflow}))
            )
        ):
            limits = self.payments.options.kyc_limits[levels[int(r.customer_id)]]
            if int(r.amount) > limits.in_minor_units(currency(r.currency)).daily_outflow:
                return True
        return False

    def _move(self, items: list[_Item]) -> None:
        """Step 3: one ledger call for every payment of the batch."""
        options = self.payments.options
        live = [i for i in items if i.status is _S.PENDING]
        transfers = []
        for item in live:
            assert item.cur is not None and item.decision is not None
            held = item.decision.decision in (risk.Decision.CHALLENGE, risk.Decision.REVIEW)
            challenge = item.decision.decision is risk.Decision.CHALLENGE
            credit = (
                wallet_account_id(item.payee_id, item.cur)
                if item.payee_id is not None
                else merchant_account_id(item.merchant_id or 0, item.cur)
            )
            transfers.append(
                Transfer(
                    id=transfer_id(item.operation_id, 0),
                    debit_account_id=wallet_account_id(item.request.payer_id, item.cur),
                    credit_account_id=credit,
                    amount=item.request.amount,
                    user_data_128=item.operation_id,
                    ledger=item.cur.ledger,
                    code=TransferCode.P2P
                    if item.payee_id is not None
                    else TransferCode.MERCHANT_PAYMENT,
                    timeout=options.challenge_timeout_s if challenge else 0,
                    flags=TransferFlags.PENDING if held else TransferFlags.NONE,
                )
            )
            item.extra["held"] = held
        results = self.payments.ledger.create_transfers(transfers) if transfers else []
        now = self.clock.now_ns()
        for item, result in zip(live, results, strict=True):
            if result.status not in (CreateTransferStatus.CREATED, CreateTransferStatus.EXISTS):
                item.status = _S.FAILED
                item.error_code = self.payments._failure_code(result.status)
            elif item.extra["held"]:
                item.status = _S.CHALLENGED
                if item.decision is not None and item.decision.decision is risk.Decision.CHALLENGE:
                    item.hold_expires_at_ns = now + options.challenge_timeout_s * 10**9
            else:
                item.status = _S.COMPLETED

    def _finish(self, items: list[_Item]) -> None:
        """Step 4: every outcome, one transaction (guarded: only rows still ``pending``)."""
        now = self.clock.now_ns()
        changed = [i for i in items if i.status is not _S.PENDING and i.status is not _S.REJECTED]
        if not changed:
            return
        with self.engine.begin() as conn:
            # Only rows still pending change (a retry through the single path may have
            # finished one meanwhile): only their reservations are given back, and the
            # others are answered from their records.
            still = _pending_ids(conn, [_hex(i.operation_id) for i in changed])
            finished_elsewhere = [i for i in changed if _hex(i.operation_id) not in still]
            changed = [i for i in changed if _hex(i.operation_id) in still]
            release: dict[tuple[int, str], int] = {}
            for item in changed:
                if item.status is _S.FAILED and item.cur is not None:
                    key = (item.request.payer_id, item.cur.code)
                    release[key] = release.get(key, 0) + item.request.amount
            if not changed:
                return
            ph = _placeholder(conn)
            conn.exec_driver_sql(
                f"UPDATE {t.operations.name} SET status = {ph('status')},"
                f" error_code = {ph('error')}, hold_expires_at_ns = {ph('expires')},"
                f" updated_at_ns = {ph('now')}"
                f" WHERE id = {ph('id')} AND status = {ph('pending')}",
                [
                    {
                        "id": _hex(i.operation_id),
                        "status": str(i.status),
                        "error": i.error_code,
                        "expires": i.hold_expires_at_ns,
                        "now": now,
                        "pending": str(_S.PENDING),
                    }
                    for i in changed
                ],
            )
            if release:
                _add_outflow(
                    conn,
                    changed[0].day,
                    [{"b_c": c, "b_k": k, "b_a": a} for (c, k), a in release.items()],
                    sign=-1,
                )
            for item in changed:
                held = item.decision.decision if item.decision is not None else None
                if item.status is _S.CHALLENGED and held is risk.Decision.REVIEW:
                    self.payments.open_case(conn, self._operation(item))
        for item in finished_elsewhere:
            item.extra["record"] = self.payments.operation(item.operation_id)

    def _operation(self, item: _Item) -> Operation:
        record = item.extra.get("record")
        if isinstance(record, Operation):
            return record
        assert item.cur is not None and item.decision is not None
        now = self.clock.now_ns()
        return Operation(
            id=item.operation_id,
            kind=item.kind,
            status=item.status,
            currency=item.cur.code,
            amount=item.request.amount,
            payer_customer_id=item.request.payer_id,
            payee_customer_id=item.payee_id,
            merchant_id=item.merchant_id,
            card_id=None,
            note=item.request.note,
            decision=item.decision.decision,
            risk_score=item.decision.score,
            error_code=item.error_code,
            hold_expires_at_ns=item.hold_expires_at_ns,
            order_id=None,
            refund_id=None,
            fee=0,
            biller_id=None,
            created_at_ns=now,
            updated_at_ns=now,
        )

    def _one(self, request: PaymentRequest) -> Operation | PuhuiError:
        try:
            if request.payee is not None:
                return self.payments.transfer(
                    request.payer_id,
                    request.payee,
                    request.amount,
                    request.currency,
                    key=request.key,
                    note=request.note,
                    channel=request.channel,
                )
            assert request.merchant_qr is not None
            return self.payments.pay_merchant(
                request.payer_id,
                request.merchant_qr,
                request.amount,
                request.currency,
                key=request.key,
                channel=request.channel,
            )
        except PuhuiError as error:
            return error

    def _done(
        self, answers: list[Operation | PuhuiError | None], fresh: list[_Item]
    ) -> list[Operation | PuhuiError]:
        """Every slot's answer; a request sent twice in the batch gets the first's."""
        for item in fresh:
            for index in item.copies:
                answers[index] = answers[item.index]
        out: list[Operation | PuhuiError] = []
        for answer in answers:
            assert answer is not None
            out.append(answer)
        return out


def _add_outflow(conn: sa.Connection, day: int, rows: list[dict[str, Any]], *, sign: int) -> None:
    """Add (``sign`` 1) or give back (-1) amounts of the day's outflow; ``rows`` hold
    ``b_c`` (customer), ``b_k`` (currency) and ``b_a`` (amount)."""
    d = t.daily_outflow
    amount: sa.ColumnElement[int] = sa.bindparam("b_a", type_=sa.BigInteger)
    change = amount if sign > 0 else -amount
    conn.execute(
        d.update()
        .where(
            d.c.customer_id == sa.bindparam("b_c"),
            d.c.day == day,
            d.c.currency == sa.bindparam("b_k"),
        )
        .values(amount=d.c.amount + change),
        rows,
    )


def _placeholder(conn: sa.Connection) -> Callable[[str], str]:
    """Named placeholders in the driver's own style (``:name`` for SQLite, ``%(name)s`` for
    psycopg): hot statements skip SQLAlchemy's per-row parameter processing."""
    if conn.dialect.name == "sqlite":
        return lambda name: f":{name}"
    return lambda name: f"%({name})s"


def _insert_many(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """``INSERT`` many rows through the driver's ``executemany`` (every column given)."""
    if not rows:
        return
    ph = _placeholder(conn)
    columns = list(rows[0])
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({', '.join(columns)})"
        f" VALUES ({', '.join(ph(c) for c in columns)})",
        rows,
    )


def _pending_ids(conn: sa.Connection, ids: list[str]) -> set[str]:
    """Which of ``ids`` are operations still ``pending`` (in the caller's transaction)."""
    out: set[str] = set()
    for start in range(0, len(ids), 4096):
        chunk = ids[start : start + 4096]
        if conn.dialect.name == "sqlite":
            marks = ", ".join(f":i{n}" for n in range(len(chunk)))
            params: dict[str, object] = {f"i{n}": v for n, v in enumerate(chunk)}
            params["pending"] = str(_S.PENDING)
            sql = f"SELECT id FROM {t.operations.name} WHERE id IN ({marks}) AND status = :pending"
        else:
            params = {"ids": chunk, "pending": str(_S.PENDING)}
            sql = (
                f"SELECT id FROM {t.operations.name}"
                " WHERE id = ANY(%(ids)s) AND status = %(pending)s FOR UPDATE"
            )
        out.update(str(row[0]) for row in conn.exec_driver_sql(sql, params))
    return out


def _rows_with_keys(conn: sa.Connection, pairs: list[tuple[str, str]]) -> Sequence[Any]:
    """Operations recorded under any of ``pairs`` (scope, idempotency key): one statement
    built for the driver, using the unique index on the pair (an expanding ``IN`` costs
    more to compile than to run)."""
    table = t.operations.name
    if conn.dialect.name == "sqlite":
        params: dict[str, str] = {}
        values = []
        for n, (scope, key) in enumerate(pairs):
            params[f"s{n}"], params[f"k{n}"] = scope, key
            values.append(f"(:s{n}, :k{n})")
        # A join, not ``(scope, key) IN (VALUES …)``: SQLite scans the table for the latter.
        sql = (
            f"WITH wanted(s, k) AS (VALUES {', '.join(values)})"
            f" SELECT {', '.join(f'o.{c.name}' for c in t.operations.columns)}"
            f" FROM wanted JOIN {table} AS o ON o.scope = wanted.s AND o.idempotency_key = wanted.k"
        )
        return conn.exec_driver_sql(sql, params).all()
    columns = ", ".join(c.name for c in t.operations.columns)
    sql = (
        f"SELECT {columns} FROM {table} WHERE (scope, idempotency_key) IN"
        " (SELECT * FROM unnest(%(scopes)s::text[], %(keys)s::text[]))"
    )
    return conn.exec_driver_sql(
        sql, {"scopes": [p[0] for p in pairs], "keys": [p[1] for p in pairs]}
    ).all()


def _phone_ok(phone: str) -> bool:
    try:
        normalize_phone(phone)
    except PaymentsError:
        return False
    return True


def _payee_id(payee: Payee, phones: dict[str, int]) -> int:
    given = [v for v in (payee.customer_id, payee.phone, payee.qr) if v is not None]
    if len(given) != 1:
        raise InvalidPayloadError("a payee is exactly one of customer_id, phone, qr")
    if payee.customer_id is not None:
        return payee.customer_id
    if payee.phone is not None:
        found = phones.get(normalize_phone(payee.phone))
        if found is None:
            raise CustomerNotFoundError("no customer has that phone number")
        return found
    assert payee.qr is not None
    target = parse_qr(payee.qr)
    if target.kind is not AccountKind.CUSTOMER:
        raise CustomerNotFoundError("that QR code is not a customer's")
    return target.owner_id


class PaymentCoalescer:
    """Single payments from many coroutines, carried out together as batches.

    One payment at a time costs two SQL commits (its record and its outcome) and a ledger
    round trip; under load that, not the work, is the limit. ``await pay(request)`` queues
    the request; while one batch runs (in a worker thread), the next fills up, and each
    caller gets its own answer — the ``Operation``, or the error that refused it, raised.
    Belongs to one event loop.
    """

    def __init__(self, batches: PaymentBatches, *, batch_max: int = 1_000) -> None:
        self.batches = batches
        self.batch_max = batch_max
        self._pending: list[tuple[PaymentRequest, asyncio.Future[Operation]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches_run = 0
        """How many ``pay_many`` calls carried the payments so far."""

    async def pay(self, request: PaymentRequest) -> Operation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Operation] = loop.create_future()
        self._pending.append((request, future))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            chunk = self._pending[: self.batch_max]
            del self._pending[: self.batch_max]
            try:
                answers = await asyncio.to_thread(
                    self.batches.pay_many, [request for request, _ in chunk]
                )
            except BaseException as error:  # the batch itself failed: every caller hears it
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            self.batches_run += 1
            for (_, future), answer in zip(chunk, answers, strict=True):
                if future.done():  # the caller gave up; the payment stands, as recorded
                    continue
                if isinstance(answer, Operation):
                    future.set_result(answer)
                else:
                    future.set_exception(answer)
