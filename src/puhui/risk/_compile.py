"""Compile a checked ruleset into the flat arrays the kernel runs (``compile_program``).

Per rule that is not ``off``:

1. Fold constant arithmetic (``10 * 1000`` → ``10000``).
2. Expand the expression into an ``or`` of ``and``s (``(a or b) and c`` → ``a and c``,
   ``b and c``; at most ``clauses_per_rule_max`` clauses, else the sub-expression stays whole).
3. Pick each clause's *guard*: the conjunct that an index can answer for all rules at once
   and that holds least often — measured on a sample batch when one is given, else guessed by
   kind (list lookups, then ``expr > c`` and friends, then boolean flags, then ``col == k`` /
   ``col in [...]``, then comparisons of two expressions). Equality guards go to an equality
   index, ordering guards to a threshold index (sorted per column and direction). A guard on
   anything but a plain feature makes that sub-expression a *derived column*, computed once
   per event however many rules share it.
4. The other conjuncts become bytecode, cheapest first, joined by short-circuit jumps.

Every value is a float64 in one (columns, events) matrix: numbers as they are, booleans
0/1, categories as codes (each string literal of the ruleset has a fixed code; other values
get -1, or batch-local codes for features compared with each other), list membership 0/1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._expr import (
    Arith,
    Bool,
    Call,
    Compare,
    Feature,
    FeatureType,
    InList,
    InValues,
    Logic,
    Neg,
    Node,
    Not,
    Num,
    Str,
    divide,
    maximum,
    minimum,
)
from ._kernel import (
    ABS,
    ADD,
    CONST,
    DIV,
    EQ,
    GE,
    GT,
    IN_SET,
    JUMP_IF_FALSE,
    JUMP_IF_TRUE,
    LE,
    LOAD,
    LT,
    MAX,
    MIN,
    MUL,
    NE,
    NEG,
    NOT,
    STORE,
    SUB,
    THRESHOLD_GE,
    THRESHOLD_GT,
    THRESHOLD_LE,
    THRESHOLD_LT,
)
from ._ruleset import SEVERITY, ParsedRuleset, RuleStatus
from ._strings import StringTable

score_max = 1_000

clauses_per_rule_max = 16
"""Most clauses a rule's expression is expanded into (``or`` of ``and``s) for indexing."""

vector_prelude_events_min = 32
"""From this many events, derived columns are computed with numpy before the kernel runs
(one array operation per node beats interpreting the prelude per event); below, in the kernel
(unit: events)."""

_ARITH = {"+": ADD, "-": SUB, "*": MUL, "/": DIV}
_COMPARE = {"<": LT, "<=": LE, ">": GT, ">=": GE, "==": EQ, "!=": NE}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_THRESHOLD = {">": THRESHOLD_GT, ">=": THRESHOLD_GE, "<": THRESHOLD_LT, "<=": THRESHOLD_LE}

ColumnKey = tuple[Any, ...]
"""``("number", name)``, ``("category", name)``, ``("list", feature, list)``, or
``("derived", node)``."""


# Guard ranks, most likely rare first (rule authors list the rare, block-list entries, and
# aim thresholds at tails; an event kind, channel or category is a broad context).
_LISTED = 0
_TAIL = 1
_FLAG = 2
_EQUAL = 3
_DERIVED = 4
_COMMON = 5
_STATIC_RATE = {_LISTED: 0.001, _TAIL: 0.01, _FLAG: 0.05, _EQUAL: 0.2, _DERIVED: 0.3, _COMMON: 0.9}
"""A guard's assumed pass rate when no sample tells (by rank)."""

sample_events_max = 4_096
"""Most events of a sample batch used to measure guards' pass rates (unit: events)."""


@dataclass(frozen=True, slots=True)
class _Guard:
    rank: int
    """How likely the guard is to hold, rarest first (``_LISTED`` … ``_COMMON``)."""
    column: ColumnKey
    threshold_kind: int | None
    """``None`` for an equality guard."""
    keys: tuple[float, ...]


def fold(node: Node) -> Node:
    """``node`` with constant arithmetic computed (same float64 operations as the kernel)."""
    match node:
        case Neg(operand):
            inner = fold(operand)
            return Num(-inner.value, node.pos) if isinstance(inner, Num) else Neg(inner, node.pos)
        case Arith(op, left, right):
            a, b = fold(left), fold(right)
            if isinstance(a, Num) and isinstance(b, Num):
                return Num(_arith(op, a.value, b.value), node.pos)
            return Arith(op, a, b, node.pos)
        case Call(function, args):
            folded = tuple(fold(arg) for arg in args)
            if all(isinstance(arg, Num) for arg in folded):
                values = [arg.value for arg in folded if isinstance(arg, Num)]
                return Num(_call(function, values), node.pos)
            return Call(function, folded, node.pos)
        case Compare(op, left, right):
            return Compare(op, fold(left), fold(right), node.pos)
        case InValues(operand, values, negated):
            return InValues(fold(operand), values, negated, node.pos)
        case Not(operand):
            return Not(fold(operand), node.pos)
        case Logic(op, items):
            return Logic(op, tuple(fold(item) for item in items), node.pos)
    return node


def _arith(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return divide(a, b)


def _call(function: str, values: Sequence[float]) -> float:
    if function == "abs":
        return abs(values[0])
    result = values[0]
    for value in values[1:]:
        result = minimum(result, value) if function == "min" else maximum(result, value)
    return result


def _depth(node: Node) -> int:
    match node:
        case Neg(operand) | Not(operand) | InValues(operand) | InList(operand):
            return _depth(operand)
        case Arith(_, left, right) | Compare(_, left, right):
            return max(_depth(left), 1 + _depth(right))
        case Call(_, args):
            return max([_depth(args[0])] + [1 + _depth(arg) for arg in args[1:]])
        case Logic(_, items):
            return max(_depth(item) for item in items)
    return 1


class _Code:
    def __init__(self) -> None:
        self.ops: list[int] = []
        self.args: list[int] = []
        self.jumps: list[int] = []

    def add(self, op: int, arg: int = 0) -> int:
        self.ops.append(op)
        self.args.append(arg)
        return len(self.ops) - 1


@dataclass(frozen=True, slots=True)
class Program:
    columns: tuple[ColumnKey, ...]
    column_index: Mapping[ColumnKey, int]
    strings: StringTable
    string_codes: Mapping[str, int]
    joint: tuple[str, ...]
    ops: np.ndarray
    args: np.ndarray
    consts: np.ndarray
    sets: np.ndarray
    set_bounds: np.ndarray
    prelude_end: int
    eq_groups: np.ndarray
    eq_keys: np.ndarray
    eq_clauses: np.ndarray
    threshold_groups: np.ndarray
    threshold_values: np.ndarray
    threshold_clauses: np.ndarray
    always_clauses: np.ndarray
    clause_rule: np.ndarray
    clause_code: np.ndarray
    rule_severity: np.ndarray
    rule_score: np.ndarray
    rule_shadow: np.ndarray
    stack_size: int


class _Compiler:
    def __init__(
        self,
        parsed: ParsedRuleset,
        rules: Sequence[int],
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.schema = parsed.schema
        self.columns: dict[ColumnKey, int] = {}
        self.consts: dict[float, int] = {}
        self.sets: dict[tuple[float, ...], int] = {}
        self.prelude = _Code()
        self.body = _Code()
        self.stack_size = 2
        trees = [fold(parsed.trees[i]) for i in rules]
        strings: set[str] = set()
        joint: set[str] = set()
        for tree in trees:
            self._scan(tree, strings, joint)
        ordered = sorted(strings)
        self.strings = StringTable(ordered)
        self.string_codes = {text: code for code, text in enumerate(ordered)}
        self.joint = tuple(sorted(joint))
        self.sample = self._sample_columns(sample) if sample is not None else None
        self.sample_values: dict[Node, np.ndarray | None] = {}
        self.eq: dict[ColumnKey, list[tuple[float, int]]] = {}
        self.thresholds: dict[tuple[ColumnKey, int], list[tuple[float, int]]] = {}
        self.always: list[int] = []
        self.clause_rule: list[int] = []
        self.clause_code: list[tuple[int, int]] = []
        for position, tree in enumerate(trees):
            self.stack_size = max(self.stack_size, _depth(tree) + 2)
            for conjuncts in _disjunctive(tree):
                self._clause(position, list(conjuncts))

    def _scan(self, node: Node, strings: set[str], joint: set[str]) -> None:
        match node:
            case Str(value):
                strings.add(value)
            case Compare(_, Feature(a), Feature(b)) if self._is_category(a):
                joint.update((a, b))
            case _:
                pass
        for child in _children(node):
            self._scan(child, strings, joint)
        if isinstance(node, InValues):
            for literal in node.values:
                self._scan(literal, strings, joint)

    def _is_category(self, name: str) -> bool:
        return self.schema.get(name) == FeatureType.CATEGORY

    # --- columns and constants ---------------------------------------------------------------

    def column(self, key: ColumnKey) -> int:
        index = self.columns.get(key)
        if index is None:
            if key[0] == "derived":
                self._emit(key[1], self.prelude)  # may add the columns it reads first
            index = len(self.columns)
            self.columns[key] = index
            if key[0] == "derived":
                self.prelude.add(STORE, index)
        return index

    def _feature_column(self, name: str) -> ColumnKey:
        return ("category", name) if self._is_category(name) else ("number", name)

    def _value_column(self, node: Node) -> ColumnKey:
        if isinstance(node, Feature):
            return self._feature_column(node.name)
        return ("derived", node)

    def const(self, value: float) -> int:
        index = self.consts.get(value)
        if index is None:
            index = self.consts[value] = len(self.consts)
        return index

    def literal(self, node: Num | Str | Bool) -> float:
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Bool):
            return 1.0 if node.value else 0.0
        return float(self.string_codes[node.value])

    # --- measured pass rates (a sample batch) ------------------------------------------------

    def _sample_columns(self, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, np.ndarray] = {}
        usable = {
            name: np.asarray(column)[:sample_events_max]
            for name, column in sample.items()
            if name in self.schema and isinstance(column, np.ndarray) and column.ndim == 1
        }
        sizes = {column.shape[0] for column in usable.values()}
        if len(sizes) != 1 or 0 in sizes:
            return columns
        joint = encode_joint(self.strings, [n for n in self.joint if n in usable], usable)
        for name, column in usable.items():
            kind = self.schema[name]
            if kind == FeatureType.CATEGORY:
                if column.dtype.kind == "U":
                    columns[name] = joint.get(name, encode_categories(self.strings, column))
            elif column.dtype.kind in "biuf":
                columns[name] = (
                    (column != 0) * 1.0
                    if kind == FeatureType.BOOLEAN
                    else (column.astype(np.float64))
                )
        return columns

    def _pass_rate(self, conjunct: Node, guard: _Guard) -> float:
        if self.sample:
            values = self._vector(conjunct)
            if values is not None:
                return float(np.count_nonzero(values)) / float(values.shape[0])
        return _STATIC_RATE[guard.rank]

    def _vector(self, node: Node) -> np.ndarray | None:
        """``node`` over the sample, as the kernel computes it (``None``: not computable)."""
        if node not in self.sample_values:
            assert self.sample is not None
            size = next(iter(self.sample.values())).shape[0]
            with np.errstate(all="ignore"):  # inf - inf, 0 * inf: NaN, as in the kernel
                value = vector_value(node, self._sample_leaf, self.literal, size)
            self.sample_values[node] = value
        return self.sample_values[node]

    def _sample_leaf(self, node: Node) -> np.ndarray | None:
        assert self.sample is not None
        if isinstance(node, Feature):
            return self.sample.get(node.name)
        return self.sample_values.get(node)

    # --- guards ------------------------------------------------------------------------------

    def _guard(self, node: Node) -> _Guard | None:
        match node:
            case Feature(name) if self.schema.get(name) == FeatureType.BOOLEAN:
                return _Guard(_FLAG, ("number", name), None, (1.0,))
            case Not(Feature(name)) if self.schema.get(name) == FeatureType.BOOLEAN:
                return _Guard(_COMMON, ("number", name), None, (0.0,))
            case InList(Feature(name), list_name, negated):
                return _Guard(
                    _COMMON if negated else _LISTED,
                    ("list", name, list_name),
                    None,
                    (0.0 if negated else 1.0,),
                )
            case InValues(operand, values, False) if not isinstance(operand, Num | Str | Bool):
                keys = tuple(sorted({self.literal(v) for v in values}))
                return _Guard(_EQUAL, self._value_column(operand), None, keys)
            case Compare(op, left, right):
                if isinstance(left, Num | Str | Bool) and not isinstance(right, Num | Str | Bool):
                    left, right, op = right, left, _FLIP[op]
                if isinstance(right, Num | Str | Bool) and not isinstance(left, Num | Str | Bool):
                    value = self.literal(right)
                    column = self._value_column(left)
                    if op == "==":
                        common = isinstance(right, Bool) and not right.value
                        flag = isinstance(right, Bool)
                        rank = _COMMON if common else _FLAG if flag else _EQUAL
                        return _Guard(rank, column, None, (value,))
                    if op in _THRESHOLD:
                        return _Guard(_TAIL, column, _THRESHOLD[op], (value,))
                    return None
                if isinstance(left, Num | Str | Bool):
                    return None
                return _Guard(_DERIVED, ("derived", node), None, (1.0,))
        return None

    def _clause(self, rule: int, conjuncts: list[Node]) -> None:
        best: tuple[int, tuple[float, int], _Guard] | None = None
        for index, conjunct in enumerate(conjuncts):
            guard = self._guard(conjunct)
            if guard is None:
                continue
            cost = (self._pass_rate(conjunct, guard), guard.rank)
            if best is None or cost < best[1]:
                best = (index, cost, guard)
        clause_index = len(self.clause_rule)
        self.clause_rule.append(rule)
        if best is None:
            self.always.append(clause_index)
        else:
            index, _, guard = best
            del conjuncts[index]
            self.column(guard.column)  # registered (a derived column: computed in the prelude)
            if guard.threshold_kind is None:
                entries = self.eq.setdefault(guard.column, [])
                entries.extend((key, clause_index) for key in guard.keys)
            else:
                self.thresholds.setdefault((guard.column, guard.threshold_kind), []).append(
                    (guard.keys[0], clause_index)
                )
        start = len(self.body.ops)
        conjuncts.sort(key=_cost)
        self._emit_all(conjuncts, "and", self.body)
        self.clause_code.append((start, len(self.body.ops)))

    # --- bytecode ----------------------------------------------------------------------------

    def _emit_all(self, items: Sequence[Node], op: str, code: _Code) -> None:
        jumps = []
        for position, item in enumerate(items):
            self._emit(item, code)
            if position < len(items) - 1:
                jumps.append(code.add(JUMP_IF_FALSE if op == "and" else JUMP_IF_TRUE))
        for jump in jumps:
            code.args[jump] = len(code.ops)
            code.jumps.append(jump)

    def _emit(self, node: Node, code: _Code) -> None:
        derived = self.columns.get(("derived", node))
        if derived is not None:
            code.add(LOAD, derived)
            return
        match node:
            case Num() | Str() | Bool():
                code.add(CONST, self.const(self.literal(node)))
            case Feature(name):
                code.add(LOAD, self.column(self._feature_column(name)))
            case Neg(operand):
                self._emit(operand, code)
                code.add(NEG)
            case Arith(op, left, right):
                self._emit(left, code)
                self._emit(right, code)
                code.add(_ARITH[op])
            case Call("abs", (operand,)):
                self._emit(operand, code)
                code.add(ABS)
            case Call(function, args):
                self._emit(args[0], code)
                for arg in args[1:]:
                    self._emit(arg, code)
                    code.add(MIN if function == "min" else MAX)
            case Compare(op, left, right):
                self._emit(left, code)
                self._emit(right, code)
                code.add(_COMPARE[op])
            case InValues(operand, values, negated):
                self._emit(operand, code)
                keys = tuple(sorted({self.literal(v) for v in values}))
                set_index = self.sets.get(keys)
                if set_index is None:
                    set_index = self.sets[keys] = len(self.sets)
                code.add(IN_SET, set_index)
                if negated:
                    code.add(NOT)
            case InList(Feature(name), list_name, negated):
                code.add(LOAD, self.column(("list", name, list_name)))
                if negated:
                    code.add(NOT)
            case Not(operand):
                self._emit(operand, code)
                code.add(NOT)
            case Logic(op, items):
                self._emit_all(items, op, code)
            case _:  # pragma: no cover
                raise AssertionError(node)

    def program(self, parsed: ParsedRuleset, rules: Sequence[int]) -> Program:
        prelude_end = len(self.prelude.ops)
        body_args = list(self.body.args)
        for jump in self.body.jumps:
            body_args[jump] += prelude_end
        for jump in self.prelude.jumps:  # pragma: no cover - the prelude has no logic
            raise AssertionError(jump)
        ops = np.array(self.prelude.ops + self.body.ops, dtype=np.int32)
        args = np.array(self.prelude.args + body_args, dtype=np.int32)
        consts = np.zeros(len(self.consts), dtype=np.float64)
        for value, index in self.consts.items():
            consts[index] = value
        ordered_sets = sorted(self.sets.items(), key=lambda item: item[1])
        sets = np.array([v for keys, _ in ordered_sets for v in keys] or [0.0], dtype=np.float64)
        bounds = np.zeros(len(ordered_sets) + 1, dtype=np.int64)
        for position, (keys, _) in enumerate(ordered_sets):
            bounds[position + 1] = bounds[position] + len(keys)
        eq_groups: list[tuple[int, int, int]] = []
        eq_keys: list[float] = []
        eq_clauses: list[int] = []
        for key, entries in self.eq.items():
            entries.sort()
            eq_groups.append((self.columns[key], len(eq_keys), len(eq_keys) + len(entries)))
            eq_keys.extend(value for value, _ in entries)
            eq_clauses.extend(clause for _, clause in entries)
        threshold_groups: list[tuple[int, int, int, int]] = []
        threshold_values: list[float] = []
        threshold_clauses: list[int] = []
        for (key, kind), entries in self.thresholds.items():
            entries.sort()
            start = len(threshold_values)
            threshold_groups.append((self.columns[key], kind, start, start + len(entries)))
            threshold_values.extend(value for value, _ in entries)
            threshold_clauses.extend(clause for _, clause in entries)
        evaluated = [parsed.rules[i] for i in rules]
        clause_code = np.array(self.clause_code, dtype=np.int64).reshape(-1, 2) + prelude_end
        return Program(
            columns=tuple(self.columns),
            column_index=dict(self.columns),
            strings=self.strings,
            string_codes=self.string_codes,
            joint=self.joint,
            ops=ops,
            args=args,
            consts=consts if consts.size else np.zeros(1),
            sets=sets,
            set_bounds=bounds,
            prelude_end=prelude_end,
            eq_groups=np.array(eq_groups, dtype=np.int64).reshape(-1, 3),
            eq_keys=np.array(eq_keys or [0.0], dtype=np.float64),
            eq_clauses=np.array(eq_clauses or [0], dtype=np.int64),
            threshold_groups=np.array(threshold_groups, dtype=np.int64).reshape(-1, 4),
            threshold_values=np.array(threshold_values or [0.0], dtype=np.float64),
            threshold_clauses=np.array(threshold_clauses or [0], dtype=np.int64),
            always_clauses=np.array(self.always, dtype=np.int64),
            clause_rule=np.array(self.clause_rule, dtype=np.int64),
            clause_code=clause_code,
            rule_severity=np.array(
                [SEVERITY[r.action] if r.action is not None else 0 for r in evaluated],
                dtype=np.int64,
            ),
            rule_score=np.array([r.score or 0 for r in evaluated], dtype=np.int64),
            rule_shadow=np.array(
                [r.status == RuleStatus.SHADOW for r in evaluated], dtype=np.bool_
            ),
            stack_size=self.stack_size,
        )


def vector_value(
    node: Node,
    leaf: Callable[[Node], np.ndarray | None],
    literal: Callable[[Num | Str | Bool], float],
    size: int,
) -> np.ndarray | None:
    """``node`` over a batch with numpy, exactly as the kernel computes it per event.

    ``leaf(node)`` gives the column of a feature, a list lookup or a derived sub-expression
    (``None`` when it has none); ``None`` back when some leaf has no column.
    """
    column = leaf(node)
    if column is not None:
        return column
    match node:
        case Num() | Str() | Bool():
            return np.full(size, literal(node))
        case Feature() | InList():
            return None
    parts = []
    for child in _children(node):
        part = vector_value(child, leaf, literal, size)
        if part is None:
            return None
        parts.append(part)
    return np.asarray(_vector_op(node, parts, literal), dtype=np.float64)


def _vector_op(
    node: Node, parts: list[np.ndarray], literal: Callable[[Num | Str | Bool], float]
) -> Any:
    match node:
        case Neg():
            return -parts[0]
        case Arith(op, _, _):
            a, b = parts
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            return np.divide(a, b, out=np.zeros_like(a), where=b != 0.0)
        case Call("abs", _):
            return np.abs(parts[0])
        case Call(function, _):
            result = parts[0]
            for part in parts[1:]:
                pick = part < result if function == "min" else part > result
                result = np.where(pick, part, result)
            return result
        case Compare(op, _, _):
            a, b = parts
            compare = {
                "<": np.less,
                "<=": np.less_equal,
                ">": np.greater,
                ">=": np.greater_equal,
                "==": np.equal,
                "!=": np.not_equal,
            }[op]
            return compare(a, b) * 1.0
        case InValues(_, values, negated):
            found = np.isin(parts[0], [literal(value) for value in values])
            return (~found if negated else found) * 1.0
        case Not():
            return (parts[0] == 0.0) * 1.0
        case Logic(op, _):
            stacked = np.array(parts) != 0.0
            return (stacked.all(axis=0) if op == "and" else stacked.any(axis=0)) * 1.0
    raise AssertionError(node)  # pragma: no cover


def _disjunctive(node: Node) -> list[tuple[Node, ...]]:
    """``node`` as an ``or`` of ``and``s of atoms (each clause a tuple of conjuncts).

    ``(a or b) and c`` becomes ``a and c``, ``b and c``: each clause can then be indexed on
    its own rarest condition. A sub-expression whose expansion would exceed
    ``clauses_per_rule_max`` stays one atom (evaluated as it is).
    """
    match node:
        case Logic("or", items):
            out: list[tuple[Node, ...]] = []
            for item in items:
                out.extend(_disjunctive(item))
            if len(out) <= clauses_per_rule_max:
                return out
        case Logic("and", items):
            product: list[tuple[Node, ...]] = [()]
            for item in items:
                product = [left + right for left in product for right in _disjunctive(item)]
                if len(product) > clauses_per_rule_max:
                    return [tuple(items)]
            return product
    return [(node,)]


def _children(node: Node) -> tuple[Node, ...]:
    match node:
        case Neg(operand) | Not(operand) | InValues(operand) | InList(operand):
            return (operand,)
        case Arith(_, left, right) | Compare(_, left, right):
            return (left, right)
        case Call(_, args):
            return args
        case Logic(_, items):
            return items
    return ()


def _cost(node: Node) -> int:
    return 1 + sum(_cost(child) for child in _children(node))


def encode_categories(strings: StringTable, column: np.ndarray) -> np.ndarray:
    """Codes of a category column: a ruleset string's index in ``strings``, else -1."""
    return strings.index_of(column).astype(np.float64)


def encode_joint(
    strings: StringTable, names: Sequence[str], features: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Codes valid across the category features compared with each other, for one batch."""
    if not names:
        return {}
    columns = [np.asarray(features[name]) for name in names]
    unique, inverse = np.unique(np.concatenate(columns), return_inverse=True)
    known = encode_categories(strings, unique)
    unknown = known < 0
    known[unknown] = len(strings) + np.arange(int(unknown.sum()))
    codes = known[inverse]
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, column in zip(names, columns, strict=True):
        out[name] = codes[start : start + column.shape[0]]
        start += column.shape[0]
    return out


def compile_program(
    parsed: ParsedRuleset, rules: Sequence[int], sample: Mapping[str, np.ndarray] | None
) -> Program:
    """The kernel's arrays for rules ``rules`` (indexes into ``parsed.rules``) of ``parsed``."""
    return _Compiler(parsed, rules, sample).program(parsed, rules)
