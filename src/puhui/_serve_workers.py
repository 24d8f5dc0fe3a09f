"""`puhui serve --workers N`: several API processes over one store, one ledger, one risk engine.

One server process is bound to one core by the interpreter lock (docs/benchmarks.md, "Single
payments on a fast machine"). With ``--workers N`` the process `puhui serve` starts (the
*primary*) keeps what must be one — the ledger (its journal is locked to one process), the
risk engine (every customer's recent history in its memory), recovery at start — and starts
N *worker* processes that answer HTTP on the same listening sockets (the kernel hands each
connection to one of them):

* the primary serves its open ledger on a Unix socket (``puhui.ledger.serve``) and its risk
  engine's decisions on another (``puhui.risk._remote``, with a random key), both in a private
  directory (mode 0700) it removes on exit;
* each worker opens the SQL store itself (SQLite writers of several processes take turns on a
  lock file, PostgreSQL coordinates as always), connects to the ledger and the risk engine,
  and runs the whole API; the rate limits' buckets are shared through a file-backed table
  (``SharedRateLimiter``), so a key's limit is the same whatever worker answers;
* only worker 0 delivers webhooks and does the housekeeping (both coordinated in SQL, so
  more would be safe, only wasteful).

What stays per worker: ``/metrics`` counts the requests of the worker that answers the scrape;
the simulated bank's and billers' memory (a development stand-in; a deployment's gateways keep
their state at the bank). The primary stops everything when a worker exits on its own (a crash
loses nothing acknowledged: each answer was durable before it was sent) and on SIGINT/SIGTERM
(each worker finishes the requests in flight, as uvicorn does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from puhui.api import ApiOptions
    from puhui.payments import KycLevel, KycLimits

WORKERS_MAX: Final = 64
"""Most worker processes `puhui serve --workers` starts (unit: processes)."""
STOP_GRACE_S: Final = 30.0
"""How long the primary waits for a worker to finish its requests after SIGTERM before it
kills it (unit: seconds)."""
WORKER_EXIT_FAILED: Final = 3
"""`puhui serve`'s exit status when a worker stopped on its own (as when uvicorn cannot
start)."""


@dataclass(frozen=True)
class WorkerPlan:
    """What a worker is told on its standard input (JSON), by the primary."""

    index: int
    primary_pid: int
    database_url: str
    ledger_socket: str
    risk_socket: str | None
    """None: no risk engine (``puhui.risk.decide``'s pass-through, as the benchmarks run)."""
    risk_key: str
    """The risk server's key (hex): on standard input, never on a command line."""
    rate_table: str
    fds: list[int]
    host: str
    port: int
    webhook_interval_s: float | None
    webhook_loopback: bool
    api_options: dict[str, Any]
    """``ApiOptions`` fields of plain values and ``idempotency`` as the primary was given them;
    of ``webhooks`` only ``loopback_allowed`` (``webhook_loopback``), the rest default."""
    kyc_limits: dict[str, list[int]] | None
    """``PaymentsOptions.kyc_limits`` (level: single payment, daily outflow, wallet balance);
    None: the defaults."""


class Workers:
    """The primary's side: start the workers, watch them, stop them."""

    def __init__(self, plans: list[WorkerPlan]) -> None:
        self.plans = plans
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def start(self) -> None:
        for plan in self.plans:
            process = subprocess.Popen(
                [sys.executable, "-m", "puhui._serve_workers"],
                stdin=subprocess.PIPE,
                pass_fds=plan.fds,
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(asdict(plan)).encode())
            process.stdin.close()
            self.processes.append(process)

    def wait(self) -> int:
        """Until SIGINT/SIGTERM (0) or a worker's own exit (``WORKER_EXIT_FAILED``); the
        workers are stopped either way."""

        def stop(_signum: int, _frame: Any) -> None:
            self._stopping = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stopping:
                if any(p.poll() is not None for p in self.processes):
                    self.stop()
                    return WORKER_EXIT_FAILED
                time.sleep(0.2)
            self.stop()
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def run_directory() -> Any:
    """A private directory (0700) for the primary's sockets and the shared rate table, removed
    on exit. Under the system's temporary directory: a Unix socket's path is at most 107
    bytes, which a data directory's may exceed."""
    _remove_stale_run_directories()
    path = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


RUN_PREFIX: Final = "puhui-serve-"


def _remove_stale_run_directories() -> None:
    """Remove the run directories of primaries that are gone (killed: they could not remove
    their own), ours only: ``puhui-serve-<pid>-…`` whose process no longer exists."""
    for entry in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*-*"):
        pid_text = entry.name[len(RUN_PREFIX) :].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or entry.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)  # alive (or not ours to signal): left alone
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def serve_workers(
    count: int,
    *,
    sockets: list[socket.socket],
    database_url: str,
    ledger: Any,
    risk_engine: Any | None,
    host: str,
    port: int,
    webhook_loopback: bool = False,
    api_options: ApiOptions | None = None,
    kyc_limits: Mapping[KycLevel, KycLimits] | None = None,
) -> int:
    """Serve the API from ``count`` worker processes (see the module's docstring) until
    stopped; the exit status `puhui serve` returns. ``risk_engine`` None: the pass-through."""
    import puhui.ledger as tb
    from puhui.api import ApiOptions
    from puhui.api._shared_limits import SharedRateLimiter
    from puhui.risk._remote import serve_decisions

    options = api_options or ApiOptions()
    plain = {
        f.name: getattr(options, f.name)
        for f in fields(options)
        if isinstance(getattr(options, f.name), (int, float, bool, str, type(None)))
    }
    webhook_interval_s = plain.pop("webhook_delivery_interval_s")
    plain["idempotency"] = asdict(options.idempotency)
    key = os.urandom(32)
    with run_directory() as run, contextlib.ExitStack() as stack:
        ledger_socket = run / "ledger.sock"
        risk_socket = run / "risk.sock" if risk_engine is not None else None
        rate_table = run / "rates"
        stack.enter_context(tb.serve(ledger, ledger_socket))
        if risk_engine is not None:
            stack.enter_context(serve_decisions(risk_engine, run / "risk.sock", key))
        SharedRateLimiter.create(
            rate_table, options.rate_per_key_per_s, options.rate_burst_requests
        )
        fds = [sock.fileno() for sock in sockets]
        for sock in sockets:
            os.set_inheritable(sock.fileno(), True)
        workers = Workers(
            [
                WorkerPlan(
                    index=i,
                    primary_pid=os.getpid(),
                    database_url=database_url,
                    ledger_socket=str(ledger_socket),
                    risk_socket=None if risk_socket is None else str(risk_socket),
                    risk_key=key.hex(),
                    rate_table=str(rate_table),
                    fds=fds,
                    host=host,
                    port=port,
                    webhook_interval_s=webhook_interval_s if i == 0 else None,
                    webhook_loopback=webhook_loopback,
                    api_options=plain,
                    kyc_limits=None
                    if kyc_limits is None
                    else {
                        str(int(level)): [
                            limits.single_payment,
                            limits.daily_outflow,
                            limits.wallet_balance,
                        ]
                        for level, limits in kyc_limits.items()
                    },
                )
                for i in range(count)
            ]
        )
        try:
            workers.start()
            return workers.wait()
        finally:
            workers.stop()


def worker_main() -> None:
    """A worker: the API on the primary's sockets, ledger and risk engine (its plan on
    standard input)."""
    import uvicorn

    import puhui.ledger as tb
    from puhui import risk
    from puhui.api import (
        ApiOptions,
        CorkedHttpProtocol,
        configure_logging,
        create_app,
        warm_up_readers,
    )
    from puhui.api._server import ListeningServer
    from puhui.api._shared_limits import SharedRateLimiter
    from puhui.clock import SystemClock
    from puhui.payments import KycLevel, KycLimits, Payments, PaymentsOptions, SimulatedBank
    from puhui.platform import IdempotencyOptions, WebhookOptions
    from puhui.risk import Cases
    from puhui.risk._remote import connect_decisions
    from puhui.store import create_engine

    plan = WorkerPlan(**json.loads(sys.stdin.read()))
    _stop_with_parent(plan.primary_pid)
    configure_logging()
    clock = SystemClock()
    sockets = [socket.socket(fileno=fd) for fd in plan.fds]
    engine = create_engine(plan.database_url)
    payments_options = PaymentsOptions()
    if plan.kyc_limits is not None:
        payments_options = PaymentsOptions(
            kyc_limits={
                KycLevel(int(level)): KycLimits(*limits)
                for level, limits in plan.kyc_limits.items()
            }
        )
    with contextlib.ExitStack() as stack:
        ledger = stack.enter_context(tb.connect(plan.ledger_socket))
        # Without its ledger a worker could only answer ledger_unavailable: it stops, and the
        # primary stops the server (a supervisor restarts it).
        ledger.on_lost(_stop)
        decide: Any = risk.decide
        if plan.risk_socket is not None:
            decide = stack.enter_context(
                connect_decisions(plan.risk_socket, bytes.fromhex(plan.risk_key))
            )
        payments = Payments(
            engine,
            ledger,
            clock=clock,
            bank=SimulatedBank(clock),
            decide=decide,
            cases=Cases(engine, clock),
            options=payments_options,
        )
        first = plan.index == 0
        given = dict(plan.api_options)
        housekeeping = given.pop("housekeeping_interval_s", None)
        idempotency = IdempotencyOptions(**given.pop("idempotency"))
        options = ApiOptions(
            **given,
            idempotency=idempotency,
            webhook_delivery_interval_s=plan.webhook_interval_s,
            webhooks=WebhookOptions(loopback_allowed=plan.webhook_loopback),
            housekeeping_interval_s=housekeeping if first else None,
        )
        limiter = SharedRateLimiter.open(Path(plan.rate_table), clock)
        app = create_app(
            engine, ledger, clock=clock, options=options, payments=payments, limiter=limiter
        )
        warm_up_readers()
        server = ListeningServer(
            uvicorn.Config(
                app,
                host=plan.host,
                port=plan.port,
                loop="uvloop",
                http=CorkedHttpProtocol,
                log_level="info" if first else "warning",
                access_log=False,
            )
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=sockets)
    engine.dispose()
    if not server.started:
        sys.exit(WORKER_EXIT_FAILED)


def _stop(reason: str) -> None:
    """Stop this worker as SIGTERM does (the requests in flight finished first)."""
    logging.getLogger("puhui.serve").error("worker stopping: %s", reason)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this worker when the primary (``parent``) dies (``PR_SET_PDEATHSIG``; Linux),
    so a killed primary leaves no workers answering without a ledger; elsewhere a thread
    watches the parent's pid instead."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before the call
                os.kill(os.getpid(), signal.SIGTERM)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    worker_main()
