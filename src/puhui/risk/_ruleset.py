"""Ruleset files (TOML): read, validate, type-check, compile; the public face of the rules.

A file::

    name = "payments"
    version = "2026.11.26-1"

    [thresholds]          # optional: the summed score (0..1000) that escalates the decision
    challenge = 300
    review = 600
    reject = 900

    [[rule]]
    id = "ato-new-device-drain"
    description = "New device, password reset in the last hour, large withdrawal"
    when = 'device.is_new and customer.since_password_reset_s < 3600 and amount > 500000'
    action = "reject"           # or: score = 250 (may be negative)
    priority = 100
    status = "active"           # active | shadow | off
    owner = "fraud-ops"
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ._decide import Decision
from ._errors import RuleParseError
from ._expr import ExpressionError, FeatureType, Node, check, features_of, parse
from ._lists import LIST_NAMES
from ._source import Lines, RuleLocation, locate_rules, read_string

ruleset_bytes_max = 64 * 1024 * 1024
"""Largest ruleset file read (unit: bytes)."""

rules_max = 100_000
"""Most rules in one ruleset (unit: rules)."""

rule_id_chars_max = 100
text_chars_max = 2_000
"""Longest name, version, description or owner (unit: characters)."""

score_abs_max = 1_000
priority_abs_max = 1_000_000
version_hash_chars = 12
"""Hex digits of the file's sha256 in a ruleset version (``<declared>+<hash>``)."""

_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_HEADER_KEYS = frozenset({"name", "version", "description", "thresholds", "rule"})
_RULE_KEYS = frozenset(
    {"id", "description", "when", "action", "score", "priority", "status", "owner"}
)
_THRESHOLD_KEYS = ("challenge", "review", "reject")


class RuleStatus(StrEnum):
    ACTIVE = "active"
    """Evaluated; its hits decide."""
    SHADOW = "shadow"
    """Evaluated; its hits are recorded apart and never change a decision."""
    OFF = "off"
    """Not evaluated."""


SEVERITY: Mapping[Decision, int] = {
    Decision.ACCEPT: 0,
    Decision.CHALLENGE: 1,
    Decision.REVIEW: 2,
    Decision.REJECT: 3,
}
"""How severe each decision is; a batch's decision is the most severe that applies."""

DECISIONS: tuple[Decision, ...] = tuple(sorted(SEVERITY, key=SEVERITY.__getitem__))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Summed-score thresholds (inclusive): a score at or above one escalates the decision."""

    challenge: int | None = None
    review: int | None = None
    reject: int | None = None

    def decision(self, score: int) -> Decision:
        for decision, threshold in (
            (Decision.REJECT, self.reject),
            (Decision.REVIEW, self.review),
            (Decision.CHALLENGE, self.challenge),
        ):
            if threshold is not None and score >= threshold:
                return decision
        return Decision.ACCEPT


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    when: str
    action: Decision | None
    """What a hit asks for; ``None`` for a score rule."""
    score: int | None
    """What a hit adds to the score; ``None`` for an action rule."""
    priority: int
    """Orders a decision's reasons (highest first); never changes the decision."""
    status: RuleStatus
    owner: str
    features: tuple[str, ...]
    """Features the expression reads, in first-use order (their values are a hit's reason)."""
    line: int
    """Line of the rule's ``[[rule]]`` header in its file."""


@dataclass(frozen=True, slots=True)
class ParsedRuleset:
    name: str
    declared_version: str
    version: str
    description: str
    thresholds: Thresholds
    rules: tuple[Rule, ...]
    trees: tuple[Node, ...]
    """The syntax tree of each rule's ``when``, parallel to ``rules``."""
    schema: Mapping[str, FeatureType]
    lists: frozenset[str]


def read_ruleset(
    data: bytes | str,
    schema: Mapping[str, FeatureType],
    *,
    source: str = "<string>",
    lists: Collection[str] = LIST_NAMES,
) -> ParsedRuleset:
    """Parse and check a ruleset file's content (``RuleParseError`` on any problem)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > ruleset_bytes_max:
        raise RuleParseError(f"file larger than {ruleset_bytes_max} bytes", source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RuleParseError(f"not UTF-8 ({error.reason})", source=source) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line, column = _toml_position(str(error))
        raise RuleParseError(
            f"not valid TOML: {_strip_position(str(error))}",
            source=source,
            line=line,
            column=column,
        ) from None
    return _Reader(text, document, schema, frozenset(lists), source).ruleset(raw)


def _toml_position(message: str) -> tuple[int | None, int | None]:
    match = re.search(r"line (\d+), column (\d+)", message)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def _strip_position(message: str) -> str:
    return re.sub(r"\s*\(at (?:line \d+, column \d+|end of document)\)", "", message)


class _Reader:
    def __init__(
        self,
        text: str,
        document: dict[str, Any],
        schema: Mapping[str, FeatureType],
        lists: frozenset[str],
        source: str,
    ) -> None:
        self.text = text
        self.document = document
        self.schema = {name: FeatureType(kind) for name, kind in schema.items()}
        self.lists = lists
        self.source = source
        self.locations: list[RuleLocation] = locate_rules(text)
        self.lines = Lines(text)

    def fail(
        self, message: str, *, rule_id: str | None = None, offset: int | None = None
    ) -> RuleParseError:
        line = column = None
        if offset is not None:
            line, column = self.lines.line_column(offset)
        return RuleParseError(
            message, source=self.source, rule_id=rule_id, line=line, column=column
        )

    def ruleset(self, raw: bytes) -> ParsedRuleset:
        document = self.document
        unknown = sorted(set(document) - _HEADER_KEYS)
        if unknown:
            raise self.fail(
                f"unknown key {unknown[0]!r} in the header", offset=self._key(unknown[0])
            )
        name = self.text_field(document, "name", "the header", required=True)
        declared = self.text_field(document, "version", "the header", required=True)
        description = self.text_field(document, "description", "the header", required=False)
        thresholds = self.thresholds(document.get("thresholds"))
        rules_raw = document.get("rule", [])
        if not isinstance(rules_raw, list) or not all(isinstance(r, dict) for r in rules_raw):
            raise self.fail("'rule' must be an array of tables ([[rule]])")
        if len(rules_raw) > rules_max:
            raise self.fail(f"more than {rules_max} rules")
        if len(self.locations) != len(rules_raw):
            # Rules written another way (inline tables): positions are not available.
            self.locations = [RuleLocation(None, None)] * len(rules_raw)
        rules: list[Rule] = []
        trees: list[Node] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(rules_raw):
            rule, tree = self.rule(table, self.locations[index])
            if rule.id in seen:
                raise self.fail(
                    f"duplicate rule id (first defined on line {seen[rule.id]})",
                    rule_id=rule.id,
                    offset=self.locations[index].header_offset,
                )
            seen[rule.id] = rule.line
            rules.append(rule)
            trees.append(tree)
        digest = hashlib.sha256(raw).hexdigest()[:version_hash_chars]
        return ParsedRuleset(
            name=name,
            declared_version=declared,
            version=f"{declared}+{digest}",
            description=description,
            thresholds=thresholds,
            rules=tuple(rules),
            trees=tuple(trees),
            schema=dict(self.schema),
            lists=self.lists,
        )

    def _key(self, key: str) -> int | None:
        match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*[=.]", self.text, re.MULTILINE)
        return match.start() if match else None

    def text_field(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        *,
        required: bool,
        rule_id: str | None = None,
        offset: int | None = None,
    ) -> str:
        if key not in table:
            if required:
                raise self.fail(f"missing '{key}' in {where}", rule_id=rule_id, offset=offset)
            return ""
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"'{key}' must be a non-empty string", rule_id=rule_id, offset=offset)
        if len(value) > text_chars_max:
            raise self.fail(
                f"'{key}' longer than {text_chars_max} characters", rule_id=rule_id, offset=offset
            )
        return value

    def thresholds(self, table: Any) -> Thresholds:
        if table is None:
            return Thresholds()
        offset = self._key("thresholds")
        if offset is None:
            match = re.search(r"^[ \t]*\[[ \t]*thresholds[ \t]*\]", self.text, re.MULTILINE)
            offset = match.start() if match else None
        if not isinstance(table, dict):
            raise self.fail("'thresholds' must be a table", offset=offset)
        unknown = sorted(set(table) - set(_THRESHOLD_KEYS))
        if unknown:
            raise self.fail(
                f"unknown threshold {unknown[0]!r} (known: challenge, review, reject)",
                offset=offset,
            )
        values: dict[str, int] = {}
        for key in _THRESHOLD_KEYS:
            if key in table:
                value = table[key]
                if type(value) is not int or not 0 <= value <= score_abs_max:
                    raise self.fail(
                        f"threshold '{key}' must be an integer from 0 to {score_abs_max}",
                        offset=offset,
                    )
                values[key] = value
        ordered = [values[key] for key in _THRESHOLD_KEYS if key in values]
        if ordered != sorted(ordered):
            raise self.fail(
                "thresholds must not decrease from challenge to review to reject", offset=offset
            )
        return Thresholds(**values)

    def rule(self, table: dict[str, Any], location: RuleLocation) -> tuple[Rule, Node]:
        offset = location.header_offset
        raw_id = table.get("id")
        rule_id = raw_id if isinstance(raw_id, str) else None
        if raw_id is None:
            raise self.fail("rule without 'id'", offset=offset)
        if rule_id is None or len(rule_id) > rule_id_chars_max or not _RULE_ID.fullmatch(rule_id):
            raise self.fail(
                f"'id' must be letters, digits and _ . : - (at most {rule_id_chars_max})",
                rule_id=rule_id,
                offset=offset,
            )
        unknown = sorted(set(table) - _RULE_KEYS)
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r}", rule_id=rule_id, offset=offset)
        where = "the rule"
        description = self.text_field(
            table, "description", where, required=True, rule_id=rule_id, offset=offset
        )
        when = self.text_field(table, "when", where, required=True, rule_id=rule_id, offset=offset)
        owner = self.text_field(
            table, "owner", where, required=True, rule_id=rule_id, offset=offset
        )
        status_text = self.text_field(
            table, "status", where, required=True, rule_id=rule_id, offset=offset
        )
        try:
            status = RuleStatus(status_text)
        except ValueError:
            raise self.fail(
                f"'status' must be active, shadow or off, not {status_text!r}",
                rule_id=rule_id,
                offset=offset,
            ) from None
        priority = table.get("priority")
        if priority is None:
            raise self.fail("missing 'priority' in the rule", rule_id=rule_id, offset=offset)
        if type(priority) is not int or abs(priority) > priority_abs_max:
            raise self.fail(
                f"'priority' must be an integer from -{priority_abs_max} to {priority_abs_max}",
                rule_id=rule_id,
                offset=offset,
            )
        action: Decision | None = None
        score: int | None = None
        if ("action" in table) == ("score" in table):
            raise self.fail(
                "a rule has either 'action' or 'score' (exactly one)",
                rule_id=rule_id,
                offset=offset,
            )
        if "action" in table:
            try:
                action = Decision(table["action"])
            except ValueError:
                raise self.fail(
                    "'action' must be accept, challenge, review or reject",
                    rule_id=rule_id,
                    offset=offset,
                ) from None
        else:
            score = table["score"]
            if type(score) is not int or abs(score) > score_abs_max:
                raise self.fail(
                    f"'score' must be an integer from -{score_abs_max} to {score_abs_max}",
                    rule_id=rule_id,
                    offset=offset,
                )
        try:
            tree = parse(when)
            check_type = check(tree, self.schema, self.lists)
            if check_type != "boolean":
                raise ExpressionError(f"'when' must be true or false, not a {check_type}", 0)
        except ExpressionError as problem:
            raise self.fail(
                problem.message,
                rule_id=rule_id,
                offset=self._offset(location.when_offset, when, problem.offset, offset),
            ) from None
        line = self.lines.line_column(offset)[0] if offset is not None else 0
        rule = Rule(
            id=rule_id,
            description=description,
            when=when,
            action=action,
            score=score,
            priority=priority,
            status=status,
            owner=owner,
            features=tuple(features_of(tree)),
            line=line,
        )
        return rule, tree

    def _offset(self, start: int | None, when: str, index: int, fallback: int | None) -> int | None:
        """The file offset of ``when[index]``; ``fallback`` where the string cannot be found."""
        if start is None:
            return fallback
        try:
            string = read_string(self.text, start)
        except (ValueError, IndexError):
            return fallback
        return string.file_offset(index) if string.value == when else fallback
