"""Ruleset files: what is valid, and errors that name the file, the rule, the line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui.errors import PuhuiError
from puhui.risk import (
    Decision,
    FeatureType,
    RuleParseError,
    RuleStatus,
    Thresholds,
    load_ruleset,
    parse_ruleset,
)

from .reference import rule, ruleset_text

SCHEMA = {
    "amount": FeatureType.NUMBER,
    "count_1h": FeatureType.NUMBER,
    "device.is_new": FeatureType.BOOLEAN,
    "device.id": FeatureType.CATEGORY,
    "kind": FeatureType.CATEGORY,
}

GOOD = """\
name = "payments"
version = "2026.11.26-1"
description = "rules in front of every payment"

[thresholds]
challenge = 300
review = 600
reject = 900

[[rule]]
id = "big-withdrawal"
description = "A large withdrawal"
when = 'kind == "withdrawal" and amount > 500000'
action = "review"
priority = 10
status = "active"
owner = "fraud-ops"

[[rule]]
id = "velocity"
description = "Many payments in an hour"
when = \"\"\"
  count_1h >= 10
  and device.is_new
\"\"\"
score = -20
priority = 5
status = "shadow"
owner = "fraud-ops"

[[rule]]
id = "retired"
description = "Kept for the record"
when = "amount > 0"
action = "reject"
priority = 0
status = "off"
owner = "fraud-ops"
"""


def _error(text: str, source: str = "rules.toml") -> RuleParseError:
    with pytest.raises(RuleParseError) as caught:
        parse_ruleset(text, SCHEMA, source=source)
    return caught.value


def test_a_good_file_loads_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(GOOD, encoding="utf-8")
    ruleset = load_ruleset(path, SCHEMA)
    assert ruleset.name == "payments"
    assert ruleset.declared_version == "2026.11.26-1"
    assert ruleset.version.startswith("2026.11.26-1+") and len(ruleset.version) == 13 + 12
    assert ruleset.thresholds == Thresholds(challenge=300, review=600, reject=900)
    first, second, third = ruleset.rules
    assert first.id == "big-withdrawal" and first.action == Decision.REVIEW
    assert first.score is None and first.priority == 10 and first.owner == "fraud-ops"
    assert first.features == ("kind", "amount") and first.line == 10
    assert second.score == -20 and second.action is None
    assert second.status == RuleStatus.SHADOW and second.line == 19
    assert third.status == RuleStatus.OFF
    assert [r.id for r in ruleset.evaluated_rules] == ["big-withdrawal", "velocity"]
    assert ruleset.features == ("amount", "count_1h", "device.is_new", "kind")


def test_version_hashes_the_bytes() -> None:
    one = parse_ruleset(GOOD, SCHEMA)
    same = parse_ruleset(GOOD.encode("utf-8"), SCHEMA)
    other = parse_ruleset(GOOD + "\n# a comment\n", SCHEMA)
    assert one.version == same.version
    assert other.version != one.version
    assert other.declared_version == one.declared_version


def test_an_empty_ruleset_is_valid() -> None:
    ruleset = parse_ruleset('name = "empty"\nversion = "0"\n', SCHEMA)
    assert ruleset.rules == () and ruleset.thresholds == Thresholds()


def test_rule_parse_error_is_a_puhui_error_with_its_facts() -> None:
    error = _error(GOOD.replace("amount > 500000", "amount > > 500000"))
    assert isinstance(error, PuhuiError) and error.code == "risk_rule_invalid"
    assert (error.source, error.rule_id, error.line, error.column) == (
        "rules.toml",
        "big-withdrawal",
        13,
        43,
    )
    assert str(error) == (
        "risk_rule_invalid: rules.toml:13:43: rule 'big-withdrawal': unexpected op '>'"
    )
    assert error.details["line"] == 13


@pytest.mark.parametrize(
    ("old", "new", "rule_id", "line", "column", "message"),
    [
        # a single-line literal string
        ("amount > 500000'", "amount > 500000 and'", "big-withdrawal", 13, 53, "unexpected end"),
        # a type error points at the operator
        ("amount > 500000", 'amount > "x"', "big-withdrawal", 13, 41, "cannot compare number"),
        # an unknown feature
        ("amount > 500000", "amount_x > 1", "big-withdrawal", 13, 34, "unknown feature"),
        # inside a multi-line basic string: line 2 of its text
        ("  and device.is_new", "  and device.is_neu", "velocity", 24, 7, "unknown feature"),
        ("  count_1h >= 10", "  count_1h >= 10 +", "velocity", 24, 3, "unexpected keyword 'and'"),
        # a basic string with escapes before the problem
        (
            'when = "amount > 0"',
            'when = "kind == \\"a\\" and amount > > 0"',
            "retired",
            34,
            36,
            "unexpected op '>'",
        ),
        # an unknown list; the column is that of the list's name
        (
            "amount > 500000'",
            'device.id in list("blocked_phones")\'',
            "big-withdrawal",
            13,
            52,
            "unknown list",
        ),
        # wrong arity
        ("amount > 500000", "max(amount) > 1", "big-withdrawal", 13, 34, "max() takes"),
        # a rule-level problem points at the rule's header
        ('action = "review"', 'action = "hold"', "big-withdrawal", 10, 1, "'action' must be"),
        ('status = "shadow"', 'status = "paused"', "velocity", 19, 1, "'status' must be"),
        ("score = -20", "score = 5000", "velocity", 19, 1, "'score' must be"),
        ("priority = 10", "priority = 1.5", "big-withdrawal", 10, 1, "'priority' must be"),
        (
            'owner = "fraud-ops"\n\n[[rule]]\nid = "velocity"',
            '\n[[rule]]\nid = "velocity"',
            "big-withdrawal",
            10,
            1,
            "missing 'owner'",
        ),
        ('id = "retired"', 'id = "velocity"', "velocity", 31, 1, "duplicate rule id"),
        ("score = -20", 'score = -20\naction = "reject"', "velocity", 19, 1, "exactly one"),
        (
            'owner = "fraud-ops"\n',
            'owner = "fraud-ops"\ncolour = "red"\n',
            "big-withdrawal",
            10,
            1,
            "unknown key 'colour'",
        ),
        ('id = "big-withdrawal"', 'id = "big withdrawal"', "big withdrawal", 10, 1, "'id' must"),
        ("when = 'kind", "when = 'amount + 1 #", "big-withdrawal", 13, 20, "unexpected character"),
    ],
)
def test_errors_name_line_and_column(
    old: str, new: str, rule_id: str, line: int, column: int, message: str
) -> None:
    assert old in GOOD
    error = _error(GOOD.replace(old, new, 1))
    assert message in error.reason, error
    assert (error.rule_id, error.line, error.column) == (rule_id, line, column), str(error)


def test_when_that_is_not_boolean_is_an_error() -> None:
    error = _error(
        GOOD.replace("amount > 500000", "amount", 1).replace('kind == "withdrawal" and ', "")
    )
    assert "'when' must be true or false, not a number" in error.reason


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('name = "x"\nversion = \n', 2, "not valid TOML"),
        ('name = "x"\n', None, "missing 'version'"),
        ('version = "1"\n', None, "missing 'name'"),
        ('name = "x"\nversion = 1\n', None, "'version' must be a non-empty string"),
        ('name = "x"\nversion = "1"\nowner = "me"\n', 3, "unknown key 'owner' in the header"),
        (
            'name = "x"\nversion = "1"\n[thresholds]\nreview = 500\nchallenge = 600\n',
            3,
            "must not decrease",
        ),
        ('name = "x"\nversion = "1"\n[thresholds]\nhold = 5\n', 3, "unknown threshold 'hold'"),
        ('name = "x"\nversion = "1"\n[thresholds]\nreject = 1001\n', 3, "from 0 to 1000"),
        ('name = "x"\nversion = "1"\nrule = 5\n', None, "array of tables"),
    ],
)
def test_header_errors(text: str, line: int | None, message: str) -> None:
    error = _error(text)
    assert message in error.reason, error
    assert error.line == line


def test_bytes_that_are_not_utf8_are_an_error() -> None:
    with pytest.raises(RuleParseError, match="not UTF-8"):
        parse_ruleset(b'name = "\xff"\nversion = "1"\n', SCHEMA)


def test_a_missing_file_is_a_rule_parse_error(tmp_path: Path) -> None:
    with pytest.raises(RuleParseError, match="cannot read the file") as caught:
        load_ruleset(tmp_path / "nope.toml", SCHEMA)
    assert str(caught.value.source).endswith("nope.toml")


def test_inline_rule_tables_load_but_errors_have_no_position() -> None:
    text = 'name = "x"\nversion = "1"\nrule = [{id = "r", description = "d", when = "amount >",'
    text += ' action = "review", priority = 1, status = "active", owner = "o"}]\n'
    error = _error(text)
    assert error.rule_id == "r" and error.line is None


def test_rules_helper_round_trips() -> None:
    text = ruleset_text([rule("a", "amount > 1"), rule("b", "amount < 1", score=5)])
    ruleset = parse_ruleset(text, SCHEMA)
    assert [r.id for r in ruleset.rules] == ["a", "b"]
    assert ruleset.rules[1].score == 5 and ruleset.rules[1].action is None
