"""Backtests: a candidate ruleset replayed over the decision log's stored feature values, scored
against labels (what was fraud), rule by rule.

Features are not recomputed: the log keeps the values every decision saw, so a backtest
answers "what would these rules have done then", exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._engine import _event_features
from ._evaluate import Ruleset
from ._lists import RiskLists
from ._log import feature_names, read_records


def backtest(
    ruleset: Ruleset,
    log_dir: Path,
    labels: Sequence[int],
    *,
    from_ns: int | None = None,
    to_ns: int | None = None,
    lists: RiskLists | None = None,
) -> dict[str, Any]:
    """Per rule and overall: hits, precision, recall, fraud amount caught, good events hit,
    and the rules' evaluation time per event. ``labels[i]`` is 1 when logged decision
    ``i + 1`` was about fraud; events outside ``[from_ns, to_ns)`` are left out. ``lists``:
    the block and allow lists to look values up in (default: empty lists)."""
    if lists is None:
        from puhui.clock import SystemClock

        lists = RiskLists(SystemClock())
    per_rule: dict[str, dict[str, int]] = {}
    totals = {"events": 0, "fraud": 0, "fraud_amount": 0, "flagged": 0, "flagged_fraud": 0}
    totals["fraud_amount_caught"] = 0
    totals["good_flagged"] = 0
    elapsed = 0.0
    for record in read_records(log_dir):
        columns = record.row_columns()
        first = int(record.meta["first_id"])
        at = columns["at_ns"]
        keep = np.ones(len(at), dtype=bool)
        if from_ns is not None:
            keep &= at >= from_ns
        if to_ns is not None:
            keep &= at < to_ns
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            continue
        ids = first + rows
        if ids[-1] - 1 >= len(labels):
            raise ValueError("fewer labels than logged decisions")
        truth = np.asarray(labels[first - 1 : first - 1 + len(at)], dtype=np.bool_)[rows]
        amount = columns["amount"][rows]
        feats = logged_features(ruleset, feature_names(log_dir, record), columns, rows)
        started = time.perf_counter()
        results = ruleset.evaluate(feats, lists=lists)
        elapsed += time.perf_counter() - started
        severity = np.asarray(results.severity)
        flagged = severity > 0
        totals["events"] += len(rows)
        totals["fraud"] += int(truth.sum())
        totals["fraud_amount"] += int(amount[truth].sum())
        totals["flagged"] += int(flagged.sum())
        totals["flagged_fraud"] += int((flagged & truth).sum())
        totals["good_flagged"] += int((flagged & ~truth).sum())
        totals["fraud_amount_caught"] += int(amount[flagged & truth].sum())
        offsets = results.hit_offsets
        for i in range(len(rows)):
            for h in results.hits[offsets[i] : offsets[i + 1]]:
                rule_id = ruleset.evaluated_rules[int(h)].id
                stats = per_rule.setdefault(
                    rule_id, {"hits": 0, "fraud_hits": 0, "good_hits": 0, "fraud_amount": 0}
                )
                stats["hits"] += 1
                if truth[i]:
                    stats["fraud_hits"] += 1
                    stats["fraud_amount"] += int(amount[i])
                else:
                    stats["good_hits"] += 1
    fraud = max(totals["fraud"], 1)
    rules = {
        rule_id: {
            **stats,
            "precision": stats["fraud_hits"] / stats["hits"] if stats["hits"] else None,
            "recall": stats["fraud_hits"] / fraud,
        }
        for rule_id, stats in sorted(per_rule.items())
    }
    return {
        "ruleset": ruleset.version,
        **totals,
        "precision": totals["flagged_fraud"] / totals["flagged"] if totals["flagged"] else None,
        "recall": totals["flagged_fraud"] / fraud,
        "added_latency_us_per_event": elapsed / max(totals["events"], 1) * 1e6,
        "rules": rules,
    }


def logged_features(
    ruleset: Ruleset,
    names: list[str],
    columns: dict[str, np.ndarray[Any, Any]],
    rows: np.ndarray[Any, Any] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """The features a logged record's events (``rows`` of them, default all) had, as
    ``ruleset`` evaluates them: the logged feature columns (``names``), the event's own
    fields, and the ruleset's booleans and counts back in their types."""
    if rows is not None:
        columns = {k: v[rows] for k, v in columns.items()}
    feats: dict[str, np.ndarray[Any, Any]] = {
        name: columns["features"][:, k].astype(np.float64) for k, name in enumerate(names)
    }
    events = _event_features(columns)
    feats.update(events)
    for name in list(feats):  # booleans and counts were stored as float32
        if name in ruleset.features and name not in events:
            feats[name] = _typed(ruleset, name, feats[name])
    return feats


def _typed(ruleset: Ruleset, name: str, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A stored column back in the type the ruleset reads (bool for boolean features)."""
    from ._expr import FeatureType

    if ruleset.schema.get(name) is FeatureType.BOOLEAN:
        return np.asarray(values != 0)
    return values
