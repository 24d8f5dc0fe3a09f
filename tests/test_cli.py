"""The ``puhui`` command line: demo, ledger verify/info, version, and how errors surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import puhui
import puhui.ledger
from puhui.cli import _display_url, app
from puhui.config import Settings

runner = CliRunner()

EXPECTED_STEPS = {
    "open_accounts": ["created"] * 10,
    "top_ups": ["created"] * 3,
    "fx_conversion": ["created", "created"],
    "fx_conversion_fails": ["linked_event_failed", "exceeds_credits"],
    "escrow_hold": ["created"],
    "escrow_partial_post": ["created"],
    "order_hold": ["created"],
    "order_void": ["created"],
    "overdraft_rejected": ["exceeds_credits"],
}

# Net balances (credits posted - debits posted) after one run of the demo, in major units.
EXPECTED_NET = {
    "bank_cny": "-12000.00",
    "alice_cny": "1040.00",
    "bob_cny": "10000.00",
    "merchant_cny": "250.00",
    "fx_cny": "710.00",
    "bank_usd": "-1000.00",
    "alice_usd": "100.00",
    "bob_usd": "0.00",
    "merchant_usd": "0.00",
    "fx_usd": "900.00",
}

EXPECTED_PAYMENT_STEPS = {
    "register_parties": ["kyc full", "kyc full", "registered", "empty"],
    "top_up": ["completed"],
    "p2p": ["completed"],
    "qr_payment": ["completed"],
    "order_paid": ["created", "completed", "paid"],
    "order_shipped": ["shipped"],
    "auto_confirm": ["finished", "credited", "credited"],
    "second_order": ["completed", "shipped"],
    "partial_refund": ["requested", "refunded"],
    "confirm_receipt": ["finished", "credited", "credited"],
    "water_bill": ["completed", "paid"],
    "withdrawal": ["completed"],
    "accounting_identity": ["holds", "ok"],
}

# What one run of the payments tour adds to each account, in CNY fen: top-up 2,000.00, P2P
# 150.00, QR 38.50, orders 299.00 and 120.00 (40.00 refunded; fee 0.6 % of 299.00 and 80.00),
# a water bill of 86.40, withdrawal 500.00.
EXPECTED_PAYMENT_CHANGES = {
    "buyer_wallet": 932_50 - 86_40,
    "friend_wallet": 150_00,
    "merchant_receivable": 415_23,
    "escrow": 0,
    "fee_revenue": 1_79 + 48,
    "biller_clearing": 86_40,
    "bank_settlement": -1_500_00,
}
PLATFORM_ACCOUNTS = ("escrow", "fee_revenue", "biller_clearing", "bank_settlement")
"""Shared by every run (the other accounts are new in each run)."""
RISK_TOUR_PLATFORM_CHANGES = {"bank_settlement": -(900_00 + 100_00 + 4_000_00)}
"""What the risk tour (after the payments tour) adds to the shared accounts: its top-ups."""


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def last_json(result: Result) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, result.output
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def check_demo(data: dict[str, Any], accounts_total: int, runs: int = 1) -> None:
    """``runs``: how many demos ran on this data, this one included."""
    assert data["ok"] is True
    assert {s["name"]: s["statuses"] for s in data["steps"]} == EXPECTED_STEPS
    assert all(step["as_expected"] for step in data["steps"])
    assert {b["key"]: b["net"] for b in data["balances"]} == EXPECTED_NET
    payments = data["payments"]
    assert payments["ok"] is True
    assert {s["name"]: s["statuses"] for s in payments["steps"]} == EXPECTED_PAYMENT_STEPS
    assert all(step["as_expected"] for step in payments["steps"])
    assert payments["identity"] == {
        "ok": True,
        "holds": True,
        "books": 1_500_00,
        "bank_settlement": -1_500_00,
        "top_ups_minus_withdrawals": 1_500_00,
        "verify_ok": True,
    }
    balances = {b["key"]: b for b in payments["balances"]}
    assert {key: b["change"] for key, b in balances.items()} == EXPECTED_PAYMENT_CHANGES
    for key, change in EXPECTED_PAYMENT_CHANGES.items():
        assert balances[key]["currency"] == "CNY"
        expected = change * (runs if key in PLATFORM_ACCOUNTS else 1)
        expected += RISK_TOUR_PLATFORM_CHANGES.get(key, 0) * (runs - 1)
        assert balances[key]["balance"] == expected
    verify = data["verify"]
    assert verify["ok"] is True
    assert verify["problems"] == []
    assert verify["accounts"] == accounts_total
    for sums in verify["ledgers"].values():
        assert sums["debits_posted"] == sums["credits_posted"]
        assert sums["debits_pending"] == sums["credits_pending"] == "0"


def test_demo_succeeds_twice_in_a_row(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = invoke("demo", "--data-dir", str(data_dir), "--json")
    assert first.exit_code == 0, first.output
    # 10 accounts of the ledger tour; 4 platform accounts, 2 wallets, a merchant's and the
    # biller's clearing account; the risk tour's 3 wallets and its merchant's.
    check_demo(last_json(first), accounts_total=22)
    risk_part = last_json(first)["risk"]
    assert risk_part["ok"] and [s["name"] for s in risk_part["steps"]] == [
        "risk_history",
        "risk_step_up",
        "risk_case",
        "risk_takeover",
    ]
    assert (data_dir / "ledger").is_dir()
    assert (data_dir / "puhui.sqlite").is_file()
    assert last_json(first)["payments"]["database"] == f"sqlite:///{data_dir / 'puhui.sqlite'}"

    second = invoke("demo", "--data-dir", str(data_dir), "--json")
    assert second.exit_code == 0, second.output
    check_demo(last_json(second), accounts_total=39, runs=2)  # platform accounts are shared
    assert last_json(first)["run_id"] != last_json(second)["run_id"]
    assert "verify: ok" in second.stdout


@pytest.mark.parametrize("utc_hour", [1, 7, 13, 19])
def test_demo_ends_as_expected_at_any_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, utc_hour: int
) -> None:
    """The demo's clock starts at the real time; its risk tour must not depend on the hour
    (at night in Shanghai — 16:00 to 24:00 UTC — the first large payment was held for
    review instead of challenged, and the demo failed every evening in Europe)."""
    import time

    day_ns = 86_400 * 10**9
    start = 1_790_000_000 * 10**9  # a fixed day
    start = start - start % day_ns + utc_hour * 3600 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: start)
    result = invoke("demo", "--data-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True


def test_demo_prints_balances_in_major_units(tmp_path: Path) -> None:
    result = invoke("demo", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "10,000.00" in result.stdout
    assert "1,040.00" in result.stdout
    assert "exceeds_credits" in result.stdout
    assert "linked_event_failed" in result.stdout
    assert "nothing moved" in result.stdout
    for words in ("escrow", "auto-confirm", "refund", "2,000.00 CNY", "297.21 CNY", "1.79 CNY"):
        assert words in result.stdout
    assert not result.stdout.strip().splitlines()[-1].startswith("{")  # no JSON unless asked


def test_demo_uses_the_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"PUHUI_DATA_DIR": "elsewhere", "PUHUI_LEDGER_URL": "", "PUHUI_DATABASE_URL": ""}
    result = invoke("demo", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "ledger").is_dir()
    assert (tmp_path / "elsewhere" / "puhui.sqlite").is_file()
    assert not (tmp_path / "puhui-data").exists()


def test_settings_defaults_and_overrides() -> None:
    defaults = Settings.from_env({})
    assert defaults.data_dir == Path("puhui-data")
    assert defaults.database_url == "sqlite:///puhui-data/puhui.sqlite"
    assert defaults.ledger_url == "puhui-data/ledger"

    moved = Settings.from_env({"PUHUI_DATA_DIR": "/srv/puhui"})
    assert moved.database_url == "sqlite:////srv/puhui/puhui.sqlite"  # four slashes: absolute
    assert moved.ledger_url == "/srv/puhui/ledger"

    url = "postgresql+psycopg://puhui@db:5432/puhui"
    explicit = Settings.from_env({"PUHUI_DATABASE_URL": url, "PUHUI_LEDGER_URL": url, "X": "y"})
    assert (explicit.database_url, explicit.ledger_url) == (url, url)
    assert Settings.from_env({"PUHUI_DATA_DIR": ""}) == defaults  # empty counts as unset


def test_settings_read_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUHUI_DATA_DIR", "from-env")
    monkeypatch.delenv("PUHUI_LEDGER_URL", raising=False)
    assert Settings.from_env().ledger_url == str(Path("from-env") / "ledger")


def test_ledger_verify_and_info(tmp_path: Path) -> None:
    assert invoke("demo", "--data-dir", str(tmp_path)).exit_code == 0
    journal = str(tmp_path / "ledger")

    verify = invoke("ledger", "verify", journal, "--json")
    assert verify.exit_code == 0, verify.output
    report = last_json(verify)
    assert report["ok"] is True
    assert report["accounts"] == 22
    assert set(report["ledgers"]) == {"156", "840"}
    assert "Per-ledger sums" in verify.stdout

    info = invoke("ledger", "info", f"file://{journal}", "--json")
    assert info.exit_code == 0, info.output
    facts = last_json(info)
    assert facts["accounts"] == 22
    assert facts["transfers"] == report["transfers"] > 0
    assert facts["last_journal_op"] == report["journal_ops"] > 0
    assert facts["state_dir"] == journal + ".state"


def test_ledger_verify_reports_a_failure_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("demo", "--data-dir", str(tmp_path)).exit_code == 0

    def broken(ledger: puhui.ledger.Ledger) -> puhui.ledger.VerifyReport:
        return puhui.ledger.VerifyReport(
            ok=False,
            accounts=10,
            transfers=9,
            journal_ops=9,
            ledgers={
                156: dict.fromkeys(
                    ("debits_pending", "debits_posted", "credits_pending", "credits_posted"), 0
                )
                | {"debits_posted": 1}
            },
            problems=["ledger 156: posted debits != posted credits"],
        )

    monkeypatch.setattr(puhui.ledger, "verify", broken)
    result = invoke("ledger", "verify", str(tmp_path / "ledger"), "--json")
    assert result.exit_code == 1, result.output
    assert "verify: FAILED" in result.stdout
    assert "posted debits != posted credits" in result.stdout
    assert last_json(result)["ok"] is False

    demo = invoke("demo", "--data-dir", str(tmp_path), "--json")
    assert demo.exit_code == 1, demo.output
    assert last_json(demo)["ok"] is False
    assert last_json(demo)["payments"]["identity"]["verify_ok"] is False


@pytest.mark.parametrize("command", ["verify", "info"])
def test_bad_url_is_an_error_with_exit_2(command: str) -> None:
    result = invoke("ledger", command, "nosuchscheme://somewhere/ledger")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: journal_unavailable: unsupported journal URL scheme in 'nosuchscheme'"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("scheme", ["", "sqlite:///", "file://"])
@pytest.mark.parametrize("command", ["verify", "info"])
def test_missing_ledger_is_not_created(tmp_path: Path, scheme: str, command: str) -> None:
    missing = tmp_path / "missing"
    result = invoke("ledger", command, f"{scheme}{missing}")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ledger_not_found: ")
    assert not missing.exists()


@pytest.mark.parametrize("place", ["empty-dir", "empty.sqlite", "sqlite:///empty-file"])
@pytest.mark.parametrize("command", ["verify", "info"])
def test_an_empty_place_is_not_made_a_ledger(tmp_path: Path, place: str, command: str) -> None:
    """An existing directory or file that holds no journal is no ledger either: a reading
    command says so and writes nothing there (no journal, no state directory)."""
    path = tmp_path / place.removeprefix("sqlite:///")
    if place == "empty-dir":
        path.mkdir()
    else:
        path.touch()
    url = f"sqlite:///{path}" if place.startswith("sqlite:///") else str(path)
    result = invoke("ledger", command, url)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ledger_not_found: "), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert list(path.iterdir()) == [] if path.is_dir() else path.read_bytes() == b""


def test_an_unreachable_postgres_journal_is_one_error_line() -> None:
    result = invoke("ledger", "info", "postgresql+psycopg://app:s3cret@127.0.0.1:1/x")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: journal_unavailable: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "s3cret" not in result.output


PAST_THE_STORE = [
    (["risk", "cases", "list", "--after", str(2**70)], "invalid_input"),
    (["risk", "cases", "list", "--after", "-1"], "invalid_input"),
    (["risk", "cases", "decide", str(2**70), "--analyst", "a", "--outcome", "reject"],
     "case_not_found"),
    (["risk", "lists", "add", "blocked_devices", "d1", "--reason", "x",
      "--expires-in", "99999999999999999d"], "risk_list_invalid"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "code"), PAST_THE_STORE, ids=lambda v: str(v)[:48])
def test_numbers_past_the_store_are_error_codes(tmp_path: Path, args: list[str], code: str) -> None:
    """A number the SQL store cannot hold (beyond 64 bits) is the command's error, not an
    ``OverflowError`` traceback."""
    _make_store(tmp_path)
    result = invoke(*args, env=_env(tmp_path))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {code}: "), result.output
    assert "Traceback" not in result.output


def test_listing_cases_reads_the_store_only(tmp_path: Path) -> None:
    """A reading command makes no ledger (and binds the store to none): a server started
    later on another ledger would be refused as a mismatch."""
    _make_store(tmp_path)
    result = invoke("risk", "cases", "list", "--json", env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert last_json(result)["cases"] == []
    assert not (tmp_path / "ledger").exists()


def test_unusable_data_dir_is_an_error(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    result = invoke("demo", "--data-dir", str(occupied))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: data_dir_unavailable: ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("puhui-data/ledger.sqlite", "puhui-data/ledger.sqlite"),
        ("sqlite:////srv/ledger.sqlite", "sqlite:////srv/ledger.sqlite"),
        ("postgresql+psycopg://postgres@db:5432/x", "postgresql+psycopg://postgres@db:5432/x"),
        ("postgresql+psycopg://app:s3cret@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        ("postgresql://app:p@ss@db/x", "postgresql://app:***@db/x"),
        ("file:///tmp/a:b@c", "file:///tmp/a:b@c"),
    ],
)
def test_printed_ledger_urls_hide_passwords(url: str, shown: str) -> None:
    assert _display_url(url) == shown


def test_version() -> None:
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout.startswith("puhui ")


def test_console_entry_point_prints_one_error_line(tmp_path: Path) -> None:
    """Through ``main()`` in a real process: one line on stderr, exit 2, no traceback."""
    completed = subprocess.run(
        [sys.executable, "-m", "puhui.cli", "ledger", "verify", "bogus://x"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "error: journal_unavailable: unsupported journal URL scheme in 'bogus'"
    ]


def _make_store(data: Path) -> None:
    """Create the SQL store in ``data`` (reading commands never create one)."""
    result = invoke("tenant", "create", "Acme", env=_env(data))
    assert result.exit_code == 0, result.output


def _env(data: Path, **extra: str) -> dict[str, str]:
    """Every location in ``data``: a command never reaches ./puhui-data."""
    return {
        "PUHUI_DATA_DIR": str(data),
        "PUHUI_LEDGER_URL": str(data / "ledger"),
        "PUHUI_DATABASE_URL": f"sqlite:///{data / 'puhui.sqlite'}",
        **extra,
    }


STORE_COMMANDS = [
    ["demo", "--json"],
    ["tenant", "list", "--json"],
    ["tenant", "create", "Acme", "--json"],
    ["key", "list", "--json"],
    ["audit", "verify", "--json"],
    ["risk", "cases", "list", "--json"],
    ["risk", "lists", "show", "--json"],
    ["risk", "lists", "add", "blocked_devices", "d1", "--reason", "x", "--json"],
]
STORE_READERS = {"tenant list", "key list", "audit verify", "risk cases list", "risk lists show"}
"""Reading commands: they never create the store (``store_not_found`` where there is none)."""


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    "database_url",
    ["nosuchdialect://somewhere/x", "not a url", "postgresql+psycopg://app:s3cret@127.0.0.1:1/x"],
)
def test_an_unusable_database_url_is_store_unavailable(
    tmp_path: Path, args: list[str], database_url: str
) -> None:
    """A store URL of an unknown kind, or a server that does not answer: one error line with
    exit 2, no traceback, no password, and nothing written (the demo's ledger included)."""
    result = invoke(*args, env=_env(tmp_path, PUHUI_DATABASE_URL=database_url))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_unavailable: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert "s3cret" not in result.output
    assert not (tmp_path / "ledger").exists()


@pytest.mark.parametrize("database_url", ["postgres://app@db:5432/x", "puhui-data/puhui.sqlite"])
def test_a_database_url_of_the_wrong_form_names_the_right_ones(
    tmp_path: Path, database_url: str
) -> None:
    """A newcomer's URL in a form SQLAlchemy does not take (the `postgres://` some hosts hand
    out, a bare path) is refused with the forms a store URL has, not a bare exception name."""
    result = invoke("tenant", "list", env=_env(tmp_path, PUHUI_DATABASE_URL=database_url))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_unavailable: "), result.output
    assert "sqlite:///" in result.stderr and "postgresql+psycopg://" in result.stderr


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=" ".join)
def test_a_store_that_cannot_be_made_is_store_unavailable(tmp_path: Path, args: list[str]) -> None:
    """A data directory (or SQLite path) that names a file, or a file that is not a database:
    one error line with exit 2, not an ``OSError`` / ``DatabaseError`` traceback."""
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory, not a database")
    reader = " ".join(args[:-1]) in STORE_READERS
    for database_url, code in (
        (
            f"sqlite:///{occupied}/puhui.sqlite",
            "store_not_found" if reader else "store_unavailable",
        ),
        (f"sqlite:///{occupied}", "store_unavailable"),
    ):
        result = invoke(*args, env=_env(tmp_path, PUHUI_DATABASE_URL=database_url))
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: {code}: "), result.output
        assert "Traceback" not in result.output
    assert occupied.read_text() == "not a directory, not a database"


@pytest.mark.parametrize("ledger", ["{file}/ledger", "{file}/ledger.sqlite"])
def test_demo_on_a_ledger_that_cannot_be_made_is_journal_unavailable(
    tmp_path: Path, ledger: str
) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    env = _env(tmp_path, PUHUI_LEDGER_URL=ledger.format(file=occupied))
    result = invoke("demo", "--json", env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: journal_unavailable: "), result.output
    assert "Traceback" not in result.output


def test_sim_run_to_an_unwritable_file_is_output_unwritable(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    out = occupied / "events.jsonl"
    result = invoke(
        "sim", "run", "--days", "1", "--customers", "10", "--out", str(out), "--json",
        env=_env(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: output_unwritable: "), result.output
    assert "Traceback" not in result.output


def test_risk_report_with_an_unusable_log_is_output_unwritable(tmp_path: Path) -> None:
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory")
    result = invoke(
        "risk", "report", "--days", "1", "--customers", "10", "--log", str(occupied), "--json",
        env=_env(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: output_unwritable: "), result.output
    assert occupied.read_text() == "not a directory"


@pytest.mark.parametrize("labels", ["not json", '{"a": 1}', "[0, 1, 7]", "[0, 1, null]"])
def test_risk_backtest_with_malformed_labels_is_invalid_input(tmp_path: Path, labels: str) -> None:
    (tmp_path / "labels.json").write_text(labels)
    rules = Path(puhui.__file__).parent / "risk" / "rules" / "default.toml"
    result = invoke(
        "risk", "backtest", "--rules", str(rules), "--log", str(tmp_path), "--json",
        env=_env(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: invalid_input: "), result.output
    assert "labels.json" in result.stderr
    assert "Traceback" not in result.output


# --- PostgreSQL (when PUHUI_TEST_DATABASE_URL is set, as CI does) ---------------------------


@pytest.mark.postgres
def test_demo_and_verify_on_postgres(
    postgres_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``postgres_schema_url`` (tests/conftest.py) is a fresh schema, or a skip without PG."""
    postgres_url = postgres_schema_url
    monkeypatch.chdir(tmp_path)  # the ledger keeps a PostgreSQL journal's state under ./puhui-data
    env = {
        "PUHUI_LEDGER_URL": postgres_url,
        "PUHUI_DATABASE_URL": postgres_url,
        "PUHUI_DATA_DIR": str(tmp_path / "data"),
    }
    for runs, accounts_total in ((1, 22), (2, 39)):
        result = invoke("demo", "--json", env=env)
        assert result.exit_code == 0, result.output
        check_demo(last_json(result), accounts_total=accounts_total, runs=runs)
    verify = invoke("ledger", "verify", postgres_url, "--json")
    assert verify.exit_code == 0, verify.output
    assert last_json(verify)["accounts"] == 39


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["verify", "info"])
def test_an_empty_postgres_database_is_not_made_a_ledger(
    postgres_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A reading command pointed at a PostgreSQL database (here a fresh schema) that holds no
    journal says so and creates nothing: it used to create the journal's tables there, and a
    state directory under ./puhui-data, and report an empty ledger (a mistyped database name
    on a server that has it, or the server's own `postgres` database, quietly became one)."""
    import psycopg

    monkeypatch.chdir(tmp_path)
    result = invoke("ledger", command, postgres_schema_url)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ledger_not_found: "), result.output
    conninfo = postgres_schema_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as db:
        assert db.execute("SELECT to_regclass('puhui_journal_meta')").fetchone() == (None,)
    assert list(tmp_path.iterdir()) == []


def _groups(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)] if hasattr(command, "commands") else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _groups(sub, (*path, name))
    return found


def test_help_lists_each_command_on_one_line_when_there_is_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`puhui --help` (the first command README gives) and every group's help list each
    command with its summary: a docstring's own line breaks (at 100 characters in the source)
    used to break the listing in the middle of a sentence, whatever the terminal's width."""
    import typer.main
    import typer.rich_utils

    # Room for any summary. (Typer reads $TERMINAL_WIDTH once, when it is first imported:
    # setting it here would depend on which test of the process imported Typer first.)
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    for path, group in _groups(typer.main.get_command(app)):
        shown = invoke(*path, "--help")
        assert shown.exit_code == 0, shown.output
        lines = shown.stdout.splitlines()
        for name, command in group.commands.items():
            summary = " ".join((command.help or "").split("\n\n")[0].split())
            row = [line for line in lines if line.lstrip("│ ").startswith(f"{name} ")]
            assert row, f"puhui {' '.join(path)} --help does not list {name}"
            assert summary in " ".join(row[0].split()), (path, name, row[0].strip())
