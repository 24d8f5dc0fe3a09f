"""The ``when`` expression language: tokenizer, Pratt parser, syntax tree and type checker.

Grammar, loosest binding first::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := sum [ ("=="|"!="|"<"|"<="|">"|">=") sum
                    | ["not"] "in" ( "[" literal ("," literal)* [","] "]"
                                   | "list" "(" string ")" ) ]
    sum      := term (("+"|"-") term)*
    term     := unary (("*"|"/") unary)*
    unary    := "-" unary | primary
    primary  := number | string | "true" | "false" | name | name "(" expr ("," expr)* ")"
              | "(" expr ")"

Comparisons do not chain (``a < b < c`` is an error). Names may be dotted
(``customer.count_1h``). Functions: ``abs(x)``, ``min(x, y, ...)``, ``max(x, y, ...)``.
Division by zero is defined: ``x / 0`` is ``0``.

Every error is a ``ExpressionError`` carrying the offset in the expression text; the ruleset
loader turns it into a ``RuleParseError`` with the file's line and column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

expression_chars_max = 10_000
"""Longest ``when`` expression read (unit: characters)."""

expression_depth_max = 100
"""Deepest nesting of an expression (unit: nested sub-expressions)."""

in_values_max = 1_000
"""Most literals in one ``x in [...]`` list (unit: values)."""


class FeatureType(StrEnum):
    """What kind of values a feature holds in a batch."""

    NUMBER = "number"
    """int64 or float64 (compared as float64)."""
    BOOLEAN = "boolean"
    """bool."""
    CATEGORY = "category"
    """A numpy unicode array (``dtype('<U…')``); compared with ``==``, ``!=``, ``in``."""


class ExpressionError(Exception):
    """An error in one expression, at ``offset`` characters into its text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d[\d_]*(?:\.\d[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|\(|\)|\[|\]|,)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    """``number``, ``string``, ``name``, ``keyword``, ``op`` or ``end``."""
    text: str
    offset: int


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token."""
    if len(text) > expression_chars_max:
        raise ExpressionError(f"expression longer than {expression_chars_max} characters", 0)
    tokens: list[Token] = []
    offset = 0
    while offset < len(text):
        match = _TOKEN.match(text, offset)
        if match is None:
            char = text[offset]
            if char in "\"'":
                raise ExpressionError("unterminated string", offset)
            if char in "=!&|":
                hint = {"=": "'=='", "!": "'!=' or 'not'", "&": "'and'", "|": "'or'"}[char]
                raise ExpressionError(
                    f"unexpected character {char!r} (did you mean {hint}?)", offset
                )
            raise ExpressionError(f"unexpected character {char!r}", offset)
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            word = match.group()
            if kind == "name" and word in _KEYWORDS:
                kind = "keyword"
            elif kind == "number" and match.end() < len(text):
                follower = text[match.end()]
                if follower.isalpha() or follower == "_":
                    raise ExpressionError(f"malformed number {word + follower!r}", offset)
            tokens.append(Token(kind, word, offset))
        offset = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _unquote(token: Token) -> str:
    body = token.text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise ExpressionError(
                    f"unknown escape '\\{escaped}' in string", token.offset + 1 + i
                )
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


# --- syntax tree (positions do not take part in equality: equal trees are shared) -----------


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Str:
    value: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Arith:
    op: str
    """``+``, ``-``, ``*`` or ``/``."""
    left: Node
    right: Node
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    """``abs``, ``min`` or ``max``."""
    args: tuple[Node, ...]
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    """``==``, ``!=``, ``<``, ``<=``, ``>`` or ``>=``."""
    left: Node
    right: Node
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class InValues:
    operand: Node
    values: tuple[Num | Str | Bool, ...]
    negated: bool
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class InList:
    operand: Node
    list_name: str
    negated: bool
    pos: int = field(default=0, compare=False)
    name_pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Logic:
    op: str
    """``and`` or ``or``; ``items`` has two or more entries (flattened)."""
    items: tuple[Node, ...]
    pos: int = field(default=0, compare=False)


Node = Num | Str | Bool | Feature | Neg | Arith | Call | Compare | InValues | InList | Not | Logic

FUNCTIONS: Mapping[str, tuple[int, int]] = {"abs": (1, 1), "min": (2, 16), "max": (2, 16)}
"""Function name → (fewest, most) arguments."""

_BINDING: Mapping[str, int] = {"+": 1, "-": 1, "*": 2, "/": 2}
"""Binding power of the arithmetic operators (higher binds tighter)."""
_COMPARE_OPS = frozenset({"==", "!=", "<", "<=", ">", ">="})


# --- parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.at = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def is_(self, text: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "keyword") and token.text == text

    def expect(self, text: str, what: str) -> Token:
        if not self.is_(text):
            raise ExpressionError(
                f"expected {what}, found {_describe(self.peek())}", self.peek().offset
            )
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression", 0)
        node = self.expression()
        token = self.peek()
        if token.kind != "end":
            raise ExpressionError(f"unexpected {_describe(token)}", token.offset)
        return node

    def expression(self) -> Node:
        self.depth += 1
        if self.depth > expression_depth_max:
            raise ExpressionError(
                f"expression nested deeper than {expression_depth_max}", self.peek().offset
            )
        try:
            return self.logic("or")
        finally:
            self.depth -= 1

    def logic(self, op: str) -> Node:
        first = self.peek()
        item = self.logic("and") if op == "or" else self.negation()
        items = [item]
        while self.is_(op):
            self.take()
            items.append(self.logic("and") if op == "or" else self.negation())
        if len(items) == 1:
            return item
        flat: list[Node] = []
        for each in items:
            flat.extend(each.items if isinstance(each, Logic) and each.op == op else (each,))
        return Logic(op, tuple(flat), first.offset)

    def negation(self) -> Node:
        if self.is_("not"):
            token = self.take()
            self.depth += 1
            if self.depth > expression_depth_max:
                raise ExpressionError(
                    f"expression nested deeper than {expression_depth_max}", token.offset
                )
            try:
                return Not(self.negation(), token.offset)
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> Node:
        left = self.binary(0)
        token = self.peek()
        if token.kind == "op" and token.text in _COMPARE_OPS:
            self.take()
            node: Node = Compare(token.text, left, self.binary(0), token.offset)
        elif self.is_("in") or (
            self.is_("not")
            and self.tokens[self.at + 1].kind == "keyword"
            and self.tokens[self.at + 1].text == "in"
        ):
            negated = self.is_("not")
            if negated:
                self.take()
            self.take()
            node = self.membership(left, negated, token.offset)
        else:
            return left
        after = self.peek()
        if (after.kind == "op" and after.text in _COMPARE_OPS) or after.text == "in":
            raise ExpressionError(
                f"comparisons do not chain: use 'and' ({_describe(after)})", after.offset
            )
        return node

    def membership(self, operand: Node, negated: bool, offset: int) -> Node:
        token = self.peek()
        if token.kind == "name" and token.text == "list":
            self.take()
            self.expect("(", "'(' after 'list'")
            name = self.take()
            if name.kind != "string":
                raise ExpressionError(
                    f"expected a list name in quotes, found {_describe(name)}", name.offset
                )
            self.expect(")", "')' after the list name")
            return InList(operand, _unquote(name), negated, offset, name.offset)
        self.expect("[", "'[' or list(\"name\") after 'in'")
        values: list[Num | Str | Bool] = []
        while not self.is_("]"):
            values.append(self.literal())
            if len(values) > in_values_max:
                raise ExpressionError(
                    f"more than {in_values_max} values in one list", self.peek().offset
                )
            if not self.is_("]"):
                self.expect(",", "',' or ']'")
        self.take()
        if not values:
            raise ExpressionError("empty list after 'in'", token.offset)
        return InValues(operand, tuple(values), negated, offset)

    def literal(self) -> Num | Str | Bool:
        token = self.take()
        if token.kind == "op" and token.text == "-" and self.peek().kind == "number":
            number = self.take()
            return Num(-_number(number), token.offset)
        if token.kind == "number":
            return Num(_number(token), token.offset)
        if token.kind == "string":
            return Str(_unquote(token), token.offset)
        if token.kind == "keyword" and token.text in ("true", "false"):
            return Bool(token.text == "true", token.offset)
        raise ExpressionError(f"expected a literal value, found {_describe(token)}", token.offset)

    def binary(self, floor: int) -> Node:
        left = self.unary()
        while True:
            token = self.peek()
            power = _BINDING.get(token.text, 0) if token.kind == "op" else 0
            if power <= floor:
                return left
            self.take()
            left = Arith(token.text, left, self.binary(power), token.offset)

    def unary(self) -> Node:
        if self.is_("-"):
            token = self.take()
            self.depth += 1
            if self.depth > expression_depth_max:
                raise ExpressionError(
                    f"expression nested deeper than {expression_depth_max}", token.offset
                )
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            if isinstance(operand, Num):
                return Num(-operand.value, token.offset)
            return Neg(operand, token.offset)
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Num(_number(token), token.offset)
        if token.kind == "string":
            return Str(_unquote(token), token.offset)
        if token.kind == "keyword" and token.text in ("true", "false"):
            return Bool(token.text == "true", token.offset)
        if token.kind == "op" and token.text == "(":
            node = self.expression()
            self.expect(")", "')'")
            return node
        if token.kind == "name":
            if self.is_("("):
                return self.call(token)
            return Feature(token.text, token.offset)
        raise ExpressionError(f"unexpected {_describe(token)}", token.offset)

    def call(self, name: Token) -> Node:
        if name.text == "list":
            raise ExpressionError("list(\"name\") is only allowed after 'in'", name.offset)
        if name.text not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(f"unknown function {name.text!r} (known: {known})", name.offset)
        self.take()
        args: list[Node] = []
        while not self.is_(")"):
            args.append(self.expression())
            if not self.is_(")"):
                self.expect(",", "',' or ')'")
        self.take()
        fewest, most = FUNCTIONS[name.text]
        if not fewest <= len(args) <= most:
            wanted = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise ExpressionError(
                f"{name.text}() takes {wanted} argument{'s' if most > 1 else ''}, got {len(args)}",
                name.offset,
            )
        return Call(name.text, tuple(args), name.offset)


def _number(token: Token) -> float:
    value = float(token.text.replace("_", ""))
    if not math.isfinite(value):
        raise ExpressionError(f"number out of range: {token.text}", token.offset)
    return value


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "end of expression"
    return f"{token.kind} {token.text!r}"


def parse(text: str) -> Node:
    """The syntax tree of one expression (``ExpressionError`` on error)."""
    return _Parser(text).parse()


# --- types ----------------------------------------------------------------------------------


class Type(StrEnum):
    NUMBER = "number"
    BOOLEAN = "boolean"
    STRING = "string"


_FEATURE_TYPES = {
    FeatureType.NUMBER: Type.NUMBER,
    FeatureType.BOOLEAN: Type.BOOLEAN,
    FeatureType.CATEGORY: Type.STRING,
}


def check(node: Node, schema: Mapping[str, FeatureType], lists: Collection[str]) -> Type:
    """The type of ``node``; ``ExpressionError`` where types do not fit."""
    match node:
        case Num():
            return Type.NUMBER
        case Str():
            return Type.STRING
        case Bool():
            return Type.BOOLEAN
        case Feature(name):
            if name not in schema:
                raise ExpressionError(f"unknown feature {name!r}", node.pos)
            return _FEATURE_TYPES[FeatureType(schema[name])]
        case Neg(operand):
            _want(operand, Type.NUMBER, "'-'", schema, lists)
            return Type.NUMBER
        case Arith(op, left, right):
            _want(left, Type.NUMBER, f"'{op}'", schema, lists)
            _want(right, Type.NUMBER, f"'{op}'", schema, lists)
            return Type.NUMBER
        case Call(function, args):
            for arg in args:
                _want(arg, Type.NUMBER, f"{function}()", schema, lists)
            return Type.NUMBER
        case Compare(op, left, right):
            left_type = check(left, schema, lists)
            right_type = check(right, schema, lists)
            if left_type != right_type:
                raise ExpressionError(
                    f"cannot compare {left_type} with {right_type} using '{op}'", node.pos
                )
            if op not in ("==", "!=") and left_type != Type.NUMBER:
                raise ExpressionError(f"'{op}' compares numbers, not {left_type}s", node.pos)
            return Type.BOOLEAN
        case InValues(operand, values):
            operand_type = check(operand, schema, lists)
            for value in values:
                value_type = check(value, schema, lists)
                if value_type != operand_type:
                    raise ExpressionError(
                        f"list holds a {value_type} but is tested against a {operand_type}",
                        value.pos,
                    )
            return Type.BOOLEAN
        case InList(operand, list_name):
            if list_name not in lists:
                known = ", ".join(sorted(lists)) or "none"
                raise ExpressionError(f"unknown list {list_name!r} (known: {known})", node.name_pos)
            if not isinstance(operand, Feature):
                raise ExpressionError("only a feature name can be looked up in a list", node.pos)
            if check(operand, schema, lists) != Type.STRING:
                raise ExpressionError(
                    f"list membership needs a category feature; {operand.name!r} is not one",
                    operand.pos,
                )
            return Type.BOOLEAN
        case Not(operand):
            _want(operand, Type.BOOLEAN, "'not'", schema, lists)
            return Type.BOOLEAN
        case Logic(op, items):
            for item in items:
                _want(item, Type.BOOLEAN, f"'{op}'", schema, lists)
            return Type.BOOLEAN
    raise AssertionError(node)  # pragma: no cover


def _want(
    node: Node, wanted: Type, where: str, schema: Mapping[str, FeatureType], lists: Collection[str]
) -> None:
    found = check(node, schema, lists)
    if found != wanted:
        raise ExpressionError(f"{where} needs a {wanted}, got a {found}", node.pos)


def features_of(node: Node) -> list[str]:
    """Feature names ``node`` reads, in first-use order, each once."""
    seen: dict[str, None] = {}
    stack: list[Node] = [node]
    while stack:
        each = stack.pop()
        match each:
            case Feature(name):
                seen.setdefault(name)
            case Neg(operand) | Not(operand):
                stack.append(operand)
            case Arith(_, left, right) | Compare(_, left, right):
                stack.extend((right, left))
            case Call(_, args):
                stack.extend(reversed(args))
            case InValues(operand) | InList(operand):
                stack.append(operand)
            case Logic(_, items):
                stack.extend(reversed(items))
    return list(seen)


def lists_of(node: Node) -> set[str]:
    """List names ``node`` looks values up in."""
    found: set[str] = set()
    stack: list[Node] = [node]
    while stack:
        each = stack.pop()
        match each:
            case InList(_, list_name):
                found.add(list_name)
            case Neg(operand) | Not(operand) | InValues(operand):
                stack.append(operand)
            case Arith(_, left, right) | Compare(_, left, right):
                stack.extend((left, right))
            case Call(_, args):
                stack.extend(args)
            case Logic(_, items):
                stack.extend(items)
    return found


# --- arithmetic shared by the compiler (constant folding) and every evaluator ----------------


def divide(left: float, right: float) -> float:
    """``left / right``, with ``x / 0 == 0`` (a rule never crashes on a zero denominator)."""
    return 0.0 if right == 0.0 else left / right


def minimum(left: float, right: float) -> float:
    return right if right < left else left


def maximum(left: float, right: float) -> float:
    return right if right > left else left
