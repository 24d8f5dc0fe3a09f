"""The numba kernel that evaluates a compiled ruleset over a batch, one pass per event.

Per event: (1) the prelude computes the derived columns (shared sub-expressions that guard
rules); (2) each index group proposes candidate clauses — an equality group by binary search
for the event's value among the sorted keys of ``col == k`` / ``col in [...]`` guards, a
threshold group as the prefix or suffix of its sorted thresholds that the value passes, so all
``f > c_i`` guards on one column are answered by one search (usually one comparison, since
most values pass no threshold); clauses without an indexable guard are always candidates;
(3) a candidate clause runs its remaining conjuncts as bytecode on a small stack, cheapest
first, stopping at the first false one; a true clause is a hit of its rule (once per event).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit

LOAD = 0
CONST = 1
ADD = 2
SUB = 3
MUL = 4
DIV = 5
NEG = 6
ABS = 7
MIN = 8
MAX = 9
LT = 10
LE = 11
GT = 12
GE = 13
EQ = 14
NE = 15
NOT = 16
JUMP_IF_FALSE = 17
"""If the top is false, jump (keeping it) — else pop it: ``and``."""
JUMP_IF_TRUE = 18
"""If the top is true, jump (keeping it) — else pop it: ``or``."""
IN_SET = 19
STORE = 20
"""Pop into a derived column of the current event."""

THRESHOLD_GT = 0
THRESHOLD_GE = 1
THRESHOLD_LT = 2
THRESHOLD_LE = 3


def _jit(inline: str) -> Callable[[Callable[..., Any]], Any]:
    """numba nopython, cached on disk, releasing the GIL, without reference counting (the
    kernels allocate nothing; see ``puhui.ledger._jit`` for what counting costs)."""
    # ``_nrt`` is numba's underscored option for reference counting (pinned numba version).
    options: dict[str, Any] = {"cache": True, "nogil": True, "_nrt": False, "inline": inline}
    decorator: Callable[[Callable[..., Any]], Any] = njit(**options)
    return decorator


jit = _jit("never")
jit_inline = _jit("always")
"""Inlined into its callers (the bytecode loop: a call would pass ~9 arrays per candidate)."""


@jit
def _in_sorted(values: Any, lo: int, hi: int, v: float) -> bool:
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and values[lo] == v


@jit
def _lower_bound(values: Any, lo: int, hi: int, v: float) -> int:
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def _upper_bound(values: Any, lo: int, hi: int, v: float) -> int:
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit_inline
def _run(
    X: Any,
    e: int,
    ops: Any,
    args: Any,
    consts: Any,
    sets: Any,
    set_bounds: Any,
    stack: Any,
    start: int,
    end: int,
) -> float:
    sp = 0
    pc = start
    while pc < end:
        op = ops[pc]
        a = args[pc]
        if op == LOAD:
            stack[sp] = X[a, e]
            sp += 1
        elif op == CONST:
            stack[sp] = consts[a]
            sp += 1
        elif op <= MAX and op != NEG and op != ABS:
            sp -= 1
            right = stack[sp]
            left = stack[sp - 1]
            if op == ADD:
                r = left + right
            elif op == SUB:
                r = left - right
            elif op == MUL:
                r = left * right
            elif op == DIV:
                r = 0.0 if right == 0.0 else left / right
            elif op == MIN:
                r = right if right < left else left
            else:
                r = right if right > left else left
            stack[sp - 1] = r
        elif op == NEG:
            stack[sp - 1] = -stack[sp - 1]
        elif op == ABS:
            stack[sp - 1] = abs(stack[sp - 1])
        elif op <= NE:
            sp -= 1
            right = stack[sp]
            left = stack[sp - 1]
            if op == LT:
                t = left < right
            elif op == LE:
                t = left <= right
            elif op == GT:
                t = left > right
            elif op == GE:
                t = left >= right
            elif op == EQ:
                t = left == right
            else:
                t = left != right
            stack[sp - 1] = 1.0 if t else 0.0
        elif op == NOT:
            stack[sp - 1] = 1.0 if stack[sp - 1] == 0.0 else 0.0
        elif op == JUMP_IF_FALSE:
            if stack[sp - 1] == 0.0:
                pc = a
                continue
            sp -= 1
        elif op == JUMP_IF_TRUE:
            if stack[sp - 1] != 0.0:
                pc = a
                continue
            sp -= 1
        elif op == IN_SET:
            found = _in_sorted(sets, set_bounds[a], set_bounds[a + 1], stack[sp - 1])
            stack[sp - 1] = 1.0 if found else 0.0
        else:  # STORE
            sp -= 1
            X[a, e] = stack[sp]
        pc += 1
    return stack[0] if sp > 0 else 1.0


@jit
def evaluate_batch(
    X: Any,
    ops: Any,
    args: Any,
    consts: Any,
    sets: Any,
    set_bounds: Any,
    prelude_end: int,
    eq_groups: Any,
    eq_keys: Any,
    eq_clauses: Any,
    threshold_groups: Any,
    threshold_values: Any,
    threshold_clauses: Any,
    always_clauses: Any,
    clause_rule: Any,
    clause_code: Any,
    rule_severity: Any,
    rule_score: Any,
    rule_shadow: Any,
    stack: Any,
    stamp: Any,
    hits: Any,
    hit_offsets: Any,
    severity: Any,
    score: Any,
    first: int,
    written: int,
) -> int:
    """Fill the outputs from event ``first`` on, with ``written`` hits already in ``hits``.

    Returns the number of hits written in all, or ``-1 - e`` when ``hits`` filled up during
    event ``e`` (grow it, keep ``hits[:hit_offsets[e]]``, clear ``stamp``, resume from ``e``).

    ``eq_groups`` rows: (column, first key, end); ``threshold_groups`` rows: (column, kind,
    first, end); ``clause_code`` rows: (first op, end) of the clause's remaining conjuncts.
    """
    n = X.shape[1]
    capacity = hits.shape[0]
    for e in range(first, n):
        hit_offsets[e] = written
        if prelude_end > 0:
            _run(X, e, ops, args, consts, sets, set_bounds, stack, 0, prelude_end)
        worst = 0
        total = 0
        mark = e + 1
        for g in range(eq_groups.shape[0]):
            v = X[eq_groups[g, 0], e]
            lo = eq_groups[g, 1]
            hi = eq_groups[g, 2]
            if not (v >= eq_keys[lo] and v <= eq_keys[hi - 1]):
                continue
            k = _lower_bound(eq_keys, lo, hi, v)
            while k < hi and eq_keys[k] == v:
                c = eq_clauses[k]
                k += 1
                r = clause_rule[c]
                if stamp[r] == mark:
                    continue
                if (
                    _run(
                        X,
                        e,
                        ops,
                        args,
                        consts,
                        sets,
                        set_bounds,
                        stack,
                        clause_code[c, 0],
                        clause_code[c, 1],
                    )
                    != 0.0
                ):
                    stamp[r] = mark
                    if written >= capacity:
                        return -1 - e
                    hits[written] = r
                    written += 1
                    if not rule_shadow[r]:
                        worst = max(worst, rule_severity[r])
                        total += rule_score[r]
        for g in range(threshold_groups.shape[0]):
            v = X[threshold_groups[g, 0], e]
            kind = threshold_groups[g, 1]
            lo = threshold_groups[g, 2]
            hi = threshold_groups[g, 3]
            if v != v:
                continue
            if kind == THRESHOLD_GT:
                if not threshold_values[lo] < v:
                    continue
                first = lo
                last = _lower_bound(threshold_values, lo, hi, v)
            elif kind == THRESHOLD_GE:
                if not threshold_values[lo] <= v:
                    continue
                first = lo
                last = _upper_bound(threshold_values, lo, hi, v)
            elif kind == THRESHOLD_LT:
                if not threshold_values[hi - 1] > v:
                    continue
                first = _upper_bound(threshold_values, lo, hi, v)
                last = hi
            else:
                if not threshold_values[hi - 1] >= v:
                    continue
                first = _lower_bound(threshold_values, lo, hi, v)
                last = hi
            for k in range(first, last):
                c = threshold_clauses[k]
                r = clause_rule[c]
                if stamp[r] == mark:
                    continue
                if (
                    _run(
                        X,
                        e,
                        ops,
                        args,
                        consts,
                        sets,
                        set_bounds,
                        stack,
                        clause_code[c, 0],
                        clause_code[c, 1],
                    )
                    != 0.0
                ):
                    stamp[r] = mark
                    if written >= capacity:
                        return -1 - e
                    hits[written] = r
                    written += 1
                    if not rule_shadow[r]:
                        worst = max(worst, rule_severity[r])
                        total += rule_score[r]
        for k in range(always_clauses.shape[0]):
            c = always_clauses[k]
            r = clause_rule[c]
            if stamp[r] == mark:
                continue
            if (
                _run(
                    X,
                    e,
                    ops,
                    args,
                    consts,
                    sets,
                    set_bounds,
                    stack,
                    clause_code[c, 0],
                    clause_code[c, 1],
                )
                != 0.0
            ):
                stamp[r] = mark
                if written >= capacity:
                    return -1 - e
                hits[written] = r
                written += 1
                if not rule_shadow[r]:
                    worst = max(worst, rule_severity[r])
                    total += rule_score[r]
        severity[e] = worst
        score[e] = total
    hit_offsets[n] = written
    return written
