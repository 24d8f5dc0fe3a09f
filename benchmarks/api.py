"""The open API over HTTP on loopback: single-payment POSTs, and the ledger's batch endpoint.

A server like ``puhui serve`` (FastAPI on uvicorn with uvloop, one process) runs in a
subprocess on a free loopback port over a fresh data directory (a SQLite file and the file
journal). The benchmark creates a tenant and an API key, registers customers (verified, a
card bound, topped up) and merchants through the API, then:

* ``payments``: ``--clients`` concurrent HTTP clients (spread over ``--client-processes``
  processes) each send single-payment POSTs — half P2P, half merchant payments by QR — one
  after another, until ``--payments`` are sent or ``--seconds`` pass. The default client
  (``--client lean``) is one asyncio protocol per keep-alive HTTP/1.1 connection sending
  request bytes built before the clock starts and reading each answer (status line,
  ``Content-Length``, the JSON body): ~0.06 ms of CPU per request on the server's cores,
  where httpx2 (``--client httpx``, the client of the figures before 2026-11-27) took ~1 ms.
  Every payment goes the whole way: key, rate limit, scope, ownership, the payments service
  (checks, risk, record, ledger, outcome, through ``PaymentCoalescer``), the audit chain.
  Reported: requests/s, p50/p99 latency; ``--idempotency-keys`` sends an
  ``Idempotency-Key`` with each request.
* ``ledger_batch``: ``--batch-clients`` clients POST full batches (``--batch`` transfers) to
  ``/v1/ledger/transfers``; reported: transfers/s (bodies are encoded before the clock
  starts).

The machine is shared and has 2 cores: the server, its ledger writer and the clients all
compete for them, and other work's load swings the wall-clock figures. So the server's own
CPU time is reported beside them (``/proc``): requests (and transfers) per server
CPU-second say what the server costs, whatever else ran.

    python benchmarks/api.py --json          # full run
    python benchmarks/api.py --quick --json  # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from _args import positive_int

HUGE = 10**12  # KYC limits (major units) the benchmark's customers never reach
TOP_UP = 10**13  # minor units each customer starts with


# --- the server ------------------------------------------------------------------------------


def serve(workdir: Path, port: int, http: str = "corked", workers: int = 1) -> None:
    """Run the API (what ``puhui serve`` runs, with the benchmark's limits) until killed;
    with ``workers`` > 1 as ``puhui serve --workers`` runs it (this process keeps the ledger,
    the workers answer HTTP)."""
    import uvicorn

    from puhui import ledger as L
    from puhui.api import ApiOptions, CorkedHttpProtocol, create_app, warm_up_readers
    from puhui.clock import SystemClock
    from puhui.payments import KycLevel, KycLimits, Payments, PaymentsOptions, SimulatedBank
    from puhui.store import create_engine, migrate

    clock = SystemClock()
    engine = create_engine(f"sqlite:///{workdir / 'puhui.sqlite'}")
    migrate(engine)
    limits = {level: KycLimits(HUGE, HUGE, HUGE) for level in KycLevel}
    options = ApiOptions(rate_per_key_per_s=1e9, rate_burst_requests=10**9)
    with L.open(str(workdir / "ledger"), clock=clock) as ledger:
        payments = Payments(
            engine,
            ledger,
            clock=clock,
            bank=SimulatedBank(clock),
            options=PaymentsOptions(kyc_limits=limits),
        )
        app = create_app(engine, ledger, clock=clock, options=options, payments=payments)
        if workers > 1:
            from puhui._cli_platform import _bind
            from puhui._serve_workers import serve_workers

            sockets = _bind("127.0.0.1", port)
            serve_workers(
                workers,
                sockets=sockets,
                database_url=f"sqlite:///{workdir / 'puhui.sqlite'}",
                ledger=ledger,
                risk_engine=None,  # the pass-through, as in one process
                host="127.0.0.1",
                port=port,
                api_options=options,
                kyc_limits=limits,
            )
            return
        warm_up_readers()
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http=CorkedHttpProtocol if http == "corked" else http,
            log_level="warning",
            access_log=False,
        )


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its live descendants (``--workers``) have
    used so far (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime, stime
    tree, pending = {pid}, [pid]
    while pending:
        parent = pending.pop()
        children = [child for child, p in parents.items() if p == parent]
        tree.update(children)
        pending.extend(children)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tenant_key(workdir: Path) -> str:
    from puhui.platform import Tenants
    from puhui.store import create_engine, migrate

    engine = create_engine(f"sqlite:///{workdir / 'puhui.sqlite'}")
    migrate(engine)
    tenants = Tenants(engine)
    tenant = tenants.create("Bench Bank", "bank")
    _, token = tenants.create_key(
        tenant.id, ["payments:read", "payments:write", "ledger:read", "ledger:write"]
    )
    engine.dispose()
    return token


def _wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float = 600.0) -> None:
    import httpx2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx2.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not come up")


# --- set-up ----------------------------------------------------------------------------------


async def _setup(base: str, token: str, customers: int, merchants: int) -> dict[str, Any]:
    import httpx2

    headers = {"Authorization": f"Bearer {token}"}
    p = f"{base}/v1/payments"
    async with httpx2.AsyncClient(headers=headers, timeout=60.0) as client:

        async def post(path: str, body: Any = None) -> Any:
            response = await client.post(p + path, json=body)
            if response.status_code not in (200, 201):
                raise SystemExit(f"set-up {path}: {response.status_code} {response.text}")
            return response.json()

        async def customer(n: int) -> int:
            c = (await post("/customers", {"phone": f"+86139{n:08d}", "display_name": "C"}))["id"]
            await post(f"/customers/{c}/identity", {"national_id": f"ID{n:012d}"})
            card = await post(
                f"/customers/{c}/cards", {"card_token": f"t{n}", "bank_name": "B", "last4": "0000"}
            )
            await post(f"/customers/{c}/full-verification", {"biometric_passed": True})
            await post(
                f"/customers/{c}/top-ups",
                {"card_id": card["id"], "amount": TOP_UP, "currency": "CNY"},
            )
            return int(c)

        ids: list[int] = []
        for start in range(0, customers, 50):
            ids += await asyncio.gather(
                *(customer(n) for n in range(start, min(customers, start + 50)))
            )
        qrs = []
        for n in range(merchants):
            merchant = await post(
                "/merchants",
                {"name": f"M{n}", "category": "food", "fee_bps": 60, "settlement_card_token": "s"},
            )
            qrs.append(merchant["qr"])
    return {"customers": ids, "merchant_qrs": qrs}


# --- payments --------------------------------------------------------------------------------


async def _payment_clients(
    base: str,
    token: str,
    world: dict[str, Any],
    clients: int,
    payments: int,
    seconds: float,
    keys: bool,
    seed: int,
) -> dict[str, Any]:
    import httpx2

    rng = np.random.default_rng(seed)
    customers: list[int] = world["customers"]
    qrs: list[str] = world["merchant_qrs"]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + seconds

    async with httpx2.AsyncClient(headers=headers, limits=limits, timeout=60.0) as client:

        async def one_client(index: int) -> None:
            nonlocal sent
            n = 0
            while sent < payments and time.perf_counter() < deadline:
                sent += 1
                n += 1
                payer = customers[int(rng.integers(len(customers)))]
                if n % 2:
                    payee = customers[int(rng.integers(len(customers)))]
                    if payee == payer:
                        payee = customers[(customers.index(payer) + 1) % len(customers)]
                    path = f"/v1/payments/customers/{payer}/transfers"
                    body: dict[str, Any] = {
                        "payee": {"customer_id": payee},
                        "amount": 1 + int(rng.integers(10_000)),
                        "currency": "CNY",
                    }
                else:
                    path = f"/v1/payments/customers/{payer}/merchant-payments"
                    body = {
                        "merchant_qr": qrs[int(rng.integers(len(qrs)))],
                        "amount": 1 + int(rng.integers(10_000)),
                        "currency": "CNY",
                    }
                extra = {"Idempotency-Key": f"b{seed}-{index}-{n}"} if keys else None
                t0 = time.perf_counter()
                response = await client.post(base + path, json=body, headers=extra)
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 201 or response.json().get("status") != "completed":
                    code = str(response.json().get("code") or response.json().get("status"))
                    errors[code] = errors.get(code, 0) + 1

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return {
        "count": len(latencies),
        "elapsed_s": time.perf_counter() - started,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
        "errors": errors,
        "cpu_s": time.process_time() - cpu_started,
    }


# --- the lean load client --------------------------------------------------------------------


def _payment_requests(
    host: str,
    token: str,
    world: dict[str, Any],
    count: int,
    keys: bool,
    seed: int,
    tag: str,
) -> list[bytes]:
    """``count`` complete HTTP/1.1 requests (head and JSON body), one per payment, each with
    its own payer, payee or merchant and amount: half P2P by customer id, half merchant
    payments by QR (the same mix as the httpx client's)."""
    rng = np.random.default_rng(seed)
    customers: list[int] = world["customers"]
    qrs: list[str] = world["merchant_qrs"]
    payers = rng.integers(len(customers), size=count).tolist()
    payees = rng.integers(len(customers), size=count).tolist()
    merchants = rng.integers(len(qrs), size=count).tolist()
    amounts = (1 + rng.integers(10_000, size=count)).tolist()
    fixed = f"Host: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    requests: list[bytes] = []
    for n in range(count):
        payer = customers[payers[n]]
        if n % 2 == 0:
            payee_index = payees[n]
            if customers[payee_index] == payer:
                payee_index = (payee_index + 1) % len(customers)
            path = f"/v1/payments/customers/{payer}/transfers"
            body = (
                f'{{"payee":{{"customer_id":{customers[payee_index]}}},'
                f'"amount":{amounts[n]},"currency":"CNY"}}'
            )
        else:
            path = f"/v1/payments/customers/{payer}/merchant-payments"
            body = (
                f'{{"merchant_qr":{json.dumps(qrs[merchants[n]])},'
                f'"amount":{amounts[n]},"currency":"CNY"}}'
            )
        key = f"Idempotency-Key: b{tag}-{n}\r\n" if keys else ""
        encoded = body.encode()
        head = f"POST {path} HTTP/1.1\r\n{fixed}{key}Content-Length: {len(encoded)}\r\n\r\n"
        requests.append(head.encode() + encoded)
    return requests


class _AnswerError(Exception):
    """An answer this client cannot read or that breaks HTTP/1.1 keep-alive."""


class _PaymentConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a payment, reads its whole answer
    (status line, headers, ``Content-Length`` body), checks it (201 and ``"status":
    "completed"``), and sends the next, until the shared queue is empty or the deadline."""

    def __init__(self, run: _LeanRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.in_flight = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def send_next(self) -> None:
        assert self.transport is not None
        request = self.run.next_request()
        if request is None:
            self.in_flight = False
            self.transport.close()
            return
        self.in_flight = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        try:
            self._read(data)
        except _AnswerError as error:  # the run fails: no answer may go unchecked
            self.run.failure = self.run.failure or str(error)
            assert self.transport is not None
            self.transport.close()

    def _read(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise _AnswerError(f"not an HTTP/1.1 status line: {lines[0]!r}")
            status = int(parts[1])
            length = -1
            keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    raise _AnswerError("a chunked answer: this client reads Content-Length only")
                elif name == "connection" and value.strip().lower() == "close":
                    keep_alive = False
            if length < 0:
                raise _AnswerError("an answer without Content-Length")
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.in_flight = False
            self.run.answered(time.perf_counter() - self.sent_at, status, body)
            if not keep_alive:
                raise _AnswerError("the server closed a keep-alive connection")
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.run.failure = (
                self.run.failure or f"connection lost with a request in flight: {exc}"
            )
        if not self.closed.done():
            self.closed.set_result(None)


class _LeanRun:
    """The shared state of one process's connections: the requests left, the answers."""

    def __init__(self, requests: list[bytes], deadline: float) -> None:
        self.requests = requests
        self.next_index = 0
        self.deadline = deadline
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.failure: str | None = None
        """Why the run broke off (an unreadable answer, a lost connection), if it did."""

    def next_request(self) -> bytes | None:
        if self.next_index >= len(self.requests) or time.perf_counter() >= self.deadline:
            return None
        request = self.requests[self.next_index]
        self.next_index += 1
        return request

    def answered(self, latency_s: float, status: int, body: bytes) -> None:
        self.latencies.append(latency_s)
        try:
            answer = json.loads(body)
        except ValueError:
            raise _AnswerError(
                f"an answer {status} whose body is not JSON: {body[:200]!r}"
            ) from None
        if not isinstance(answer, dict):
            raise _AnswerError(f"an answer {status} whose body is not an object")
        if status != 201 or answer.get("status") != "completed":
            code = str(answer.get("code") or answer.get("status") or status)
            self.errors[code] = self.errors.get(code, 0) + 1


async def _lean_payment_clients(
    base: str,
    token: str,
    world: dict[str, Any],
    clients: int,
    payments: int,
    seconds: float,
    keys: bool,
    seed: int,
) -> dict[str, Any]:
    """``clients`` keep-alive connections, each with one payment in flight (the requests
    are built before the clock starts)."""
    host_port = base.removeprefix("http://")
    host, _, port = host_port.partition(":")
    requests = _payment_requests(host_port, token, world, payments, keys, seed, f"{seed}")
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    cpu_started = time.process_time()
    run = _LeanRun(requests, started + seconds)
    connections: list[_PaymentConnection] = []
    for _ in range(clients):
        _, protocol = await loop.create_connection(lambda: _PaymentConnection(run), host, int(port))
        connections.append(protocol)
    for connection in connections:
        connection.send_next()
    await asyncio.gather(*(connection.closed for connection in connections))
    if run.failure is not None:
        raise SystemExit(f"the lean client failed: {run.failure}")
    return {
        "count": len(run.latencies),
        "elapsed_s": time.perf_counter() - started,
        "latencies_ms": [round(x * 1000, 3) for x in run.latencies],
        "errors": run.errors,
        "cpu_s": time.process_time() - cpu_started,
    }


def _client_process(args: argparse.Namespace) -> None:
    """One process of HTTP clients (``--client``): prints its JSON result."""
    import uvloop

    world = json.loads(Path(args.world).read_text())
    clients = _lean_payment_clients if args.client == "lean" else _payment_clients
    result = uvloop.run(
        clients(
            args.base,
            args.token,
            world,
            args.clients_here,
            args.payments_here,
            args.seconds,
            args.idempotency_keys,
            args.seed,
        )
    )
    # uvloop may leave stdout non-blocking: a result larger than the pipe (64 KiB of
    # latencies) was cut short when the parent was slow to read (EAGAIN mid-write).
    data = (json.dumps(result) + "\n").encode()
    while data:
        try:
            data = data[os.write(1, data) :]
        except BlockingIOError:
            select.select([], [1], [])


def run_payments(
    args: argparse.Namespace, base: str, token: str, world_file: Path
) -> dict[str, Any]:
    processes = max(1, args.client_processes)
    per_process_clients = max(1, args.clients // processes)
    per_process_payments = max(1, args.payments // processes)
    children = []
    for index in range(processes):
        cmd = [
            sys.executable,
            __file__,
            "--as-client",
            "--client",
            args.client,
            "--base",
            base,
            "--token",
            token,
            "--world",
            str(world_file),
            "--clients-here",
            str(per_process_clients),
            "--payments-here",
            str(per_process_payments),
            "--seconds",
            str(args.seconds),
            "--seed",
            str(index + 1),
        ]
        if args.idempotency_keys:
            cmd.append("--idempotency-keys")
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a client process failed:\n{err.decode()[-4000:]}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    latencies = np.array([x for r in results for x in r["latencies_ms"]], dtype=np.float64)
    elapsed = max(r["elapsed_s"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    clients_cpu_s = sum(r["cpu_s"] for r in results)
    return {
        "requests": int(latencies.size),
        "clients_cpu_ms_per_request": round(1000 * clients_cpu_s / max(1, latencies.size), 3),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(latencies.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "p100_ms": round(float(latencies.max()), 3),
        "clients": per_process_clients * processes,
        "client_processes": processes,
        "client": args.client,
        "idempotency_keys": args.idempotency_keys,
        "not_completed": errors,
    }


# --- the ledger's batch endpoint -------------------------------------------------------------


async def _ledger_batches(
    base: str, token: str, args: argparse.Namespace, binary: bool, first_id: int
) -> dict[str, Any]:
    """Full batches of transfers to ``/v1/ledger/transfers`` (JSON) or, with ``binary``, to
    ``/v1/ledger/transfers/binary`` (128-byte records); ids from ``first_id`` up."""
    import httpx2

    from puhui.ledger import RESULT_DTYPE, TRANSFER_DTYPE, CreateTransferStatus

    CREATED = int(CreateTransferStatus.CREATED)

    content_type = "application/octet-stream" if binary else "application/json"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    accounts = 1_000
    first_account = 1_000_000
    async with httpx2.AsyncClient(headers=headers, timeout=300.0) as client:
        for start in range(0, accounts, 500):
            body = {
                "accounts": [
                    {"id": str(first_account + n), "ledger": 1, "code": 1}
                    for n in range(start, start + 500)
                ]
            }
            response = await client.post(
                f"{base}/v1/ledger/accounts",
                json=body,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 200, response.text
        rng = np.random.default_rng(7)
        bodies: list[bytes] = []
        next_id = first_id
        for _ in range(args.batches):
            debit = rng.integers(accounts, size=args.batch)
            credit = (debit + 1 + rng.integers(accounts - 1, size=args.batch)) % accounts
            if binary:
                records = np.zeros(args.batch, TRANSFER_DTYPE)
                records["id_lo"] = np.arange(next_id, next_id + args.batch, dtype=np.uint64)
                records["debit_account_id_lo"] = first_account + debit
                records["credit_account_id_lo"] = first_account + credit
                records["amount_lo"] = 1
                records["ledger"] = 1
                records["code"] = 1
                bodies.append(records.tobytes())
                next_id += args.batch
                continue
            transfers = []
            for d, c in zip(debit.tolist(), credit.tolist(), strict=True):
                transfers.append(
                    {
                        "id": str(next_id),
                        "debit_account_id": str(first_account + d),
                        "credit_account_id": str(first_account + c),
                        "amount": "1",
                        "ledger": 1,
                        "code": 1,
                    }
                )
                next_id += 1
            bodies.append(json.dumps({"transfers": transfers}).encode())
        queue = list(bodies)
        latencies: list[float] = []
        failed = 0

        async def one_client() -> None:
            nonlocal failed
            path = "/v1/ledger/transfers/binary" if binary else "/v1/ledger/transfers"
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                response = await client.post(f"{base}{path}", content=body)
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text
                if binary:
                    statuses = np.frombuffer(response.content, RESULT_DTYPE)["status"]
                    failed += int(np.count_nonzero(statuses != CREATED))
                else:
                    # Counted in the answer's text (compact, as the server writes it): a
                    # client that parses 8,189 results into dicts spends more CPU on it than
                    # the server spends on the batch, on the same two cores.
                    content = response.content
                    answered = content.count(b'"status":"')
                    if answered != body.count(b'"id":'):
                        raise AssertionError(f"{answered} results for a batch: {content[:200]!r}")
                    failed += answered - content.count(b'"status":"created"')

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(args.batch_clients)))
        elapsed = time.perf_counter() - started
    total = args.batches * args.batch
    lat = np.array(latencies) * 1000
    return {
        "format": "binary" if binary else "json",
        "transfers": total,
        "batch": args.batch,
        "clients": args.batch_clients,
        "elapsed_s": round(elapsed, 3),
        "transfers_per_s": round(total / elapsed, 1),
        "batch_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "batch_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "not_created": failed,
    }


def run_ledger_batches(
    base: str, token: str, args: argparse.Namespace, server_pid: int, binary: bool
) -> dict[str, Any]:
    import uvloop

    first_id = 2 * 10**9 if binary else 10**9
    cpu_before = _cpu_s(server_pid)
    batch = uvloop.run(_ledger_batches(base, token, args, binary, first_id))
    batch_cpu_s = _cpu_s(server_pid) - cpu_before
    batch["server_cpu_s"] = round(batch_cpu_s, 3)
    batch["transfers_per_server_cpu_s"] = round(batch["transfers"] / max(batch_cpu_s, 1e-9), 1)
    batch["server_cpu_us_per_transfer"] = round(1e6 * batch_cpu_s / batch["transfers"], 3)
    print(
        f"ledger batch {batch['transfers_per_s']:>10,.0f} transfers/s  ({batch['format']}, "
        f"{batch['clients']} clients, {batch['batch']} per request)  "
        f"p50 {batch['batch_p50_ms']:.1f} ms  p99 {batch['batch_p99_ms']:.1f} ms  "
        f"{batch['transfers_per_server_cpu_s']:,.0f} transfers per server CPU-second",
        flush=True,
    )
    return batch


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--customers", type=positive_int, default=None)
    parser.add_argument("--merchants", type=positive_int, default=None)
    parser.add_argument("--payments", type=positive_int, default=None, help="most payments sent")
    parser.add_argument("--seconds", type=float, default=None, help="most seconds of sending")
    parser.add_argument(
        "--clients", type=positive_int, default=None, help="concurrent HTTP clients"
    )
    parser.add_argument("--client-processes", type=positive_int, default=None)
    parser.add_argument("--idempotency-keys", action="store_true")
    parser.add_argument(
        "--batch", type=positive_int, default=None, help="transfers per batch request"
    )
    parser.add_argument("--batches", type=positive_int, default=None, help="batch requests sent")
    parser.add_argument("--batch-clients", type=positive_int, default=None)
    parser.add_argument(
        "--batch-format",
        choices=("json", "both"),
        default="both",
        help="the batch endpoint in JSON only, or also in the binary layout (default: both)",
    )
    # internal modes: the server, and a process of clients
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes answering HTTP (as `puhui serve --workers`; default 1)",
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--http",
        choices=("corked", "httptools", "h11"),
        default="corked",
        help="the server's HTTP protocol: corked (what `puhui serve` runs: uvicorn's httptools"
        " protocol, a response in one write), or uvicorn's own httptools or h11",
    )
    parser.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="the payments load client: lean (asyncio protocol, pre-built requests; the "
        "default) or httpx (httpx2's AsyncClient, the figures before 2026-11-27)",
    )
    parser.add_argument("--as-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", default="", help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--world", default="", help=argparse.SUPPRESS)
    parser.add_argument("--clients-here", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--payments-here", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.port, args.http, args.workers)
        return
    quick = args.quick
    args.customers = args.customers or (10 if quick else 1_000)
    args.merchants = args.merchants or (2 if quick else 50)
    args.payments = args.payments or (200 if quick else 60_000)
    args.seconds = args.seconds or (10.0 if quick else 20.0)
    args.clients = args.clients or (8 if quick else 256)
    args.client_processes = args.client_processes or 1
    args.batch = args.batch or (500 if quick else 8_189)
    args.batches = args.batches or (4 if quick else 40)
    args.batch_clients = args.batch_clients or 2
    if args.as_client:
        _client_process(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="puhui-api-bench-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        token = _tenant_key(workdir)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        # The server logs a JSON line per request (as puhui serve does): to a file, not to
        # a pipe nobody reads (a full pipe would block the server).
        server_log = (workdir / "server.log").open("wb")
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(workdir),
                "--port",
                str(port),
                "--http",
                args.http,
                "--workers",
                str(args.workers),
            ],
            stderr=server_log,
        )
        server_log.close()  # the child has its own descriptor
        _wait_ready(base, server)
        import uvloop

        world = uvloop.run(_setup(base, token, args.customers, args.merchants))
        world_file = workdir / "world.json"
        world_file.write_text(json.dumps(world))
        cpu_before = _cpu_s(server.pid)
        payments = run_payments(args, base, token, world_file)
        server_cpu_s = _cpu_s(server.pid) - cpu_before
        payments["server_cpu_s"] = round(server_cpu_s, 3)
        payments["server_cpu_ms_per_request"] = round(1000 * server_cpu_s / payments["requests"], 3)
        payments["requests_per_server_cpu_s"] = round(payments["requests"] / server_cpu_s, 1)
        print(
            f"payments     {payments['requests_per_s']:>10,.0f} requests/s  "
            f"({payments['clients']} {args.client} clients in {payments['client_processes']} "
            f"processes, "
            f"keys {'on' if args.idempotency_keys else 'off'})  p50 {payments['p50_ms']:.2f} ms"
            f"  p99 {payments['p99_ms']:.2f} ms"
            f"  server CPU {payments['server_cpu_ms_per_request']:.2f} ms/request"
            f" (clients {payments['clients_cpu_ms_per_request']:.2f})"
            f"  not completed {payments['not_completed']}",
            flush=True,
        )
        batch = run_ledger_batches(base, token, args, server.pid, binary=False)
        binary = None
        if args.batch_format == "both":
            binary = run_ledger_batches(base, token, args, server.pid, binary=True)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        report = {
            "payments_per_s": payments["requests_per_s"],
            "p50_ms": payments["p50_ms"],
            "p99_ms": payments["p99_ms"],
            "ledger_transfers_per_s": batch["transfers_per_s"],
            "ledger_binary_transfers_per_s": binary["transfers_per_s"] if binary else None,
            "payments_per_server_cpu_s": payments["requests_per_server_cpu_s"],
            "workers": args.workers,
            "payments": payments,
            "ledger_batch": batch,
            "ledger_batch_binary": binary,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
