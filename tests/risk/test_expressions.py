"""The ``when`` language: tokens, precedence, every operator, and the type checker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puhui.risk import FeatureType
from puhui.risk._expr import (
    Arith,
    Bool,
    Call,
    Compare,
    ExpressionError,
    Feature,
    InList,
    InValues,
    Logic,
    Neg,
    Node,
    Not,
    Num,
    Str,
    check,
    features_of,
    parse,
    tokenize,
)
from puhui.risk._lists import LIST_NAMES

SCHEMA = {
    "a": FeatureType.NUMBER,
    "b": FeatureType.NUMBER,
    "c": FeatureType.NUMBER,
    "customer.count_1h": FeatureType.NUMBER,
    "flag": FeatureType.BOOLEAN,
    "kind": FeatureType.CATEGORY,
    "device.id": FeatureType.CATEGORY,
}

a, b, c = Feature("a"), Feature("b"), Feature("c")


def _and(*items: Node) -> Logic:
    return Logic("and", items)


def _or(*items: Node) -> Logic:
    return Logic("or", items)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a + b * c", Arith("+", a, Arith("*", b, c))),
        ("a * b + c", Arith("+", Arith("*", a, b), c)),
        ("a - b - c", Arith("-", Arith("-", a, b), c)),
        ("a / b / c", Arith("/", Arith("/", a, b), c)),
        ("(a + b) * c", Arith("*", Arith("+", a, b), c)),
        ("-a * b", Arith("*", Neg(a), b)),
        ("- -a", Neg(Neg(a))),
        ("-3", Num(-3.0)),
        ("a - -3", Arith("-", a, Num(-3.0))),
        ("a + b > c", Compare(">", Arith("+", a, b), c)),
        ("a > b and b > c", _and(Compare(">", a, b), Compare(">", b, c))),
        (
            "a > 1 or b > 2 and c > 3",
            _or(Compare(">", a, Num(1)), _and(Compare(">", b, Num(2)), Compare(">", c, Num(3)))),
        ),
        (
            "(a > 1 or b > 2) and c > 3",
            _and(_or(Compare(">", a, Num(1)), Compare(">", b, Num(2))), Compare(">", c, Num(3))),
        ),
        ("not flag and a > 1", _and(Not(Feature("flag")), Compare(">", a, Num(1)))),
        ("not a > 1", Not(Compare(">", a, Num(1)))),
        ("not not flag", Not(Not(Feature("flag")))),
        ("flag or flag or flag", _or(Feature("flag"), Feature("flag"), Feature("flag"))),
        ("a == 1", Compare("==", a, Num(1))),
        ("a != 1", Compare("!=", a, Num(1))),
        ("a < 1", Compare("<", a, Num(1))),
        ("a <= 1.5", Compare("<=", a, Num(1.5))),
        ("a >= 1e3", Compare(">=", a, Num(1000.0))),
        ("a >= 1_000", Compare(">=", a, Num(1000.0))),
        ("a > .5", Compare(">", a, Num(0.5))),
        ('kind == "payment"', Compare("==", Feature("kind"), Str("payment"))),
        ("kind == 'p2p'", Compare("==", Feature("kind"), Str("p2p"))),
        ('kind == "say \\"hi\\""', Compare("==", Feature("kind"), Str('say "hi"'))),
        ("flag == true", Compare("==", Feature("flag"), Bool(True))),
        ("flag != false", Compare("!=", Feature("flag"), Bool(False))),
        ("a in [1, 2, -3,]", InValues(a, (Num(1), Num(2), Num(-3)), False)),
        ('kind not in ["a", "b"]', InValues(Feature("kind"), (Str("a"), Str("b")), True)),
        (
            'device.id in list("blocked_devices")',
            InList(Feature("device.id"), "blocked_devices", False),
        ),
        (
            'device.id not in list("allowed_devices")',
            InList(Feature("device.id"), "allowed_devices", True),
        ),
        ("abs(a) > 1", Compare(">", Call("abs", (a,)), Num(1))),
        ("min(a, b, c) < max(a, b)", Compare("<", Call("min", (a, b, c)), Call("max", (a, b)))),
        (
            "customer.count_1h >= 3",
            Compare(">=", Feature("customer.count_1h"), Num(3)),
        ),
        ("a > 1 and (b > 2)", _and(Compare(">", a, Num(1)), Compare(">", b, Num(2)))),
        ("true", Bool(True)),
    ],
)
def test_parse_builds_the_tree_with_precedence(text: str, tree: Node) -> None:
    assert parse(text) == tree


def test_positions_are_kept_on_every_node() -> None:
    tree = parse("a > 1 and kind == 'x'")
    assert isinstance(tree, Logic)
    first, second = tree.items
    assert isinstance(first, Compare) and first.pos == 2 and first.left.pos == 0
    assert isinstance(second, Compare) and second.pos == 15 and second.right.pos == 18


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("", "empty expression", 0),
        ("a >", "unexpected end of expression", 3),
        ("a > > 1", "unexpected op '>'", 4),
        ("a = 1", "unexpected character '=' (did you mean '=='?)", 2),
        ("a && b", "unexpected character '&' (did you mean 'and'?)", 2),
        ("a ! b", "unexpected character '!'", 2),
        ("a > 1 $", "unexpected character '$'", 6),
        ('kind == "abc', "unterminated string", 8),
        ("(a > 1", "expected ')', found end of expression", 6),
        ("a > 1)", "unexpected op ')'", 5),
        ("a < b < c", "comparisons do not chain", 6),
        ("a in b", "expected '[' or list(\"name\") after 'in'", 5),
        ("a in []", "empty list after 'in'", 5),
        ("a in [b]", "expected a literal value, found name 'b'", 6),
        ("a in [1 2]", "expected ',' or ']'", 8),
        ("sqrt(a) > 1", "unknown function 'sqrt'", 0),
        ("abs(a, b) > 1", "abs() takes 1 argument, got 2", 0),
        ("min(a) > 1", "min() takes 2 to 16 arguments, got 1", 0),
        ('list("x")', "list(\"name\") is only allowed after 'in'", 0),
        ("kind in list(x)", "expected a list name in quotes, found name 'x'", 13),
        ("a > 12abc", "malformed number '12a'", 4),
        ('kind == "\\q"', "unknown escape '\\q' in string", 9),
        ("a > 1e999", "number out of range", 4),
        ("a and", "unexpected end of expression", 5),
    ],
)
def test_syntax_errors_name_the_offending_offset(text: str, message: str, offset: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(text)
    assert message in caught.value.message
    assert caught.value.offset == offset


def test_nesting_is_limited() -> None:
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse("(" * 200 + "a" + ")" * 200)
    with pytest.raises(ExpressionError, match="nested deeper"):
        parse("not " * 200 + "flag")
    with pytest.raises(ExpressionError, match="longer than"):
        tokenize("a" * 10_001)


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ('a > "x"', "cannot compare number with string using '>'", 2),
        ('kind < "x"', "'<' compares numbers, not strings", 5),
        ("flag > true", "'>' compares numbers, not booleans", 5),
        ("a == flag", "cannot compare number with boolean", 2),
        ("a + flag > 1", "'+' needs a number, got a boolean", 4),
        ('-kind == "x"', "'-' needs a number, got a string", 1),
        ("abs(kind) > 1", "abs() needs a number, got a string", 4),
        ("a and flag", "'and' needs a boolean, got a number", 0),
        ("not a", "'not' needs a boolean, got a number", 4),
        ("missing > 1", "unknown feature 'missing'", 0),
        ("customer.count_24h > 1", "unknown feature 'customer.count_24h'", 0),
        ('kind in ["a", 1]', "list holds a number but is tested against a string", 14),
        ('device.id in list("blocked_phones")', "unknown list 'blocked_phones'", 18),
        ('a in list("blocked_devices")', "list membership needs a category feature", 0),
        ('"x" in list("blocked_devices")', "only a feature name can be looked up", 4),
    ],
)
def test_type_errors_are_caught_at_compile_time(text: str, message: str, offset: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        check(parse(text), SCHEMA, LIST_NAMES)
    assert message in caught.value.message
    assert caught.value.offset == offset


def test_features_of_lists_each_feature_once_in_order() -> None:
    tree = parse('b > a and kind == "x" or a + b > c and device.id in list("blocked_devices")')
    assert features_of(tree) == ["b", "a", "kind", "c", "device.id"]


# --- round trip: any tree, printed with as few parentheses as precedence allows, parses back --

_LEVEL = {"or": 1, "and": 2, "not": 3, "compare": 4, "+": 5, "-": 5, "*": 6, "/": 6}
_UNARY, _PRIMARY = 7, 8


def _wrap(node: Node, floor: int) -> str:
    text, level = _print(node)
    return text if level >= floor else f"({text})"


def _print(node: Node) -> tuple[str, int]:
    match node:
        case Num(v):
            return repr(v), (_UNARY if v < 0 or repr(v).startswith("-") else _PRIMARY)
        case Str(v):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"', _PRIMARY
        case Bool(v):
            return ("true" if v else "false"), _PRIMARY
        case Feature(name):
            return name, _PRIMARY
        case Call(function, args):
            return f"{function}({', '.join(_print(arg)[0] for arg in args)})", _PRIMARY
        case Neg(operand):
            return "-" + _wrap(operand, _UNARY), _UNARY
        case Arith(op, left, right):
            level = _LEVEL[op]
            return f"{_wrap(left, level)} {op} {_wrap(right, level + 1)}", level
        case Compare(op, left, right):
            return f"{_wrap(left, 5)} {op} {_wrap(right, 5)}", 4
        case InValues(operand, values, negated):
            listed = ", ".join(_print(v)[0] for v in values)
            return f"{_wrap(operand, 5)} {'not in' if negated else 'in'} [{listed}]", 4
        case InList(operand, name, negated):
            return f'{_wrap(operand, 5)} {"not in" if negated else "in"} list("{name}")', 4
        case Not(operand):
            return "not " + _wrap(operand, 3), 3
        case Logic(op, items):
            level = _LEVEL[op]
            return f" {op} ".join(_wrap(item, level + 1) for item in items), level
    raise AssertionError(node)


_numbers = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(Num)
_literals = st.one_of(_numbers, st.text("ab\"\\ '", max_size=4).map(Str), st.booleans().map(Bool))
_leaves = st.one_of(_literals, st.sampled_from(["a", "b.c", "d_1.e2"]).map(Feature))


def _trees(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    not_neg_num = children.filter(lambda n: not isinstance(n, Num))
    return st.one_of(
        not_neg_num.map(Neg),
        st.builds(Arith, st.sampled_from(["+", "-", "*", "/"]), children, children),
        st.builds(Call, st.just("abs"), st.tuples(children)),
        st.builds(
            Call,
            st.sampled_from(["min", "max"]),
            st.lists(children, min_size=2, max_size=3).map(tuple),
        ),
        st.builds(Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), children, children),
        st.builds(
            InValues,
            children,
            st.lists(_literals, min_size=1, max_size=3).map(tuple),
            st.booleans(),
        ),
        st.builds(InList, children, st.sampled_from(["blocked_ips", "x"]), st.booleans()),
        children.map(Not),
        st.builds(
            Logic,
            st.just("and"),
            st.lists(
                children.filter(lambda n: not (isinstance(n, Logic) and n.op == "and")),
                min_size=2,
                max_size=3,
            ).map(tuple),
        ),
        st.builds(
            Logic,
            st.just("or"),
            st.lists(
                children.filter(lambda n: not (isinstance(n, Logic) and n.op == "or")),
                min_size=2,
                max_size=3,
            ).map(tuple),
        ),
    )


@settings(max_examples=500, deadline=None)
@given(tree=st.recursive(_leaves, _trees, max_leaves=12))
def test_printed_trees_parse_back(tree: Node) -> None:
    text = _print(tree)[0]
    assert parse(text) == tree, text
