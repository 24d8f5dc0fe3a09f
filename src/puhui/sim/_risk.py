"""Risk control judged on the simulated economy: runs with the real engine in the loop, the
report of issue #6 (loss rate, honest customers bothered, precision and recall per
scenario), and models trained on what the engine logged.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from puhui.clock import SystemClock
from puhui.risk import RiskLists, load_ruleset, parse_ruleset
from puhui.risk._engine import DEFAULT_RULES, RiskEngine, engine_schema
from puhui.risk._log import DecisionLog, read_records
from puhui.risk._model import RiskModel, train

from . import simulate
from ._model import SimConfig, SimEvent, SimReport

FLAGGED: Final = frozenset({"challenge", "review", "reject"})
ACCEPT_ALL: Final = """
name = "accept-all"
version = "1"
"""
"""A ruleset without rules: every event accepted (to let fraud run its course for training)."""


def run_with_engine(
    config: SimConfig,
    *,
    rules: Path | None = None,
    model: RiskModel | None = None,
    shadow_model: RiskModel | None = None,
    log_dir: Path | None = None,
    on_day: Callable[[int], None] | None = None,
) -> tuple[SimReport, list[SimEvent]]:
    """The economy with ``RiskEngine`` in front of every event (the default ruleset unless
    ``rules`` names another; ``shadow_model`` scored and logged beside ``model``, never
    acting); its decision log goes to ``log_dir`` when given."""
    ruleset = load_ruleset(rules or DEFAULT_RULES, engine_schema())
    log = DecisionLog(log_dir) if log_dir is not None else None
    engine = RiskEngine(
        ruleset,
        lists=RiskLists(SystemClock()),
        model=model,
        shadow_model=shadow_model,
        log=log,
    )
    try:
        return simulate(config, decide=engine, on_day=on_day)
    finally:
        if log is not None:
            log.close()


def risk_report(report: SimReport, events: Sequence[SimEvent]) -> dict[str, Any]:
    """Issue #6's figures: ``loss_rate``, ``good_rejected_rate``, ``good_challenged_rate``
    (of honest money events), and per scenario its attacks, events, how many risk flagged
    (challenge, review or reject), recall (flagged / events), precision (flagged events of
    the scenario / all flagged events of the same kinds, honest ones included), money
    attempted and lost."""
    good_flagged_by_kind: dict[str, int] = {}
    for e in events:
        if not e.label and e.decision in FLAGGED:
            good_flagged_by_kind[e.kind] = good_flagged_by_kind.get(e.kind, 0) + 1
    scenarios: dict[str, dict[str, Any]] = {}
    flagged_fraud = 0
    fraud_events = 0
    for name, stats in sorted(report.scenarios.items()):
        mine = [e for e in events if e.label == name and e.decision]
        flagged = [e for e in mine if e.decision in FLAGGED]
        kinds = {e.kind for e in mine}
        honest_flagged = sum(good_flagged_by_kind.get(k, 0) for k in kinds)
        flagged_fraud += len(flagged)
        fraud_events += len(mine)
        scenarios[name] = {
            "attacks": stats.attacks,
            "events": len(mine),
            "flagged": len(flagged),
            "recall": len(flagged) / len(mine) if mine else None,
            "precision": len(flagged) / (len(flagged) + honest_flagged) if flagged else None,
            "attempted": stats.attempted,
            "lost": stats.lost,
        }
    all_flagged = flagged_fraud + sum(good_flagged_by_kind.values())
    base = report.as_json()
    return {
        "loss_rate": report.loss_rate,
        "good_rejected_rate": base["good_rejected_rate"],
        "good_challenged_rate": base["good_challenged_rate"],
        "good_reviewed_rate": base["good_reviewed_rate"],
        "precision": flagged_fraud / all_flagged if all_flagged else None,
        "recall": flagged_fraud / fraud_events if fraud_events else None,
        "volume": report.volume,
        "fraud_lost": report.fraud_lost,
        "events": report.events,
        "good_money_events": report.good_money_events,
        "customers": report.config.customers,
        "days": report.config.days,
        "seed": report.config.seed,
        "scenarios": scenarios,
    }


def training_rows(
    log_dir: Path, labels: Sequence[str]
) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int8]]:
    """The logged feature values of every decision, and 1 (fraud) / 0 per decision from the
    run's ``risk_labels`` (the log and the labels list the same events in the same order)."""
    matrices = []
    schema = ""
    for record in read_records(log_dir):
        schema = schema or str(record.meta["schema"])
        if record.meta["schema"] != schema:
            raise ValueError("the log changed feature schema mid-run")
        matrices.append(record.columns["features"])
    import json

    names = json.loads((log_dir / f"schema-{schema}.json").read_text())
    matrix = np.concatenate(matrices) if matrices else np.zeros((0, len(names)))
    if matrix.shape[0] != len(labels):
        raise ValueError(f"{matrix.shape[0]} logged decisions but {len(labels)} labels")
    features = {
        name: matrix[:, k].astype(np.float64)
        for k, name in enumerate(names)
        if not name.startswith("model.")
    }
    return features, np.asarray([1 if label else 0 for label in labels], dtype=np.int8)


def train_on_runs(
    configs: Sequence[SimConfig], *, seed: int = 0, on_day: Callable[[int], None] | None = None
) -> RiskModel:
    """Simulate each config with every event accepted (fraud runs its course: the most to
    learn from), log the engine's features, and train a model on all of them."""
    parts: list[tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.int8]]] = []
    for config in configs:
        workdir = Path(tempfile.mkdtemp(prefix="puhui-train-"))
        try:
            log = DecisionLog(workdir / "log")
            engine = RiskEngine(parse_ruleset(ACCEPT_ALL, engine_schema()), log=log)
            try:
                report, _ = simulate(config, decide=engine, on_day=on_day)
            finally:
                log.close()
            parts.append(training_rows(workdir / "log", report.risk_labels))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    names = list(parts[0][0])
    features = {name: np.concatenate([p[0][name] for p in parts]) for name in names}
    labels = np.concatenate([p[1] for p in parts])
    return train(features, labels, seed=seed)
