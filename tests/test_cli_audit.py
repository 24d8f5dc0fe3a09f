"""Every ``puhui`` command as an outside checker runs it: with ``--json`` the last line of
stdout is one JSON object (also when the check fails); bad input is one line
``error: <code>: <message>`` on stderr, exit 2, no traceback, and nothing changed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import puhui.ledger as tb
from puhui.cli import app

runner = CliRunner()
BIG = str(2**70)
"""A number past the SQL store's 64-bit integers."""


def _env(data: Path) -> dict[str, str]:
    return {
        "PUHUI_DATA_DIR": str(data),
        "PUHUI_LEDGER_URL": str(data / "ledger"),
        "PUHUI_DATABASE_URL": f"sqlite:///{data / 'puhui.sqlite'}",
    }


def _invoke(data: Path, args: list[str]) -> Result:
    filled = [arg.format(data=data) for arg in args]
    return runner.invoke(app, filled, env=_env(data))


def _last_json(result: Result) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert lines, result.output
    data = json.loads(lines[-1])
    assert isinstance(data, dict), lines[-1]
    return data


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a digest of its bytes."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory with a SQL store (one tenant), a small ledger, an empty decision log
    and a file that is nothing Puhui wrote."""
    directory = tmp_path / "data"
    created = _invoke(directory, ["tenant", "create", "Acme", "--json"])
    assert created.exit_code == 0, created.output
    with tb.open(str(directory / "ledger")) as ledger:
        ledger.create_accounts(
            [tb.Account(id=1, ledger=156, code=1), tb.Account(id=2, ledger=156, code=1)]
        )
    (directory / "risk" / "log").mkdir(parents=True)
    (directory / "not-a-log").write_text("not a decision log")
    return directory


REPORTS = [
    (["ledger", "verify", "--json"], 0, "ledger verify"),
    (["ledger", "info", "--json"], 0, "ledger info"),
    (["tenant", "list", "--json"], 0, "tenant list"),
    (["key", "list", "--json"], 0, "key list"),
    (["audit", "verify", "--json"], 0, "audit verify"),
    (["risk", "cases", "list", "--json"], 0, "risk cases list"),
    (["risk", "lists", "show", "--json"], 0, "risk lists show"),
    (["risk", "decisions", "--json"], 0, "risk decisions"),
    (["version", "--json"], 0, "version"),
]


@pytest.mark.parametrize(("args", "exit_code", "command"), REPORTS, ids=lambda v: str(v)[:40])
def test_a_report_prints_one_json_object_last(
    data: Path, args: list[str], exit_code: int, command: str
) -> None:
    result = _invoke(data, args)
    assert result.exit_code == exit_code, result.output
    assert _last_json(result)["command"] == command


def test_ledger_verify_of_a_damaged_journal_is_a_failed_check_with_json(data: Path) -> None:
    """A damaged journal is what ``verify`` is there to find: exit 1 and the JSON report
    (``ok`` false, the ``journal_corrupt`` problem), not an error without figures."""
    segment = sorted((data / "ledger").glob("*.seg"))[0]
    damaged = bytearray(segment.read_bytes())
    damaged[100] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    result = _invoke(data, ["ledger", "verify", "--json"])
    assert result.exit_code == 1, result.output
    report = _last_json(result)
    assert report["ok"] is False
    assert [p.split(":")[0] for p in report["problems"]] == ["journal_corrupt"]
    assert "verify: FAILED" in result.stdout
    assert "Traceback" not in result.output


BAD_INPUT = [
    # the command line itself: click's usage errors, one line like every other error
    (["bogus"], "invalid_usage"),
    (["tenant", "list", "--bogus"], "invalid_usage"),
    (["risk", "cases", "list", "--limit"], "invalid_usage"),
    (["risk", "cases", "list", "--limit", "abc"], "invalid_usage"),
    (["risk", "cases", "list", "--status", "bogus"], "invalid_usage"),
    (["risk", "cases", "decide", "-1", "--analyst", "a", "--outcome", "reject"], "invalid_usage"),
    (["key", "create", "Acme"], "invalid_usage"),
    (["serve", "--port", "0"], "invalid_usage"),
    (["version", "--bogus"], "invalid_usage"),
    (["tenant", "list", "--bogus", "--json"], "invalid_usage"),
    # counts, ids and names that cannot be
    (["risk", "cases", "list", "--limit", "0", "--json"], "invalid_input"),
    (["risk", "decisions", "--limit", "-1", "--json"], "invalid_input"),
    (["risk", "cases", "decide", "999", "--analyst", "a", "--outcome", "reject"], "case_not_found"),
    (["key", "create", BIG, "--scope", "ledger:read", "--json"], "tenant_not_found"),
    (["key", "list", BIG, "--json"], "tenant_not_found"),
    (["key", "list", "\u00b2", "--json"], "tenant_not_found"),
    (["key", "revoke", "", "--json"], "api_key_not_found"),
    (["tenant", "create", "", "--json"], "invalid_name"),
    (["sim", "run", "--days", "0", "--json"], "invalid_input"),
    (["risk", "report", "--model-threshold", "-5", "--json"], "invalid_input"),
    (["risk", "report", "--model-threshold", "nan", "--json"], "invalid_input"),
    # places that are not what they should be
    (["risk", "decisions", "--log", "{data}/nowhere", "--json"], "invalid_input"),
    (["risk", "decisions", "--log", "{data}/not-a-log", "--json"], "invalid_input"),
    # an empty place is not the default place nor the current directory
    (["sim", "run", "--days", "1", "--customers", "10", "--out", "", "--json"], "invalid_usage"),
    (["demo", "--data-dir", "", "--json"], "invalid_usage"),
    (["ledger", "verify", "", "--json"], "invalid_usage"),
    (["ledger", "info", ""], "invalid_usage"),
    (["risk", "decisions", "--log", "", "--json"], "invalid_usage"),
    (["risk", "report", "--rules", "", "--json"], "invalid_usage"),
    (["tenant", "list", "--database-url", "", "--json"], "invalid_usage"),
    (["audit", "verify", "--database-url", ""], "invalid_usage"),
    (["serve", "--ledger-url", ""], "invalid_usage"),
    (["sim", "run", "--days", "1", "--customers", "10", "--out", "{data}", "--json"],
     "output_unwritable"),
    (["risk", "train", "--days", "1", "--customers", "10", "--out", "{data}", "--json"],
     "output_unwritable"),
    (["ledger", "verify", "{data}/not-a-log", "--json"], "journal_unavailable"),
    (["ledger", "verify", "{data}/nowhere", "--json"], "ledger_not_found"),
    (["audit", "verify", "--database-url", "http://example.invalid/x", "--json"],
     "store_unavailable"),
    (["audit", "verify", "--database-url", "sqlite:///{data}/nowhere/puhui.sqlite", "--json"],
     "store_not_found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code"), BAD_INPUT, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v
)
def test_bad_input_is_one_error_line_and_changes_nothing(
    data: Path, args: list[str], code: str
) -> None:
    before = _snapshot(data)
    result = _invoke(data, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {code}: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    if "--json" in args:  # a machine finds the error as the last line of stdout too
        error = _last_json(result)["error"]
        assert error["code"] == code and error["message"] in result.stderr
    after = _snapshot(data)
    # a SQLite journal's lock file beside a file that is none is the journal's, not ours
    assert {k: v for k, v in after.items() if not k.endswith("-lock")} == before


READING = [
    ["tenant", "list", "--json"],
    ["key", "list", "--json"],
    ["key", "revoke", "0123456789abcdef", "--json"],
    ["audit", "verify", "--json"],
    ["risk", "cases", "list", "--json"],
    ["risk", "cases", "decide", "1", "--analyst", "a", "--outcome", "reject", "--json"],
    ["risk", "lists", "show", "--json"],
    ["risk", "lists", "remove", "blocked_devices", "d1", "--json"],
]


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_a_reading_command_never_creates_the_store(tmp_path: Path, args: list[str]) -> None:
    """Pointed at a data directory that does not exist, a command that only reads (or
    removes) says ``store_not_found`` and creates nothing: an ``audit verify`` of a mistyped
    path must not report a fresh, empty log as intact."""
    missing = tmp_path / "missing"
    result = _invoke(missing, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_not_found: "), result.output
    assert not missing.exists()


REFUSED_ENTRIES = [
    ["risk", "lists", "add", "no_such_list", "d1", "--reason", "r", "--json"],
    ["risk", "lists", "add", "blocked_devices", "d1", "--reason", "", "--json"],
    ["risk", "lists", "add", "blocked_devices", "d1", "--reason", "r", "--expires-in", "soon"],
    # past the latest time an entry can lapse, counted from now (not from the epoch)
    ["risk", "lists", "add", "blocked_devices", "d1", "--reason", "r", "--expires-in", "100000d"],
]


@pytest.mark.parametrize("args", REFUSED_ENTRIES, ids=" ".join)
def test_a_refused_list_entry_creates_no_store(tmp_path: Path, args: list[str]) -> None:
    """`risk lists add` writes, so it creates the store; but an entry it refuses (an unknown
    list, an empty reason, an expiry it cannot read) is refused before the store opens:
    ``risk_list_invalid`` and nothing made. It used to create the store first."""
    missing = tmp_path / "missing"
    result = _invoke(missing, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: risk_list_invalid: "), result.output
    assert not missing.exists()


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_a_reading_command_never_makes_an_empty_file_a_store(
    tmp_path: Path, args: list[str]
) -> None:
    """An existing SQLite file that holds no store (here an empty one, as `touch` makes it)
    is no store either: ``store_not_found``, and the file is left as it was. It used to be
    migrated into a store, and ``audit verify`` to report its fresh, empty log as intact."""
    data = tmp_path / "data"
    store = tmp_path / "empty.sqlite"
    store.touch()
    env = {**_env(data), "PUHUI_DATABASE_URL": f"sqlite:///{store}"}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_not_found: "), result.output
    assert store.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.name]


def test_a_reading_command_never_makes_an_empty_file_uri_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a store named by a ``file:`` URI (``sqlite:///file:…?uri=true``): the
    empty file is no store, and no directory named after the URI appears where the command
    runs (one did: the URI taken for a path)."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "empty.sqlite"
    store.touch()
    env = {**_env(tmp_path / "data"), "PUHUI_DATABASE_URL": f"sqlite:///file:{store}?uri=true"}
    result = runner.invoke(app, ["tenant", "list", "--json"], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_not_found: "), result.output
    assert store.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.name]


@pytest.mark.postgres
@pytest.mark.parametrize("args", [["audit", "verify"], ["tenant", "list"]], ids=" ".join)
def test_a_reading_command_never_makes_an_empty_postgres_database_a_store(
    postgres_schema_url: str, tmp_path: Path, args: list[str]
) -> None:
    """The same on PostgreSQL: a database (here a fresh schema) without Puhui's tables is
    ``store_not_found``, and no table is created in it."""
    import psycopg

    env = {**_env(tmp_path / "data"), "PUHUI_DATABASE_URL": postgres_schema_url}
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store_not_found: "), result.output
    conninfo = postgres_schema_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as db:
        tables = db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
    assert tables == (0,)


def test_python_dash_m_puhui_runs_the_command_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "puhui", "version", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1])["command"] == "version"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--risk-model", "{data}/not-a-log"], "risk_model_invalid"),
        (["--risk-rules", "{data}/nowhere.toml"], "risk_rule_invalid"),
        (["--database-url", "http://example.invalid/x"], "store_unavailable"),
    ],
    ids=["model", "rules", "store"],
)
def test_serve_refuses_unusable_files_before_it_makes_anything(
    tmp_path: Path, args: list[str], code: str
) -> None:
    """A model or ruleset file that cannot be loaded, or a store URL of another kind, stops
    ``puhui serve`` before it creates the store, the ledger or the risk directory (in a real
    process: ``serve`` sets up logging for the whole process)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "not-a-log").write_text("not a model")
    before = _snapshot(tmp_path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "puhui",
            "serve",
            "--port",
            "1",
            *(a.format(data=data) for a in args),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **_env(data)},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith(f"error: {code}: "), completed.stderr
    assert _snapshot(tmp_path) == before
