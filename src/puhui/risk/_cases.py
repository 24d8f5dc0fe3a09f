"""Cases: what risk control held for review, what an analyst decided, and the labels that
decisions give the models.

A service that holds something for review opens a case for it (``open``, in the same SQL
transaction as its own record, so a hold never goes without a case) and registers a resolver
for its kind of subject (``on_decided``): when an analyst approves or rejects, the decision
is recorded first, then the resolver carries it out (releases or returns a held payment,
freezes an account taken over) and the case is marked resolved. A crash in between leaves a
decided, unresolved case: ``resolve_pending`` (a job) carries it out again, so resolvers are
written to be idempotent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import sqlalchemy as sa

from puhui.clock import Clock
from puhui.errors import InvalidInputError, PuhuiError
from puhui.store import risk as t

log = logging.getLogger(__name__)

LIST_LIMIT_MAX: Final = 1_000
CASE_ID_MAX: Final = (1 << 63) - 1
"""Case ids are the store's signed 64-bit keys: none is larger (nor a cursor after one)."""
ANALYST_CHARS_MAX: Final = 64
NOTE_CHARS_MAX: Final = 500


class CaseStatus(StrEnum):
    OPEN = "open"
    ESCALATED = "escalated"
    """Sent to a senior analyst; still undecided."""
    APPROVED = "approved"
    """Legitimate: the held activity goes ahead (label 0)."""
    REJECTED = "rejected"
    """Fraud: the held activity is undone (label 1)."""


class CaseOutcome(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    ESCALATE = "escalate"


class CaseNotFoundError(PuhuiError):
    code = "case_not_found"


class CaseClosedError(PuhuiError):
    """The case is decided already (approved or rejected): decisions are final."""

    code = "case_closed"


class InvalidCaseDecisionError(InvalidInputError):
    """A decision that cannot be taken as given (unknown outcome, no analyst, a takeover
    flagged on an approval, a note too long)."""

    code = "case_decision_invalid"


class CaseNeedsGatewayError(PuhuiError):
    """Carrying out this decision needs a payment gateway (the bank, a biller) that the
    caller does not have — e.g. approving a held withdrawal from the command line. Nothing
    was recorded; decide it where the gateway is configured (the API server)."""

    code = "case_needs_gateway"


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    subject_kind: str
    subject_id: str
    customer_id: int
    amount: int
    currency: str
    score: int
    reasons: tuple[str, ...]
    status: CaseStatus
    analyst: str | None
    note: str
    account_takeover: bool
    label: int | None
    resolved: bool
    opened_at_ns: int
    decided_at_ns: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subject_kind": self.subject_kind,
            "subject_id": self.subject_id,
            "customer_id": self.customer_id,
            "amount": self.amount,
            "currency": self.currency,
            "score": self.score,
            "reasons": list(self.reasons),
            "status": str(self.status),
            "analyst": self.analyst,
            "note": self.note,
            "account_takeover": self.account_takeover,
            "label": self.label,
            "resolved": self.resolved,
            "opened_at_ns": self.opened_at_ns,
            "decided_at_ns": self.decided_at_ns,
        }


Resolver = Callable[[Case], None]


@dataclass(frozen=True, slots=True)
class CaseReason:
    """One reason of a held decision, read back from the text the engine stored: a rule
    that hit with the feature values it read, a model's contribution, or a shadow rule."""

    kind: str
    """``rule``, ``model`` or ``shadow`` (``other``: text in none of those forms)."""
    name: str
    """The rule id, or the model's feature."""
    values: tuple[tuple[str, str], ...] = ()
    """For a rule: (feature, value as the engine printed it), in the rule's order."""
    contribution: float | None = None
    """For a model reason: the feature's log-odds contribution."""

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "values": dict(self.values),
            "contribution": self.contribution,
        }


def explain_reasons(reasons: Sequence[str]) -> list[CaseReason]:
    """The reasons of a decision (``rule_id(feature=value, …)``, ``model:feature=+0.831``,
    ``shadow:rule_id``) as structured values."""
    out: list[CaseReason] = []
    for text in reasons:
        if text.startswith("shadow:"):
            out.append(CaseReason("shadow", text.removeprefix("shadow:")))
            continue
        if text.startswith("model:"):
            feature, _, value = text.removeprefix("model:").rpartition("=")
            try:
                out.append(CaseReason("model", feature, contribution=float(value)))
            except ValueError:
                out.append(CaseReason("other", text))
            continue
        head, paren, rest = text.partition("(")
        if not paren:
            out.append(CaseReason("rule", text))
            continue
        if not rest.endswith(")"):
            out.append(CaseReason("other", text))
            continue
        values: list[tuple[str, str]] = []
        for part in rest[:-1].split(", "):
            name, equals, value = part.partition("=")
            if equals:
                values.append((name, value))
            elif values:  # a value that held ", " itself: rejoin it
                values[-1] = (values[-1][0], f"{values[-1][1]}, {part}")
        out.append(CaseReason("rule", head, tuple(values)))
    return out


def _case(row: Any) -> Case:
    return Case(
        id=int(row.id),
        subject_kind=str(row.subject_kind),
        subject_id=str(row.subject_id),
        customer_id=int(row.customer_id),
        amount=int(row.amount),
        currency=str(row.currency),
        score=int(row.score),
        reasons=tuple(json.loads(row.reasons)),
        status=CaseStatus(row.status),
        analyst=row.analyst,
        note=str(row.note),
        account_takeover=bool(row.account_takeover),
        label=None if row.label is None else int(row.label),
        resolved=bool(row.resolved),
        opened_at_ns=int(row.opened_at_ns),
        decided_at_ns=None if row.decided_at_ns is None else int(row.decided_at_ns),
    )


class Cases:
    """The case queue over the SQL store."""

    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._resolvers: dict[str, Resolver] = {}

    def on_decided(self, subject_kind: str, resolver: Resolver) -> None:
        """Who carries out decisions on subjects of this kind (one resolver per kind)."""
        self._resolvers[subject_kind] = resolver

    def open(
        self,
        conn: sa.Connection,
        subject_kind: str,
        subject_id: str,
        *,
        customer_id: int,
        amount: int,
        currency: str,
        score: int,
        reasons: Sequence[str],
    ) -> None:
        """Open a case for a held subject, in the caller's transaction (once per subject)."""
        exists = conn.execute(
            sa.select(t.cases.c.id).where(
                t.cases.c.subject_kind == subject_kind, t.cases.c.subject_id == subject_id
            )
        ).first()
        if exists is not None:
            return
        conn.execute(
            t.cases.insert().values(
                subject_kind=subject_kind,
                subject_id=subject_id,
                customer_id=customer_id,
                amount=amount,
                currency=currency,
                score=score,
                reasons=json.dumps(list(reasons)),
                status=str(CaseStatus.OPEN),
                note="",
                account_takeover=False,
                resolved=False,
                opened_at_ns=self.clock.now_ns(),
            )
        )

    def case(self, case_id: int) -> Case:
        if not 0 < case_id <= CASE_ID_MAX:  # the store cannot even look it up
            raise CaseNotFoundError(f"no case {case_id}")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.cases).where(t.cases.c.id == case_id)).first()
        if row is None:
            raise CaseNotFoundError(f"no case {case_id}")
        return _case(row)

    def by_subject(self, subject_kind: str, subject_id: str) -> Case | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.cases).where(
                    t.cases.c.subject_kind == subject_kind, t.cases.c.subject_id == subject_id
                )
            ).first()
        return None if row is None else _case(row)

    def cases(
        self,
        status: CaseStatus | str | None = None,
        *,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[Case]:
        """Cases in id order after ``after_id`` (the cursor), optionally of one status."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidInputError(f"limit must be 1..{LIST_LIMIT_MAX}")
        if not 0 <= after_id <= CASE_ID_MAX:
            raise InvalidInputError(f"after_id must be 0..{CASE_ID_MAX}")
        query = sa.select(t.cases).where(t.cases.c.id > after_id)
        if status is not None:
            try:
                query = query.where(t.cases.c.status == str(CaseStatus(status)))
            except ValueError:
                raise InvalidInputError(f"unknown case status {status!r}") from None
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.cases.c.id).limit(limit)).all()
        return [_case(r) for r in rows]

    def decide(
        self,
        case_id: int,
        *,
        analyst: str,
        outcome: CaseOutcome | str,
        note: str = "",
        account_takeover: bool = False,
    ) -> Case:
        """An analyst's decision. Approve and reject are final and carried out at once;
        escalate hands the case on. ``account_takeover`` (with reject) says the customer's
        account is in a fraudster's hands: the resolver freezes it."""
        try:
            chosen = CaseOutcome(outcome)
        except ValueError:
            raise InvalidCaseDecisionError(f"unknown outcome {outcome!r}") from None
        if not isinstance(analyst, str) or not 0 < len(analyst.strip()) <= ANALYST_CHARS_MAX:
            raise InvalidCaseDecisionError("an analyst (1..64 characters) decides")
        if not isinstance(note, str) or len(note) > NOTE_CHARS_MAX:
            raise InvalidCaseDecisionError(f"a note is at most {NOTE_CHARS_MAX} characters")
        if account_takeover and chosen is not CaseOutcome.REJECT:
            raise InvalidCaseDecisionError("only a rejection can confirm an account takeover")
        if not 0 < case_id <= CASE_ID_MAX:
            raise CaseNotFoundError(f"no case {case_id}")
        status = {
            CaseOutcome.APPROVE: CaseStatus.APPROVED,
            CaseOutcome.REJECT: CaseStatus.REJECTED,
            CaseOutcome.ESCALATE: CaseStatus.ESCALATED,
        }[chosen]
        undecided = [str(CaseStatus.OPEN), str(CaseStatus.ESCALATED)]
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t.cases).where(t.cases.c.id == case_id)).first()
            if row is None:
                raise CaseNotFoundError(f"no case {case_id}")
            if row.status not in undecided or (
                chosen is CaseOutcome.ESCALATE and row.status == str(CaseStatus.ESCALATED)
            ):
                raise CaseClosedError(f"case {case_id} is {row.status}")
            done = conn.execute(
                t.cases.update()
                .where(t.cases.c.id == case_id, t.cases.c.status.in_(undecided))
                .values(
                    status=str(status),
                    analyst=analyst.strip(),
                    note=note,
                    account_takeover=account_takeover,
                    label={CaseStatus.APPROVED: 0, CaseStatus.REJECTED: 1}.get(status),
                    decided_at_ns=self.clock.now_ns(),
                )
            )
            if done.rowcount != 1:
                raise CaseClosedError(f"case {case_id} was decided meanwhile")
        case = self.case(case_id)
        if status is not CaseStatus.ESCALATED:
            case = self._resolve(case)
        return case

    def _resolve(self, case: Case) -> Case:
        resolver = self._resolvers.get(case.subject_kind)
        if resolver is None:
            return case  # nobody registered yet: resolve_pending carries it out later
        resolver(case)
        with self.engine.begin() as conn:
            conn.execute(t.cases.update().where(t.cases.c.id == case.id).values(resolved=True))
        return self.case(case.id)

    def resolve_pending(self) -> int:
        """Carry out decisions recorded but not carried out (a crash in between); returns
        how many were. A decision whose resolver raises is logged and left for the next run,
        the others are still carried out, and the first failure is raised at the end."""
        decided = [str(CaseStatus.APPROVED), str(CaseStatus.REJECTED)]
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.cases)
                .where(t.cases.c.status.in_(decided), t.cases.c.resolved.is_(False))
                .order_by(t.cases.c.id)
            ).all()
        count = 0
        failed: list[Exception] = []
        for row in rows:
            if row.subject_kind in self._resolvers:
                # One decision that cannot be carried out must not hold up the others (their
                # money stays held until then): each is tried, the first failure raised last.
                try:
                    self._resolve(_case(row))
                except Exception as error:
                    log.exception("carrying out the decision of case %s failed", row.id)
                    failed.append(error)
                    continue
                count += 1
        if failed:
            raise failed[0]
        return count

    def labels(self, *, after_id: int = 0) -> list[Case]:
        """Decided cases (label 0 legitimate, 1 fraud), for training."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.cases)
                .where(t.cases.c.id > after_id, t.cases.c.label.is_not(None))
                .order_by(t.cases.c.id)
            ).all()
        return [_case(r) for r in rows]
