"""Property: any sequence of operations keeps the books equal to the records.

Hypothesis drives random top-ups, withdrawals, P2P and merchant payments (with random bank
outcomes and risk decisions, including holds that are later passed, failed or left to
expire) over a few customers and merchants. After every step:

* Σ customer wallets + Σ merchant accounts + Σ platform accounts other than the bank
  settlement account = Σ completed top-ups - Σ completed withdrawals (nothing created, nothing
  lost), and that is exactly what the bank settlement account shows;
* each wallet's posted balance is its completed inflows minus its completed outflows, and its
  held amount is the sum of its operations still waiting (challenged or at the bank);
* the ledger verifies.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.payments import (
    AccountCode,
    Operation,
    OperationKind,
    OperationStatus,
    Payee,
    Payments,
    PaymentsError,
    SimulatedBank,
    merchant_qr,
)
from puhui.store import create_engine, migrate

from .conftest import START_NS, ScriptedRisk

S = OperationStatus
CUSTOMERS = 3
WAITING = (S.CHALLENGED, S.AWAITING_BANK, S.PENDING)


@contextlib.contextmanager
def _world() -> Iterator[tuple[Payments, L.Ledger, ManualClock, SimulatedBank, ScriptedRisk]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        clock = ManualClock(START_NS)
        engine = create_engine(f"sqlite:///{path / 'p.sqlite'}")
        migrate(engine)
        ledger = L.open(str(path / "ledger"), state_dir=path / "state", clock=clock)
        bank = SimulatedBank(clock, seed=3)
        scripted = ScriptedRisk()
        payments = Payments(engine, ledger, clock=clock, bank=bank, decide=scripted)
        try:
            yield payments, ledger, clock, bank, scripted
        finally:
            ledger.close()
            engine.dispose()


decisions = st.sampled_from(
    [risk.Decision.ACCEPT] * 4
    + [risk.Decision.CHALLENGE, risk.Decision.REVIEW, risk.Decision.REJECT]
)
bank_outcomes = st.sampled_from(["ok", "ok", "declined", "timeout", "lost", "processing"])
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("top_up"),
            st.integers(0, CUSTOMERS - 1),
            st.integers(1, 300_00),
            decisions,
            bank_outcomes,
        ),
        st.tuples(
            st.just("withdraw"),
            st.integers(0, CUSTOMERS - 1),
            st.integers(1, 300_00),
            decisions,
            bank_outcomes,
        ),
        st.tuples(
            st.just("p2p"),
            st.integers(0, CUSTOMERS - 1),
            st.integers(1, 200_00),
            decisions,
            st.integers(1, CUSTOMERS - 1),
        ),
        st.tuples(
            st.just("merchant"),
            st.integers(0, CUSTOMERS - 1),
            st.integers(1, 200_00),
            decisions,
            st.integers(0, 1),
        ),
        st.tuples(
            st.just("check"), st.integers(0, 50), st.booleans(), st.just(None), st.just(None)
        ),
        st.tuples(
            st.just("time"), st.integers(1, 900), st.just(None), st.just(None), st.just(None)
        ),
    ),
    min_size=1,
    max_size=30,
)


def _check_books(
    payments: Payments, ledger: L.Ledger, customers: list[int], merchants: list[int]
) -> None:
    ops = payments.operations(limit=10_000)
    completed = [op for op in ops if op.status is S.COMPLETED]
    top_ups = sum(op.amount for op in completed if op.kind is OperationKind.TOP_UP)
    withdrawals = sum(op.amount for op in completed if op.kind is OperationKind.WITHDRAWAL)
    wallets = sum(payments.balance(c, "CNY").posted for c in customers)
    shops = sum(payments.merchant_balance(m, "CNY").posted for m in merchants)
    others = sum(
        payments.platform_balance(code, "CNY").posted
        for code in (AccountCode.ESCROW, AccountCode.FEE_REVENUE, AccountCode.SUSPENSE)
    )
    assert wallets + shops + others == top_ups - withdrawals
    assert (
        -payments.platform_balance(AccountCode.BANK_SETTLEMENT, "CNY").posted
        == top_ups - withdrawals
    )
    for c in customers:
        inflow = sum(op.amount for op in completed if op.payee_customer_id == c)
        outflow = sum(op.amount for op in completed if op.payer_customer_id == c)
        held = sum(
            op.amount
            for op in ops
            if op.payer_customer_id == c and op.status in WAITING and _holds(payments, op)
        )
        balance = payments.balance(c, "CNY")
        assert balance.posted == inflow - outflow, (c, balance)
        assert balance.held == held, (c, balance, held)
    assert L.verify(ledger).ok


def _holds(payments: Payments, op: Operation) -> bool:
    """Whether an unfinished operation holds its payer's money in the ledger right now."""
    from puhui.payments.model import transfer_id

    found = payments.ledger.lookup_transfers([transfer_id(op.id, 0)])
    if not found:
        return False
    settled = payments.ledger.lookup_transfers([transfer_id(op.id, 1)])
    expired = op.hold_expires_at_ns is not None and op.hold_expires_at_ns <= payments.clock.now_ns()
    return not settled and not (expired and op.kind is not OperationKind.WITHDRAWAL)


@settings(
    max_examples=45,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps)
def test_books_always_match_the_records(plan: list[tuple[object, ...]]) -> None:
    with _world() as (payments, ledger, clock, bank, scripted):
        customers = []
        for k in range(CUSTOMERS):
            c = payments.register_customer(f"1370000000{k}", f"C{k}")
            payments.verify_identity(c.id, f"ID{k}")
            card = payments.bind_card(c.id, f"tok{k}", "Bank", f"000{k}")
            payments.verify_full(c.id, biometric_passed=True)
            assert payments.top_up(c.id, card.id, 1_000_00, "CNY", key="seed").status == "completed"
            customers.append(c.id)
        merchants = [
            payments.register_merchant(f"Shop {k}", "retail", 60, f"mtok{k}").id for k in range(2)
        ]
        for n, (kind, a, b, decision, extra) in enumerate(plan):
            key = f"k{n}"
            if decision is not None:
                scripted.next = [decision]  # type: ignore[list-item]
            try:
                if kind in ("top_up", "withdraw"):
                    assert isinstance(a, int) and isinstance(b, int)
                    bank.failure_rate = 1.0 if extra == "declined" else 0.0
                    bank.timeout_rate = 1.0 if extra == "timeout" else 0.0
                    bank.lost_rate = 1.0 if extra == "lost" else 0.0
                    bank.processing_rate = 1.0 if extra == "processing" else 0.0
                    card_id = payments.cards(customers[a])[0].id
                    if kind == "top_up":
                        payments.top_up(customers[a], card_id, b, "CNY", key=key)
                    else:
                        payments.withdraw(customers[a], card_id, b, "CNY", key=key)
                elif kind == "p2p":
                    assert isinstance(a, int) and isinstance(b, int) and isinstance(extra, int)
                    payee = customers[(a + extra) % CUSTOMERS]
                    payments.transfer(customers[a], Payee(customer_id=payee), b, "CNY", key=key)
                elif kind == "merchant":
                    assert isinstance(a, int) and isinstance(b, int) and isinstance(extra, int)
                    payments.pay_merchant(
                        customers[a], merchant_qr(merchants[extra]), b, "CNY", key=key
                    )
                elif kind == "check":
                    assert isinstance(a, int) and isinstance(b, bool)
                    held = payments.operations(status=S.CHALLENGED)
                    if held:
                        op = held[a % len(held)]
                        if op.decision is risk.Decision.REVIEW:
                            payments.decide_review(op.id, approve=b)
                        else:
                            payments.verify_challenge(op.id, passed=b)
                else:
                    assert isinstance(a, int)
                    clock.advance(a * 10**9)
                    bank.lost_rate = bank.timeout_rate = 0.0
                    ledger.tick()
                    payments.recover()
            except PaymentsError:
                pass  # refused before anything moved: the books must still balance
            finally:
                scripted.next = []
            _check_books(payments, ledger, customers, merchants)
        for op in payments.operations(limit=10_000):
            event(f"{op.kind} ended {op.status}")
