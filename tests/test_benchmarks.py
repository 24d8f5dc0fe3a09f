"""The benchmark scripts run (smoke runs) and print their figures as JSON; no speed asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _report(script: str, *args: str, timeout: int = 300) -> Any:
    """Run ``benchmarks/<script>`` with ``args`` and read the JSON object it prints last."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ledger_benchmark_quick_run_prints_json(tmp_path: Path) -> None:
    report = _report(
        "ledger.py",
        "--quick",
        "--json",
        "--transfers",
        "3000",
        "--baseline-transfers",
        "50",
        "--variants",
        "tigerbeetle,zipf,accounts_1m,concurrent_64",
        "--workdir",
        str(tmp_path),
    )
    for variant in ("tigerbeetle", "zipf", "accounts_1m", "concurrent_64"):
        figures = report[variant]
        assert figures["transfers_per_s"] > 0
        assert figures["batch_p99_ms"] >= figures["batch_p50_ms"] > 0
        assert figures["baseline_transfers_per_s"] > 0
        assert figures["verify_ok"] is True


def test_ledger_benchmark_times_opening_after_a_crash_and_after_a_clean_close(
    tmp_path: Path,
) -> None:
    """``recovery`` replays the journal since the last snapshot; ``reopen`` opens the final
    snapshot of a clean close: both find every transfer (the run checks it) and verify."""
    report = _report(
        "ledger.py",
        "--quick",
        "--json",
        "--transfers",
        "3000",
        "--baseline-transfers",
        "50",
        "--variants",
        "recovery,reopen",
        "--workdir",
        str(tmp_path),
    )
    for variant in ("recovery", "reopen"):
        figures = report[variant]
        assert figures["variant"] == variant and figures["transfers"] == 3000
        assert figures["recovery_s"] > 0 and figures["verify_ok"] is True


def test_payments_benchmark_quick_run_prints_json() -> None:
    report = _report("payments.py", "--quick", "--json", "--verify")
    assert report["payments_per_s"] > 0 and report["escrow_orders_per_s"] > 0
    assert report["p99_ms"] >= report["batch"]["p50_ms"] > 0
    for variant in ("batch", "coalesced", "single", "escrow"):
        assert report[variant]["count"] > 0
        assert report[variant]["verify_ok"] is True
        assert report[variant]["steps"] is None  # only with --steps


def test_payments_benchmark_times_a_batchs_steps() -> None:
    report = _report("payments.py", "--quick", "--json", "--variants", "batch", "--steps")
    steps = report["batch"]["steps"]
    assert {"parse", "replays", "pass", "decide", "record", "move", "finish", "other"} <= set(steps)
    assert abs(sum(v["share"] for v in steps.values()) - 1) < 1e-9
    for name in ("parse", "record", "move", "finish"):
        assert steps[name]["us_per_payment"] > 0


def test_payment_records_benchmark_quick_run_prints_json() -> None:
    report = _report("payment_records.py", "--quick", "--json")
    assert report["rows_per_s"] == report["puhui"]["rows_per_s"] > 0
    assert report["sqlite_defaults"]["rows_per_s"] > 0
    assert report["two_writes"]["rows_per_s"] > 0  # the record and its outcome, as a batch
    assert set(report["pages_per_row"]) == {
        "primary key only",
        "unique(scope, idempotency_key)",
        "(payer_customer_id, created_at_ns)",
        "(merchant_id, settlement_id)",
        "(status, created_at_ns)",
    }
    assert all(pages > 0 for pages in report["pages_per_row"].values())


def test_risk_benchmark_quick_run_prints_json() -> None:
    report = _report("risk.py", "--quick", "--json")
    figures = report["rules_300"]
    assert figures["rules_active"] == 300 and figures["sample"] is True
    assert figures["compile_s"] > 0 and figures["decisions_per_s"] > 0
    assert figures["single_p99_ms"] >= figures["single_p50_ms"] > 0
    assert sum(figures["decisions"].values()) == figures["batch"] * len(
        figures["runs_decisions_per_s"]
    )


def test_risk_features_benchmark_quick_run_prints_json() -> None:
    report = _report(
        "risk_features.py",
        "--quick",
        "--json",
        "--events",
        "5000",
        "--batch",
        "1000",
        "--singles",
        "50",
    )
    assert report["events"] == 5000 and report["batch"] == 1000
    assert report["events_per_s"] > 0 and report["columns_per_s"] > 0
    assert report["single_p99_ms"] >= report["single_p50_ms"] > 0
    assert report["memory_bytes"] > 0 and sum(report["entities"].values()) > 0


def test_risk_flood_benchmark_quick_run_prints_json() -> None:
    report = _report("risk_flood.py", "--quick", "--json", "--events", "12000")
    assert report["events"] == 12000 and report["evictions"] > 0
    assert all(count <= report["entities_max"] for count in report["entities"].values())
    assert report["pairs"] <= report["pairs_max"]
    assert 0 < report["memory_bytes"] <= report["memory_bytes_max"] < report["unbounded_bytes"]
    assert report["eviction_pause_ms_max"] >= report["eviction_pause_ms_p50"] > 0


def test_risk_engine_benchmark_quick_run_prints_json() -> None:
    report = _report("risk_engine.py", "--quick", "--json", timeout=600)
    engine = report["engine"]
    assert engine["rules_active"] >= 200 and engine["decisions_per_s"] > 0
    assert sum(engine["decisions"].values()) == engine["batch"] * len(
        engine["runs_decisions_per_s"]
    )
    assert engine["columnar_decisions_per_s"] > 0
    assert len(engine["runs_columnar_decisions_per_s"]) == len(engine["runs_decisions_per_s"])
    assert engine["single_events"] == 500 and engine["single_p99_ms"] >= engine["single_p50_ms"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_api_benchmark_quick_run_prints_json(workers: str) -> None:
    """The benchmark's server in one process, and as ``puhui serve --workers 2`` runs it
    (the payments and the batches through the primary's ledger server)."""
    report = _report("api.py", "--quick", "--json", "--workers", workers)
    assert report["workers"] == int(workers)
    assert report["payments_per_s"] > 0 and report["ledger_transfers_per_s"] > 0
    assert report["p99_ms"] >= report["p50_ms"] > 0
    assert report["payments"]["requests"] > 0 and report["payments"]["not_completed"] == {}
    assert report["ledger_batch"]["not_created"] == 0
    assert report["ledger_binary_transfers_per_s"] > 0
    assert report["ledger_batch_binary"]["not_created"] == 0


def test_sqlite_writers_benchmark_quick_run_prints_json() -> None:
    report = _report("sqlite_writers.py", "--quick", "--json", "--think-ms", "1")
    runs = report["runs"]
    assert [(r["processes"], r["think_ms"]) for r in runs] == [(1, 0), (2, 0), (1, 1), (2, 1)]
    for r in runs:
        assert r["transactions"] == 40 and r["rows_per_transaction"] == 64
        assert r["transactions_per_s"] > 0
        assert r["max_ms"] >= r["p99_ms"] >= r["p50_ms"] > 0


def test_ledger_history_benchmark_quick_run_prints_json() -> None:
    report = _report("ledger_history.py", "--quick", "--json")
    assert report["transfers"] == 20_000
    for name in ("quiet_newest_first", "quiet_oldest_first", "busy_newest_first"):
        figures = report[name]
        assert figures["read_ms"] > 0 and figures["chain_ms"] > 0 and figures["full_scan_ms"] > 0
    assert report["quiet_oldest_first"]["transfers_found"] == 3
    assert report["busy_oldest_first"]["transfers_found"] == 100
    query = report["query"]
    assert query["one_turn_scan_ms"] > 0 and query["query_ms"] > 0
    assert query["write_during_query_ms"]["writes"] >= 1


BAD_ARGUMENTS = [
    ("ledger.py", ["--runs", "0"]),
    ("ledger.py", ["--variants", "tigerbeetle,bogus"]),
    ("ledger.py", ["--workdir", "/nonexistent/puhui-bench"]),
    ("ledger.py", ["--database-url", "http://example.invalid/x"]),
    ("ledger_history.py", ["--limit", "0"]),
    ("payment_records.py", ["--batch", "-5"]),
    ("sqlite_writers.py", ["--transactions", "0"]),
    ("sqlite_writers.py", ["--think-ms", "-1"]),
    ("payments.py", ["--variants", "bogus"]),
    ("payments.py", ["--payments", "abc"]),
    ("risk.py", ["--runs", "0"]),
    ("risk_engine.py", ["--batch", "0"]),
    ("risk_features.py", ["--events", "-1"]),
    ("risk_flood.py", ["--batch", "0"]),
    ("api.py", ["--clients", "0"]),
]


@pytest.mark.parametrize(
    ("script", "args"), BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_a_benchmark_refuses_a_bad_argument_before_it_runs(script: str, args: list[str]) -> None:
    """A zero or negative count, an unknown variant, a missing work directory or a database
    URL of another kind: argparse's error (exit 2, the option named), no traceback. A zero
    count used to become the default silently, or run ``ledger_history.py`` forever."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"{script}: error: "), out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_ledger_remote_benchmark_runs_both_ways() -> None:
    report = _report("ledger_remote.py", "--transfers", "2000", "--json")
    assert set(report) == {
        f"{workload}_{where}_transfers_per_s"
        for workload in ("batches_8189", "threads_8x64")
        for where in ("embedded", "remote")
    }
    assert all(rate > 0 for rate in report.values())
