"""Risk control in front of every money movement: ``decide(events)``, rules and lists.

``decide`` is still a pass-through (every event accepted, versions ``pass-through``) until the
engine is wired in (issue #6). The rules engine is here: a ruleset file (TOML, see
``docs/risk-rules.md``) compiles to a ``Ruleset`` whose ``evaluate(features, lists=...)``
decides a whole batch of feature columns at once; ``RulesetWatcher`` keeps one hot-reloaded;
``RiskLists`` holds the block and allow lists rules look values up in.
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
from ._errors import RiskFeaturesError, RiskListError, RuleParseError
from ._evaluate import RuleHit, RuleOutcome, RuleResults, Ruleset
from ._expr import FeatureType
from ._lists import LIST_NAMES, ListEntry, RiskLists
from ._load import RulesetWatcher, load_ruleset, parse_ruleset
from ._ruleset import Rule, RuleStatus, Thresholds

__all__ = [
    "LIST_NAMES",
    "Case",
    "CaseClosedError",
    "CaseNotFoundError",
    "CaseOutcome",
    "CaseStatus",
    "Cases",
    "Decision",
    "EventKind",
    "FeatureType",
    "InvalidCaseDecisionError",
    "ListEntry",
    "RiskDecision",
    "RiskEvent",
    "RiskFeaturesError",
    "RiskListError",
    "RiskLists",
    "Rule",
    "RuleHit",
    "RuleOutcome",
    "RuleParseError",
    "RuleResults",
    "RuleStatus",
    "Ruleset",
    "RulesetWatcher",
    "Thresholds",
    "decide",
    "load_ruleset",
    "parse_ruleset",
]
