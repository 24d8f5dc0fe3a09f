"""The engine's fast path decides exactly as the path it replaced: a simulated economy runs
with ``RiskEngine`` (a model, a shadow model, shadow and score rules, a block list) in front of
every event (every other call through ``decide_columns``), and every call is replayed through
``EngineBefore`` (the engine of commit c0aa283, ``engine_before.py``): the same decisions,
scores, reasons and versions, and a decision log with the same columns (reasons now as ASCII
bytes), feature values and metadata, record for record."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from puhui.clock import SystemClock
from puhui.risk import FEATURE_SCHEMA, RiskDecision, RiskEvent, RiskLists, parse_ruleset
from puhui.risk._engine import (
    DEFAULT_RULES,
    ENGINE_FEATURES,
    RiskEngine,
    engine_schema,
    event_columns,
    logged_reasons,
)
from puhui.risk._log import DecisionLog, LogRecord
from puhui.risk._model import RiskModel, train
from puhui.sim import simulate
from puhui.sim._model import SimConfig

from .engine_before import EngineBefore

EXTRA_RULES = """
[[rule]]
id = "shadow.busy_day"
description = "a busy day (shadow: logged, never decides)"
when = 'customer.count_24h >= 2 and event.amount > 0'
action = "review"
priority = 5
status = "shadow"
owner = "test"

[[rule]]
id = "score.large"
description = "a large sum adds to the score"
when = 'event.amount >= 20000'
score = 250
priority = 3
status = "active"
owner = "test"

[[rule]]
id = "score.untrusted_device"
description = "an unfamiliar device adds to the score"
when = 'device.new_for_customer'
score = 200
priority = 2
status = "active"
owner = "test"
"""


def _model(seed: int) -> RiskModel:
    """A small model over engine features, trained on values in their usual ranges."""
    rng = np.random.default_rng(seed)
    rows = 3_000
    features = {
        "event.amount": np.round(rng.lognormal(8.5, 1.5, rows)),
        "customer.count_24h": rng.poisson(2, rows).astype(np.float64),
        "customer.account_age_s": rng.uniform(0, 400 * 86_400, rows),
        "device.new_for_customer": (rng.random(rows) < 0.2).astype(np.float64),
        "counterparty.account_age_s": np.where(
            rng.random(rows) < 0.3, np.nan, rng.uniform(0, 400 * 86_400, rows)
        ),
        "event.local_hour": rng.integers(0, 24, rows).astype(np.float64),
    }
    risk = (
        (features["event.amount"] > 20_000)
        + features["device.new_for_customer"]
        + (features["customer.account_age_s"] < 14 * 86_400)
        + 0.5 * rng.random(rows)
    )
    return train(features, (risk >= 1.5).astype(np.int8), seed=seed, rounds=30, leaves=7)


def _lists() -> RiskLists:
    found = RiskLists(SystemClock())
    found.add("blocked_customers", "c:3", reason="test: a known mule")
    return found


@dataclass
class _Recorder:
    """A ``decide`` that records every call (and every step-up's trusted device) in order."""

    engine: RiskEngine
    calls: list[tuple[Sequence[RiskEvent], list[RiskDecision]] | tuple[int, str]] = field(
        default_factory=list
    )

    def __call__(self, events: Sequence[RiskEvent]) -> list[RiskDecision]:
        # Every other call takes the columnar entry point, its strings given as lists.
        if len(self.calls) % 2:
            columns: dict[str, Any] = dict(event_columns(events))
            columns["device"] = columns["device"].tolist()
            columns["counterparty"] = columns["counterparty"].tolist()
            decisions = self.engine.decide_columns(columns).decisions()
        else:
            decisions = self.engine(events)
        self.calls.append((list(events), decisions))
        return decisions

    def trust_device(self, customer_id: int, device_id: str) -> None:
        self.engine.trust_device(customer_id, device_id)
        self.calls.append((customer_id, device_id))


@dataclass
class _Day:
    calls: list[tuple[Sequence[RiskEvent], list[RiskDecision]] | tuple[int, str]]
    before: list[list[RiskDecision]]
    log_now: Path
    log_before: Path


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Day]:
    base = tmp_path_factory.mktemp("fast-path")
    text = DEFAULT_RULES.read_text() + EXTRA_RULES
    model, shadow = _model(1), _model(2)
    lists = _lists

    log_now = DecisionLog(base / "now")
    engine = RiskEngine(
        parse_ruleset(text, engine_schema()),
        lists=lists(),
        model=model,
        shadow_model=shadow,
        log=log_now,
    )
    recorder = _Recorder(engine)
    simulate(SimConfig(customers=40, days=2, seed=11, fraud_rate=60.0), decide=recorder)
    log_now.close()

    log_before = DecisionLog(base / "before")
    reference = EngineBefore(
        parse_ruleset(text, engine_schema()),
        lists=lists(),
        model=model,
        shadow_model=shadow,
        log=log_before,
    )
    before: list[list[RiskDecision]] = []
    for call in recorder.calls:
        if isinstance(call[0], int):
            reference.trust_device(call[0], str(call[1]))
        else:
            events = call[0]
            assert isinstance(events, list)
            before.append(reference(events))
    log_before.close()
    yield _Day(recorder.calls, before, base / "now", base / "before")


def test_a_simulated_day_gets_the_same_decisions_scores_and_reasons(day: _Day) -> None:
    now = [call[1] for call in day.calls if not isinstance(call[0], int)]
    assert len(now) == len(day.before)
    flat_now = [d for decisions in now for d in decisions]
    flat_before = [d for decisions in day.before for d in decisions]
    assert flat_now == flat_before
    # The day exercised what the fast path touches: every decision, reasons of rules, of the
    # model and of shadow rules, and more than one event per call.
    assert {str(d.decision) for d in flat_now} == {"accept", "challenge", "review", "reject"}
    reasons = [r for d in flat_now for r in d.reasons]
    assert any(r.startswith("model:") for r in reasons)
    assert any(r.startswith("shadow:") for r in reasons)
    assert any(r.startswith("score.untrusted_device(") for r in reasons)
    assert any(len(decisions) > 1 for decisions in now)
    assert sum(1 for call in day.calls if isinstance(call[0], int)) > 0  # step-ups passed


def _records(directory: Path) -> list[LogRecord]:
    log = DecisionLog(directory)
    try:
        return list(log.records())
    finally:
        log.close()


def test_a_simulated_day_logs_the_same_records(day: _Day) -> None:
    now = _records(day.log_now)
    before = _records(day.log_before)
    assert len(now) == len(before) > 0
    for mine, theirs in zip(now, before, strict=True):
        # Reasons are now one ASCII blob with per-event ends (was a unicode column).
        assert mine.meta["blobs"] == ["reasons_text"]
        assert {k: v for k, v in mine.meta.items() if k != "blobs"} == theirs.meta
        assert logged_reasons(mine) == logged_reasons(theirs)
        ends = mine.columns["reasons_end"]
        assert ends.dtype == np.int64 and len(ends) == mine.rows
        assert int(ends[-1]) == mine.columns["reasons_text"].size
        rows = {k: v for k, v in mine.row_columns().items() if k != "reasons_end"}
        assert list(rows) == [k for k in theirs.columns if k != "reasons"]
        for name, column in rows.items():
            other = theirs.columns[name]
            assert column.dtype == other.dtype, name
            equal_nan = column.dtype.kind == "f"
            assert np.array_equal(column, other, equal_nan=equal_nan), name
    features = np.concatenate([r.columns["features"] for r in now])
    assert features.shape[1] == len(FEATURE_SCHEMA) + len(ENGINE_FEATURES) + 2
    assert sorted(p.name for p in day.log_now.glob("schema-*.json")) == sorted(
        p.name for p in day.log_before.glob("schema-*.json")
    )


def _large_batch(rng: np.random.Generator, n: int, start_ns: int) -> list[RiskEvent]:
    """Events of 300 customers, some on new devices, big sums and a blocked one among them:
    enough that rules, shadow rules and the model each flag events in every chunk."""
    from puhui.risk import EventKind

    kinds = (EventKind.PAYMENT, EventKind.P2P, EventKind.TOP_UP, EventKind.LOGIN)
    out = []
    for i in range(n):
        customer = int(rng.integers(1, 300))
        kind = kinds[int(rng.integers(0, len(kinds)))]
        moves = kind != EventKind.LOGIN
        counterparty = {
            EventKind.PAYMENT: f"m:{int(rng.integers(0, 40))}",
            EventKind.P2P: f"c:{int(rng.integers(1, 400))}",
            EventKind.TOP_UP: f"card:{customer}",
        }.get(kind, "")
        out.append(
            RiskEvent(
                kind=kind,
                customer_id=customer,
                at_ns=start_ns + i * 2 * 10**9,
                amount=int(rng.lognormal(8.5, 1.6)) if moves else 0,
                currency="CNY",
                counterparty=counterparty,
                device_id=f"d{customer}" if rng.random() > 0.05 else f"x{rng.integers(10**6)}",
                ip=f"10.0.{customer % 250}.1",
                latitude=31.2,
                longitude=121.4,
                tz_offset_s=8 * 3600,
                kyc_level=int(rng.integers(0, 3)),
                account_created_ns=start_ns - int(rng.integers(0, 400)) * 86_400 * 10**9,
            )
        )
    return out


def test_large_batches_judged_chunk_by_chunk_decide_as_one_pass(tmp_path: Path) -> None:
    """A batch of several feature chunks is scored, judged by the rules and explained chunk by
    chunk while the next chunk's features are computed: the decisions, scores, reasons and
    log records are those of the engine that judged the whole batch at once."""
    from puhui.risk._features import PIPELINE_CHUNK_EVENTS, PIPELINE_EVENTS_MIN

    text = DEFAULT_RULES.read_text() + EXTRA_RULES
    model, shadow = _model(1), _model(2)
    lists = _lists

    engine = RiskEngine(
        parse_ruleset(text, engine_schema()),
        lists=lists(),
        model=model,
        shadow_model=shadow,
        log=DecisionLog(tmp_path / "now"),
    )
    reference = EngineBefore(
        parse_ruleset(text, engine_schema()),
        lists=lists(),
        model=model,
        shadow_model=shadow,
        log=DecisionLog(tmp_path / "before"),
    )
    rng = np.random.default_rng(5)
    n = 2 * PIPELINE_EVENTS_MIN + PIPELINE_CHUNK_EVENTS // 3  # a short last chunk
    t0 = 1_767_000_000 * 10**9
    first, second = _large_batch(rng, n, t0), _large_batch(rng, n, t0 + n * 2 * 10**9)
    got = engine(first)
    columns: dict[str, Any] = dict(event_columns(second))
    got += engine.decide_columns(columns).decisions()
    want = reference(first) + reference(second)
    assert got == want
    decisions = {str(d.decision) for d in got}
    assert {"accept", "challenge", "review", "reject"} <= decisions
    # Every chunk had flagged events with the model's reasons.
    explained = [i for i, d in enumerate(got) if any(r.startswith("model:") for r in d.reasons)]
    assert {i % n // PIPELINE_CHUNK_EVENTS for i in explained} == set(
        range(-(-n // PIPELINE_CHUNK_EVENTS))
    )
    assert engine.log is not None and reference.log is not None
    engine.log.close()
    reference.log.close()
    now, before = _records(tmp_path / "now"), _records(tmp_path / "before")
    assert len(now) == len(before) == 2
    for mine, theirs in zip(now, before, strict=True):
        assert logged_reasons(mine) == logged_reasons(theirs)
        np.testing.assert_array_equal(mine.columns["features"], theirs.columns["features"])
        np.testing.assert_array_equal(mine.columns["score"], theirs.columns["score"])
