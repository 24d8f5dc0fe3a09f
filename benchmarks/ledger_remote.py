"""What serving a ledger costs: ``create_transfers_array`` embedded vs over ``serve``/``connect``.

Two workloads, each once embedded and once remote (the server in this process, the client
on its socket; one run each, the same fresh ledger per run):

* ``batches_8189``  one caller, batches of 8,189 transfers;
* ``threads_8x64``  8 threads, batches of 64 transfers each (pipelined on one connection).

    python benchmarks/ledger_remote.py                    # 400,000 transfers per run
    python benchmarks/ledger_remote.py --transfers 50000  # a quicker run
    python benchmarks/ledger_remote.py --json             # ... and one JSON object last
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from puhui import ledger as tb

ACCOUNTS = 10_000
Array = np.ndarray[Any, Any]


def _batches(total: int, size: int, seed: int) -> list[Array]:
    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, total, size):
        n = min(size, total - start)
        rows = np.zeros(n, tb.TRANSFER_DTYPE)
        rows["id_lo"] = np.arange(start + 1, start + n + 1, dtype=np.uint64)
        debit = rng.integers(1, ACCOUNTS + 1, n, dtype=np.uint64)
        credit = debit % ACCOUNTS + 1
        rows["debit_account_id_lo"] = debit
        rows["credit_account_id_lo"] = credit
        rows["amount_lo"] = 1
        rows["ledger"] = 1
        rows["code"] = 1
        batches.append(rows)
    return batches


def _run(directory: Path, remote: bool, batches: list[Array], threads: int) -> tuple[float, int]:
    """Transfers per second, and how many were created."""
    with tb.open(directory / "journal") as ledger:
        accounts = np.zeros(ACCOUNTS, tb.ACCOUNT_DTYPE)
        accounts["id_lo"] = np.arange(1, ACCOUNTS + 1, dtype=np.uint64)
        accounts["ledger"] = 1
        accounts["code"] = 1
        for start in range(0, ACCOUNTS, tb.BATCH_EVENTS_MAX):
            ledger.create_accounts_array(accounts[start : start + tb.BATCH_EVENTS_MAX])
        server = tb.serve(ledger, directory / "ledger.sock") if remote else None
        client: tb.LedgerClient = tb.connect(directory / "ledger.sock") if remote else ledger
        try:
            send: Callable[[Array], Array] = client.create_transfers_array
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(send, batches))
            elapsed = time.perf_counter() - started
        finally:
            if remote:
                client.close()
            if server is not None:
                server.close()
        created = sum(int((r["status"] == tb.CreateTransferStatus.CREATED).sum()) for r in results)
        return sum(b.shape[0] for b in batches) / elapsed, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transfers", type=int, default=400_000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    report: dict[str, float] = {}
    workloads = {
        "batches_8189": (tb.BATCH_EVENTS_MAX, 1),
        "threads_8x64": (64, 8),
    }
    for name, (size, threads) in workloads.items():
        batches = _batches(args.transfers, size, seed=1)
        for remote in (False, True):
            with tempfile.TemporaryDirectory(prefix="puhui-bench-remote-") as tmp:
                rate, created = _run(Path(tmp), remote, batches, threads)
            assert created == args.transfers, created
            where = "remote  " if remote else "embedded"
            print(f"{name:14} {where} {rate:>12,.0f} transfers/s")
            report[f"{name}_{where.strip()}_transfers_per_s"] = round(rate)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
