"""The risk part of ``puhui demo``: the real engine (issue #6) in front of the payments service.

After the payments tour, the demo puts ``RiskEngine`` (the shipped ruleset, block/allow
lists, the decision log under ``<data dir>/risk/log``) and the case queue in front of a
payments service on the same SQL store and ledger, and shows three things: a large payment
to a new payee challenged and confirmed by its owner (step-up), a "fee" to a day-old
account held for review and rejected by an analyst (a case: the money goes back), and a
takeover attempt from a stranger's phone abroad stopped at the login and at the password
reset. The customers
have a history first: the clock jumps 60 days after they join.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape

import puhui.ledger as tb
from puhui import risk
from puhui._demo_payments import PaymentStep, _print_steps
from puhui.clock import ManualClock
from puhui.money import currency, format_amount, parse_amount
from puhui.payments import Channel, Customer, Payee, Payments, SimulatedBank, merchant_qr
from puhui.risk._engine import DEFAULT_RULES, RiskEngine, engine_schema
from puhui.risk._log import DecisionLog
from puhui.store import create_engine, migrate

__all__ = ["RiskTour", "print_risk"]

CURRENCY: Final = "CNY"
DAY_NS: Final = 86_400 * 10**9
HISTORY_DAYS: Final = 60
SHANGHAI: Final = (31.23, 121.47)
SHANGHAI_UTC_OFFSET_NS: Final = 8 * 3600 * 10**9
MORNING_NS: Final = 10 * 3600 * 10**9
"""10:00, local time: when the tour's payments happen (after the 60 days of history)."""
MANILA: Final = (14.60, 120.98)


@dataclass(frozen=True, slots=True)
class _Person:
    customer: Customer
    card_id: int
    channel: Channel


class RiskTour:
    """One run of the risk tour; customers and keys derive from ``run_id``."""

    def __init__(
        self, database_url: str, ledger: tb.Ledger, clock: ManualClock, run_id: int, data_dir: Path
    ) -> None:
        self.database_url = database_url
        self.ledger = ledger
        self.clock = clock
        self.run_id = run_id
        self.data_dir = data_dir
        self.steps: list[PaymentStep] = []
        self.ruleset_version = ""
        self.logged = 0

    def key(self, name: str) -> str:
        return f"risk-{self.run_id:032x}-{name}"

    def digits(self, what: str, n: int) -> str:
        digest = hashlib.sha256(f"{self.run_id}:{what}".encode()).hexdigest()
        return str(int(digest, 16))[-n:].rjust(n, "0")

    def money(self, text: str) -> int:
        return parse_amount(text, CURRENCY)

    def step(self, name: str, title: str) -> PaymentStep:
        step = PaymentStep(name, title)
        self.steps.append(step)
        return step

    @property
    def ok(self) -> bool:
        return all(step.as_expected for step in self.steps)

    def run(self) -> None:
        engine = create_engine(self.database_url)
        log = DecisionLog(self.data_dir / "risk" / "log")
        try:
            migrate(engine)
            ruleset = risk.load_ruleset(DEFAULT_RULES, engine_schema())
            self.ruleset_version = ruleset.version
            # The block/allow lists of this store (`puhui risk lists ...`), followed live.
            lists = risk.SyncedRiskLists(risk.ListStore(engine, self.clock))
            self.engine = RiskEngine(ruleset, lists=lists, log=log)
            self.cases = risk.Cases(engine, self.clock)
            self.payments = Payments(
                engine,
                self.ledger,
                clock=self.clock,
                bank=SimulatedBank(self.clock),
                decide=self.engine,
                cases=self.cases,
            )
            self.payments.recover()
            first = log.next_id
            self.history()
            self.step_up()
            self.case()
            self.takeover()
            self.logged = log.next_id - first
        finally:
            log.close()
            engine.dispose()

    def _person(self, role: str, name: str, device: str, where: tuple[float, float]) -> _Person:
        p = self.payments
        customer = p.register_customer("137" + self.digits(f"phone:{role}", 8), name)
        p.verify_identity(customer.id, self.digits(f"national-id:{role}", 18))
        card = p.bind_card(customer.id, self.key(f"card-{role}"), "Rural Credit Bank", "0042")
        customer = p.verify_full(customer.id, biometric_passed=True)
        channel = Channel(f"{device}-{self.run_id % 10**8}", "10.1.2.3", *where)
        return _Person(customer, card.id, channel)

    def history(self) -> None:
        step = self.step("risk_history", "Two customers join, top up and shop; 60 days pass")
        self.mei = self._person("mei", "Mei Chen", "mei-phone", SHANGHAI)
        self.lin = self._person("lin", "Lin Zhao", "lin-phone", SHANGHAI)
        p = self.payments
        for who, amount in ((self.mei, "900.00"), (self.lin, "100.00")):
            op = p.top_up(
                who.customer.id, who.card_id, self.money(amount), CURRENCY,
                key=self.key(f"join-{who.customer.id}"), channel=who.channel,
            )  # fmt: skip
            step.add(f"{who.customer.display_name} tops up {amount} CNY", op.status, "completed")
        self.clock.advance(HISTORY_DAYS * DAY_NS)
        self._to_morning()
        shop = p.register_merchant("Tea House", "food", 60, self.key("tea-house"))
        self.mei = _Person(p.customer(self.mei.customer.id), self.mei.card_id, self.mei.channel)
        op = p.pay_merchant(
            self.mei.customer.id, merchant_qr(shop.id), self.money("32.00"), CURRENCY,
            key=self.key("tea"), channel=self.mei.channel,
        )  # fmt: skip
        step.add("60 days later Mei pays 32.00 CNY at the tea house", op.status, "completed")
        top = p.top_up(
            self.mei.customer.id, self.mei.card_id, self.money("4000.00"), CURRENCY,
            key=self.key("top-up-2"), channel=self.mei.channel,
        )  # fmt: skip
        step.add("Mei tops up 4,000.00 CNY", top.status, "completed")

    def _to_morning(self) -> None:
        """Forward to the next 10:00 in Shanghai, where the customers live: the rest of the
        tour happens in the morning whenever the demo runs (the rules read the local time of
        day: at night the first large payment is held for review, not challenged)."""
        now = self.clock.now_ns()
        local = now + SHANGHAI_UTC_OFFSET_NS
        morning = local - local % DAY_NS + MORNING_NS
        if morning < local:
            morning += DAY_NS
        self.clock.set(morning - SHANGHAI_UTC_OFFSET_NS)

    def step_up(self) -> None:
        step = self.step(
            "risk_step_up", "A large first payment to a new payee: the owner confirms it"
        )
        p = self.payments
        op = p.transfer(
            self.mei.customer.id, Payee(customer_id=self.lin.customer.id),
            self.money("3500.00"), CURRENCY, key=self.key("rent"), channel=self.mei.channel,
        )  # fmt: skip
        step.add("Mei sends Lin 3,500.00 CNY (first time)", op.status, "challenged")
        step.notes.append(f"risk: {op.decision}, {_score(op.risk_score)}")
        done = p.verify_challenge(op.id, passed=True, channel=self.mei.channel)
        step.add("Mei passes the one-time code on her phone", done.status, "completed")
        balance = p.balance(self.lin.customer.id, CURRENCY).posted
        step.notes.append(f"Lin's wallet: {format_amount(balance, CURRENCY, group=True)} CNY")

    def case(self) -> None:
        step = self.step(
            "risk_case", "A scam: a 'fee' to a day-old account is held and an analyst decides"
        )
        p = self.payments
        agent = self._person("agent", "Quick Loans Agent", "agent-phone", SHANGHAI)
        before = p.balance(self.lin.customer.id, CURRENCY).posted
        op = p.transfer(
            self.lin.customer.id, Payee(customer_id=agent.customer.id), self.money("600.00"),
            CURRENCY, key=self.key("fee"), channel=self.lin.channel,
        )  # fmt: skip
        step.add("Lin pays a 'loan agent' a 600.00 CNY fee", op.status, "challenged")
        step.notes.append(f"risk: {op.decision}, {_score(op.risk_score)}: held for review")
        case = self.cases.by_subject("operation", f"{op.id:032x}")
        if case is None:
            step.add("A case is opened for the held payment", "no case", "open")
            return
        step.add(f"Case {case.id} opened: {'; '.join(case.reasons[:1])}", case.status, "open")
        decided = self.cases.decide(
            case.id, analyst="analyst.wu", outcome="reject", note="loan-fee scam, new payee"
        )
        step.add("Analyst Wu calls Lin and rejects the payment", decided.status, "rejected")
        after = p.operation(op.id)
        step.add("The held money goes back to Lin", after.status, "failed")
        back = p.balance(self.lin.customer.id, CURRENCY).posted == before
        step.add("Lin's balance is whole", "whole" if back else "short", "whole")
        step.notes.append(f"training label recorded: {decided.label} (fraud)")

    def takeover(self) -> None:
        step = self.step(
            "risk_takeover", "A stranger's phone abroad tries to take over Mei's account"
        )
        p = self.payments
        thief = Channel(f"x-{self.run_id % 10**8}", "203.0.113.9", *MANILA)
        customer = p.customer(self.mei.customer.id)
        cur = currency(CURRENCY)
        before = p.balance(customer.id, CURRENCY).posted
        for kind, what, expected in (
            (risk.EventKind.LOGIN, "logs in to Mei's account, minutes after she paid", "reject"),
            (risk.EventKind.PASSWORD_RESET, "tries a password reset instead", "challenge"),
        ):
            [decision] = self.engine([p.risk_event(kind, customer, 0, cur, "", thief)])
            step.add(f"The stranger {what}", str(decision.decision), expected)
            step.notes.append(f"{kind}: {'; '.join(decision.reasons[:1])}")
        step.add("The one-time code goes to Mei's phone: not passed", "blocked", "blocked")
        after = p.balance(customer.id, CURRENCY).posted
        step.add("Mei's balance is untouched", "unchanged" if after == before else "changed",
                 "unchanged")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ruleset": self.ruleset_version,
            "decisions_logged": self.logged,
            "steps": [
                {
                    "name": s.name,
                    "statuses": s.statuses,
                    "expected": s.expected,
                    "as_expected": s.as_expected,
                }
                for s in self.steps
            ],
        }


def print_risk(console: Console, tour: RiskTour) -> None:
    console.print()
    console.rule("[bold]Risk control[/]")
    console.print(
        f"The risk engine (ruleset {escape(tour.ruleset_version)}) decides every request;"
        f" {tour.logged} decisions were logged with their feature values."
    )
    _print_steps(console, tour.steps)


def _score(score: int) -> str:
    """How a decision came about: a rule's action alone leaves the score at 0."""
    if score == 0:
        return "by a rule's action (no score contributions)"
    return f"score {score} of 1000"
