"""A shadow model judged beside the live one, on what the engine logged.

The engine scores every event with the shadow model too (``RiskEngine(shadow_model=...)``)
and logs its score as ``model.shadow_score`` beside ``model.score``; the shadow never acts.
``compare_models`` reads the log and the labels (what was fraud) and answers whether the
shadow should go live:

- AUC of each model over every logged event;
- precision and recall of each at the live threshold (the score at which the ruleset lets
  the model act: ``model.score >= 900`` on money events in the default ruleset), over the
  events the model acts on (those that move money);
- the decisions that would change: the ruleset replayed over the logged features twice,
  once with the live score and once with the shadow's in ``model.score`` — everything else
  (features, lists) the same — and the events whose decision differs, counted by direction
  and by truth.

Figures that need both classes (AUC) are ``None`` when the labels hold only one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._backtest import logged_features
from ._engine import DECISIONS
from ._evaluate import Ruleset
from ._lists import RiskLists
from ._log import feature_names, read_records
from ._model import auc

LIVE_THRESHOLD_DEFAULT: Final = 900
"""The score at which the default ruleset lets the model act (rule ``model.high``)."""


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _at_threshold(
    scores: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_], threshold: float
) -> dict[str, Any]:
    flagged = scores >= threshold
    caught = int((flagged & truth).sum())
    return {
        "flagged": int(flagged.sum()),
        "precision": _rate(caught, int(flagged.sum())),
        "recall": _rate(caught, int(truth.sum())),
    }


def _auc_or_none(truth: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> float | None:
    value = auc(truth, scores)
    return None if math.isnan(value) else value


def compare_models(
    ruleset: Ruleset,
    log_dir: Path,
    labels: Sequence[int],
    *,
    threshold: float = LIVE_THRESHOLD_DEFAULT,
    lists: RiskLists | None = None,
) -> dict[str, Any]:
    """Live against shadow over a decision log whose decisions ``labels`` mark (1 fraud,
    0 not; ``labels[i]`` is about logged decision ``i + 1``)."""
    if lists is None:
        from puhui.clock import SystemClock

        lists = RiskLists(SystemClock())
    live_scores: list[npt.NDArray[np.float64]] = []
    shadow_scores: list[npt.NDArray[np.float64]] = []
    truths: list[npt.NDArray[np.bool_]] = []
    moves: list[npt.NDArray[np.bool_]] = []
    live_severity: list[npt.NDArray[np.int64]] = []
    shadow_severity: list[npt.NDArray[np.int64]] = []
    versions: dict[str, str] = {}
    for record in read_records(log_dir):
        columns = record.row_columns()
        versions = {
            "live": str(record.meta.get("model", "none")),
            "shadow": str(record.meta.get("shadow_model", "none")),
        }
        first = int(record.meta["first_id"])
        n = len(columns["kind"])
        if first - 1 + n > len(labels):
            raise ValueError("fewer labels than logged decisions")
        truths.append(np.asarray(labels[first - 1 : first - 1 + n], dtype=np.bool_))
        feats = logged_features(ruleset, feature_names(log_dir, record), columns)
        live, shadow = feats["model.score"], feats["model.shadow_score"]
        live_scores.append(live)
        shadow_scores.append(shadow)
        moves.append(np.asarray(columns["amount"]) > 0)
        live_severity.append(np.asarray(ruleset.evaluate(feats, lists=lists).severity))
        swapped = {**feats, "model.score": shadow}
        shadow_severity.append(np.asarray(ruleset.evaluate(swapped, lists=lists).severity))
    if not truths:
        raise ValueError(f"no logged decisions in {log_dir}")
    truth = np.concatenate(truths)
    live_all, shadow_all = np.concatenate(live_scores), np.concatenate(shadow_scores)
    money = np.concatenate(moves)
    before, after = np.concatenate(live_severity), np.concatenate(shadow_severity)
    stricter, laxer = after > before, after < before
    transitions: dict[str, int] = {}
    for i in np.flatnonzero(before != after):
        key = f"{DECISIONS[int(before[i])]}->{DECISIONS[int(after[i])]}"
        transitions[key] = transitions.get(key, 0) + 1
    return {
        "ruleset": ruleset.version,
        "live_model": versions["live"],
        "shadow_model": versions["shadow"],
        "threshold": threshold,
        "events": len(truth),
        "fraud": int(truth.sum()),
        "money_events": int(money.sum()),
        "live": {
            "auc": _auc_or_none(truth, live_all),
            **_at_threshold(live_all[money], truth[money], threshold),
            "flagged_by_rules": int((before > 0).sum()),
        },
        "shadow": {
            "auc": _auc_or_none(truth, shadow_all),
            **_at_threshold(shadow_all[money], truth[money], threshold),
            "flagged_by_rules": int((after > 0).sum()),
        },
        "changed": {
            "decisions": int((before != after).sum()),
            "stricter_fraud": int((stricter & truth).sum()),
            "stricter_good": int((stricter & ~truth).sum()),
            "laxer_fraud": int((laxer & truth).sum()),
            "laxer_good": int((laxer & ~truth).sum()),
            "transitions": dict(sorted(transitions.items())),
        },
    }
