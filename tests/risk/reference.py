"""A slow, obviously-correct reference evaluator of rulesets: one event at a time, on the tree.

It shares nothing with the compiled engine but the parser's syntax tree (the parser has its own
tests): no folding, no clauses, no index, no bytecode, no column encoding. Numbers are compared
as float64, as documented.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from puhui.risk import Decision, RiskLists, Ruleset, RuleStatus
from puhui.risk._expr import (
    Arith,
    Bool,
    Call,
    Compare,
    Feature,
    InList,
    InValues,
    Logic,
    Neg,
    Node,
    Not,
    Num,
    Str,
    parse,
)

SEVERITY = {Decision.ACCEPT: 0, Decision.CHALLENGE: 1, Decision.REVIEW: 2, Decision.REJECT: 3}


def value(node: Node, event: Mapping[str, Any], lists: RiskLists | None) -> Any:
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Str | Bool):
        return node.value
    if isinstance(node, Feature):
        return event[node.name]
    if isinstance(node, Neg):
        return -value(node.operand, event, lists)
    if isinstance(node, Arith):
        a = value(node.left, event, lists)
        b = value(node.right, event, lists)
        if node.op == "+":
            return a + b
        if node.op == "-":
            return a - b
        if node.op == "*":
            return a * b
        return 0.0 if b == 0 else a / b
    if isinstance(node, Call):
        args = [value(arg, event, lists) for arg in node.args]
        if node.function == "abs":
            return abs(args[0])
        result = args[0]
        for arg in args[1:]:
            if (arg < result) if node.function == "min" else (arg > result):
                result = arg
        return result
    if isinstance(node, Compare):
        a = value(node.left, event, lists)
        b = value(node.right, event, lists)
        return {
            "==": a == b,
            "!=": a != b,
            "<": a < b,
            "<=": a <= b,
            ">": a > b,
            ">=": a >= b,
        }[node.op]
    if isinstance(node, InValues):
        v = value(node.operand, event, lists)
        found = any(v == value(item, event, lists) for item in node.values)
        return found != node.negated
    if isinstance(node, InList):
        assert lists is not None
        found = lists.lookup(node.list_name, value(node.operand, event, lists)) is not None
        return found != node.negated
    if isinstance(node, Not):
        return not value(node.operand, event, lists)
    if isinstance(node, Logic):
        results = [bool(value(item, event, lists)) for item in node.items]
        return all(results) if node.op == "and" else any(results)
    raise AssertionError(node)


@dataclass(frozen=True)
class Expected:
    decision: Decision
    score: int
    active: frozenset[str]
    shadow: frozenset[str]


def event_of(features: Mapping[str, np.ndarray], index: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, column in features.items():
        item = column[index].item()
        out[name] = float(item) if isinstance(item, int) and not isinstance(item, bool) else item
    return out


def expect(
    ruleset: Ruleset, features: Mapping[str, np.ndarray], lists: RiskLists | None
) -> list[Expected]:
    """What each event of the batch should get, computed the slow way."""
    trees = [(rule, parse(rule.when)) for rule in ruleset.rules if rule.status != RuleStatus.OFF]
    size = len(next(iter(features.values()))) if features else 0
    out = []
    for index in range(size):
        event = event_of(features, index)
        active, shadow = set(), set()
        worst, total = 0, 0
        for rule, tree in trees:
            if not value(tree, event, lists):
                continue
            if rule.status == RuleStatus.SHADOW:
                shadow.add(rule.id)
                continue
            active.add(rule.id)
            if rule.action is not None:
                worst = max(worst, SEVERITY[rule.action])
            else:
                assert rule.score is not None
                total += rule.score
        score = min(max(total, 0), 1000)
        worst = max(worst, SEVERITY[ruleset.thresholds.decision(score)])
        decision = next(d for d, s in SEVERITY.items() if s == worst)
        out.append(Expected(decision, score, frozenset(active), frozenset(shadow)))
    return out


def actual(
    ruleset: Ruleset, features: Mapping[str, np.ndarray], lists: RiskLists | None
) -> list[Expected]:
    results = ruleset.evaluate(features, lists=lists)
    out = []
    for outcome in results:
        out.append(
            Expected(
                outcome.decision,
                outcome.score,
                frozenset(hit.rule_id for hit in outcome.reasons),
                frozenset(hit.rule_id for hit in outcome.shadow_hits),
            )
        )
    return out


def ruleset_text(rules: list[dict[str, Any]], *, header: str = "") -> str:
    """A ruleset file holding ``rules`` (each a dict of the rule's keys; ``when`` quoted as a
    TOML literal string)."""
    lines = ['name = "test"', 'version = "1"', header, ""]
    for rule in rules:
        lines.append("[[rule]]")
        for key, item in rule.items():
            if isinstance(item, str):
                quoted = f"'{item}'" if key == "when" else f'"{item}"'
                lines.append(f"{key} = {quoted}")
            else:
                lines.append(f"{key} = {item}")
        lines.append("")
    return "\n".join(lines)


def rule(rule_id: str, when: str, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rule_id,
        "description": f"rule {rule_id}",
        "when": when,
        "action": "review",
        "priority": 1,
        "status": "active",
        "owner": "tests",
    }
    if "score" in overrides:
        del out["action"]
    out.update(overrides)
    return out
