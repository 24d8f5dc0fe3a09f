"""Risk control in front of every money movement: ``decide(events)`` and its features.

Until the real engine lands (issue #6) ``decide`` accepts every event with score 0 and says
so in its versions (``pass-through``), so each service already calls it, stores the
decision with the operation and handles all four outcomes.

``FeatureStore`` computes the features rules and models read: velocity over sliding windows,
history of amounts, account and device facts, locations, fan-in and one-hop graph features,
as columns (``FEATURE_SCHEMA`` names and describes them; ``docs/risk-features.md``).
"""

from ._decide import (
    Decision,
    EventKind,
    RiskDecision,
    RiskEvent,
    decide,
)
from ._features import (
    FEATURE_SCHEMA,
    EventBatch,
    FeatureSnapshotCorruptError,
    FeatureSpec,
    FeatureStore,
    InvalidRiskEventError,
)

__all__ = [
    "FEATURE_SCHEMA",
    "Decision",
    "EventBatch",
    "EventKind",
    "FeatureSnapshotCorruptError",
    "FeatureSpec",
    "FeatureStore",
    "InvalidRiskEventError",
    "RiskDecision",
    "RiskEvent",
    "decide",
]
