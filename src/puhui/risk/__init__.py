"""Risk control in front of every money movement: ``decide(events)``, and what it is made of.

- ``FeatureStore`` computes the features rules and models read, as columns: velocity over
  sliding windows, history of amounts, account and device facts, locations, fan-in and
  one-hop graph features (``FEATURE_SCHEMA`` names and describes them;
  ``docs/risk-features.md``).
- A ruleset file (TOML, ``docs/risk-rules.md``) compiles to a ``Ruleset`` whose
  ``evaluate(features, lists=...)`` decides a whole batch at once; ``RulesetWatcher`` keeps
  one hot-reloaded; ``RiskLists`` holds the block and allow lists rules look values up in
  (``ListStore`` keeps them in SQL; ``SyncedRiskLists`` follows the store without restart).
- ``Cases``: what is held for review, the analysts' decisions and the labels they give.
- ``find_decisions`` reads decisions back from the decision log, each with every feature
  value it saw (``LoggedDecision``): any decision can be explained later.

- ``RiskEngine`` combines them (features, then the model, then the rules) and logs every
  decision with its feature values; ``open_engine`` gives a server its engine with the state
  on disk (recovered on start, snapshotted on stop). ``puhui serve`` decides every payment
  with it.

``decide`` is the pass-through (every event accepted, versions ``pass-through``): the default
of a service built without an engine, as in unit tests of the services.
"""

from ._audit import LoggedDecision, find_decisions
from ._cases import (
    Case,
    CaseClosedError,
    CaseNeedsGatewayError,
    CaseNotFoundError,
    CaseOutcome,
    CaseReason,
    Cases,
    CaseStatus,
    InvalidCaseDecisionError,
    explain_reasons,
)
from ._decide import (
    Decision,
    EventKind,
    RiskDecision,
    RiskEvent,
    decide,
)
from ._engine import RiskEngine
from ._errors import RiskFeaturesError, RiskListError, RuleParseError
from ._evaluate import RuleHit, RuleOutcome, RuleResults, Ruleset
from ._expr import FeatureType
from ._features import (
    FEATURE_SCHEMA,
    EventBatch,
    FeatureSnapshotCorruptError,
    FeatureSpec,
    FeatureStore,
    InvalidRiskEventError,
)
from ._list_store import ListStore, SyncedRiskLists
from ._lists import LIST_NAMES, ListEntry, RiskLists
from ._load import RulesetWatcher, load_ruleset, parse_ruleset
from ._ruleset import Rule, RuleStatus, Thresholds
from ._runtime import RiskStateLockedError, open_engine

__all__ = [
    "FEATURE_SCHEMA",
    "LIST_NAMES",
    "Case",
    "CaseClosedError",
    "CaseNeedsGatewayError",
    "CaseNotFoundError",
    "CaseOutcome",
    "CaseReason",
    "CaseStatus",
    "Cases",
    "Decision",
    "EventBatch",
    "EventKind",
    "FeatureSnapshotCorruptError",
    "FeatureSpec",
    "FeatureStore",
    "FeatureType",
    "InvalidCaseDecisionError",
    "InvalidRiskEventError",
    "ListEntry",
    "ListStore",
    "LoggedDecision",
    "RiskDecision",
    "RiskEngine",
    "RiskEvent",
    "RiskFeaturesError",
    "RiskListError",
    "RiskLists",
    "RiskStateLockedError",
    "Rule",
    "RuleHit",
    "RuleOutcome",
    "RuleParseError",
    "RuleResults",
    "RuleStatus",
    "Ruleset",
    "RulesetWatcher",
    "SyncedRiskLists",
    "Thresholds",
    "decide",
    "explain_reasons",
    "find_decisions",
    "load_ruleset",
    "open_engine",
    "parse_ruleset",
]
