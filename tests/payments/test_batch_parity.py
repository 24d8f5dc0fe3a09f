"""Differential: the batched path answers exactly as the single-operation path.

Two identical worlds (customers at each KYC level with small limits, a frozen customer, a
frozen merchant, funded wallets, top-ups still waiting for the bank, a risk function that
decides each request by its amount) receive the same random sequence of P2P and merchant
payments: one world through ``Payments.transfer`` / ``pay_merchant`` one at a time, the
other through ``PaymentBatches.pay_many`` (or ``PaymentCoalescer``) in random batches. Every
request must get the same answer, and the worlds must end with the same balances and the
same daily outflow.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.payments import (
    KycLevel,
    KycLimits,
    Operation,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentCoalescer,
    PaymentRequest,
    Payments,
    PaymentsOptions,
    SimulatedBank,
    customer_qr,
    merchant_qr,
)
from puhui.store import create_engine, migrate
from puhui.store import payments as tables

from .conftest import START_NS, pay_one

S = OperationStatus
LIMITS = {  # major units: CNY 3 = 300 fen
    KycLevel.UNVERIFIED: KycLimits(single_payment=3, daily_outflow=5, wallet_balance=10),
    KycLevel.BASIC: KycLimits(single_payment=6, daily_outflow=10, wallet_balance=20),
    KycLevel.FULL: KycLimits(single_payment=15, daily_outflow=30, wallet_balance=40),
}
# (level, funded, waiting top-up, frozen) per customer
PEOPLE = (
    (KycLevel.FULL, 2_500, 0, False),
    (KycLevel.BASIC, 800, 0, False),
    (KycLevel.UNVERIFIED, 300, 0, False),
    (KycLevel.FULL, 500, 0, True),
    (KycLevel.UNVERIFIED, 0, 700, False),
    (KycLevel.BASIC, 1_000, 600, False),
)
UNKNOWN = 999


def decide_by_amount(events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
    """Risk that answers each request the same however it arrives: by its amount."""
    by_digit = {1: risk.Decision.REJECT, 2: risk.Decision.CHALLENGE, 3: risk.Decision.REVIEW}
    out = []
    for event in events:
        decision = by_digit.get(event.amount % 10, risk.Decision.ACCEPT)
        out.append(risk.RiskDecision(decision, 0 if decision is risk.Decision.ACCEPT else 900))
    return out


@dataclass
class World:
    payments: Payments
    ledger: L.Ledger
    clock: ManualClock
    customers: list[int]
    merchants: list[int]


def _open(path: Path, clock: ManualClock) -> tuple[Payments, L.Ledger, SimulatedBank]:
    engine = create_engine(f"sqlite:///{path / 'p.sqlite'}")
    migrate(engine)
    ledger = L.open(str(path / "ledger"), state_dir=path / "state", clock=clock)
    bank = SimulatedBank(clock, seed=1)
    options = PaymentsOptions(kyc_limits=LIMITS)
    payments = Payments(
        engine, ledger, clock=clock, bank=bank, decide=decide_by_amount, options=options
    )
    return payments, ledger, bank


def _populate(p: Payments, bank: SimulatedBank) -> tuple[list[int], list[int]]:
    """The people above and two merchants (the second frozen)."""
    customers = []
    for n, (level, funded, waiting, frozen) in enumerate(PEOPLE):
        c = p.register_customer(f"1380000000{n}", f"C{n}")
        card = p.bind_card(c.id, f"tok{n}", "Bank", f"000{n}")
        if level >= KycLevel.BASIC:
            p.verify_identity(c.id, f"ID{n}")
        if level >= KycLevel.FULL:
            p.verify_full(c.id, biometric_passed=True)
        if funded:
            assert p.top_up(c.id, card.id, funded, "CNY", key="fund").status is S.COMPLETED
        if waiting:
            bank.processing_rate = 1.0
            assert p.top_up(c.id, card.id, waiting, "CNY", key="wait").status is S.AWAITING_BANK
            bank.processing_rate = 0.0
        if frozen:
            p.set_frozen(c.id, True)
        customers.append(c.id)
    merchants = [p.register_merchant(f"M{k}", "retail", 50, f"m{k}").id for k in (0, 1)]
    p.set_merchant_frozen(merchants[1], True)
    return customers, merchants


_template: tuple[Path, list[int], list[int]] | None = None


def _built_template() -> tuple[Path, list[int], list[int]]:
    """The world built once (store and ledger files), copied for each example."""
    global _template
    if _template is None:
        path = Path(tempfile.mkdtemp(prefix="puhui-parity-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        payments, ledger, bank = _open(path, ManualClock(START_NS))
        try:
            customers, merchants = _populate(payments, bank)
        finally:
            ledger.close()
            payments.engine.dispose()
        _template = (path, customers, merchants)
    return _template


@contextlib.contextmanager
def parity_world() -> Iterator[World]:
    """A fresh copy of the template world."""
    template, customers, merchants = _built_template()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w"
        shutil.copytree(template, path)
        clock = ManualClock(START_NS)
        payments, ledger, _ = _open(path, clock)
        try:
            yield World(payments, ledger, clock, list(customers), list(merchants))
        finally:
            ledger.close()
            payments.engine.dispose()


# --- requests ---------------------------------------------------------------------------------

AMOUNTS = [0, -5, 1, 50, 101, 250, 299, 300, 301, 499, 600, 601, 1_000, 1_500, 1_501, 2**63]
people = st.integers(0, len(PEOPLE))  # len(PEOPLE): a customer nobody registered
request_tuples = st.tuples(
    st.sampled_from(["id", "id", "phone", "qr", "merchant", "merchant", "bad_qr", "bad_m_qr"]),
    people,
    people,
    st.one_of(st.sampled_from(AMOUNTS), st.integers(1, 3_000)),
    st.sampled_from(["CNY"] * 6 + ["JPY", "XXX"]),
    st.sampled_from(["a", "b", "c", "d", "e", ""]),
    st.sampled_from(["", "", "rent"]),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("pay"), request_tuples, st.booleans()),
        st.tuples(st.just("again"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("time"), st.sampled_from([601, 86_400]), st.just(True)),
    ),
    min_size=1,
    max_size=24,
)


def build(world: World, spec: tuple[Any, ...]) -> PaymentRequest:
    kind, payer_n, target_n, amount, code, key, note = spec
    ids = [*world.customers, UNKNOWN]
    payer, target = ids[payer_n], ids[target_n]
    shop = [*world.merchants, UNKNOWN][target_n % 3]
    if kind == "id":
        return PaymentRequest(payer, amount, code, key, payee=Payee(customer_id=target), note=note)
    if kind == "phone":
        phone = f"1380000000{target_n}" if target_n < len(PEOPLE) else "13899999999"
        return PaymentRequest(payer, amount, code, key, payee=Payee(phone=phone), note=note)
    if kind == "qr":
        return PaymentRequest(payer, amount, code, key, payee=Payee(qr=customer_qr(target)))
    if kind == "bad_qr":
        return PaymentRequest(payer, amount, code, key, payee=Payee(qr=merchant_qr(shop)))
    if kind == "bad_m_qr":
        qr = customer_qr(target) if target_n % 2 else "puhui://x/1"
        return PaymentRequest(payer, amount, code, key, merchant_qr=qr)
    return PaymentRequest(payer, amount, code, key, merchant_qr=merchant_qr(shop), note=note)


def coalesce(batches: PaymentBatches, rs: list[PaymentRequest]) -> list[Operation | PuhuiError]:
    async def run() -> list[Operation | PuhuiError]:
        coalescer = PaymentCoalescer(batches, batch_max=max(1, len(rs) // 2 + 1))
        got = await asyncio.gather(*(coalescer.pay(r) for r in rs), return_exceptions=True)
        for answer in got:
            assert isinstance(answer, Operation | PuhuiError), answer
        return got  # type: ignore[return-value]

    return asyncio.run(run())


def shape(answer: Operation | PuhuiError, first: dict[int, int], n: int) -> tuple[Any, ...]:
    """What must match between the worlds: an operation's fields but its random id (named
    by the request that first got it), or an error's class, code and limit."""
    if isinstance(answer, PuhuiError):
        return ("error", type(answer).__name__, answer.code, sorted(answer.details.items()))
    op = answer
    return (
        "op",
        first.setdefault(op.id, n),
        op.kind,
        op.status,
        op.error_code,
        op.currency,
        op.amount,
        op.payer_customer_id,
        op.payee_customer_id,
        op.merchant_id,
        op.note,
        op.decision,
        op.risk_score,
        op.hold_expires_at_ns,
        op.created_at_ns,
    )


def state(world: World) -> tuple[Any, ...]:
    p = world.payments
    wallets = [
        (p.balance(c, k).posted, p.balance(c, k).held)
        for c in world.customers
        for k in ("CNY", "JPY")
    ]
    shops = [
        (p.merchant_balance(m, k).posted, p.merchant_balance(m, k).held)
        for m in world.merchants
        for k in ("CNY", "JPY")
    ]
    d = tables.daily_outflow
    with p.engine.connect() as conn:
        outflow = sorted(
            (r.customer_id, r.day, r.currency, r.amount)
            for r in conn.execute(sa.select(d)).all()
            if r.amount
        )
    return wallets, shops, outflow


def run_plan(plan: list[tuple[Any, ...]], coalesced: list[bool]) -> None:
    with parity_world() as single, parity_world() as batched:
        assert single.customers == batched.customers and single.merchants == batched.merchants
        batches = PaymentBatches(batched.payments)
        sent: list[PaymentRequest] = []
        one_first: dict[int, int] = {}
        many_first: dict[int, int] = {}
        pending: list[tuple[int, PaymentRequest]] = []
        flushes = 0

        def flush() -> None:
            nonlocal flushes
            if not pending:
                return
            rs = [r for _, r in pending]
            via_coalescer = coalesced[flushes % len(coalesced)]
            flushes += 1
            answers = coalesce(batches, rs) if via_coalescer else batches.pay_many(rs)
            for (n, r), answer in zip(pending, answers, strict=True):
                expected = pay_one(single.payments, r)
                if isinstance(answer, Operation):
                    assert answer == batched.payments.operation(answer.id) or not answer.final
                assert shape(answer, many_first, n) == shape(expected, one_first, n), (
                    n,
                    r,
                    "coalescer" if via_coalescer else "pay_many",
                )
            pending.clear()

        for kind, arg, cut in plan:
            if kind == "time":
                flush()
                for w in (single, batched):
                    w.clock.advance(arg * 10**9)
                    w.ledger.tick()
                continue
            if kind == "again":
                if not sent:
                    continue
                request = sent[arg % len(sent)]
            else:
                request = build(batched, arg)
            sent.append(request)
            pending.append((len(sent) - 1, request))
            if cut:
                flush()
        flush()
        assert state(batched) == state(single)


@settings(
    max_examples=int(os.environ.get("PARITY_EXAMPLES", "40")),
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if not os.environ.get("PARITY_NO_SHRINK") else []),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps, st.lists(st.booleans(), min_size=1, max_size=4))
def test_batches_answer_as_one_at_a_time(
    plan: list[tuple[Any, ...]], coalesced: list[bool]
) -> None:
    run_plan(plan, coalesced)
