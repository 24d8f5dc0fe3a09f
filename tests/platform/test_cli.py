"""The platform's CLI: tenant create, key create|revoke|list, audit verify."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from puhui.cli import app
from puhui.platform import AuditLog, InvalidApiKeyError, Tenants, WebhookOptions
from puhui.platform import tenants as tenants_module
from puhui.store import create_engine, migrate
from puhui.store import platform as tables

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _command_tree() -> Any:
    """The CLI as click sees it: groups with ``commands``, commands with ``params``."""
    return typer.main.get_command(app)


def _last_json(output: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return data


def test_tenants_keys_and_audit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    db = ["--database-url", url]
    code, out = _run("tenant", "create", "Bank A", "--kind", "bank", *db, "--json")
    assert code == 0, out
    tenant = _last_json(out)["tenant"]
    assert isinstance(tenant, dict) and tenant["name"] == "Bank A"
    code, out = _run("tenant", "create", "Bank A", *db)
    assert code == 2 and "tenant_name_taken" in out
    code, out = _run("tenant", "create", "Casino", "--kind", "casino", *db)
    assert code == 2 and "unknown_tenant_kind" in out

    code, out = _run("key", "create", "Bank A", "--scope", "ledger:read", *db, "--json")
    assert code == 0, out
    created = _last_json(out)
    token = str(created["token"])
    key = created["key"]
    assert isinstance(key, dict)
    assert "token (shown once)" in out and token.startswith(f"pk_{key['id']}_")
    code, out = _run("key", "create", "Bank A", "--scope", "platform:admin", *db)
    assert code == 2 and "scope_not_allowed" in out

    code, out = _run("key", "list", *db, "--json")
    listed = _last_json(out)["keys"]
    assert isinstance(listed, list) and [k["id"] for k in listed] == [key["id"]]
    assert token.rsplit("_", 1)[1] not in out  # the secret is never listed

    engine = create_engine(url)
    tenants = Tenants(engine)
    assert tenants.authenticate(token).key_id == key["id"]
    code, out = _run("key", "revoke", str(key["id"]), *db)
    assert code == 0 and "revoked" in out
    with pytest.raises(InvalidApiKeyError):
        tenants.authenticate(token)
    code, out = _run("key", "revoke", "0" * 16, *db)
    assert code == 2 and "api_key_not_found" in out

    audit = AuditLog(engine)
    for status in (200, 201, 200):
        audit.append(
            tenant_id=1, key_id=None, method="POST", route="/r", target="/t", status=status
        )
    code, out = _run("audit", "verify", *db, "--json")
    assert code == 0 and _last_json(out)["ok"] is True
    with engine.begin() as conn:
        conn.execute(tables.audit_log.delete().where(tables.audit_log.c.seq == 3))
    code, out = _run("audit", "verify", *db, "--json")
    report = _last_json(out)
    assert code == 1 and report["ok"] is False
    assert report["problem"] == {
        "seq": 3,
        "kind": "truncated",
        "detail": "the anchor records 3 entries, the log holds 2",
    }
    assert "BROKEN at entry 3" in out
    engine.dispose()


START_UP_S = 240.0
"""How long a test waits for ``puhui serve`` to answer: imports and, on a fresh checkout, the
ledger kernels' first compile (numba), on a slow shared machine (81 s seen on two busy cores).
The wait ends as soon as it answers."""


def test_key_list_lists_every_key_past_one_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``puhui key list`` read one listing, at most ``keys_listed_max`` (1,000) keys, and
    said nothing of the rest. It now pages on until every key is listed."""
    monkeypatch.setattr(tenants_module, "keys_listed_max", 2)
    url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    engine = create_engine(url)
    migrate(engine)
    tenants = Tenants(engine)
    bank = tenants.create("Bank A", "bank")
    made = [tenants.create_key(bank.id, ["ledger:read"])[0].id for _ in range(5)]
    for args in ([], ["Bank A"]):
        code, out = _run("key", "list", *args, "--database-url", url, "--json")
        assert code == 0, out
        listed = _last_json(out)["keys"]
        assert isinstance(listed, list) and [k["id"] for k in listed] == made


def test_serve_answers_on_the_given_port(tmp_path: Path) -> None:
    """``puhui serve`` starts uvicorn with the app; a real request reaches it."""
    import socket
    import subprocess
    import sys
    import time

    import httpx2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    command = [sys.executable, "-m", "puhui.cli", "serve", "--port", str(port)]
    command += ["--database-url", url, "--ledger-url", str(tmp_path / "ledger")]
    # Its own data directory (the risk state), not ./puhui-data of whoever runs the tests.
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        answer = None
        deadline = time.monotonic() + START_UP_S
        while answer is None and time.monotonic() < deadline:
            try:
                answer = httpx2.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5.0)
            except httpx2.TransportError:
                assert server.poll() is None, "puhui serve exited"
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 200
        assert answer.json()["openapi"].startswith("3.1")
        unauthenticated = httpx2.post(f"http://127.0.0.1:{port}/v1/ledger/accounts", json={})
        assert unauthenticated.status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_delivers_webhooks_and_stops_cleanly(tmp_path: Path) -> None:
    """``puhui serve`` runs the delivery worker: an event recorded in its store reaches a
    local receiver, signed; on SIGTERM the server (and its worker) stop with exit status 0."""
    import http.server
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    from puhui.platform import EventType, Webhooks, verify_signature
    from puhui.store import migrate

    got: list[tuple[dict[str, str], bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    engine = create_engine(url)
    migrate(engine)
    tenant = Tenants(engine).create("Bank A", "bank")
    webhooks = Webhooks(engine, options=WebhookOptions(loopback_allowed=True))
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    _, secret = webhooks.create_endpoint(tenant.id, hook, ["*"])
    with engine.begin() as conn:
        event_id = webhooks.record(conn, tenant.id, EventType.BILL_PAID, {"amount": "1"})
    engine.dispose()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "puhui.cli", "serve", "--port", str(port)]
    command += ["--database-url", url, "--ledger-url", str(tmp_path / "ledger")]
    command += ["--webhook-interval", "0.1", "--webhook-loopback"]
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + START_UP_S  # start-up, then the first round
        while not got and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(got) == 1, "the server delivered nothing"
        headers, body = got[0]
        assert headers["Puhui-Event-Id"] == event_id
        assert verify_signature(secret, headers["Puhui-Signature"], body)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        receiver.shutdown()
        receiver.server_close()
    text = (tmp_path / "serve.log").read_text()
    # Uvicorn shuts the app down gracefully, then re-raises the signal it caught.
    assert server.returncode in (0, -signal.SIGTERM), text[-2000:]
    assert "Application shutdown complete" in text, text[-2000:]
    assert "Traceback" not in text and "cut short" not in text, text[-2000:]


def test_key_create_help_names_every_scope() -> None:
    """`puhui key create --help` is where an operator learns the scopes: all of them."""
    from puhui.platform import Scope

    create = _command_tree().commands["key"].commands["create"]
    [option] = [param for param in create.params if param.name == "scope"]
    missing = [scope.value for scope in Scope if scope.value not in str(option.help)]
    assert not missing, f"--scope help omits {missing}"


def test_store_and_ledger_defaults_name_the_data_dir() -> None:
    """Every help text giving the default store or ledger says it lies in $PUHUI_DATA_DIR
    (which moves it), not only in ./puhui-data."""
    wrong = []
    stack = [("puhui", _command_tree())]
    while stack:
        path, command = stack.pop()
        stack += [(f"{path} {name}", sub) for name, sub in getattr(command, "commands", {}).items()]
        for param in command.params:
            text = str(getattr(param, "help", "") or "")
            if "./puhui-data/" in text and "PUHUI_DATA_DIR" not in text:
                wrong.append(f"{path} {param.name}")
    assert not wrong, wrong


def test_help_shows_no_raw_rst_markup() -> None:
    """Every command's `--help` reads as plain text: no RST double backticks (the docstrings
    the help comes from quote names with single backticks, as the docs do)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    raw = []
    stack: list[tuple[list[str], Any]] = [([], _command_tree())]
    while stack:
        path, command = stack.pop()
        stack += [([*path, name], sub) for name, sub in getattr(command, "commands", {}).items()]
        result = runner.invoke(app, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        if "``" in result.output:
            raw.append(" ".join(["puhui", *path]))
    assert len(raw) == 0, raw
