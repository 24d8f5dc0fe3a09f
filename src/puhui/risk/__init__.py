"""Risk control in front of every money movement: ``decide(events)``.

Until the real engine lands (issue #6) ``decide`` accepts every event with score 0 and says
so in its versions (``pass-through``), so each service already calls it, stores the
decision with the operation and handles all four outcomes.
"""

from ._cases import (
    Case,
    CaseClosedError,
    CaseNotFoundError,
    CaseOutcome,
    Cases,
    CaseStatus,
    InvalidCaseDecisionError,
)
from ._decide import (
    Decision,
    EventKind,
    RiskDecision,
    RiskEvent,
    decide,
)

__all__ = [
    "Case",
    "CaseClosedError",
    "CaseNotFoundError",
    "CaseOutcome",
    "CaseStatus",
    "Cases",
    "Decision",
    "EventKind",
    "InvalidCaseDecisionError",
    "RiskDecision",
    "RiskEvent",
    "decide",
]
