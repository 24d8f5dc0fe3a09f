"""``puhui risk``: report on a simulated run, backtest a ruleset on its log, train a model,
and decide review cases from the command line."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from puhui import ledger as tb
from puhui.cli import app
from puhui.clock import SystemClock
from puhui.payments import Payee, Payments, SimulatedBank
from puhui.risk import Cases, Decision, RiskDecision, RiskEvent
from puhui.risk._engine import DEFAULT_RULES
from puhui.store import create_engine, migrate

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
    # The same model in shadow: scored beside the live one, and nothing would change.
    both = ["--model", str(model), "--shadow-model", str(model), "--json"]
    shadowed = runner.invoke(app, ["risk", "report", "--customers", "20", "--days", "1", *both])
    assert shadowed.exit_code == 0, shadowed.output
    compared = _data(shadowed.stdout)["shadow"]
    assert compared["live_model"] == compared["shadow_model"] == trained["version"]
    assert compared["events"] > 0 and compared["changed"]["decisions"] == 0
    assert compared["live"] == compared["shadow"]
    assert "Live model against shadow" in shadowed.stdout


def test_train_on_a_run_without_fraud_says_what_to_change(tmp_path: Path) -> None:
    """A run too small (here: no fraud at all) to train on names what it held and which
    options give more, instead of only "need at least 50 rows and both labels"."""
    model = tmp_path / "model.json"
    args = ["--customers", "20", "--days", "1", "--fraud-rate", "0", "--out", str(model)]
    result = runner.invoke(app, ["risk", "train", *args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: risk_training_data_invalid: need at least 50 rows and both")
    assert " 0 of them labelled 1 (fraud)" in message
    assert message.endswith("simulate more: --customers, --days, --fraud-rate or another --seed")
    assert "Traceback" not in result.output
    assert not model.exists()


def test_cases_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUHUI_DATA_DIR", str(tmp_path))
    absent = runner.invoke(app, ["risk", "cases", "list", "--json"])
    assert absent.exit_code == 2 and "store_not_found" in absent.output  # never created
    assert not (tmp_path / "puhui.sqlite").exists()
    made = runner.invoke(app, ["tenant", "create", "Acme"])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["risk", "cases", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert _last_json(listed.stdout)["cases"] == []
    missing = runner.invoke(
        app, ["risk", "cases", "decide", "7", "--analyst", "ana", "--outcome", "approve"]
    )
    assert missing.exit_code == 2 and "case_not_found" in missing.output


def _data(output: str) -> Any:
    """The last line of a command's output, as JSON (any shape)."""
    return json.loads(output.strip().splitlines()[-1])


def _review_odd_sums(events: Sequence[RiskEvent]) -> list[RiskDecision]:
    """Holds every amount ending in 7 for review (score 700), accepts the rest."""
    return [
        RiskDecision(Decision.REVIEW, 700, (f"odd-sum(amount={e.amount})",), "t", "none")
        if e.amount % 10 == 7
        else RiskDecision(Decision.ACCEPT, 0, (), "t", "none")
        for e in events
    ]


def _held_world(data: Path) -> tuple[int, int, int]:
    """In ``data``: a P2P payment and a withdrawal held for review (their cases open), and
    the payer's id."""
    engine = create_engine(f"sqlite:///{data / 'puhui.sqlite'}")
    migrate(engine)
    clock = SystemClock()
    with tb.open(str(data / "ledger")) as ledger:
        p = Payments(
            engine,
            ledger,
            clock=clock,
            bank=SimulatedBank(clock),
            decide=_review_odd_sums,
            cases=Cases(engine, clock),
        )
        alice = p.register_customer("+8613700000001", "Alice").id
        bob = p.register_customer("+8613700000002", "Bob").id
        card = p.bind_card(alice, "tok-1", "ICBC", "0001")
        p.verify_identity(alice, "ID-1")
        p.verify_full(alice, biometric_passed=True)
        assert p.top_up(alice, card.id, 1_000_00, "CNY", key="fund").status.value == "completed"
        held_p2p = p.transfer(alice, Payee(customer_id=bob), 100_07, "CNY", key="p2p")
        held_out = p.withdraw(alice, card.id, 200_07, "CNY", key="out")
        assert held_p2p.status.value == held_out.status.value == "challenged"
    engine.dispose()
    return held_p2p.id, held_out.id, alice


def test_the_cli_decides_without_a_bank_or_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUHUI_DATA_DIR", str(tmp_path))
    p2p_id, withdrawal_id, _ = _held_world(tmp_path)
    listed = runner.invoke(app, ["risk", "cases", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    cases = {c["subject_id"]: c["id"] for c in _data(listed.stdout)["cases"]}
    p2p_case, out_case = cases[f"{p2p_id:032x}"], cases[f"{withdrawal_id:032x}"]
    decide = ["risk", "cases", "decide", "--analyst", "ana", "--json"]
    # Approving the withdrawal would pay out through the bank: refused, nothing recorded.
    refused = runner.invoke(app, [*decide, str(out_case), "--outcome", "approve"])
    assert refused.exit_code == 2 and "case_needs_gateway" in refused.output
    still = runner.invoke(app, ["risk", "cases", "list", "--json"])
    assert {c["id"] for c in _data(still.stdout)["cases"]} == {p2p_case, out_case}
    # Rejecting it only voids the hold: done here. Approving the P2P only posts the hold.
    rejected = runner.invoke(app, [*decide, str(out_case), "--outcome", "reject"])
    assert rejected.exit_code == 0, rejected.output
    assert _data(rejected.stdout)["case"]["resolved"] is True
    approved = runner.invoke(app, [*decide, str(p2p_case), "--outcome", "approve"])
    assert approved.exit_code == 0, approved.output
    engine = create_engine(f"sqlite:///{tmp_path / 'puhui.sqlite'}")
    with tb.open(str(tmp_path / "ledger")) as ledger:
        p = Payments(engine, ledger, clock=SystemClock(), bank=SimulatedBank(SystemClock()))
        assert p.operation(p2p_id).status.value == "completed"
        assert p.operation(withdrawal_id).status.value == "failed"
    engine.dispose()


def test_lists_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUHUI_DATA_DIR", str(tmp_path))
    added = runner.invoke(
        app,
        ["risk", "lists", "add", "blocked_devices", "dev-9", "--reason", "case 12", "--json"],
    )
    assert added.exit_code == 0, added.output
    assert _data(added.stdout)["entry"]["expires_at_ns"] is None
    lapsing = runner.invoke(
        app,
        [
            *("risk", "lists", "add", "blocked_ips", "203.0.113.5"),
            *("--reason", "testing cards", "--expires-in", "7d", "--json"),
        ],
    )
    assert lapsing.exit_code == 0, lapsing.output
    entry = _data(lapsing.stdout)["entry"]
    lapse = entry["expires_at_ns"] - entry["added_at_ns"]
    assert 7 * 86_400 * 10**9 - 10**9 < lapse <= 7 * 86_400 * 10**9
    for bad in (
        ["blocked_phones", "x", "--reason", "r"],
        ["blocked_ips", "x", "--reason", "r", "--expires-in", "soon"],
        ["blocked_ips", "x", "--reason", ""],
    ):
        refused = runner.invoke(app, ["risk", "lists", "add", *bad])
        assert refused.exit_code == 2 and "risk_list_invalid" in refused.output
    shown = runner.invoke(app, ["risk", "lists", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    data = _data(shown.stdout)
    assert data["version"] == 2
    assert [(e["list"], e["value"], e["live"]) for e in data["entries"]] == [
        ("blocked_devices", "dev-9", True),
        ("blocked_ips", "203.0.113.5", True),
    ]
    removed = runner.invoke(app, ["risk", "lists", "remove", "blocked_devices", "dev-9", "--json"])
    assert _data(removed.stdout)["removed"] is True
    again = runner.invoke(app, ["risk", "lists", "remove", "blocked_devices", "dev-9", "--json"])
    assert _data(again.stdout)["removed"] is False
    one = runner.invoke(app, ["risk", "lists", "show", "blocked_devices", "--json"])
    assert _data(one.stdout)["entries"] == []


def test_decisions_are_read_back_with_every_feature_they_saw(tmp_path: Path) -> None:
    """`risk decisions`: the audit trail's reader — filters, pages, the full feature vector,
    and the log left exactly as it was (a server may be writing it)."""
    from puhui.risk import FEATURE_SCHEMA
    from puhui.risk._log import read_records

    log = tmp_path / "log"
    args = ["risk", "report", "--customers", "30", "--days", "2", "--seed", "1002"]
    made = runner.invoke(app, [*args, "--fraud-rate", "60", "--log", str(log)])
    assert made.exit_code == 0, made.output
    sizes = {p.name: p.stat().st_size for p in log.iterdir()}
    logged = list(read_records(log))
    total = sum(r.rows for r in logged)

    def decisions(*extra: str) -> dict[str, Any]:
        result = runner.invoke(app, ["risk", "decisions", "--log", str(log), *extra, "--json"])
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = _data(result.stdout)
        return data

    everything = decisions("--limit", "1000")["decisions"]
    assert [d["id"] for d in everything] == list(range(1, min(total, 1000) + 1))
    first = everything[0]
    assert set(FEATURE_SCHEMA) | {"model.score"} <= set(first["features"])
    record = logged[0]
    names = json.loads((log / f"schema-{record.meta['schema']}.json").read_text())
    row = record.columns["features"][0].tolist()
    assert [first["features"][n] for n in names] == [None if math.isnan(v) else v for v in row]
    # Filters: one decision, one customer, a cursor.
    reviewed = decisions("--decision", "review", "--limit", "1000")["decisions"]
    assert reviewed and {d["decision"] for d in reviewed} == {"review"}
    assert all(d["reasons"] for d in reviewed)  # a review always says why
    assert len(reviewed) == sum(1 for d in everything if d["decision"] == "review")
    customer = reviewed[0]["customer_id"]
    theirs = decisions("--customer", str(customer), "--limit", "1000")["decisions"]
    assert theirs and {d["customer_id"] for d in theirs} == {customer}
    page = decisions("--limit", "3")
    assert [d["id"] for d in page["decisions"]] == [1, 2, 3] and page["next_after"] == 3
    assert [d["id"] for d in decisions("--after", "3", "--limit", "2")["decisions"]] == [4, 5]
    late = decisions("--from", "2100-01-01")
    assert late["decisions"] == [] and late["next_after"] is None
    bad = runner.invoke(app, ["risk", "decisions", "--log", str(log), "--limit", "0"])
    assert bad.exit_code == 2 and "invalid_input" in bad.output
    shown = runner.invoke(app, ["risk", "decisions", "--log", str(log), "--features"])
    assert shown.exit_code == 0 and "customer.count_1h=" in shown.stdout
    assert {p.name: p.stat().st_size for p in log.iterdir()} == sizes  # read, not written
