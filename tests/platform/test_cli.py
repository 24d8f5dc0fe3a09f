"""The platform's CLI: tenant create, key create|revoke|list, audit verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puhui.cli import app
from puhui.platform import AuditLog, InvalidApiKeyError, Tenants
from puhui.store import create_engine
from puhui.store import platform as tables

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


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
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answer = None
        for _ in range(300):  # up to ~30 s for start-up (imports, numba)
            try:
                answer = httpx2.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1.0)
                break
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
