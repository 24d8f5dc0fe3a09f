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
