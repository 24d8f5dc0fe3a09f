"""Evaluation: the compiled engine agrees with the slow reference on random rules and batches;
decisions combine as documented; shadow and off rules; reasons; batch checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puhui.clock import ManualClock
from puhui.risk import (
    Decision,
    FeatureType,
    RiskFeaturesError,
    RiskLists,
    RuleHit,
    parse_ruleset,
)

from .reference import Expected, actual, expect, rule, ruleset_text

SCHEMA = {
    "n1": FeatureType.NUMBER,
    "n2": FeatureType.NUMBER,
    "n3": FeatureType.NUMBER,
    "b1": FeatureType.BOOLEAN,
    "b2": FeatureType.BOOLEAN,
    "c1": FeatureType.CATEGORY,
    "c2": FeatureType.CATEGORY,
    "c3": FeatureType.CATEGORY,
}
NUMBERS = [-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 1e6]
LITERALS = ["-3", "-1", "0", "0.5", "1", "2", "2.5", "3", "1e6", "-0.5"]
WORDS = ["a", "b", "c", "zz", ""]
NOW = 1_000_000


def _lists() -> RiskLists:
    lists = RiskLists(ManualClock(NOW))
    lists.add("blocked_devices", "a", reason="fraud")
    lists.add("blocked_devices", "zz", reason="old", expires_at_ns=NOW)  # expired: never matches
    lists.add("allowed_customers", "b", reason="vip", expires_at_ns=NOW + 1)
    lists.add("allowed_customers", "c", reason="trusted")
    return lists


# --- random expressions (fully parenthesised: precedence has its own tests) ----------------

number_leaf = st.sampled_from(["n1", "n2", "n3", *LITERALS])
string_leaf = st.sampled_from(["c1", "c2", "c3"])
word = st.sampled_from(WORDS).map(lambda w: f'"{w}"')


def _numbers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda x: f"-({x})"),
        children.map(lambda x: f"abs({x})"),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
    )


numbers = st.recursive(number_leaf, _numbers, max_leaves=4)

atoms = st.one_of(
    st.tuples(numbers, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), numbers).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    ),
    st.tuples(string_leaf, st.sampled_from(["==", "!="]), st.one_of(string_leaf, word)).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    ),
    st.tuples(word, st.sampled_from(["==", "!="]), string_leaf).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    ),
    st.tuples(string_leaf, st.booleans(), st.lists(word, min_size=1, max_size=3)).map(
        lambda t: f"{t[0]} {'not in' if t[1] else 'in'} [{', '.join(t[2])}]"
    ),
    st.tuples(
        numbers, st.booleans(), st.lists(st.sampled_from(LITERALS), min_size=1, max_size=3)
    ).map(lambda t: f"{t[0]} {'not in' if t[1] else 'in'} [{', '.join(t[2])}]"),
    st.tuples(
        string_leaf, st.booleans(), st.sampled_from(["blocked_devices", "allowed_customers"])
    ).map(lambda t: f'{t[0]} {"not in" if t[1] else "in"} list("{t[2]}")'),
    st.sampled_from(["b1", "b2", "true", "false", "b1 == b2", "b1 != true", "not b2"]),
)


def _booleans(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda x: f"not ({x})"),
    )


expressions = st.recursive(atoms, _booleans, max_leaves=6)


@st.composite
def rulesets(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 8))
    rules = []
    for index in range(count):
        overrides: dict[str, Any] = {
            "status": draw(st.sampled_from(["active", "active", "active", "shadow", "off"])),
            "priority": draw(st.integers(-5, 5)),
        }
        if draw(st.booleans()):
            overrides["score"] = draw(st.sampled_from([-300, -10, 0, 10, 250, 400, 700, 1000]))
        else:
            overrides["action"] = draw(st.sampled_from(["accept", "challenge", "review", "reject"]))
        rules.append(rule(f"r{index}", draw(expressions), **overrides))
    thresholds = draw(
        st.sampled_from(
            [
                "",
                "[thresholds]\nchallenge = 200\nreview = 500\nreject = 900",
                "[thresholds]\nreview = 0",
            ]
        )
    )
    return ruleset_text(rules, header=thresholds)


@st.composite
def batches(draw: st.DrawFn, size: int | None = None) -> dict[str, np.ndarray]:
    n = size if size is not None else draw(st.integers(1, 40))
    numbers_ = st.lists(st.sampled_from(NUMBERS), min_size=n, max_size=n)
    words = st.lists(st.sampled_from(WORDS), min_size=n, max_size=n)
    flags = st.lists(st.booleans(), min_size=n, max_size=n)
    batch: dict[str, np.ndarray] = {}
    odd = st.lists(st.sampled_from([*NUMBERS, np.nan, np.inf, -np.inf]), min_size=n, max_size=n)
    batch["n1"] = np.array(draw(odd), dtype=np.float64)  # missing and infinite values too
    batch["n2"] = np.array([int(v) for v in draw(numbers_)], dtype=np.int64)
    batch["n3"] = np.array(draw(numbers_), dtype=np.float64)
    batch["b1"] = np.array(draw(flags), dtype=np.bool_)
    batch["b2"] = np.array(draw(flags), dtype=np.bool_)
    for name in ("c1", "c2", "c3"):
        batch[name] = np.array(draw(words), dtype=str)
    return batch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=rulesets(), batch=batches(), sample=st.one_of(st.none(), batches(size=30)))
def test_engine_agrees_with_the_reference(
    text: str, batch: dict[str, np.ndarray], sample: dict[str, np.ndarray] | None
) -> None:
    ruleset = parse_ruleset(text, SCHEMA, sample=sample)
    lists = _lists()
    expected = expect(ruleset, batch, lists)
    assert actual(ruleset, batch, lists) == expected
    # One event at a time takes the other path (derived columns computed in the kernel).
    n = len(batch["n1"])
    for index in range(0, n, 7):
        one = {name: column[index : index + 1] for name, column in batch.items()}
        assert actual(ruleset, one, lists) == [expected[index]]


# --- combining ----------------------------------------------------------------------------

COMBINE_SCHEMA = {"x": FeatureType.NUMBER, "kind": FeatureType.CATEGORY}


def _decide(rules: list[dict[str, Any]], x: list[float], header: str = "") -> list[Any]:
    ruleset = parse_ruleset(ruleset_text(rules, header=header), COMBINE_SCHEMA)
    batch = {"x": np.array(x, dtype=np.float64), "kind": np.array(["p"] * len(x))}
    return list(ruleset.evaluate(batch))


def test_the_most_severe_action_wins() -> None:
    rules = [
        rule("ch", "x >= 1", action="challenge"),
        rule("rv", "x >= 2", action="review"),
        rule("rj", "x >= 3", action="reject"),
        rule("ok", "x >= 0", action="accept"),
    ]
    outcomes = _decide(rules, [0, 1, 2, 3, -1])
    assert [o.decision for o in outcomes] == [
        Decision.ACCEPT,
        Decision.CHALLENGE,
        Decision.REVIEW,
        Decision.REJECT,
        Decision.ACCEPT,
    ]
    assert [o.score for o in outcomes] == [0] * 5
    assert {h.rule_id for h in outcomes[3].reasons} == {"ch", "rv", "rj", "ok"}


def test_scores_sum_clamp_and_cross_thresholds() -> None:
    header = "[thresholds]\nchallenge = 300\nreview = 600\nreject = 900"
    rules = [
        rule("a", "x >= 1", score=250),
        rule("b", "x >= 2", score=100),
        rule("c", "x >= 3", score=300),
        rule("d", "x >= 4", score=1000),
        rule("neg", "x >= 5", score=-1000),
        rule("neg2", "x == 6", score=-1000),
    ]
    outcomes = _decide(rules, [1, 2, 3, 4, 5, 6, 0], header)
    assert [o.score for o in outcomes] == [250, 350, 650, 1000, 650, 0, 0]
    # 4: 1650 → clamped to 1000; 5: 1650 - 1000 = 650; 6: 650 - 1000 → clamped to 0
    assert [o.decision for o in outcomes] == [
        Decision.ACCEPT,
        Decision.CHALLENGE,
        Decision.REVIEW,
        Decision.REJECT,
        Decision.REVIEW,
        Decision.ACCEPT,
        Decision.ACCEPT,
    ]


def test_a_score_threshold_and_an_action_combine_to_the_more_severe() -> None:
    header = "[thresholds]\nreview = 100"
    rules = [rule("s", "x >= 1", score=100), rule("c", "x >= 2", action="challenge")]
    rules.append(rule("r", "x >= 3", action="reject"))
    outcomes = _decide(rules, [1, 2, 3], header)
    assert [o.decision for o in outcomes] == [Decision.REVIEW, Decision.REVIEW, Decision.REJECT]


def test_shadow_hits_are_recorded_apart_and_never_decide() -> None:
    header = "[thresholds]\nchallenge = 10"
    rules = [
        rule("live", "x > 1", action="challenge"),
        rule("shadow-reject", "x > 0", action="reject", status="shadow"),
        rule("shadow-score", "x > 0", score=500, status="shadow"),
    ]
    first, second = _decide(rules, [1, 2], header)
    assert first.decision == Decision.ACCEPT and first.score == 0 and first.reasons == ()
    assert {h.rule_id for h in first.shadow_hits} == {"shadow-reject", "shadow-score"}
    assert second.decision == Decision.CHALLENGE and second.score == 0
    assert [h.rule_id for h in second.reasons] == ["live"]


def test_off_rules_are_not_evaluated() -> None:
    rules = [rule("off", "x / 0 == 0", action="reject", status="off"), rule("on", "x > 5")]
    ruleset = parse_ruleset(ruleset_text(rules), COMBINE_SCHEMA)
    assert [r.id for r in ruleset.evaluated_rules] == ["on"]
    (outcome,) = ruleset.evaluate({"x": np.array([1.0])})
    assert outcome.decision == Decision.ACCEPT and outcome.reasons == ()
    # An off rule's features are not needed in the batch.
    off_only = parse_ruleset(ruleset_text([rules[0]]), COMBINE_SCHEMA)
    assert off_only.features == ()
    assert len(off_only.evaluate({"other": np.zeros(3)})) == 3


def test_reasons_carry_values_and_are_ordered_by_priority() -> None:
    rules = [
        rule("low", "x > 1", priority=1),
        rule("high", 'x > 2 and kind == "p"', priority=9),
        rule("mid", "x * 2 > 3", priority=5),
        rule("tie", "x > 0", priority=5),
    ]
    (outcome,) = _decide(rules, [3])
    assert outcome.reasons == (
        RuleHit("high", (("x", 3.0), ("kind", "p"))),
        RuleHit("mid", (("x", 3.0),)),
        RuleHit("tie", (("x", 3.0),)),
        RuleHit("low", (("x", 3.0),)),
    )
    assert outcome.ruleset_version.startswith("1+")


def test_division_by_zero_is_zero() -> None:
    rules = [rule("div", "x / (x - x) == 0 and 5 / 0 == 0 and 1 / x > 0.2")]
    outcomes = _decide(rules, [2.0, 0.0, 10.0])
    assert [o.decision for o in outcomes] == [Decision.REVIEW, Decision.ACCEPT, Decision.ACCEPT]


def test_results_are_columnar() -> None:
    rules = [rule("a", "x > 1", action="reject"), rule("b", "x > 2", score=7)]
    ruleset = parse_ruleset(ruleset_text(rules), COMBINE_SCHEMA)
    results = ruleset.evaluate({"x": np.array([0.0, 2.0, 3.0])})
    assert len(results) == 3
    assert results.severity.tolist() == [0, 3, 3]
    assert results.scores.tolist() == [0, 0, 7]
    assert results.decision(1) == Decision.REJECT
    assert results.rule_ids(0) == [] and sorted(results.rule_ids(2)) == ["a", "b"]
    assert results.hit_offsets.tolist()[0] == 0 and results.hit_offsets.tolist()[-1] == 3


def test_many_hits_grow_the_buffer() -> None:
    rules = [rule(f"r{i}", f"x > {i}", score=1) for i in range(50)]
    ruleset = parse_ruleset(ruleset_text(rules), COMBINE_SCHEMA)
    x = np.full(1000, 100.0)
    results = ruleset.evaluate({"x": x})
    assert results.hits.size == 50_000
    assert set(results.scores.tolist()) == {50}


def test_an_empty_batch() -> None:
    ruleset = parse_ruleset(ruleset_text([rule("a", "x > 1")]), COMBINE_SCHEMA)
    results = ruleset.evaluate({"x": np.zeros(0)})
    assert len(results) == 0 and list(results) == []


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({}, "lacks feature 'kind'"),
        ({"kind": np.array(["p"])}, "lacks feature 'x'"),
        ({"kind": np.array(["p"]), "x": [1.0]}, "'x' is not a 1-d array"),
        ({"kind": np.array(["p"]), "x": np.zeros((2, 2))}, "not a 1-d array"),
        ({"kind": np.array(["p"]), "x": np.array(["1"])}, "'x' (number) has dtype <U1"),
        ({"x": np.zeros(2), "kind": np.zeros(2)}, "'kind' (category) has dtype float64"),
        ({"x": np.zeros(2), "kind": np.array(["a", "b", "c"])}, "'x' has 2 events, others 3"),
    ],
)
def test_a_batch_that_does_not_fit_is_rejected(batch: dict[str, Any], message: str) -> None:
    ruleset = parse_ruleset(ruleset_text([rule("a", 'x > 1 or kind == "p"')]), COMBINE_SCHEMA)
    with pytest.raises(RiskFeaturesError) as caught:
        ruleset.evaluate(batch)
    assert message in caught.value.message
    assert caught.value.code == "risk_features_invalid"


def test_list_rules_need_lists() -> None:
    ruleset = parse_ruleset(
        ruleset_text([rule("a", 'kind in list("blocked_merchants")')]), COMBINE_SCHEMA
    )
    assert ruleset.lists == ("blocked_merchants",)
    with pytest.raises(RiskFeaturesError, match="pass lists="):
        ruleset.evaluate({"kind": np.array(["m1"])})
    lists = RiskLists(ManualClock(5))
    lists.add("blocked_merchants", "m1", reason="collusion")
    results = ruleset.evaluate({"kind": np.array(["m1", "m2"])}, lists=lists)
    assert [o.decision for o in results] == [Decision.REVIEW, Decision.ACCEPT]


def test_category_features_compared_with_each_other() -> None:
    schema = {"a": FeatureType.CATEGORY, "b": FeatureType.CATEGORY}
    rules = [rule("same", "a == b"), rule("differ", 'a != b and a != "x"', action="reject")]
    ruleset = parse_ruleset(ruleset_text(rules), schema)
    batch = {"a": np.array(["p", "q", "x", "x", ""]), "b": np.array(["p", "r", "x", "y", ""])}
    assert [o.decision for o in ruleset.evaluate(batch)] == [
        Decision.REVIEW,
        Decision.REJECT,
        Decision.REVIEW,
        Decision.ACCEPT,
        Decision.REVIEW,
    ]
    assert actual(ruleset, batch, None) == expect(ruleset, batch, None)


def test_reference_expected_type_is_comparable() -> None:
    assert Expected(Decision.ACCEPT, 0, frozenset(), frozenset()) == Expected(
        Decision.ACCEPT, 0, frozenset(), frozenset()
    )


@pytest.mark.parametrize("size", [1, 64])
def test_missing_and_infinite_values_follow_ieee(size: int) -> None:
    """NaN compares false (``!=`` true); inf - inf and 0 * inf are NaN; in both paths, no
    warnings (pytest turns them into errors)."""
    rules = [
        rule("nan", "x * 0 != x * 0", action="reject"),
        rule("eq", "x - x == 0", action="challenge"),
        rule("ratio", "abs(1 / x) < 0.5 and min(x, 0) <= 0", score=10),
        rule("neg", "not (x > 0) and not (x <= 0)", score=20),
    ]
    ruleset = parse_ruleset(ruleset_text(rules), COMBINE_SCHEMA, sample={"x": np.array([np.inf])})
    values = np.resize(np.array([np.nan, np.inf, -np.inf, 1.0, 0.0]), size)
    batch = {"x": values}
    assert actual(ruleset, batch, None) == expect(ruleset, batch, None)
    if size == 64:
        decisions = [o.decision for o in ruleset.evaluate(batch)][:5]
        assert decisions == [
            Decision.REJECT,  # NaN: NaN * 0 != NaN * 0
            Decision.REJECT,  # inf * 0 is NaN
            Decision.REJECT,
            Decision.CHALLENGE,
            Decision.CHALLENGE,
        ]


def test_guards_are_chosen_by_measured_rarity_and_results_do_not_change() -> None:
    schema = {"flag": FeatureType.BOOLEAN, "amount": FeatureType.NUMBER}
    text = ruleset_text([rule("r", "amount > 10 and flag")])
    rng = np.random.default_rng(1)
    sample = {"flag": rng.random(1000) < 0.01, "amount": rng.uniform(11, 99, 1000)}
    guessed = parse_ruleset(text, schema)  # by kind: a threshold is assumed rarer than a flag
    measured = parse_ruleset(text, schema, sample=sample)  # here the flag is the rare one
    assert guessed.index_stats["threshold_groups"] == 1
    assert guessed.index_stats["equality_groups"] == 0
    assert measured.index_stats["threshold_groups"] == 0
    assert measured.index_stats["equality_groups"] == 1
    batch = {"flag": rng.random(500) < 0.5, "amount": rng.uniform(0, 20, 500)}
    assert actual(guessed, batch, None) == actual(measured, batch, None)
    assert actual(measured, batch, None) == expect(measured, batch, None)


def test_or_inside_and_is_expanded_into_indexed_clauses() -> None:
    schema = {"a": FeatureType.NUMBER, "b": FeatureType.NUMBER, "kind": FeatureType.CATEGORY}
    text = ruleset_text([rule("r", '(a > 1 or b > 2) and kind == "x"')])
    ruleset = parse_ruleset(text, schema)
    assert ruleset.index_stats == {
        "clauses": 2,
        "equality_groups": 0,
        "threshold_groups": 2,
        "always_clauses": 0,
        "derived_columns": 0,
    }
    batch = {
        "a": np.array([2.0, 2.0, 0.0, 0.0]),
        "b": np.array([3.0, 0.0, 3.0, 0.0]),
        "kind": np.array(["x", "x", "x", "x"]),
    }
    hits = [o.reasons for o in ruleset.evaluate(batch)]
    assert [len(h) for h in hits] == [1, 1, 1, 0]  # a rule hits once, however many clauses hold


def test_one_ruleset_serves_several_threads() -> None:
    import threading

    schema = {"x": FeatureType.NUMBER, "k": FeatureType.CATEGORY}
    rules = [rule(f"r{i}", f'x * {i % 7 + 1} > {i} and k != "{i % 3}"', score=i) for i in range(60)]
    ruleset = parse_ruleset(ruleset_text(rules), schema)
    rng = np.random.default_rng(2)
    batches = [
        {"x": rng.uniform(0, 60, 300), "k": rng.choice(np.array(["0", "1", "2"]), 300)}
        for _ in range(8)
    ]
    expected = [actual(ruleset, batch, None) for batch in batches]
    failures: list[int] = []

    def worker(offset: int) -> None:
        for round_ in range(10):
            index = (offset + round_) % len(batches)
            if actual(ruleset, batches[index], None) != expected[index]:
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert expected[0] == expect(ruleset, batches[0], None)
