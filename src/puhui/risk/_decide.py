"""Risk events and decisions (the contract every service codes against)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    PAYMENT = "payment"
    P2P = "p2p"
    TOP_UP = "top_up"
    WITHDRAWAL = "withdrawal"
    LOGIN = "login"
    DEVICE_CHANGE = "device_change"
    PASSWORD_RESET = "password_reset"
    CARD_BINDING = "card_binding"
    LOAN_APPLICATION = "loan_application"


class Decision(StrEnum):
    ACCEPT = "accept"
    CHALLENGE = "challenge"
    """Step-up verification (OTP, biometric) before the money moves."""
    REVIEW = "review"
    """Held for an analyst."""
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """One thing a customer is doing, as risk sees it."""

    kind: EventKind
    customer_id: int
    at_ns: int
    amount: int = 0
    currency: str = ""
    counterparty: str = ""
    """Who receives the money: ``c:<customer id>``, ``m:<merchant id>``, ``card:<id>``…"""
    device_id: str = ""
    ip: str = ""
    merchant: str = ""
    """The merchant paid (``m:<id>``); when empty, a counterparty ``m:<id>`` is taken."""
    latitude: float | None = None
    """Where the customer is (degrees, WGS 84), when the channel knows it."""
    longitude: float | None = None
    tz_offset_s: int | None = None
    """The customer's offset from UTC in seconds (None: UTC), for local time of day."""
    kyc_level: int | None = None
    """The customer's KYC level at the time (``puhui.payments.KycLevel`` values)."""
    account_created_ns: int | None = None
    """When the customer's account was opened (None: the store takes its first sighting)."""


@dataclass(frozen=True, slots=True)
class RiskDecision:
    decision: Decision
    score: int
    """0 (no risk seen) to 1000."""
    reasons: tuple[str, ...] = ()
    ruleset_version: str = "pass-through"
    model_version: str = "pass-through"


_ACCEPT = RiskDecision(Decision.ACCEPT, 0)


def decide(events: Sequence[RiskEvent]) -> list[RiskDecision]:
    """One decision per event, in order: the pass-through, every event accepted (the engine is
    ``RiskEngine``, as ``puhui serve`` runs it)."""
    return [_ACCEPT for _ in events]
