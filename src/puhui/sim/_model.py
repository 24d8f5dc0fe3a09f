"""What the simulator is told (``SimConfig``) and what it writes (``SimEvent``, ``SimReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Final

from puhui.errors import InvalidInputError

CUSTOMERS_MAX: Final = 1_000_000
DAYS_MAX: Final = 366
SEED_MAX: Final = 2**63 - 1
NS_PER_S: Final = 1_000_000_000
NS_PER_DAY: Final = 86_400 * NS_PER_S
TZ_OFFSET_S: Final = 8 * 3600
"""The simulated economy lives in UTC+8 (China Standard Time): local hours drive its rhythm."""


class Scenario(StrEnum):
    """The labelled fraud scenarios (``docs/sim.md`` describes each)."""

    ACCOUNT_TAKEOVER = "account_takeover"
    """New device and IP, password reset, then the wallet (and its card) drained."""
    MULE_CHAIN = "mule_chain"
    """Dirty money hops through young accounts within minutes, then is cashed out."""
    CARD_TESTING = "card_testing"
    """Many stolen cards bound to one account, tiny top-ups, then a large one spent."""
    APP_SCAM = "app_scam"
    """Authorised push payment: a victim pays a new payee an unusual sum."""
    MERCHANT_COLLUSION = "merchant_collusion"
    """Fake orders at a young merchant paid with stolen money, cashed out at settlement."""
    PROMOTION_ABUSE = "promotion_abuse"
    """Many new accounts from one device collect the new-user bonus and pool it."""
    SIM_SWAP = "sim_swap"
    """Account takeover by a fraudster who holds the victim's phone number (passes OTPs)."""


DEFAULT_INCIDENCE: Final = {
    Scenario.ACCOUNT_TAKEOVER: 0.4,
    Scenario.MULE_CHAIN: 0.2,
    Scenario.CARD_TESTING: 0.2,
    Scenario.APP_SCAM: 0.4,
    Scenario.MERCHANT_COLLUSION: 0.05,
    Scenario.PROMOTION_ABUSE: 0.1,
    Scenario.SIM_SWAP: 0.1,
}
"""Expected attacks per day per 1,000 customers, before ``SimConfig.fraud_rate``."""


class Role(StrEnum):
    GOOD = "good"
    """An honest customer acting for themselves."""
    VICTIM = "victim"
    """An honest customer deceived into acting (the APP scam's payment)."""
    FRAUDSTER = "fraudster"
    """A fraudster acting, on their own account or on one they took over."""
    MULE = "mule"
    """An account that passes dirty money on."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation: deterministic for the same values."""

    customers: int = 1_000
    days: int = 30
    seed: int = 0
    start: date = date(2026, 1, 5)
    """The first simulated day (local time, UTC+8)."""
    merchants: int = 0
    """0: one merchant per 20 customers (at least 5)."""
    fraud_rate: float = 1.0
    """Multiplies every scenario's incidence (0 switches fraud off)."""
    scenarios: tuple[Scenario, ...] = tuple(Scenario)

    def __post_init__(self) -> None:
        if not 10 <= self.customers <= CUSTOMERS_MAX:
            raise InvalidInputError(f"customers must be 10..{CUSTOMERS_MAX}")
        if not 1 <= self.days <= DAYS_MAX:
            raise InvalidInputError(f"days must be 1..{DAYS_MAX}")
        if not 0 <= self.seed <= SEED_MAX:
            raise InvalidInputError("seed must be 0..2**63-1")
        if self.merchants < 0 or self.merchants > self.customers:
            raise InvalidInputError("merchants must be 0..customers")
        if not 0.0 <= self.fraud_rate <= 100.0:
            raise InvalidInputError("fraud_rate must be 0..100")

    @property
    def merchant_count(self) -> int:
        return self.merchants or max(5, self.customers // 20)


@dataclass(slots=True)
class SimEvent:
    """One thing that happened, as the platform saw it, with the truth beside it."""

    seq: int
    at_ns: int
    kind: str
    """A ``puhui.risk.EventKind`` value, or ``order``/``bill`` for what risk saw as ``payment``."""
    customer_id: int
    counterparty: str
    amount: int
    currency: str
    device_id: str
    ip: str
    latitude: float
    longitude: float
    label: str
    """The fraud scenario this event belongs to; empty for honest activity."""
    attack_id: int
    """Which attack (0 for honest activity): events of one attack share it."""
    role: Role
    status: str
    """How it ended: an operation status (``completed``, ``rejected``, ``challenged`` then
    what step-up made of it…), ``accepted``/``rejected``/``challenged`` for events that move
    no money, or ``refused:<error code>`` when the service refused it before risk saw it."""
    decision: str
    """Risk's decision (empty when the service refused the request first)."""
    score: int
    operation_id: int
    """0 for events that move no money."""

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at_ns": self.at_ns,
            "kind": self.kind,
            "customer_id": self.customer_id,
            "counterparty": self.counterparty,
            "amount": self.amount,
            "currency": self.currency,
            "device_id": self.device_id,
            "ip": self.ip,
            "latitude": round(self.latitude, 5),
            "longitude": round(self.longitude, 5),
            "label": self.label,
            "attack_id": self.attack_id,
            "role": str(self.role),
            "status": self.status,
            "decision": self.decision,
            "score": self.score,
            "operation_id": f"{self.operation_id:032x}" if self.operation_id else "",
        }


@dataclass(slots=True)
class ScenarioReport:
    attacks: int = 0
    events: int = 0
    """Money and non-money events of this scenario's attacks."""
    stopped: int = 0
    """Of those, how many risk did not let through (reject, failed step-up, review rejected)."""
    attempted: int = 0
    """Money the fraudsters tried to move out of victims' reach (minor units)."""
    lost: int = 0
    """Money of this scenario that left the platform (minor units)."""

    def as_json(self) -> dict[str, int]:
        return {
            "attacks": self.attacks,
            "events": self.events,
            "stopped": self.stopped,
            "attempted": self.attempted,
            "lost": self.lost,
        }


@dataclass(slots=True)
class SimReport:
    """What a run did: volume, fraud and its losses, and what risk did to honest customers."""

    config: SimConfig
    events: int = 0
    money_events: int = 0
    volume: int = 0
    """Completed money movements, summed (minor units, CNY)."""
    good_money_events: int = 0
    good_rejected: int = 0
    good_challenged: int = 0
    good_reviewed: int = 0
    refused: int = 0
    """Requests the service refused before risk (funds, limits…)."""
    scenarios: dict[str, ScenarioReport] = field(default_factory=dict)
    elapsed_s: float = 0.0
    risk_labels: list[str] = field(default_factory=list)
    """The scenario (empty: honest) of every event risk was asked about, in the order it
    was asked (setup included): aligned with a ``RiskEngine``'s decision log."""

    @property
    def fraud_lost(self) -> int:
        return sum(s.lost for s in self.scenarios.values())

    @property
    def loss_rate(self) -> float:
        return self.fraud_lost / self.volume if self.volume else 0.0

    def as_json(self) -> dict[str, Any]:
        good = max(self.good_money_events, 1)
        return {
            "customers": self.config.customers,
            "days": self.config.days,
            "seed": self.config.seed,
            "events": self.events,
            "money_events": self.money_events,
            "volume": self.volume,
            "fraud_lost": self.fraud_lost,
            "loss_rate": self.loss_rate,
            "good_money_events": self.good_money_events,
            "good_rejected_rate": self.good_rejected / good,
            "good_challenged_rate": self.good_challenged / good,
            "good_reviewed_rate": self.good_reviewed / good,
            "refused": self.refused,
            "scenarios": {k: v.as_json() for k, v in sorted(self.scenarios.items())},
            "elapsed_s": round(self.elapsed_s, 3),
        }
