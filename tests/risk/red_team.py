"""A small world for red-teaming the risk engine: people with an honest history, a fixed
clock, and actors (owners, attackers, coached victims) whose events go one by one through a
real ``RiskEngine`` with the shipped ruleset.

An actor's challenge is a step-up: the owner (or a coached victim, or an attacker holding
the owner's phone number) passes it and the device becomes trusted, as ``Payments`` and the
simulator do; anyone else fails it. A review holds the money (the analyst is assumed to
catch fraud), a reject stops it. Attackers keep going after a stop: the tests measure how
much of what they tried to move got through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from puhui.clock import ManualClock
from puhui.risk import Decision, EventKind, RiskDecision, RiskEvent, RiskLists, load_ruleset
from puhui.risk._engine import DEFAULT_RULES, RiskEngine, engine_schema

S: Final = 1_000_000_000
MINUTE: Final = 60 * S
HOUR: Final = 3600 * S
DAY: Final = 86_400 * S
YUAN: Final = 100
START: Final = 1_767_225_600 * S + 2 * DAY
"""2026-01-03 00:00 UTC (08:00 in China): the attacks start here; histories end before."""
TZ: Final = 8 * 3600
SHANGHAI: Final = (31.23, 121.47)
BEIJING: Final = (39.90, 116.40)
CHENGDU: Final = (30.57, 104.07)
SINGAPORE: Final = (1.35, 103.82)
MANILA: Final = (14.60, 120.98)
MONEY_OUT: Final = frozenset({EventKind.PAYMENT, EventKind.P2P, EventKind.WITHDRAWAL})
LOGIN: Final = EventKind.LOGIN
RESET: Final = EventKind.PASSWORD_RESET
DEVICE_CHANGE: Final = EventKind.DEVICE_CHANGE
CARD: Final = EventKind.CARD_BINDING
P2P: Final = EventKind.P2P
PAY: Final = EventKind.PAYMENT
TOP_UP: Final = EventKind.TOP_UP
WITHDRAW: Final = EventKind.WITHDRAWAL
CASH_OUT: Final = frozenset({EventKind.WITHDRAWAL})
"""Money leaving the platform."""
SPENT: Final = frozenset({EventKind.PAYMENT})


@dataclass
class Person:
    customer_id: int
    device: str
    ip: str
    where: tuple[float, float]
    created_ns: int
    kyc: int = 2
    card: str = ""

    @property
    def ref(self) -> str:
        """What others name as the counterparty when paying this person."""
        return f"c:{self.customer_id}"


@dataclass
class Step:
    kind: EventKind
    amount: int
    counterparty: str
    decision: RiskDecision
    went_through: bool
    """Accepted, or challenged and the step-up passed."""


@dataclass
class Tally:
    """What an actor tried and what got through."""

    steps: list[Step] = field(default_factory=list)

    def out_attempted(self, kinds: frozenset[EventKind] = MONEY_OUT) -> int:
        return sum(s.amount for s in self.steps if s.kind in kinds)

    def out_through(self, kinds: frozenset[EventKind] = MONEY_OUT) -> int:
        return sum(s.amount for s in self.steps if s.kind in kinds and s.went_through)

    def stopped(self) -> list[Step]:
        return [s for s in self.steps if not s.went_through]

    def decisions(self) -> list[str]:
        return [str(s.decision.decision) for s in self.steps]

    def reasons(self) -> set[str]:
        return {r.split("(")[0] for s in self.steps for r in s.decision.reasons}

    def __str__(self) -> str:  # shown when an assertion fails
        return "\n".join(
            f"  {s.kind} {s.amount / YUAN:.2f} -> {s.counterparty or '-'}: "
            f"{s.decision.decision} {'through' if s.went_through else 'stopped'} "
            f"{list(s.decision.reasons)}"
            for s in self.steps
        )


class World:
    """An engine with the shipped rules, a clock, and people."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.clock = ManualClock(START)
        self.engine = RiskEngine(
            load_ruleset(DEFAULT_RULES, engine_schema()), lists=RiskLists(self.clock)
        )
        self._ids = iter(range(1, 1_000_000))
        self.people: list[Person] = []

    @property
    def now(self) -> int:
        return self.clock.now_ns()

    def wait(self, ns: int) -> None:
        self.clock.advance(ns)

    def person(
        self,
        *,
        age_days: float = 400,
        where: tuple[float, float] = SHANGHAI,
        kyc: int = 2,
        device: str | None = None,
        ip: str | None = None,
    ) -> Person:
        n = next(self._ids)
        p = Person(
            customer_id=n,
            device=device or f"phone-{n}",
            ip=ip or f"10.1.{n // 250}.{n % 250 + 1}",
            where=where,
            created_ns=self.now - int(age_days * DAY),
            kyc=kyc,
            card=f"card:{n}",
        )
        self.people.append(p)
        return p

    def crowd(self, n: int, *, days: int = 60) -> list[Person]:
        """``n`` established customers (1-3 years old) with ``days`` of history, paying
        each other now and then."""
        people = [self.person(age_days=365 + 30 * k) for k in range(n)]
        self.history(people, days=days, friends=people)
        return people

    def introduce(self, p: Person) -> Person:
        """``p`` logs in from their own phone (passing the step-up a first login from a phone
        may get): risk knows the account (and its age)."""
        [decision] = self.engine([self.event(EventKind.LOGIN, p)])
        assert decision.decision in (Decision.ACCEPT, Decision.CHALLENGE), decision
        self.engine.trust_device(p.customer_id, p.device)
        return p

    def event(
        self,
        kind: EventKind,
        p: Person,
        amount: int = 0,
        counterparty: str = "",
        *,
        at_ns: int | None = None,
        device: str | None = None,
        ip: str | None = None,
        where: tuple[float, float] | None = None,
    ) -> RiskEvent:
        lat, lon = where or p.where
        return RiskEvent(
            kind,
            p.customer_id,
            self.now if at_ns is None else at_ns,
            amount,
            "CNY",
            counterparty,
            device or p.device,
            ip or p.ip,
            counterparty if counterparty.startswith("m:") else "",
            lat,
            lon,
            TZ,
            p.kyc,
            p.created_ns,
        )

    def history(
        self,
        people: list[Person],
        *,
        days: int = 60,
        friends: list[Person],
        ended_days_ago: int = 0,
    ) -> None:
        """Everyday life for ``people`` over the ``days`` before now (before
        ``ended_days_ago`` days ago: a dormant account), in one batch: shop payments, a friend
        paid now and then, a salary top-up a month and the odd withdrawal to their own card,
        from their own phone at home."""
        rng = self.rng
        events: list[RiskEvent] = []
        end = self.now - 2 * HOUR - ended_days_ago * DAY
        for p in people:
            start = max(p.created_ns, end - days * DAY)
            for day in range((end - start) // DAY):
                base = start + day * DAY + 9 * HOUR
                if day % 30 == 0:
                    events.append(self.event(EventKind.TOP_UP, p, 6_000 * YUAN, p.card, at_ns=base))
                for k in range(int(rng.integers(1, 4))):
                    amount = int(rng.integers(15, 150)) * YUAN
                    shop = f"m:{int(rng.integers(1, 40))}"
                    at = base + (k + 1) * 3 * HOUR
                    events.append(self.event(EventKind.PAYMENT, p, amount, shop, at_ns=at))
                if rng.random() < 0.25:
                    friend = friends[int(rng.integers(len(friends)))]
                    if friend is not p:
                        amount = int(rng.integers(30, 300)) * YUAN
                        at = base + 11 * HOUR
                        events.append(self.event(EventKind.P2P, p, amount, friend.ref, at_ns=at))
                if day % 30 == 15:
                    at = base + 2 * HOUR
                    events.append(
                        self.event(EventKind.WITHDRAWAL, p, 1_000 * YUAN, p.card, at_ns=at)
                    )
        for p in self.people:  # everyone is known to risk from their sign-up on
            events.append(self.event(EventKind.LOGIN, p, at_ns=max(p.created_ns, end - days * DAY)))
        events.sort(key=lambda e: e.at_ns)
        decided = self.engine(events)
        stopped = [d for d in decided if d.decision in (Decision.REVIEW, Decision.REJECT)]
        assert len(stopped) <= len(decided) // 100, stopped[:5]  # honest history is honest

    def act(
        self,
        tally: Tally,
        kind: EventKind,
        p: Person,
        amount: int = 0,
        counterparty: str = "",
        *,
        device: str | None = None,
        ip: str | None = None,
        where: tuple[float, float] | None = None,
        passes_step_up: bool = False,
    ) -> Step:
        """One event decided now; a challenge is a step-up the actor passes or fails."""
        event = self.event(kind, p, amount, counterparty, device=device, ip=ip, where=where)
        [decision] = self.engine([event])
        through = decision.decision is Decision.ACCEPT
        if decision.decision is Decision.CHALLENGE and passes_step_up:
            through = True
            self.engine.trust_device(p.customer_id, event.device_id)
        step = Step(kind, amount, counterparty, decision, through)
        tally.steps.append(step)
        return step


def assert_bulk_stopped(
    t: Tally, share: float = 0.5, kinds: frozenset[EventKind] = MONEY_OUT
) -> None:
    """At most ``share`` of the money the attackers tried to move (out, by default) got
    through."""
    attempted, through = t.out_attempted(kinds), t.out_through(kinds)
    assert attempted > 0
    assert through <= share * attempted, f"through {through / YUAN} of {attempted / YUAN}:\n{t}"


def assert_not_rejected(t: Tally) -> None:
    """No step of ``t`` was rejected (an honest customer may be challenged or held)."""
    rejected = [s for s in t.steps if s.decision.decision is Decision.REJECT]
    assert not rejected, f"\n{t}"


def thin(
    world: World, *, age_days: float, kyc: int = 1, where: tuple[float, float] = CHENGDU
) -> Person:
    """An account of ``age_days`` known to risk only by a login (a mule's, a fake's)."""
    return world.introduce(world.person(age_days=age_days, kyc=kyc, where=where))
