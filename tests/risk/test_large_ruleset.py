"""The benchmark's 5,000-rule synthetic ruleset compiles and agrees with the reference."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from puhui.risk import parse_ruleset

from .reference import actual, expect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_risk", ROOT / "benchmarks" / "risk.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_risk"] = module
    # The script imports its siblings (``_args``) as a script run from its directory would.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_five_thousand_rules_agree_with_the_reference(bench: ModuleType) -> None:
    text = bench.make_ruleset(5_000)
    schema = bench.schema()
    lists = bench.make_lists(per_list=20_000)  # ~10% of the ids: list rules do hit
    batch = bench.make_batch(np.random.default_rng(5), 120)
    for sample in (None, bench.make_batch(np.random.default_rng(6), 2_000)):
        ruleset = parse_ruleset(text, schema, sample=sample)
        assert sum(1 for r in ruleset.rules if r.status == "active") == 5_000
        assert len(ruleset.evaluated_rules) == 5_250
        expected = expect(ruleset, batch, lists)
        assert actual(ruleset, batch, lists) == expected
        one = {name: column[7:8] for name, column in batch.items()}
        assert actual(ruleset, one, lists) == [expected[7]]
    # The sample is not vacuous: rules hit, with every kind of decision.
    assert sum(len(e.active) for e in expected) > 100
    assert {e.decision for e in expected} == {"accept", "challenge", "review", "reject"}
    assert any(e.shadow for e in expected)
