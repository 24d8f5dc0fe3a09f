"""A payments service on a fresh SQL store (SQLite always, PostgreSQL in CI) and ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.payments import (
    Operation,
    OperationStatus,
    PaymentRequest,
    Payments,
    PaymentsOptions,
    SimulatedBank,
)
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@dataclass
class ScriptedRisk:
    """A stand-in for ``puhui.risk.decide``: answers ``accept`` unless told otherwise."""

    next: list[risk.Decision] = field(default_factory=list)
    seen: list[risk.RiskEvent] = field(default_factory=list)

    def __call__(self, events: object) -> list[risk.RiskDecision]:
        out = []
        for event in events:  # type: ignore[attr-defined]
            self.seen.append(event)
            decision = self.next.pop(0) if self.next else risk.Decision.ACCEPT
            out.append(risk.RiskDecision(decision, 900 if decision != "accept" else 0))
        return out


@dataclass
class World:
    payments: Payments
    ledger: L.Ledger
    engine: sa.Engine
    clock: ManualClock
    bank: SimulatedBank
    risk: ScriptedRisk
    tmp_path: Path


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(START_NS)
    engine = create_engine(database_url)
    migrate(engine)
    ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state", clock=clock)
    bank = SimulatedBank(clock, seed=1)
    scripted = ScriptedRisk()
    payments = Payments(
        engine, ledger, clock=clock, bank=bank, decide=scripted, options=PaymentsOptions()
    )
    try:
        yield World(payments, ledger, engine, clock, bank, scripted, tmp_path)
    finally:
        ledger.close()
        engine.dispose()


def verified_customer(world: World, n: int, fund: int = 0) -> int:
    """Customer ``n`` at KYC level 2 with a bound card, topped up with ``fund`` CNY cents."""
    p = world.payments
    c = p.register_customer(f"1370000{n:04d}", f"C{n}")
    card = p.bind_card(c.id, f"tok{n}", "Bank", f"{n:04d}")
    p.verify_identity(c.id, f"ID{n}")
    p.verify_full(c.id, biometric_passed=True)
    if fund:
        top_up = p.top_up(c.id, card.id, fund, "CNY", key="fund")
        assert top_up.status is OperationStatus.COMPLETED
    return c.id


def pay_one(p: Payments, r: PaymentRequest) -> Operation | PuhuiError:
    """``r`` through the single-operation path (``transfer`` / ``pay_merchant``): what a
    batch's slot must answer."""
    try:
        if r.payee is not None:
            return p.transfer(r.payer_id, r.payee, r.amount, r.currency, key=r.key, note=r.note)
        assert r.merchant_qr is not None
        return p.pay_merchant(r.payer_id, r.merchant_qr, r.amount, r.currency, key=r.key)
    except PuhuiError as error:
        return error
