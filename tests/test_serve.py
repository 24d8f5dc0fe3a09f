"""``puhui serve`` end to end, as an operator runs it: a real server process over a fresh data
directory, a tenant's key in its store, payments over HTTP decided by the risk engine with a
ruleset file that is hot-reloaded, a block list changed in SQL while it runs, a clean shutdown
that snapshots the engine's state, and a second server refused the risk state the first one
holds."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from puhui._cli_platform import AddressUnavailableError, _bind
from puhui.clock import SystemClock
from puhui.platform import Tenants
from puhui.risk import ListStore
from puhui.store import create_engine, migrate

PUHUI = [sys.executable, "-m", "puhui.cli"]

RULES = """
name = "serve-test"
version = "{version}"
description = "Large P2P payments and blocked customers are rejected"

[thresholds]
challenge = 400
review = 700
reject = 950

[[rule]]
id = "p2p.large"
description = "A P2P payment above 500.00"
when = 'event.type == "p2p" and event.amount > 50000'
action = "reject"
priority = 100
status = "{status}"
owner = "tests"

[[rule]]
id = "list.blocked"
description = "A customer on the block list"
when = 'event.customer in list("blocked_customers") or event.device in list("blocked_devices")'
action = "reject"
priority = 1000
status = "active"
owner = "tests"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _refused_start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``puhui serve`` expected to refuse to start: run to its exit (at most 120 s)."""
    return subprocess.run(
        [*PUHUI, "serve", "--port", str(_free_port()), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _start(env: dict[str, str], port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PUHUI, "serve", "--port", str(port), "--webhook-interval", "0", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(server: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + 240  # imports and a first numba compile on a busy machine
    while time.monotonic() < deadline:
        if server.poll() is not None:
            assert server.stderr is not None
            pytest.fail(f"puhui serve exited with {server.returncode}: {server.stderr.read()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    pytest.fail("puhui serve did not come up")


def _stop(server: subprocess.Popen[str]) -> str:
    server.send_signal(signal.SIGINT)
    try:
        _, stderr = server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        raise
    assert server.returncode == 0, stderr
    return stderr


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


def _tenant_token(data_dir: Path) -> str:
    """A tenant's payments key in a fresh store under ``data_dir``, as `puhui tenant create`
    and `puhui key create` make them."""
    data_dir.mkdir()
    store = create_engine(f"sqlite:///{data_dir / 'puhui.sqlite'}")
    try:
        migrate(store)
        tenants = Tenants(store)
        acme = tenants.create("acme", "bank")
        _, token = tenants.create_key(acme.id, ["payments:read", "payments:write"], "test")
        return token
    finally:
        store.dispose()


def _funded_payer_and_payee(c: httpx.Client) -> tuple[int, dict[str, Any]]:
    """A payer verified to KYC level 2 with 2,000.00 CNY topped up (its id), and a payee."""
    payer = _post(c, "/customers", {"phone": "+8613900000001", "display_name": "Li"})
    payee = _post(c, "/customers", {"phone": "+8613900000002", "display_name": "Wu"})
    p: int = payer["id"]
    _post(c, f"/customers/{p}/identity", {"national_id": "110101199001011234"})
    card_body = {"card_token": "t", "bank_name": "ICBC", "last4": "1234"}
    card = _post(c, f"/customers/{p}/cards", card_body)
    _post(c, f"/customers/{p}/full-verification", {"biometric_passed": True})
    top_up_body = {"card_id": card["id"], "amount": 2_000_00, "currency": "CNY"}
    top_up = _post(c, f"/customers/{p}/top-ups", top_up_body)
    assert top_up["status"] == "completed", top_up
    return p, payee


def _block(tmp_path: Path, list_name: str, value: str, reason: str) -> None:
    """An operator's block list entry, as `puhui risk lists add` writes it."""
    store = create_engine(f"sqlite:///{tmp_path / 'data' / 'puhui.sqlite'}")
    try:
        ListStore(store, SystemClock()).add(list_name, value, reason=reason)
    finally:
        store.dispose()


def _until_rejected(c: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST until the answer is a rejection (a running server reads the lists from SQL within
    its check interval), for at most 30 s; the last answer."""
    deadline = time.monotonic() + 30
    while True:
        answer = _post(c, path, body)
        if answer["status"] == "rejected" or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


@pytest.mark.slow
def test_serve_decides_payments_with_the_risk_engine(tmp_path: Path) -> None:
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(version="1", status="active"))
    token = _tenant_token(tmp_path / "data")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start(env, port, "--risk-rules", str(rules), "--risk-entities", "4096")
    try:
        _wait_ready(server, base)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{base}/v1/payments", headers=headers, timeout=30) as c:
            p, payee = _funded_payer_and_payee(c)
            pay = {"payee": {"customer_id": payee["id"]}, "amount": 600_00, "currency": "CNY"}
            refused = _post(c, f"/customers/{p}/transfers", pay)
            assert (refused["status"], refused["decision"], refused["error_code"]) == (
                "rejected",
                "reject",
                "risk_rejected",
            ), refused
            small = _post(c, f"/customers/{p}/transfers", {**pay, "amount": 100_00})
            assert (small["status"], small["decision"]) == ("completed", "accept"), small

            # The rule is switched off in the file: the server takes it up without a restart.
            rules.write_text(RULES.format(version="2", status="off"))
            deadline = time.monotonic() + 30
            while True:
                again = _post(c, f"/customers/{p}/transfers", pay)
                if again["status"] == "completed" or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert (again["status"], again["decision"]) == ("completed", "accept"), again
            wallet = c.get(f"/customers/{p}/wallets/CNY").json()
            assert wallet["available"] == 2_000_00 - 100_00 - 600_00

            # An operator blocks a stolen phone: a payment made on it (the request's channel)
            # is refused, one from the customer's own phone goes through.
            _block(tmp_path, "blocked_devices", "dev-stolen", "case 0: stolen phone")
            small = {**pay, "amount": 1_00}
            stolen = {**small, "channel": {"device_id": "dev-stolen", "ip": "203.0.113.9"}}
            on_stolen = _until_rejected(c, f"/customers/{p}/transfers", stolen)
            assert (on_stolen["decision"], on_stolen["error_code"]) == ("reject", "risk_rejected")
            own = {**small, "channel": {"device_id": "dev-own"}}
            on_own = _post(c, f"/customers/{p}/transfers", own)
            assert (on_own["status"], on_own["decision"]) == ("completed", "accept"), on_own

            # An operator blocks the payer (as `puhui risk lists add` does): the running
            # server reads the list from SQL within its check interval.
            _block(tmp_path, "blocked_customers", f"c:{p}", "case 1: takeover")
            blocked = _until_rejected(c, f"/customers/{p}/transfers", small)
            assert (blocked["decision"], blocked["error_code"]) == ("reject", "risk_rejected")
        # A second server over another ledger but the same risk state is refused, with its
        # code, before it serves anything.
        second = _refused_start(env, "--ledger-url", str(tmp_path / "l2"))
        assert second.returncode == 2, second.stderr
        assert "risk_state_locked" in second.stderr
    finally:
        stderr = _stop(server)
    risk_dir = tmp_path / "data" / "risk"
    saved = json.loads((risk_dir / "state" / "features.json").read_text())
    logged = sum(1 for f in (risk_dir / "log").iterdir() if f.stat().st_size > 0)
    assert logged >= 1, stderr
    # The snapshot covers every decision logged (nothing to replay on the next start).
    assert saved["log_next_id"] >= 6, saved


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--risk-dir", "{file}"], "data_dir_unavailable"),
        (["--ledger-url", "{file}/ledger"], "journal_unavailable"),
        (["--ledger-url", "{file}/ledger.sqlite"], "journal_unavailable"),
        (["--database-url", "sqlite:///{file}"], "store_unavailable"),
        (["--database-url", "sqlite:///{file}/puhui.sqlite"], "store_unavailable"),
    ],
    ids=["risk-dir", "ledger-dir", "ledger-sqlite", "store-not-a-database", "store-dir"],
)
def test_serve_over_an_unusable_place_is_one_error_line(
    tmp_path: Path, args: list[str], code: str
) -> None:
    """A newcomer's wrong path (a file where a directory or a database should be) stops
    ``puhui serve`` with its error code and exit 2, not a traceback, before it listens."""
    occupied = tmp_path / "a-file"
    occupied.write_text("not a directory, not a database")
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    completed = _refused_start(env, *(a.format(file=occupied) for a in args))
    assert completed.returncode == 2, completed.stderr
    assert f"error: {code}: " in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr
    assert occupied.read_text() == "not a directory, not a database"


def test_serve_on_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    """`puhui serve` where another program already listens (port 8000 is a popular one) stops
    with `address_unavailable` and exit 2, naming the address, before it makes a store, a
    ledger or a risk directory; not uvicorn's error after the whole start-up."""
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        completed = subprocess.run(
            [*PUHUI, "serve", "--port", str(port)],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert completed.returncode == 2, completed.stderr
    assert f"error: address_unavailable: cannot listen on 127.0.0.1:{port}: " in completed.stderr
    assert "--port" in completed.stderr  # what to do about it
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "data").exists()


def test_serve_on_an_unknown_host_is_one_error_line(tmp_path: Path) -> None:
    """A `--host` that does not resolve (`.invalid` never does) is the same one line."""
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    completed = _refused_start(env, "--host", "no-such-host.invalid")
    assert completed.returncode == 2, completed.stderr
    assert "error: address_unavailable: cannot listen on no-such-host.invalid:" in (
        completed.stderr
    )
    assert not (tmp_path / "data").exists()


def test_serve_holds_its_port_from_the_check_on() -> None:
    """The port `puhui serve` checks is the one it serves on: its sockets listen from the
    check on (while the store, ledger and risk engine open), so another server that starts
    in the meantime cannot take the port, even with SO_REUSEADDR, and is refused instead."""
    sockets = _bind("127.0.0.1", 0)
    try:
        [held] = sockets
        port = held.getsockname()[1]
        with socket.socket() as rival:
            rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as refused:
                rival.bind(("127.0.0.1", port))
                rival.listen()
            assert refused.value.errno == errno.EADDRINUSE
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # a client connecting early waits in the backlog, not refused
    finally:
        for sock in sockets:
            sock.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(AddressUnavailableError, match="another server listens there"):
            _bind("127.0.0.1", other.getsockname()[1])


def test_serve_refuses_a_host_name_that_cannot_be_encoded() -> None:
    """A `--host` the resolver cannot even encode (an empty label) is `address_unavailable`
    too, not a traceback."""
    with pytest.raises(AddressUnavailableError, match="not a host name"):
        _bind("a..b", 0)


def test_serve_skips_an_address_family_the_kernel_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with an IPv6 address on a kernel without IPv6 (``localhost`` with ``::1`` in
    /etc/hosts) listens on the addresses it can, as asyncio does; with none left it is
    `address_unavailable`."""
    real_socket = socket.socket
    both = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
    ]

    def no_ipv6(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: both)
    sockets = _bind("localhost", 0)
    try:
        assert [sock.family for sock in sockets] == [socket.AF_INET]
    finally:
        for sock in sockets:
            sock.close()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: both[:1])
    with pytest.raises(AddressUnavailableError, match="no address of a kind"):
        _bind("localhost", 0)


VELOCITY_RULES = """
name = "serve-workers-test"
version = "1"
description = "More than five P2P payments in an hour are rejected"

[thresholds]
challenge = 400
review = 700
reject = 950

[[rule]]
id = "p2p.velocity"
description = "The sixth P2P payment of the hour and beyond"
when = 'event.type == "p2p" and customer.count_1h >= 5'
action = "reject"
priority = 100
status = "active"
owner = "tests"
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_serve_with_workers_shares_one_ledger_and_one_risk_engine(tmp_path: Path) -> None:
    """``--workers 2``: two processes answer on the port; the money and the risk engine's
    memory are one (a customer's payments spread over both are counted together); SIGINT
    stops all of them cleanly, a worker that dies stops the server (exit 3), and none is
    left behind."""
    env = {**os.environ, "PUHUI_DATA_DIR": str(tmp_path / "data")}
    rules = tmp_path / "rules.toml"
    rules.write_text(VELOCITY_RULES)
    token = _tenant_token(tmp_path / "data")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start(env, port, "--workers", "2", "--risk-rules", str(rules))
    try:
        _wait_ready(server, base)
        workers = _children(server.pid)
        assert len(workers) == 2, workers
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{base}/v1/payments", headers=headers, timeout=30) as c:
            p, payee = _funded_payer_and_payee(c)
        pay = {"payee": {"customer_id": payee["id"]}, "amount": 10_00, "currency": "CNY"}
        statuses = []
        for _ in range(10):  # a connection each: the kernel hands them to either worker
            with httpx.Client(base_url=f"{base}/v1/payments", headers=headers, timeout=30) as c:
                statuses.append(_post(c, f"/customers/{p}/transfers", pay)["status"])
        # One engine counted all ten (and the customer's earlier events of the hour): once
        # the count reaches five, every later payment is rejected. Two engines would each
        # have seen about half and let most through.
        completed = statuses.count("completed")
        assert statuses == ["completed"] * completed + ["rejected"] * (10 - completed), statuses
        assert 1 <= completed <= 5, statuses
        with httpx.Client(base_url=f"{base}/v1/payments", headers=headers, timeout=30) as c:
            wallet = c.get(f"/customers/{p}/wallets/CNY").json()
        assert wallet["available"] == 2_000_00 - completed * 10_00
    finally:
        stderr = _stop(server)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], stderr
    risk_dir = tmp_path / "data" / "risk"
    saved = json.loads((risk_dir / "state" / "features.json").read_text())
    assert saved["log_next_id"] >= 10, saved  # the primary's engine decided them all

    # A worker that dies on its own stops the server: exit 3, the other worker stopped too.
    server = _start(env, port, "--workers", "2", "--risk-rules", str(rules))
    try:
        _wait_ready(server, base)
        first, second = _children(server.pid)
        os.kill(first, signal.SIGKILL)
        _, stderr = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 3, stderr
    assert not Path(f"/proc/{second}").exists()
