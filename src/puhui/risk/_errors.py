"""Errors of the risk engine's rules and lists."""

from __future__ import annotations

from puhui.errors import InvalidInputError, PuhuiError


class RuleParseError(PuhuiError):
    """A ruleset file (or one rule's expression) is invalid.

    The message names the file, the rule id and the line and column of the offending token;
    the same facts are in ``details`` (``source``, ``rule_id``, ``line``, ``column``).
    """

    code = "risk_rule_invalid"

    def __init__(
        self,
        message: str = "",
        *,
        source: str | None = None,
        rule_id: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        where = source or ""
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        if rule_id is not None:
            where += f"{': ' if where else ''}rule {rule_id!r}"
        located = f"{where}: {message}" if where and message else (where or message)
        super().__init__(located, source=source, rule_id=rule_id, line=line, column=column)
        self.reason = message
        """The problem alone, without where it is."""
        self.source = source
        self.rule_id = rule_id
        self.line = line
        self.column = column


class RiskListError(InvalidInputError):
    """A block/allow list operation or list file is invalid (unknown list, bad value, bad file)."""

    code = "risk_list_invalid"


class RiskFeaturesError(InvalidInputError):
    """A feature batch does not fit the ruleset (missing feature, wrong kind, ragged lengths)."""

    code = "risk_features_invalid"
