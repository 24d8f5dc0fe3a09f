"""A shadow model beside the live one: scored and logged, never acting, and compared on the
log (AUC, precision and recall at the live threshold, decisions that would change)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from puhui.risk import Decision, EventKind, RiskEvent, parse_ruleset
from puhui.risk._engine import RiskEngine, engine_schema
from puhui.risk._log import DecisionLog
from puhui.risk._model import RiskModel
from puhui.risk._shadow import compare_models

T0 = 1_767_000_000 * 10**9
RULES = """
name = "t"
version = "1"

[[rule]]
id = "model.high"
description = "the model is confident"
when = 'model.score >= 900 and event.amount > 0'
action = "review"
priority = 1
status = "active"
owner = "t"
"""


class _FakeModel:
    """Scores 950 when ``flags(amount)``, else 0."""

    def __init__(self, version: str, flags: Any) -> None:
        self.version = version
        self.feature_names: tuple[str, ...] = ("event.amount",)
        self._flags = flags

    def score(self, features: Mapping[str, Any], *, parallel: bool = True) -> np.ndarray[Any, Any]:
        amounts = np.asarray(features["event.amount"])
        return np.where([self._flags(int(a)) for a in amounts], 950, 0)


# Fraud is marked by amounts ending in 7; the live model flags big sums, the shadow the 7s.
AMOUNTS = [500_00, 2_000_00, 3_07, 2_000_07, 10_00, 0]
LABELS = [0, 0, 1, 1, 0, 0]


def _events() -> list[RiskEvent]:
    return [
        RiskEvent(
            kind=EventKind.LOGIN if amount == 0 else EventKind.P2P,
            customer_id=10 + k,
            at_ns=T0 + k * 10**9,
            amount=amount,
            currency="CNY",
            counterparty="" if amount == 0 else "c:99",
            device_id=f"d{k}",
            kyc_level=2,
            account_created_ns=T0 - 400 * 86_400 * 10**9,
        )
        for k, amount in enumerate(AMOUNTS)
    ]


@pytest.fixture
def logged(tmp_path: Path) -> Path:
    live = cast(RiskModel, _FakeModel("live-1", lambda a: a >= 1_000_00))
    shadow = cast(RiskModel, _FakeModel("shadow-1", lambda a: a > 0 and a % 10 == 7))
    log = DecisionLog(tmp_path / "log")
    engine = RiskEngine(
        parse_ruleset(RULES, engine_schema()),
        model=live,
        shadow_model=shadow,
        log=log,
        explain_top=0,
    )
    decisions = engine(_events()[:3]) + engine(_events()[3:])  # two logged batches
    log.close()
    # The shadow never acts: only the live model's flags are held.
    assert [d.decision for d in decisions] == [
        Decision.ACCEPT,
        Decision.REVIEW,
        Decision.ACCEPT,
        Decision.REVIEW,
        Decision.ACCEPT,
        Decision.ACCEPT,
    ]
    return tmp_path / "log"


def test_live_and_shadow_compared_on_the_log(logged: Path) -> None:
    ruleset = parse_ruleset(RULES, engine_schema())
    report = compare_models(ruleset, logged, LABELS, threshold=900)
    assert (report["live_model"], report["shadow_model"]) == ("live-1", "shadow-1")
    assert (report["events"], report["fraud"], report["money_events"]) == (6, 2, 5)
    # Live: 950 on one fraud and one honest event; 0 on the rest (ties count half).
    assert report["live"]["auc"] == pytest.approx(5 / 8)
    assert report["shadow"]["auc"] == 1.0
    assert {k: report["live"][k] for k in ("flagged", "precision", "recall")} == {
        "flagged": 2,
        "precision": 0.5,
        "recall": 0.5,
    }
    assert {k: report["shadow"][k] for k in ("flagged", "precision", "recall")} == {
        "flagged": 2,
        "precision": 1.0,
        "recall": 1.0,
    }
    assert report["changed"] == {
        "decisions": 2,
        "stricter_fraud": 1,  # the small scam payment would be held
        "stricter_good": 0,
        "laxer_fraud": 0,
        "laxer_good": 1,  # the big honest payment released
        "transitions": {"accept->review": 1, "review->accept": 1},
    }


def test_a_higher_threshold_and_missing_labels(logged: Path) -> None:
    ruleset = parse_ruleset(RULES, engine_schema())
    high = compare_models(ruleset, logged, LABELS, threshold=990)
    assert high["live"]["flagged"] == high["shadow"]["flagged"] == 0
    assert high["live"]["precision"] is None and high["live"]["recall"] == 0.0
    with pytest.raises(ValueError, match="fewer labels"):
        compare_models(ruleset, logged, LABELS[:5])
    honest = compare_models(ruleset, logged, [0] * 6)
    assert honest["live"]["auc"] is None  # one class only: no AUC
