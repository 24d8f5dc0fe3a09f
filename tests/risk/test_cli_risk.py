"""``puhui risk``: report on a simulated run, backtest a ruleset on its log, train a model,
and decide review cases from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puhui.cli import app
from puhui.risk._engine import DEFAULT_RULES

runner = CliRunner()


def _last_json(output: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return data


def test_report_then_backtest_on_its_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    args = ["risk", "report", "--customers", "30", "--days", "2", "--seed", "1001"]
    result = runner.invoke(app, [*args, "--fraud-rate", "60", "--log", str(log), "--json"])
    assert result.exit_code == 0, result.output
    report = _last_json(result.stdout)
    for key in ("loss_rate", "good_rejected_rate", "good_challenged_rate", "scenarios"):
        assert key in report
    assert isinstance(report["scenarios"], dict) and report["scenarios"]
    labels = json.loads((log / "labels.json").read_text())
    assert any(labels) and not all(labels)
    result = runner.invoke(
        app, ["risk", "backtest", "--rules", str(DEFAULT_RULES), "--log", str(log), "--json"]
    )
    assert result.exit_code == 0, result.output
    backtest = _last_json(result.stdout)
    assert backtest["events"] == len(labels) and backtest["fraud"] == sum(labels)
    assert isinstance(backtest["rules"], dict) and backtest["rules"]
    bad = runner.invoke(
        app, ["risk", "backtest", "--rules", str(DEFAULT_RULES), "--log", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "invalid_input" in bad.output
    late = runner.invoke(
        app,
        [
            "risk",
            "backtest",
            "--rules",
            str(DEFAULT_RULES),
            "--log",
            str(log),
            "--from",
            "2030-01-01",
            "--json",
        ],
    )
    assert late.exit_code == 0 and _last_json(late.stdout)["events"] == 0


def test_train_writes_a_model_the_report_can_use(tmp_path: Path) -> None:
    model = tmp_path / "model.json"
    result = runner.invoke(
        app,
        [
            "risk",
            "train",
            "--customers",
            "30",
            "--days",
            "3",
            "--seed",
            "3",
            "--out",
            str(model),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    trained = _last_json(result.stdout)
    assert model.exists() and trained["version"]
    report = runner.invoke(
        app,
        ["risk", "report", "--customers", "20", "--days", "1", "--model", str(model), "--json"],
    )
    assert report.exit_code == 0, report.output
    assert _last_json(report.stdout)["model"] == trained["version"]


def test_cases_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUHUI_DATA_DIR", str(tmp_path))
    listed = runner.invoke(app, ["risk", "cases", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert _last_json(listed.stdout)["cases"] == []
    missing = runner.invoke(
        app, ["risk", "cases", "decide", "7", "--analyst", "ana", "--outcome", "approve"]
    )
    assert missing.exit_code == 2 and "case_not_found" in missing.output
