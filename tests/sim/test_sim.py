"""The synthetic economy: deterministic for a seed, labelled, and driven through real services
with risk in the loop (what risk stops does not happen and is not lost)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from puhui import risk
from puhui.errors import InvalidInputError
from puhui.sim import Role, Scenario, SimConfig, SimEvent, SimReport, simulate, write_events

SMALL = SimConfig(customers=30, days=2, seed=7, fraud_rate=60.0)
"""A small run where every scenario is likely to strike (60 times the usual incidence)."""


@pytest.fixture(scope="module")
def small_run() -> tuple[SimReport, list[SimEvent]]:
    return simulate(SMALL)


def _lines(events: Sequence[SimEvent], path: Path) -> list[str]:
    write_events(events, path)
    return path.read_text().splitlines()


def test_the_same_seed_gives_the_same_events_byte_for_byte(
    small_run: tuple[SimReport, list[SimEvent]], tmp_path: Path
) -> None:
    _, first = small_run
    _, again = simulate(SMALL)
    assert _lines(first, tmp_path / "a.jsonl") == _lines(again, tmp_path / "b.jsonl")
    _, other = simulate(SimConfig(customers=30, days=2, seed=8, fraud_rate=60.0))
    assert _lines(other, tmp_path / "c.jsonl") != _lines(first, tmp_path / "a.jsonl")


def test_events_are_in_time_order_and_labelled(
    small_run: tuple[SimReport, list[SimEvent]],
) -> None:
    _report, events = small_run
    assert [e.seq for e in events] == list(range(len(events)))
    assert all(a.at_ns <= b.at_ns for a, b in itertools.pairwise(events))
    honest = [e for e in events if not e.label]
    fraud = [e for e in events if e.label]
    assert honest and fraud
    assert all(e.attack_id == 0 and e.role is Role.GOOD for e in honest)
    assert all(e.attack_id > 0 for e in fraud)
    assert {e.label for e in fraud} <= {str(s) for s in Scenario}
    kinds = {e.kind for e in honest}
    assert {"login", "payment", "p2p", "top_up"} <= kinds
    # Every attack's events carry one scenario.
    by_attack: dict[int, set[str]] = {}
    for e in fraud:
        by_attack.setdefault(e.attack_id, set()).add(e.label)
    assert all(len(labels) == 1 for labels in by_attack.values())


def test_with_a_pass_through_risk_fraud_that_cashes_out_is_lost(
    small_run: tuple[SimReport, list[SimEvent]],
) -> None:
    report, events = small_run
    data = report.as_json()
    assert data["fraud_lost"] > 0 and data["volume"] > 0
    assert data["loss_rate"] == data["fraud_lost"] / data["volume"]
    exits = sum(
        e.amount for e in events if e.label and e.status == "completed" and e.kind == "withdrawal"
    )
    assert 0 < exits <= data["fraud_lost"]
    assert data["good_rejected_rate"] == 0.0  # the pass-through accepts everything
    completed = sum(e.amount for e in events if e.status == "completed" and e.amount > 0)
    assert data["volume"] == completed


def _reject_attackers(events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
    """A stand-in engine that knows the attackers' networks and devices."""
    out = []
    for event in events:
        bad = event.ip.startswith(("203.0.113.", "198.51.100.")) or event.device_id.startswith("x")
        decision = risk.Decision.REJECT if bad else risk.Decision.ACCEPT
        out.append(risk.RiskDecision(decision, 1000 if bad else 0, ("test",), "t", "t"))
    return out


def test_what_risk_rejects_does_not_happen_and_is_not_lost() -> None:
    open_report, _ = simulate(SMALL)
    report, events = simulate(SMALL, decide=_reject_attackers)
    stopped = [e for e in events if e.decision == "reject"]
    assert stopped and all(e.label for e in stopped)
    assert all(e.status in ("rejected", "failed") or e.operation_id == 0 for e in stopped)
    assert report.fraud_lost < open_report.fraud_lost
    takeover = report.scenarios[str(Scenario.ACCOUNT_TAKEOVER)]
    assert takeover.attacks > 0
    assert takeover.lost == 0 and takeover.stopped > 0  # stopped at the login


def test_a_challenged_payment_is_passed_by_its_owner_and_failed_by_a_fraudster() -> None:
    def challenge_all(events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
        return [
            risk.RiskDecision(
                risk.Decision.CHALLENGE
                if e.kind in ("p2p", "withdrawal")
                else risk.Decision.ACCEPT,
                700,
            )
            for e in events
        ]

    _report, events = simulate(
        SimConfig(
            customers=30,
            days=2,
            seed=7,
            fraud_rate=60.0,
            scenarios=(Scenario.APP_SCAM, Scenario.ACCOUNT_TAKEOVER),
        ),
        decide=challenge_all,
    )
    honest = [e for e in events if not e.label and e.kind == "p2p" and e.decision == "challenge"]
    assert honest
    passed = sum(e.status == "completed" for e in honest)
    assert passed >= len(honest) * 0.8  # owners pass (97 % each)
    thieves = [
        e
        for e in events
        if e.label == Scenario.ACCOUNT_TAKEOVER and e.kind in ("p2p", "withdrawal") and e.amount
    ]
    assert thieves and all(e.status != "completed" for e in thieves)


def test_bad_configs_are_refused() -> None:
    for bad in (
        {"customers": 5},
        {"days": 0},
        {"seed": -1},
        {"fraud_rate": -0.5},
        {"merchants": 10_000},
    ):
        with pytest.raises(InvalidInputError):
            SimConfig(**bad)


def test_events_file_is_json_lines(
    small_run: tuple[SimReport, list[SimEvent]], tmp_path: Path
) -> None:
    _, events = small_run
    path = tmp_path / "out" / "events.jsonl"
    assert write_events(events, path) == len(events)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["seq"] == 0 and set(rows[0]) >= {"at_ns", "kind", "label", "decision", "status"}
    assert not list(tmp_path.glob("out/*.tmp"))


def test_the_cli_writes_events_and_a_json_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from puhui.cli import app

    out = tmp_path / "events.jsonl"
    args = ["sim", "run", "--days", "1", "--customers", "20", "--seed", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["command"] == "sim run" and report["events"] == len(out.read_text().splitlines())
    assert {"loss_rate", "good_rejected_rate", "good_challenged_rate", "scenarios"} <= set(report)
    bad = CliRunner().invoke(app, ["sim", "run", "--customers", "3", "--out", str(out)])
    assert bad.exit_code == 2 and "invalid_input" in bad.output


@pytest.mark.parametrize("scenario", list(Scenario))
def test_each_scenario_strikes_and_is_labelled(scenario: Scenario) -> None:
    config = SimConfig(customers=20, days=2, seed=5, fraud_rate=100.0, scenarios=(scenario,))
    report, events = simulate(config)
    stats = report.scenarios[str(scenario)]
    assert stats.attacks > 0
    labelled = [e for e in events if e.label]
    assert {e.label for e in labelled} <= {str(scenario)}
    if scenario is not Scenario.APP_SCAM:  # a scam's payments come days after the set-up
        assert labelled and stats.events == len(labelled)
