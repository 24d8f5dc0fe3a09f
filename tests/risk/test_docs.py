"""The example in docs/risk-rules.md is real: its ruleset compiles and its code prints what the
page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "risk-rules.md"


def test_the_example_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text(encoding="utf-8")
    ruleset = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)[0]
    code = re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "payments.toml").write_text(ruleset, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    namespace = {"print": lambda *args: printed.append(" ".join(map(str, args)))}
    exec(compile(code, str(DOC), "exec"), namespace)
    promised = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert printed == promised


FEATURES_DOC = DOC.parent / "risk-features.md"
WINDOWED = [
    f"{entity}.{measure}_{window}"
    for entity in ("customer", "device", "merchant", "counterparty", "ip")
    for window in ("1m", "1h", "24h", "7d", "30d")
    for measure in ("count", "sum")
]


def test_the_feature_tables_are_the_schema() -> None:
    """docs/risk-features.md lists exactly FEATURE_SCHEMA's names with their types (the
    velocity family as one row per pattern), and the count the README and docs/risk.md give
    is the schema's."""
    from puhui.risk import FEATURE_SCHEMA

    text = FEATURES_DOC.read_text(encoding="utf-8")
    documented = dict.fromkeys(WINDOWED, "int64")
    assert "(50 features, `int64`)" in text and len(WINDOWED) == 50
    rows = re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \| (int64|float64|bool) \|", text, re.M)
    documented.update(rows)
    assert documented == {name: spec.type for name, spec in FEATURE_SCHEMA.items()}
    count = len(FEATURE_SCHEMA)
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"{count} features per event" in readme
    assert f"{count} values per event" in (DOC.parent / "risk.md").read_text(encoding="utf-8")


def test_the_readme_counts_the_fraud_scenarios() -> None:
    from puhui.sim import Scenario

    words = {7: "seven", 8: "eight", 9: "nine", 10: "ten"}
    readme = (DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"{words[len(Scenario)]} labelled fraud scenarios" in readme


def test_the_error_examples_are_what_the_example_file_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages under "Errors" are real: the page's ruleset with the mistake it names."""
    from puhui.risk import FeatureType, RuleParseError, load_ruleset

    text = DOC.read_text(encoding="utf-8")
    ruleset = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)[0]
    section = text[text.index("### Errors") :]
    shown = re.findall(r"```\n(.*?)```", section, re.DOTALL)[0].splitlines()
    mistakes = [
        ("customer.count_1h >=", "customer.cnt_1h >="),
        ("and amount > 500000", "and amount >> 500000"),
        ('id = "blocked-device"', 'id = "velocity"'),
    ]
    schema = dict.fromkeys(
        ["amount", "customer.count_1h", "customer.account_age_days"], FeatureType.NUMBER
    )
    schema["customer.since_password_reset_s"] = FeatureType.NUMBER
    schema |= {"device.is_new": FeatureType.BOOLEAN, "device.id": FeatureType.CATEGORY}
    schema["kind"] = FeatureType.CATEGORY
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    messages = []
    for right, wrong in mistakes:
        assert ruleset.count(right) == 1
        (tmp_path / "rules" / "payments.toml").write_text(ruleset.replace(right, wrong), "utf-8")
        with pytest.raises(RuleParseError) as raised:
            load_ruleset("rules/payments.toml", schema)
        messages.append(str(raised.value))
    assert messages == shown


def test_the_feature_store_example_runs() -> None:
    """docs/risk-features.md's first example runs as it stands and shows what it says."""
    code = re.findall(r"```python\n(.*?)```", FEATURES_DOC.read_text(encoding="utf-8"), re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, str(FEATURES_DOC), "exec"), namespace)
    features = namespace["features"]
    assert isinstance(features, dict)
    assert "# array([0])" in code and repr(features["customer.count_1h"]) == "array([0])"
