"""The synthetic economy: honest customers, merchants and billers, and the fraudsters among
them, acting through the real payments services (issue #4) with risk control in front.

Everything that happens is an *action* on one time line (a heap keyed by time and sequence
number); actions may schedule later actions (a mule cashes out what it received). Every
random draw comes from one ``numpy`` generator seeded by ``SimConfig.seed`` and is taken in
the time line's order, and the services get a ``ManualClock`` and ids from a counter, so a
seed gives the same events, byte for byte.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final

import numpy as np

from puhui import ledger as L
from puhui import risk
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.money import currency
from puhui.payments import (
    BillerKind,
    Bills,
    Channel,
    Checkout,
    Fulfilment,
    KycLevel,
    Operation,
    OperationStatus,
    Payee,
    PaymentBatches,
    PaymentRequest,
    Payments,
    PaymentsOptions,
    Settlement,
    SimulatedBank,
    SimulatedBiller,
    merchant_qr,
)
from puhui.store import create_engine, migrate

from ._model import (
    DEFAULT_INCIDENCE,
    NS_PER_DAY,
    NS_PER_S,
    TZ_OFFSET_S,
    Role,
    Scenario,
    ScenarioReport,
    SimConfig,
    SimEvent,
    SimReport,
)

_GOT_THROUGH: Final = frozenset(
    {"completed", "accepted", "challenge_passed", "challenged", "awaiting_bank", "pending"}
)
"""Statuses of events risk did not stop (``challenged``: held for review, decided later)."""

Decide = Callable[[Sequence[risk.RiskEvent]], list[risk.RiskDecision]]

CNY: Final = "CNY"
YUAN: Final = 100
"""Minor units per yuan."""
MINUTE: Final = 60 * NS_PER_S
HOUR: Final = 3600 * NS_PER_S
BATCH_WINDOW: Final = 5 * 60 * 1_000_000_000
"""Honest P2P and shop payments are sent as one batch per five minutes (the platform's
coalescer does the same with concurrent requests); attacks go one request at a time."""
BILLER_CODE: Final = "SIM-POWER"
BONUS: Final = 20 * YUAN
"""The new-user bonus the platform pays after a first merchant payment of at least 10 CNY."""
_PLATFORM: Final = Channel("platform", "10.255.0.1", 31.23, 121.47)
"""Where the promotion's account pays its bonuses from: the platform's own server."""
_PLATFORM_AT: Final = (31.23, 121.47)
CITIES: Final = (
    ("shanghai", 31.23, 121.47),
    ("hangzhou", 30.27, 120.15),
    ("chengdu", 30.57, 104.07),
    ("kunming", 25.04, 102.71),
    ("lanzhou", 36.06, 103.83),
    ("harbin", 45.80, 126.53),
)
FAR_PLACES: Final = ((1.35, 103.82), (14.60, 120.98), (22.30, 114.17), (13.75, 100.50))
"""Where attackers connect from (a takeover's login is rarely from the victim's town)."""
_HOUR_WEIGHTS: Final = (
    *(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.4, 1.0, 1.5, 1.2, 1.0, 1.3),  # 00:00-11:59
    *(1.8, 1.2, 1.0, 1.0, 1.1, 1.4, 1.9, 2.0, 1.7, 1.3, 0.9, 0.5),  # 12:00-23:59
)
HOURS: Final = np.array(_HOUR_WEIGHTS) / sum(_HOUR_WEIGHTS)
"""How a day's activity spreads over the local hours (meals, commutes, evenings)."""
CATEGORIES: Final = ("grocery", "food", "transport", "retail", "online")
CATEGORY_YUAN: Final = {"grocery": 45, "food": 28, "transport": 12, "retail": 120, "online": 90}
"""Median payment by merchant category (yuan)."""
LIMITS_OF: Final = {
    KycLevel.UNVERIFIED: (200, 500, 1_000),
    KycLevel.BASIC: (5_000, 10_000, 50_000),
    KycLevel.FULL: (50_000, 200_000, 1_000_000),
}


@dataclass(slots=True)
class Person:
    """A customer of the simulated economy (honest, fraudster or mule)."""

    index: int
    customer_id: int
    card_id: int
    urban: bool
    senior: bool
    kyc: KycLevel
    city: int
    lat: float
    lon: float
    device: str
    ip: str
    salary: int
    salary_day: int
    spend_rate: float
    p2p_rate: float
    friends: list[int] = field(default_factory=list)
    shops: list[int] = field(default_factory=list)
    binding_id: int = 0
    bill_day: int = 0
    role: Role = Role.GOOD
    bonus_paid: bool = False
    p2p_median: int = 150 * YUAN
    cards: list[int] = field(default_factory=list)
    newcomer: bool = False
    """Joined during the run (the new-user bonus is for them)."""

    @property
    def channel(self) -> Channel:
        return Channel(device_id=self.device, ip=self.ip, latitude=self.lat, longitude=self.lon)


@dataclass(slots=True)
class Shop:
    merchant_id: int
    category: str
    city: int
    colluding: bool = False


@dataclass(order=True, slots=True)
class _Action:
    at_ns: int
    seq: int
    run: Callable[[], object] = field(compare=False)


@dataclass(slots=True)
class _Attack:
    scenario: Scenario
    attack_id: int
    device: str
    ip: str
    lat: float
    lon: float
    passes_otp: bool = False


@dataclass(slots=True)
class _Queued:
    request: PaymentRequest
    person: Person
    kind: risk.EventKind
    counterparty: str
    label: tuple[str, int, Role]
    then: Callable[[Operation], None] | None = None


class Economy:
    """One simulation run over its own store and ledger in ``workdir``."""

    def __init__(self, config: SimConfig, workdir: Path, *, decide: Decide | None = None) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        start = datetime(config.start.year, config.start.month, config.start.day, tzinfo=UTC)
        self.start_ns = int(start.timestamp()) * NS_PER_S - TZ_OFFSET_S * NS_PER_S
        """Local midnight of the first day, in UTC nanoseconds."""
        self.clock = ManualClock(self.start_ns - 800 * NS_PER_DAY)
        self._decide_fn: Decide = decide or risk.decide
        workdir.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{workdir / 'sim.sqlite'}")
        migrate(self.engine)
        self.ledger = L.open(str(workdir / "ledger"), state_dir=workdir / "state", clock=self.clock)
        ids = itertools.count((config.seed % 2**32) << 64 | 1)
        self.payments = Payments(
            self.engine,
            self.ledger,
            clock=self.clock,
            bank=SimulatedBank(self.clock, seed=config.seed),
            options=PaymentsOptions(day_offset_s=TZ_OFFSET_S),
            decide=self._decide,
            new_id=ids.__next__,
        )
        self.checkout = Checkout(self.payments)
        self.bills = Bills(self.payments, SimulatedBiller(self.clock, seed=config.seed))
        self.settlement = Settlement(self.payments)
        self.people: list[Person] = []
        self.shops: list[Shop] = []
        self.events: list[SimEvent] = []
        self.report = SimReport(config=config)
        self._queue: list[_Action] = []
        self._seq = itertools.count()
        self._keys = itertools.count(1)
        self._attacks = itertools.count(1)
        self._shop_weights = np.zeros(0)
        self._reviews: list[tuple[int, SimEvent]] = []
        self._exits: set[int] = set()
        """Operations whose money, once completed, has left the platform."""
        self._promoter: Person | None = None
        self._promoter_signed_in = False
        self._populated = False
        self._asking = ""
        """The scenario of the request being made (empty: honest)."""
        self._batches = PaymentBatches(self.payments)
        self._batch: list[_Queued] = []
        self._queued: dict[int, int] = {}
        """Money each customer has in the batch not sent yet (minor units)."""

    def close(self) -> None:
        self.ledger.close()
        self.engine.dispose()

    # --- the time line ----------------------------------------------------------------------

    def at(self, at_ns: int, run: Callable[[], object]) -> None:
        heapq.heappush(self._queue, _Action(max(at_ns, self.clock.now_ns()), next(self._seq), run))

    def run(self, on_day: Callable[[int], None] | None = None) -> SimReport:
        started = time.perf_counter()
        self._populate()
        for day in range(self.config.days):
            self.at(self.start_ns + day * NS_PER_DAY, partial(self._plan_day, day))
        end = self.start_ns + self.config.days * NS_PER_DAY
        while self._queue and self._queue[0].at_ns < end:
            action = heapq.heappop(self._queue)
            if action.at_ns > self.clock.now_ns():
                self.clock.set(action.at_ns)
            action.run()
            if on_day is not None and action.at_ns >= self.start_ns:
                on_day((action.at_ns - self.start_ns) // NS_PER_DAY)
        self.report.elapsed_s = time.perf_counter() - started
        return self.report

    # --- risk in front of everything ----------------------------------------------------------

    def _decide(self, events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
        """Risk's answer; the truth about each event asked is noted beside it, in order
        (``SimReport.risk_labels``: what a model is trained on)."""
        self.report.risk_labels.extend([self._asking] * len(events))
        return self._decide_fn(events)

    def _observe(
        self,
        kind: risk.EventKind,
        person: Person,
        *,
        channel: Channel,
        where: tuple[float, float],
        label: tuple[str, int, Role],
        counterparty: str = "",
    ) -> risk.Decision:
        """An event that moves no money (login, device change, password reset, card binding):
        risk decides; a challenge is a step-up the actor passes or fails."""
        customer = self.payments.customer(person.customer_id)
        event = self.payments.risk_event(kind, customer, 0, currency(CNY), counterparty, channel)
        self._asking = label[0]
        [decision] = self._decide([event])
        self._asking = ""
        outcome = decision.decision
        status = {
            risk.Decision.ACCEPT: "accepted",
            risk.Decision.REJECT: "rejected",
            risk.Decision.REVIEW: "rejected",  # nobody waits for an analyst to log in
            risk.Decision.CHALLENGE: "challenged",
        }[outcome]
        if outcome is risk.Decision.CHALLENGE:
            passed = self._passes_step_up(label)
            status = "challenge_passed" if passed else "challenge_failed"
            outcome = risk.Decision.ACCEPT if passed else risk.Decision.REJECT
            trust = getattr(self._decide_fn, "trust_device", None)
            if passed and trust is not None:  # the code arrived on this phone: it is theirs
                trust(person.customer_id, channel.device_id)
        elif outcome is risk.Decision.REVIEW:
            outcome = risk.Decision.REJECT
        self._record(
            kind, person.customer_id, counterparty, 0, channel, where, label, status,
            str(decision.decision), decision.score, 0,
        )  # fmt: skip
        return outcome

    def _passes_step_up(self, label: tuple[str, int, Role]) -> bool:
        name, _, role = label
        if not name or role is Role.VICTIM:
            return bool(self.rng.random() < 0.97)  # the owner: the OTP arrives on their phone
        if name == Scenario.SIM_SWAP:
            return bool(self.rng.random() < 0.9)  # the fraudster holds the phone number
        return bool(self.rng.random() < 0.02)

    def _money(
        self,
        kind: risk.EventKind,
        person: Person,
        counterparty: str,
        amount: int,
        call: Callable[[Channel, str], Operation],
        *,
        channel: Channel,
        where: tuple[float, float],
        label: tuple[str, int, Role],
        exit_: bool,
    ) -> Operation | None:
        """A money operation through the service. ``exit_``: completed, the money has left
        the platform (a withdrawal, goods bought, a colluding merchant's takings)."""
        key = f"sim-{next(self._keys)}"
        self._asking = label[0]
        try:
            answer: Operation | PuhuiError = call(channel, key)
        except PuhuiError as error:
            answer = error
        finally:
            self._asking = ""
        return self._answered(
            answer, kind, person, counterparty, amount, channel=channel, where=where,
            label=label, exit_=exit_,
        )  # fmt: skip

    def _answered(
        self,
        answer: Operation | PuhuiError,
        kind: risk.EventKind,
        person: Person,
        counterparty: str,
        amount: int,
        *,
        channel: Channel,
        where: tuple[float, float],
        label: tuple[str, int, Role],
        exit_: bool,
    ) -> Operation | None:
        """Record what the service answered; a challenge is a step-up the actor passes or
        fails; a review waits for the analyst."""
        if isinstance(answer, PuhuiError):
            error = answer
            self.report.refused += 1
            self._record(
                kind, person.customer_id, counterparty, amount, channel, where, label,
                f"refused:{error.code}", "", 0, 0,
            )  # fmt: skip
            return None
        op = answer
        if op.status is OperationStatus.CHALLENGED and op.decision is risk.Decision.CHALLENGE:
            op = self.payments.verify_challenge(
                op.id, passed=self._passes_step_up(label), channel=channel
            )
        event = self._record(
            kind, person.customer_id, counterparty, amount, channel, where, label,
            str(op.status), str(op.decision), op.risk_score, op.id,
        )  # fmt: skip
        if op.status is OperationStatus.CHALLENGED:  # held for review
            self._reviews.append((op.id, event))
            event.status = "review"
        if exit_:
            self._exits.add(op.id)
        self._settle_money(event, op, exit_)
        return op

    def _settle_money(self, event: SimEvent, op: Operation, exit_: bool) -> None:
        if op.status is not OperationStatus.COMPLETED:
            return
        self.report.volume += op.amount
        if event.label and exit_:
            self._scenario(event.label).lost += op.amount

    def _record(
        self,
        kind: risk.EventKind,
        customer_id: int,
        counterparty: str,
        amount: int,
        channel: Channel,
        where: tuple[float, float],
        label: tuple[str, int, Role],
        status: str,
        decision: str,
        score: int,
        operation_id: int,
    ) -> SimEvent:
        name, attack_id, role = label
        event = SimEvent(
            seq=len(self.events),
            at_ns=self.clock.now_ns(),
            kind=str(kind),
            customer_id=customer_id,
            counterparty=counterparty,
            amount=amount,
            currency=CNY,
            device_id=channel.device_id,
            ip=channel.ip,
            latitude=where[0],
            longitude=where[1],
            label=name,
            attack_id=attack_id,
            role=role,
            status=status,
            decision=decision,
            score=score,
            operation_id=operation_id,
        )
        self.events.append(event)
        report = self.report
        report.events += 1
        money = amount > 0
        report.money_events += money
        if name:
            scenario = self._scenario(name)
            scenario.events += 1
            if decision not in ("", "accept") and status not in _GOT_THROUGH:
                scenario.stopped += 1
        elif money and decision:
            report.good_money_events += 1
            report.good_rejected += decision == "reject"
            report.good_challenged += decision == "challenge"
            report.good_reviewed += decision == "review"
        return event

    def _scenario(self, name: str) -> ScenarioReport:
        return self.report.scenarios.setdefault(name, ScenarioReport())

    # --- the population -------------------------------------------------------------------------

    def _populate(self) -> None:
        cfg, rng = self.config, self.rng
        for k in range(cfg.merchant_count):
            category = CATEGORIES[k % len(CATEGORIES)]
            shop = self.payments.register_merchant(
                f"Shop {k}", category, int(rng.integers(30, 120)), f"sim-mtok-{k}"
            )
            self.shops.append(Shop(shop.id, category, int(rng.integers(len(CITIES)))))
        ranks = np.arange(1, len(self.shops) + 1, dtype=np.float64)
        self._shop_weights = 1.0 / ranks**1.1
        self._shop_weights /= self._shop_weights.sum()
        self.bills.register_biller(BILLER_CODE, "Provincial Power", BillerKind.ELECTRICITY)
        # Customers joined over the last two years: their accounts have an age.
        joined = np.sort(rng.integers(0, 730 * NS_PER_DAY, size=cfg.customers))
        base = self.start_ns - 730 * NS_PER_DAY
        for k in range(cfg.customers):
            self.clock.set(max(self.clock.now_ns(), base + int(joined[k])))
            self.people.append(self._new_person(Role.GOOD))
        for person in self.people:
            person.friends = [int(f) for f in rng.choice(len(self.people), size=4)]
            person.friends = [f for f in person.friends if f != person.index]
            near = [s for s, shop in enumerate(self.shops) if shop.city == person.city]
            person.shops = [int(s) for s in rng.choice(near or range(len(self.shops)), size=3)]
        promoter = self._new_person(Role.GOOD, kyc=KycLevel.FULL, fund=0, bill=False)
        self._fund(promoter, 900_000 * YUAN)
        self._promoter = promoter
        self._populated = True
        self.clock.set(self.start_ns - NS_PER_S)

    def _new_person(
        self,
        role: Role,
        *,
        kyc: KycLevel | None = None,
        fund: int | None = None,
        bill: bool = True,
        device: str | None = None,
    ) -> Person:
        rng = self.rng
        index = len(self.people)
        n = next(self._keys)
        customer = self.payments.register_customer(f"+86138{n:08d}", f"Sim {n}")
        level = kyc
        if level is None:
            level = KycLevel(int(rng.choice(3, p=[0.1, 0.3, 0.6])))
        if level >= KycLevel.BASIC:
            self.payments.verify_identity(customer.id, f"SIMID{n:012d}")
        card = self.payments.bind_card(
            customer.id, f"sim-card-{n}", "Sim Bank", f"{n % 10_000:04d}"
        )
        if level >= KycLevel.FULL:
            self.payments.verify_full(customer.id, biometric_passed=True)
        urban = bool(rng.random() < 0.7)
        city = int(rng.integers(len(CITIES)))
        spread = 0.05 if urban else 0.6
        _, lat, lon = CITIES[city]
        person = Person(
            index=index,
            customer_id=customer.id,
            card_id=card.id,
            urban=urban,
            senior=bool(rng.random() < 0.15),
            kyc=level,
            city=city,
            lat=lat + float(rng.normal(0, spread)),
            lon=lon + float(rng.normal(0, spread)),
            device=device or f"d{rng.integers(2**48):012x}",
            ip=f"10.{city}.{rng.integers(256)}.{rng.integers(1, 255)}",
            salary=int(rng.lognormal(math.log(5_000 if urban else 1_800), 0.4)) * YUAN,
            salary_day=int(rng.integers(1, 29)),
            spend_rate=float(rng.gamma(2.0, 0.9 if urban else 0.4)),
            p2p_rate=float(rng.gamma(1.5, 0.15)),
            role=role,
            bill_day=int(rng.integers(1, 29)),
            newcomer=self._populated,
        )
        person.cards.append(card.id)
        person.p2p_median = int(rng.lognormal(math.log(150), 0.5)) * YUAN
        self.people.append(person)
        if bill and rng.random() < 0.6:
            person.binding_id = self.bills.bind(customer.id, BILLER_CODE, f"{n:010d}").id
        start = (
            fund if fund is not None else int(rng.lognormal(math.log(600 if urban else 250), 0.8))
        )
        if start > 0:
            self._fund(person, start * YUAN if fund is None else start)
        return person

    def _fund(self, person: Person, amount: int) -> None:
        """Money the person brings from their bank (setup, outside the events)."""
        cap = LIMITS_OF[person.kyc][2] * YUAN // 2
        amount = min(amount, cap)
        if amount <= 0:
            return
        key = f"sim-{next(self._keys)}"
        self.payments.top_up(
            person.customer_id, person.card_id, amount, CNY, key=key, channel=person.channel
        )

    def _where(self, person: Person) -> tuple[float, float]:
        return (person.lat, person.lon)

    def _available(self, person: Person) -> int:
        held = self._queued.get(person.customer_id, 0)
        return self.payments.balance(person.customer_id, CNY).available - held

    def _time_on(self, day: int) -> int:
        hour = int(self.rng.choice(24, p=HOURS))
        return self.start_ns + day * NS_PER_DAY + hour * HOUR + int(self.rng.integers(HOUR))

    # --- a day --------------------------------------------------------------------------------

    def _plan_day(self, day: int) -> None:
        rng, cfg = self.rng, self.config
        day_ns = self.start_ns + day * NS_PER_DAY
        weekend = (cfg.start.weekday() + day) % 7 >= 5
        month_day = (cfg.start.day + day - 1) % 28 + 1
        self.at(day_ns + 2 * HOUR, self._jobs)
        self.at(day_ns + 10 * HOUR, self._analyst)
        for person in list(self.people):
            if person.role is not Role.GOOD:
                continue
            pays = rng.poisson(person.spend_rate * (1.2 if weekend else 1.0))
            moments = sorted(self._time_on(day) for _ in range(pays))
            if moments or rng.random() < 0.3:
                first = moments[0] if moments else self._time_on(day)
                self.at(first - 30 * NS_PER_S, partial(self._login, person))
            for at in moments:
                self.at(at, partial(self._shop, person))
            for _ in range(rng.poisson(person.p2p_rate)):
                self.at(self._time_on(day), partial(self._p2p, person))
            if rng.random() < (0.06 if person.urban else 0.02):
                self.at(self._time_on(day), partial(self._order, person))
            if rng.random() < (0.03 if person.urban else 0.08):
                self.at(self._time_on(day), partial(self._withdraw, person))
            if month_day == person.salary_day:
                self.at(day_ns + 9 * HOUR, partial(self._salary, person))
            if month_day == person.bill_day and person.binding_id:
                self.at(self._time_on(day), partial(self._bill, person))
            if rng.random() < 1 / 300:
                self.at(self._time_on(day), partial(self._new_phone, person))
            if rng.random() < 1 / 400:
                self.at(self._time_on(day), partial(self._reset_password, person))
        for _ in range(rng.poisson(max(1.0, cfg.customers / 1_000))):
            self.at(self._time_on(day), self._sign_up)
        scale = cfg.customers / 1_000 * cfg.fraud_rate
        for scenario in cfg.scenarios:
            for _ in range(rng.poisson(DEFAULT_INCIDENCE[scenario] * scale)):
                self.at(self._time_on(day), partial(self._attack, scenario))

    def _jobs(self) -> None:
        """The platform's nightly jobs: escrow timers, settlement of yesterday, recovery."""
        self.checkout.run_timers()
        self.settlement.settle()
        self.payments.recover()

    def _analyst(self) -> None:
        """An analyst works through yesterday's held payments: honest ones are approved
        (98 %), fraudulent ones rejected (95 %)."""
        waiting, self._reviews = self._reviews, []
        for op_id, event in waiting:
            honest = not event.label or event.role is Role.GOOD
            approve = bool(self.rng.random() < (0.98 if honest else 0.05))
            try:
                op = self.payments.decide_review(op_id, approve=approve)
            except PuhuiError:
                op = self.payments.operation(op_id)  # ended meanwhile (a timer, recovery)
            event.status = str(op.status)
            self._settle_money(event, op, exit_=op_id in self._exits)
            if event.label and op.status is not OperationStatus.COMPLETED:
                self._scenario(event.label).stopped += 1

    def _send_later(self, queued: _Queued) -> None:
        """Into the current five-minute batch (sent at the end of the window)."""
        if not self._batch:
            now = self.clock.now_ns()
            self.at(now - now % BATCH_WINDOW + BATCH_WINDOW - 1, self._flush)
        self._batch.append(queued)
        customer = queued.person.customer_id
        self._queued[customer] = self._queued.get(customer, 0) + queued.request.amount

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._queued.clear()
        answers = self._batches.pay_many([q.request for q in batch])
        for queued, answer in zip(batch, answers, strict=True):
            p = queued.person
            op = self._answered(
                answer, queued.kind, p, queued.counterparty, queued.request.amount,
                channel=queued.request.channel, where=self._where(p), label=queued.label,
                exit_=False,
            )  # fmt: skip
            if op is not None and queued.then is not None:
                queued.then(op)

    # --- honest behaviour ------------------------------------------------------------------------

    _HONEST: Final = ("", 0, Role.GOOD)

    def _login(self, p: Person) -> None:
        self._observe(
            risk.EventKind.LOGIN, p, channel=p.channel, where=self._where(p), label=self._HONEST
        )

    def _shop(self, p: Person) -> None:
        rng = self.rng
        if p.shops and rng.random() < 0.7:
            shop = self.shops[p.shops[int(rng.integers(len(p.shops)))]]
        else:
            # the popular shops of the founding population (colluding ones join later)
            shop = self.shops[int(rng.choice(len(self._shop_weights), p=self._shop_weights))]
        median = CATEGORY_YUAN[shop.category] * (1.0 if p.urban else 0.6)
        amount = max(1 * YUAN, int(rng.lognormal(math.log(median * YUAN), 0.7)))
        self._top_up_for(p, amount)
        request = PaymentRequest(
            p.customer_id, amount, CNY, f"sim-{next(self._keys)}",
            merchant_qr=merchant_qr(shop.merchant_id), channel=p.channel,
        )  # fmt: skip

        def then(op: Operation) -> None:
            if op.status is OperationStatus.COMPLETED and amount >= 10 * YUAN:
                self._bonus(p, self._HONEST)

        self._send_later(
            _Queued(request, p, risk.EventKind.PAYMENT, f"m:{shop.merchant_id}", self._HONEST, then)
        )

    def _bonus(self, p: Person, label: tuple[str, int, Role]) -> None:
        """The platform's new-user bonus, once per customer, after a first payment."""
        promoter = self._promoter
        if p.bonus_paid or promoter is None or not p.newcomer:
            return  # customers from before the promotion started get none
        p.bonus_paid = True
        platform, honest = _PLATFORM, (label[0], label[1], Role.GOOD)
        if not self._promoter_signed_in:  # the platform's server signs in once, as any app does
            signed_in = self._observe(
                risk.EventKind.LOGIN, promoter, channel=platform, where=_PLATFORM_AT, label=honest
            )
            self._promoter_signed_in = signed_in is risk.Decision.ACCEPT
        self._money(
            risk.EventKind.P2P, promoter, f"c:{p.customer_id}", BONUS,
            lambda ch, key: self.payments.transfer(
                promoter.customer_id, Payee(customer_id=p.customer_id), BONUS, CNY, key=key,
                note="new-user bonus", channel=ch,
            ),
            channel=platform, where=_PLATFORM_AT, label=honest, exit_=False,
        )  # fmt: skip

    def _top_up_for(self, p: Person, amount: int, label: tuple[str, int, Role] = _HONEST) -> None:
        """Short of money, the customer tops up from their card first."""
        if self._available(p) >= amount:
            return
        need = (amount // (100 * YUAN) + 2) * 100 * YUAN
        self._money(
            risk.EventKind.TOP_UP, p, f"card:{p.card_id}", need,
            lambda ch, key: self.payments.top_up(
                p.customer_id, p.card_id, need, CNY, key=key, channel=ch
            ),
            channel=p.channel, where=self._where(p), label=label, exit_=False,
        )  # fmt: skip

    def _p2p(self, p: Person) -> None:
        if not p.friends:
            return
        friend = self.people[p.friends[int(self.rng.integers(len(p.friends)))]]
        amount = max(1 * YUAN, int(self.rng.lognormal(math.log(p.p2p_median), 0.6)))
        self._top_up_for(p, amount)
        request = PaymentRequest(
            p.customer_id, amount, CNY, f"sim-{next(self._keys)}",
            payee=Payee(customer_id=friend.customer_id), channel=p.channel,
        )  # fmt: skip
        self._send_later(
            _Queued(request, p, risk.EventKind.P2P, f"c:{friend.customer_id}", self._HONEST)
        )

    def _order(self, p: Person) -> None:
        """A marketplace purchase with escrow: paid now, shipped tomorrow, confirmed later
        (or by the auto-confirm timer)."""
        online = [s for s in self.shops if s.category in ("online", "retail") and not s.colluding]
        if not online:
            return
        shop = online[int(self.rng.integers(len(online)))]
        amount = max(5 * YUAN, int(self.rng.lognormal(math.log(150 * YUAN), 0.8)))
        self._top_up_for(p, amount)
        order = self.checkout.create_order(
            p.customer_id, shop.merchant_id, amount, CNY, Fulfilment.EXPRESS, "Sim order",
            key=f"sim-o{next(self._keys)}",
        )  # fmt: skip
        op = self._money(
            risk.EventKind.PAYMENT, p, f"m:{shop.merchant_id}", amount,
            lambda ch, key: self.checkout.pay_order(order.id, p.customer_id, key=key, channel=ch),
            channel=p.channel, where=self._where(p), label=self._HONEST, exit_=False,
        )  # fmt: skip
        if op is None or op.status is not OperationStatus.COMPLETED:
            return
        now = self.clock.now_ns()
        self.at(now + int(self.rng.integers(12, 36)) * HOUR, lambda: self._ship(order.id, shop))
        if self.rng.random() < 0.7:
            later = now + int(self.rng.integers(3, 6)) * NS_PER_DAY
            self.at(later, lambda: self._confirm(order.id, p))

    def _ship(self, order_id: int, shop: Shop) -> None:
        with contextlib.suppress(PuhuiError):  # closed or refunded meanwhile
            self.checkout.ship_order(order_id, shop.merchant_id)

    def _confirm(self, order_id: int, p: Person) -> None:
        with contextlib.suppress(PuhuiError):  # not shipped yet, or confirmed by the timer
            self.checkout.confirm_receipt(order_id, p.customer_id)

    def _withdraw(self, p: Person) -> None:
        available = self._available(p)
        amount = int(available * float(self.rng.uniform(0.3, 0.6))) // YUAN * YUAN
        if amount < 10 * YUAN:
            return
        self._money(
            risk.EventKind.WITHDRAWAL, p, f"card:{p.card_id}", amount,
            lambda ch, key: self.payments.withdraw(
                p.customer_id, p.card_id, amount, CNY, key=key, channel=ch
            ),
            channel=p.channel, where=self._where(p), label=self._HONEST, exit_=False,
        )  # fmt: skip

    def _salary(self, p: Person) -> None:
        amount = p.salary * 2 // 5 // YUAN * YUAN
        room = LIMITS_OF[p.kyc][2] * YUAN - self.payments.balance(p.customer_id, CNY).posted
        amount = min(amount, room // YUAN * YUAN)
        if amount < YUAN:
            return
        self._money(
            risk.EventKind.TOP_UP, p, f"card:{p.card_id}", amount,
            lambda ch, key: self.payments.top_up(
                p.customer_id, p.card_id, amount, CNY, key=key, channel=ch
            ),
            channel=p.channel, where=self._where(p), label=self._HONEST, exit_=False,
        )  # fmt: skip

    def _bill(self, p: Person) -> None:
        bill = self.bills.query_bill(p.customer_id, p.binding_id)
        if bill is None:
            return
        self._top_up_for(p, bill.amount)
        self._money(
            risk.EventKind.PAYMENT, p, f"biller:{BILLER_CODE}", bill.amount,
            lambda ch, key: self.bills.pay(
                p.customer_id, p.binding_id, bill.bill_id, key=key, channel=ch
            ),
            channel=p.channel, where=self._where(p), label=self._HONEST, exit_=False,
        )  # fmt: skip

    def _new_phone(self, p: Person) -> None:
        p.device = f"d{self.rng.integers(2**48):012x}"
        self._observe(
            risk.EventKind.DEVICE_CHANGE, p, channel=p.channel, where=self._where(p),
            label=self._HONEST,
        )  # fmt: skip

    def _reset_password(self, p: Person) -> None:
        self._observe(
            risk.EventKind.PASSWORD_RESET, p, channel=p.channel, where=self._where(p),
            label=self._HONEST,
        )  # fmt: skip

    def _sign_up(self) -> None:
        """An honest newcomer: registers, tops up and starts paying."""
        p = self._new_person(Role.GOOD, fund=0, bill=False)
        p.friends = [int(f) for f in self.rng.choice(self.config.customers, size=3)]
        near = [s for s, shop in enumerate(self.shops) if shop.city == p.city]
        p.shops = [int(s) for s in self.rng.choice(near or range(len(self.shops)), size=3)]
        self._login(p)
        self.at(
            self.clock.now_ns() + int(self.rng.integers(5, 120)) * MINUTE, lambda: self._shop(p)
        )

    # --- attacks --------------------------------------------------------------------------------

    def _attack(self, scenario: Scenario) -> None:
        rng = self.rng
        lat, lon = FAR_PLACES[int(rng.integers(len(FAR_PLACES)))]
        attack = _Attack(
            scenario=scenario,
            attack_id=next(self._attacks),
            device=f"x{rng.integers(2**48):012x}",
            ip=f"203.0.113.{rng.integers(1, 255)}",
            lat=lat + float(rng.normal(0, 0.1)),
            lon=lon + float(rng.normal(0, 0.1)),
        )
        self._scenario(scenario).attacks += 1
        {
            Scenario.ACCOUNT_TAKEOVER: self._takeover,
            Scenario.SIM_SWAP: self._takeover,
            Scenario.MULE_CHAIN: self._mule_chain,
            Scenario.CARD_TESTING: self._card_testing,
            Scenario.APP_SCAM: self._app_scam,
            Scenario.MERCHANT_COLLUSION: self._collusion,
            Scenario.PROMOTION_ABUSE: self._promotion_abuse,
        }[scenario](attack)

    def _label(self, attack: _Attack, role: Role = Role.FRAUDSTER) -> tuple[str, int, Role]:
        return (str(attack.scenario), attack.attack_id, role)

    def _victim(self) -> Person | None:
        honest = [p for p in self.people if p.role is Role.GOOD and p is not self._promoter]
        if not honest:
            return None
        seniors = [p for p in honest if p.senior]
        pool = seniors if seniors and self.rng.random() < 0.5 else honest
        return pool[int(self.rng.integers(len(pool)))]

    def _mule(self, attack: _Attack, *, young: bool) -> Person:
        """A mule: a fresh account (young) or a recruited older one."""
        if not young:
            older = [p for p in self.people if p.role is Role.MULE]
            if older and self.rng.random() < 0.5:
                return older[int(self.rng.integers(len(older)))]
        mule = self._new_person(Role.MULE, kyc=KycLevel.BASIC, fund=0, bill=False)
        mule.ip = f"198.51.100.{self.rng.integers(1, 255)}"
        return mule

    def _takeover(self, attack: _Attack) -> None:
        victim = self._victim()
        if victim is None:
            return
        rng = self.rng
        sim_swap = attack.scenario is Scenario.SIM_SWAP
        label = self._label(attack)
        if sim_swap:  # the victim's number now rings on the fraudster's phone, in-country
            attack.passes_otp = True
            attack.ip = f"10.{rng.integers(len(CITIES))}.{rng.integers(256)}.{rng.integers(255)}"
            attack.lat, attack.lon = CITIES[int(rng.integers(len(CITIES)))][1:]
        channel = Channel(attack.device, attack.ip, attack.lat, attack.lon)
        where = (attack.lat, attack.lon)
        steps = [risk.EventKind.LOGIN, risk.EventKind.PASSWORD_RESET]
        if sim_swap:
            steps.insert(0, risk.EventKind.DEVICE_CHANGE)
        for kind in steps:
            if self._observe(kind, victim, channel=channel, where=where, label=label) != "accept":
                return
        now = self.clock.now_ns()
        self.at(now + 3 * MINUTE, lambda: self._drain(attack, victim, channel, where))

    def _drain(
        self, attack: _Attack, victim: Person, channel: Channel, where: tuple[float, float]
    ) -> None:
        rng, label = self.rng, self._label(attack)
        available = self._available(victim)
        if available < 300 * YUAN:  # the wallet is thin: charge the victim's card first
            amount = int(rng.integers(10, 30)) * 100 * YUAN
            self._scenario(label[0]).attempted += amount
            self._money(
                risk.EventKind.TOP_UP, victim, f"card:{victim.card_id}", amount,
                lambda ch, key: self.payments.top_up(
                    victim.customer_id, victim.card_id, amount, CNY, key=key, channel=ch
                ),
                channel=channel, where=where, label=label, exit_=False,
            )  # fmt: skip
            available = self._available(victim)
        if available < 10 * YUAN:
            return
        self._scenario(label[0]).attempted += available
        if rng.random() < 0.4:  # a card of the fraudster's own, bound to the victim's account
            if (
                self._observe(
                    risk.EventKind.CARD_BINDING, victim, channel=channel, where=where, label=label
                )
                != "accept"
            ):
                return
            n = next(self._keys)
            card = self.payments.bind_card(victim.customer_id, f"sim-x{n}", "Far Bank", "6666")
            self._money(
                risk.EventKind.WITHDRAWAL, victim, f"card:{card.id}", available,
                lambda ch, key: self.payments.withdraw(
                    victim.customer_id, card.id, available, CNY, key=key, channel=ch
                ),
                channel=channel, where=where, label=label, exit_=True,
            )  # fmt: skip
            return
        mule = self._mule(attack, young=bool(rng.random() < 0.6))
        chunks = int(rng.integers(1, 4))
        for k in range(chunks):
            part = available // chunks
            self.at(
                self.clock.now_ns() + k * MINUTE,
                partial(self._push, attack, victim, mule, part, channel, where),
            )
        self.at(
            self.clock.now_ns() + int(rng.integers(10, 40)) * MINUTE,
            lambda: self._cash_out(attack, mule),
        )

    def _push(
        self,
        attack: _Attack,
        payer: Person,
        payee: Person,
        amount: int,
        channel: Channel,
        where: tuple[float, float],
        role: Role = Role.FRAUDSTER,
    ) -> Operation | None:
        return self._money(
            risk.EventKind.P2P, payer, f"c:{payee.customer_id}", amount,
            lambda ch, key: self.payments.transfer(
                payer.customer_id, Payee(customer_id=payee.customer_id), amount, CNY, key=key,
                channel=ch,
            ),
            channel=channel, where=where, label=self._label(attack, role), exit_=False,
        )  # fmt: skip

    def _cash_out(self, attack: _Attack, mule: Person, hops: int = 0) -> None:
        """The mule passes the money on (another mule) or takes it out to a card."""
        available = self._available(mule)
        if available < YUAN:
            return
        if hops < 2 and self.rng.random() < 0.4:
            nxt = self._mule(attack, young=True)
            self._push(attack, mule, nxt, available, mule.channel, self._where(mule), Role.MULE)
            later = self.clock.now_ns() + int(self.rng.integers(5, 30)) * MINUTE
            self.at(later, lambda: self._cash_out(attack, nxt, hops + 1))
            return
        self._money(
            risk.EventKind.WITHDRAWAL, mule, f"card:{mule.card_id}", available,
            lambda ch, key: self.payments.withdraw(
                mule.customer_id, mule.card_id, available, CNY, key=key, channel=ch
            ),
            channel=mule.channel, where=self._where(mule), label=self._label(attack, Role.MULE),
            exit_=True,
        )  # fmt: skip

    def _stolen_card_top_up(
        self, attack: _Attack, fraudster: Person, amount: int, channel: Channel
    ) -> Operation | None:
        """Bind a stolen card (risk sees the binding) and charge it."""
        label = self._label(attack)
        where = (attack.lat, attack.lon)
        if (
            self._observe(
                risk.EventKind.CARD_BINDING, fraudster, channel=channel, where=where, label=label
            )
            != "accept"
        ):
            return None
        n = next(self._keys)
        card = self.payments.bind_card(
            fraudster.customer_id, f"sim-s{n}", "Any Bank", f"{n % 10_000:04d}"
        )
        fraudster.cards.append(card.id)
        self._scenario(label[0]).attempted += amount
        return self._money(
            risk.EventKind.TOP_UP, fraudster, f"card:{card.id}", amount,
            lambda ch, key: self.payments.top_up(
                fraudster.customer_id, card.id, amount, CNY, key=key, channel=ch
            ),
            channel=channel, where=where, label=label, exit_=False,
        )  # fmt: skip

    def _mule_chain(self, attack: _Attack) -> None:
        source = self._new_person(
            Role.FRAUDSTER, kyc=KycLevel.BASIC, fund=0, bill=False, device=attack.device
        )
        channel = Channel(attack.device, attack.ip, attack.lat, attack.lon)
        amount = int(self.rng.integers(20, 50)) * 100 * YUAN
        op = self._stolen_card_top_up(attack, source, amount, channel)
        if op is None or op.status is not OperationStatus.COMPLETED:
            return
        first = self._mule(attack, young=bool(self.rng.random() < 0.7))
        self.at(
            self.clock.now_ns() + 2 * MINUTE,
            lambda: self._push(attack, source, first, amount, channel, (attack.lat, attack.lon)),
        )
        self.at(self.clock.now_ns() + 10 * MINUTE, lambda: self._cash_out(attack, first))

    def _card_testing(self, attack: _Attack) -> None:
        fraudster = self._new_person(
            Role.FRAUDSTER, kyc=KycLevel.BASIC, fund=0, bill=False, device=attack.device
        )
        channel = Channel(attack.device, attack.ip, attack.lat, attack.lon)
        tests = int(self.rng.integers(5, 16))
        for k in range(tests):
            tiny = int(self.rng.integers(1, 6)) * YUAN
            self.at(
                self.clock.now_ns() + k * int(self.rng.integers(30, 120)) * NS_PER_S,
                partial(self._stolen_card_top_up, attack, fraudster, tiny, channel),
            )
        later = self.clock.now_ns() + tests * 2 * MINUTE + 5 * MINUTE
        self.at(later, lambda: self._spend_stolen(attack, fraudster, channel))

    def _spend_stolen(self, attack: _Attack, fraudster: Person, channel: Channel) -> None:
        """The cards that worked: one large top-up, then goods bought online."""
        if not fraudster.cards:
            return
        card = fraudster.cards[-1]
        amount = int(self.rng.integers(5, 30)) * 100 * YUAN
        label = self._label(attack)
        where = (attack.lat, attack.lon)
        self._scenario(label[0]).attempted += amount
        self._money(
            risk.EventKind.TOP_UP, fraudster, f"card:{card}", amount,
            lambda ch, key: self.payments.top_up(
                fraudster.customer_id, card, amount, CNY, key=key, channel=ch
            ),
            channel=channel, where=where, label=label, exit_=False,
        )  # fmt: skip
        online = [s for s in self.shops if s.category == "online" and not s.colluding]
        shop = online[int(self.rng.integers(len(online)))] if online else self.shops[0]
        spend = self._available(fraudster)
        if spend >= YUAN:
            self._money(
                risk.EventKind.PAYMENT, fraudster, f"m:{shop.merchant_id}", spend,
                lambda ch, key: self.payments.pay_merchant(
                    fraudster.customer_id, merchant_qr(shop.merchant_id), spend, CNY, key=key,
                    channel=ch,
                ),
                channel=channel, where=where, label=label, exit_=True,
            )  # fmt: skip

    def _app_scam(self, attack: _Attack) -> None:
        """A scammer opens an account; a day or more later a victim, coached on the phone,
        pays it an unusual sum from their own phone; the scammer cashes out."""
        scammer = self._new_person(
            Role.FRAUDSTER, kyc=KycLevel.BASIC, fund=0, bill=False, device=attack.device
        )
        scammer.ip = attack.ip
        later = self.clock.now_ns() + int(self.rng.integers(1, 4)) * NS_PER_DAY
        self.at(later, lambda: self._scam_payments(attack, scammer))

    def _scam_payments(self, attack: _Attack, scammer: Person) -> None:
        victim = self._victim()
        if victim is None:
            return
        rng = self.rng
        amount = int(victim.p2p_median * float(rng.uniform(5, 20))) // YUAN * YUAN
        label = self._label(attack, Role.VICTIM)
        self._scenario(label[0]).attempted += amount
        self._top_up_for(victim, amount, label)
        parts = int(rng.integers(1, 4))
        for k in range(parts):
            self.at(
                self.clock.now_ns() + k * 5 * MINUTE,
                lambda: self._push(
                    attack,
                    victim,
                    scammer,
                    amount // parts,
                    victim.channel,
                    self._where(victim),
                    Role.VICTIM,
                ),
            )
        self.at(
            self.clock.now_ns() + int(rng.integers(20, 90)) * MINUTE,
            lambda: self._cash_out(attack, scammer, hops=2),
        )

    def _collusion(self, attack: _Attack) -> None:
        """A young merchant and a few fresh accounts: fake orders paid with stolen cards."""
        n = next(self._keys)
        merchant = self.payments.register_merchant(f"Quick Deals {n}", "online", 60, f"sim-q{n}")
        shop = Shop(merchant.id, "online", 0, colluding=True)
        self.shops.append(shop)
        buyers = [
            self._new_person(Role.FRAUDSTER, kyc=KycLevel.BASIC, fund=0, bill=False)
            for _ in range(int(self.rng.integers(3, 7)))
        ]
        for b, buyer in enumerate(buyers):
            at = self.clock.now_ns() + int(self.rng.integers(1, 48)) * HOUR + b * MINUTE
            self.at(at, partial(self._fake_order, attack, buyer, shop))

    def _fake_order(self, attack: _Attack, buyer: Person, shop: Shop) -> None:
        channel = buyer.channel
        amount = int(self.rng.integers(5, 21)) * 100 * YUAN
        op = self._stolen_card_top_up(attack, buyer, amount, channel)
        if op is None or op.status is not OperationStatus.COMPLETED:
            return
        label = self._label(attack)
        self._money(
            risk.EventKind.PAYMENT, buyer, f"m:{shop.merchant_id}", amount,
            lambda ch, key: self.payments.pay_merchant(
                buyer.customer_id, merchant_qr(shop.merchant_id), amount, CNY, key=key, channel=ch
            ),
            channel=channel, where=self._where(buyer), label=label, exit_=True,
        )  # fmt: skip

    def _promotion_abuse(self, attack: _Attack) -> None:
        """One device registers many accounts; each pays 10 CNY somewhere to collect the
        bonus and passes it to a collector, who cashes out."""
        collector = self._new_person(
            Role.FRAUDSTER, kyc=KycLevel.BASIC, fund=0, bill=False, device=attack.device
        )
        accounts = int(self.rng.integers(5, 16))
        for k in range(accounts):
            at = self.clock.now_ns() + k * int(self.rng.integers(2, 8)) * MINUTE
            self.at(at, lambda: self._farm_bonus(attack, collector))
        later = self.clock.now_ns() + accounts * 8 * MINUTE + HOUR
        self.at(later, lambda: self._cash_out(attack, collector, hops=2))

    def _farm_bonus(self, attack: _Attack, collector: Person) -> None:
        fake = self._new_person(
            Role.FRAUDSTER, kyc=KycLevel.UNVERIFIED, fund=0, bill=False, device=attack.device
        )
        fake.ip = collector.ip
        label = self._label(attack)
        self._scenario(label[0]).attempted += BONUS
        self._observe(
            risk.EventKind.LOGIN, fake, channel=fake.channel, where=self._where(fake), label=label
        )
        shop = self.shops[int(self.rng.integers(len(self.shops)))]
        amount = 10 * YUAN
        self._top_up_for(fake, amount, label)
        op = self._money(
            risk.EventKind.PAYMENT, fake, f"m:{shop.merchant_id}", amount,
            lambda ch, key: self.payments.pay_merchant(
                fake.customer_id, merchant_qr(shop.merchant_id), amount, CNY, key=key, channel=ch
            ),
            channel=fake.channel, where=self._where(fake), label=label, exit_=False,
        )  # fmt: skip
        if op is None or op.status is not OperationStatus.COMPLETED:
            return
        self._bonus(fake, label)
        if self._available(fake) >= BONUS:
            self._push(attack, fake, collector, BONUS, fake.channel, self._where(fake))
