"""A compiled ruleset and its results: ``Ruleset.evaluate(features, lists=...)``.

The batch becomes one (columns, events) float64 matrix (``_fill``; derived columns with numpy
for larger batches), the kernel writes per-event severity, score and hits, and the scores are
clamped and run through the thresholds. Per-event objects are built only on request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._compile import (
    compile_program,
    encode_categories,
    encode_joint,
    score_max,
    vector_prelude_events_min,
    vector_value,
)
from ._decide import Decision
from ._errors import RiskFeaturesError
from ._expr import Bool, Feature, FeatureType, InList, Node, Num, Str
from ._kernel import evaluate_batch
from ._lists import RiskLists
from ._ruleset import DECISIONS, SEVERITY, ParsedRuleset, Rule, RuleStatus, Thresholds


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that matched an event, with the values of the features it read."""

    rule_id: str
    values: tuple[tuple[str, float | int | bool | str], ...]


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What the rules say about one event."""

    decision: Decision
    score: int
    """The active score rules' sum, clamped to 0..1000."""
    reasons: tuple[RuleHit, ...]
    """Active rules that hit, highest priority first (then file order)."""
    shadow_hits: tuple[RuleHit, ...]
    """Shadow rules that hit (they never change the decision)."""
    ruleset_version: str


class RuleResults:
    """The outcome of a batch, columnar; per-event objects are built only when asked for."""

    def __init__(
        self,
        ruleset_version: str,
        rules: tuple[Rule, ...],
        order: np.ndarray,
        features: Mapping[str, np.ndarray],
        severity: np.ndarray,
        scores: np.ndarray,
        hits: np.ndarray,
        hit_offsets: np.ndarray,
        shadow: np.ndarray | None = None,
    ) -> None:
        self.ruleset_version = ruleset_version
        self.severity = severity
        """Per event, how severe its decision is: 0 accept, 1 challenge, 2 review, 3 reject."""
        self.scores = scores
        """Per event, the clamped score (int64)."""
        self.hits = hits
        """Every hit's rule index (into ``Ruleset.evaluated_rules``), event after event."""
        self.hit_offsets = hit_offsets
        """Event ``i``'s hits are ``hits[hit_offsets[i]:hit_offsets[i + 1]]``."""
        self._rules = rules
        self._order = order
        self._features = features
        self._shadow = (
            shadow
            if shadow is not None
            else np.array([rule.status == RuleStatus.SHADOW for rule in rules], dtype=np.bool_)
        )
        """Per rule of ``rules``: a shadow rule."""

    def __len__(self) -> int:
        return int(self.severity.shape[0])

    def __iter__(self) -> Iterator[RuleOutcome]:
        return (self.outcome(i) for i in range(len(self)))

    def decision(self, index: int) -> Decision:
        return DECISIONS[int(self.severity[index])]

    def rule_ids(self, index: int) -> list[str]:
        """Ids of every rule (active or shadow) that hit event ``index``."""
        hits = self.hits[self.hit_offsets[index] : self.hit_offsets[index + 1]]
        return [self._rules[int(r)].id for r in hits]

    def ranked_hits(
        self, limit: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Every event's hits as ``outcome(i, limit)`` picks them, for the whole batch at once:
        (event, rule index, shadow) per hit, event after event, each event's active hits
        (highest priority first) before its shadow hits, at most ``limit`` of each."""
        counts = np.diff(self.hit_offsets)
        events = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
        rules = np.asarray(self.hits, dtype=np.int64)
        shadow = self._shadow[rules]
        picked = np.lexsort((self._order[rules], shadow, events))
        events, rules, shadow = events[picked], rules[picked], shadow[picked]
        size = rules.shape[0]
        if size == 0:
            return events, rules, shadow
        starts = np.ones(size, dtype=np.bool_)
        starts[1:] = (events[1:] != events[:-1]) | (shadow[1:] != shadow[:-1])
        positions = np.arange(size, dtype=np.int64)
        group_first = np.maximum.accumulate(np.where(starts, positions, 0))
        kept = positions - group_first < limit
        return events[kept], rules[kept], shadow[kept]

    def outcome(self, index: int, limit: int | None = None) -> RuleOutcome:
        """Event ``index``'s outcome; with ``limit``, at most that many active and that many
        shadow hits are built (the highest priority ones): an event can hit hundreds."""
        hits = self.hits[self.hit_offsets[index] : self.hit_offsets[index + 1]]
        ranked = sorted((int(r) for r in hits), key=lambda r: self._order[r])
        active: list[RuleHit] = []
        shadow: list[RuleHit] = []
        for r in ranked:
            rule = self._rules[r]
            chosen = shadow if rule.status == RuleStatus.SHADOW else active
            if limit is not None and len(chosen) >= limit:
                continue
            values = tuple((name, self._features[name][index].item()) for name in rule.features)
            chosen.append(RuleHit(rule.id, values))
        return RuleOutcome(
            self.decision(index),
            int(self.scores[index]),
            tuple(active),
            tuple(shadow),
            self.ruleset_version,
        )


class Ruleset:
    """A compiled ruleset: ``evaluate(features, lists)`` over a columnar batch."""

    def __init__(
        self, parsed: ParsedRuleset, sample: Mapping[str, np.ndarray] | None = None
    ) -> None:
        self.name = parsed.name
        self.version = parsed.version
        """``<declared version>+<first 12 hex digits of the file's sha256>``."""
        self.declared_version = parsed.declared_version
        self.description = parsed.description
        self.thresholds: Thresholds = parsed.thresholds
        self.rules: tuple[Rule, ...] = parsed.rules
        self.schema: Mapping[str, FeatureType] = parsed.schema
        selected = [i for i, rule in enumerate(parsed.rules) if rule.status != RuleStatus.OFF]
        self.evaluated_rules: tuple[Rule, ...] = tuple(parsed.rules[i] for i in selected)
        """The active and shadow rules, in file order (``RuleResults.hits`` index them)."""
        self._program = compile_program(parsed, selected, sample)
        ranking = sorted(
            range(len(self.evaluated_rules)), key=lambda r: (-self.evaluated_rules[r].priority, r)
        )
        self._order = np.empty(len(ranking), dtype=np.int64)
        self._order[ranking] = np.arange(len(ranking))
        self._shadow = np.array(
            [rule.status == RuleStatus.SHADOW for rule in self.evaluated_rules], dtype=np.bool_
        )
        used = {name for rule in self.evaluated_rules for name in rule.features}
        self.features: tuple[str, ...] = tuple(sorted(used))
        """Features the evaluated rules read (a batch must hold each of them)."""
        self.lists: tuple[str, ...] = tuple(
            sorted({key[2] for key in self._program.columns if key[0] == "list"})
        )
        """Lists the evaluated rules look values up in."""
        thresholds = [
            (SEVERITY[d], t)
            for d, t in (
                (Decision.CHALLENGE, parsed.thresholds.challenge),
                (Decision.REVIEW, parsed.thresholds.review),
                (Decision.REJECT, parsed.thresholds.reject),
            )
            if t is not None
        ]
        self._score_thresholds = thresholds
        self._hits_per_event = 4.0

    @property
    def index_stats(self) -> dict[str, int]:
        """The shape of the compiled index: how rules are found (see docs/risk-rules.md)."""
        program = self._program
        return {
            "clauses": int(program.clause_rule.shape[0]),
            "equality_groups": int(program.eq_groups.shape[0]),
            "threshold_groups": int(program.threshold_groups.shape[0]),
            "always_clauses": int(program.always_clauses.shape[0]),
            "derived_columns": sum(1 for key in program.columns if key[0] == "derived"),
        }

    def __repr__(self) -> str:
        return f"Ruleset({self.name!r}, version={self.version!r}, rules={len(self.rules)})"

    def evaluate(
        self, features: Mapping[str, np.ndarray], *, lists: RiskLists | None = None
    ) -> RuleResults:
        """Evaluate every active and shadow rule over a batch of feature columns.

        ``features`` maps each feature name to a 1-d array, all of one length (the events);
        ``lists`` is required when a rule uses ``list("…")``.
        """
        n = self._batch_size(features)
        program = self._program
        X = np.empty((max(len(program.columns), 1), n), dtype=np.float64)
        self._fill(X, features, lists)
        prelude_end = program.prelude_end
        if n >= vector_prelude_events_min and prelude_end:
            self._derive(X)
            prelude_end = 0
        rule_count = len(self.evaluated_rules)
        stamp = np.zeros(max(rule_count, 1), dtype=np.int64)
        stack = np.empty(program.stack_size, dtype=np.float64)
        severity = np.empty(n, dtype=np.int64)
        score = np.empty(n, dtype=np.int64)
        hit_offsets = np.empty(n + 1, dtype=np.int64)
        hit_offsets[0] = 0
        capacity = int(n * self._hits_per_event) + 64
        hits = np.empty(capacity, dtype=np.int64)
        first = written = 0
        while True:
            outcome = evaluate_batch(
                X,
                program.ops,
                program.args,
                program.consts,
                program.sets,
                program.set_bounds,
                prelude_end,
                program.eq_groups,
                program.eq_keys,
                program.eq_clauses,
                program.threshold_groups,
                program.threshold_values,
                program.threshold_clauses,
                program.always_clauses,
                program.clause_rule,
                program.clause_code,
                program.rule_severity,
                program.rule_score,
                program.rule_shadow,
                stack,
                stamp,
                hits,
                hit_offsets,
                severity,
                score,
                first,
                written,
            )
            if outcome >= 0:
                written = outcome
                break
            first = -1 - outcome
            written = int(hit_offsets[first])
            grown = np.empty(2 * capacity, dtype=np.int64)
            grown[:written] = hits[:written]
            hits, capacity = grown, 2 * capacity
            stamp[:] = 0
        if n >= 100:
            # Size the next batch's buffer from what this one needed (racy but harmless).
            self._hits_per_event = max(2.0, 1.5 * written / n)
        np.clip(score, 0, score_max, out=score)
        for level, threshold in self._score_thresholds:
            np.maximum(severity, np.where(score >= threshold, level, 0), out=severity)
        return RuleResults(
            self.version,
            self.evaluated_rules,
            self._order,
            features,
            severity,
            score,
            hits[:written],
            hit_offsets,
            self._shadow,
        )

    def _batch_size(self, features: Mapping[str, np.ndarray]) -> int:
        n: int | None = None
        for name in self.features:
            column = features.get(name)
            if column is None:
                raise RiskFeaturesError(f"the batch lacks feature {name!r}", feature=name)
            if not isinstance(column, np.ndarray) or column.ndim != 1:
                raise RiskFeaturesError(f"feature {name!r} is not a 1-d array", feature=name)
            kind = self.schema[name]
            allowed = "U" if kind == FeatureType.CATEGORY else "biuf"
            if column.dtype.kind not in allowed:
                raise RiskFeaturesError(
                    f"feature {name!r} ({kind}) has dtype {column.dtype}", feature=name
                )
            if n is None:
                n = column.shape[0]
            elif column.shape[0] != n:
                raise RiskFeaturesError(
                    f"feature {name!r} has {column.shape[0]} events, others {n}", feature=name
                )
        if n is None:
            n = next((len(column) for column in features.values()), 0)
        return n

    def _literal(self, node: Num | Str | Bool) -> float:
        if isinstance(node, Str):
            return float(self._program.string_codes[node.value])
        return float(node.value)

    def _derive(self, X: np.ndarray) -> None:
        """Compute the derived columns with numpy, column by column (for larger batches)."""
        program = self._program
        index = program.column_index
        size = X.shape[1]

        def leaf(node: Node) -> np.ndarray | None:
            match node:
                case Feature(name):
                    key = ("category", name) if ("category", name) in index else ("number", name)
                    feature: np.ndarray = X[index[key]]
                    return feature
                case InList(Feature(name), list_name, negated):
                    found: np.ndarray = X[index[("list", name, list_name)]]
                    return 1.0 - found if negated else found
            column = index.get(("derived", node))
            return X[column] if column is not None and column < current else None

        with np.errstate(all="ignore"):  # inf - inf, 0 * inf: NaN, as in the kernel
            for current, key in enumerate(program.columns):
                if key[0] == "derived":
                    value = vector_value(key[1], leaf, self._literal, size)
                    assert value is not None
                    X[current] = value

    def _fill(
        self, X: np.ndarray, features: Mapping[str, np.ndarray], lists: RiskLists | None
    ) -> None:
        program = self._program
        joint_codes = encode_joint(program.strings, program.joint, features)
        for index, key in enumerate(program.columns):
            kind = key[0]
            if kind == "number":
                column = features[key[1]]
                if self.schema[key[1]] == FeatureType.BOOLEAN:
                    X[index] = column != 0
                else:
                    X[index] = column
            elif kind == "category":
                codes = joint_codes.get(key[1])
                if codes is None:
                    codes = encode_categories(program.strings, features[key[1]])
                X[index] = codes
            elif kind == "list":
                if lists is None:
                    raise RiskFeaturesError(
                        f"the ruleset looks values up in list {key[2]!r}: pass lists="
                    )
                X[index] = lists.contains(key[2], features[key[1]])
