"""One SQLite store written by one process or by two: what sharing its write lock costs.

A server in several processes (the design docs/benchmarks.md names for issue #5's single
payments) would have each process record its own batches in the one store. SQLite lets one
transaction write at a time; a process that finds the lock taken waits in the driver's busy
handler, which sleeps and tries again (1, 2, 5, 10 ms … up to the busy timeout). This script
measures that alone: ``--transactions`` transactions of ``--rows`` payment records each
(``payments_operations`` as ``puhui.store.migrate`` builds it, rows as
``benchmarks/payment_records.py`` makes them, ``puhui.store.create_engine``'s settings: WAL,
``synchronous=FULL``, a 30 s busy timeout), written by one process, then shared out between
two, each pair of runs with and without ``--think-ms`` of other work between a process's
transactions (the rest of a batch: its Python, the ledger).

For each: transactions/s over the wall time, the p50/p99/max of one transaction's time
(``BEGIN IMMEDIATE`` to ``COMMIT``, the wait for the lock included), and the p99/max of the
wait alone (until ``BEGIN IMMEDIATE`` has returned).

``--writer sqlite3`` (the default) writes through the driver alone, as above: a process waits
for the other in SQLite's busy handler. ``--writer engine`` writes through
``puhui.store.create_engine`` (a pooled SQLAlchemy connection, ``engine.connect()`` and
``begin()`` per transaction), whose turn queues the processes before SQLite's lock: run it
with ``PYTHONPATH`` at two source trees to compare them.

    python benchmarks/sqlite_writers.py --json
    python benchmarks/sqlite_writers.py --writer engine --json
    python benchmarks/sqlite_writers.py --quick --json   # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _args import positive_int
from payment_records import TABLE, _columns, _connect, _rows, _schema

BUSY_TIMEOUT_S = 30.0
"""As ``puhui.store.create_engine`` sets it (unit: s)."""


def _writer(
    writer: str,
    path: str,
    first: int,
    transactions: int,
    rows: int,
    think_s: float,
    seed: int,
    ready: Any,
    out: Any,
) -> None:
    """One process: its transactions one after another; puts their times and their waits
    (s), and when it began and ended (``time.monotonic``), on ``out``."""
    columns = _columns()
    insert = f"INSERT INTO {TABLE} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    rng = random.Random(seed)
    times: list[float] = []
    waits: list[float] = []
    if writer == "engine":
        from puhui.store import create_engine

        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:  # connected (and its pragmas set) before the start
            conn.exec_driver_sql("SELECT 1")
            conn.rollback()
    else:
        db = _connect(Path(path), "puhui")  # WAL, synchronous=FULL, puhui's cache, checkpoints
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    ready.wait()  # every process connected: they start together
    began = time.monotonic()  # system-wide: comparable between the processes
    for n in range(transactions):
        batch = _rows(rng, first + n * rows, rows, 500)
        started = time.perf_counter()
        if writer == "engine":
            with engine.connect() as conn:
                transaction = conn.begin()  # the turn, then BEGIN IMMEDIATE
                waits.append(time.perf_counter() - started)
                conn.exec_driver_sql(insert, batch)  # a list of rows: executemany
                transaction.commit()
        else:
            db.execute("BEGIN IMMEDIATE")
            waits.append(time.perf_counter() - started)
            db.executemany(insert, batch)
            db.execute("COMMIT")
        times.append(time.perf_counter() - started)
        if think_s:
            time.sleep(think_s)  # the batch's other work, the write lock free meanwhile
    out.put((times, waits, began, time.monotonic()))
    if writer == "engine":
        engine.dispose()
    else:
        db.close()


def run(
    schema: Path, workdir: Path, processes: int, args: argparse.Namespace, think_ms: float
) -> dict[str, Any]:
    path = workdir / f"store-{processes}-{think_ms}.sqlite"
    shutil.copyfile(schema, path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    each = args.transactions // processes
    context = multiprocessing.get_context("spawn")
    out: Any = context.Queue()
    ready = context.Barrier(processes)
    workers = [
        context.Process(
            target=_writer,
            args=(
                args.writer,
                str(path),
                i * each * args.rows,
                each,
                args.rows,
                think_ms / 1000,
                i,
                ready,
                out,
            ),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    times = sorted(t for own, _, _, _ in results for t in own)
    waits = sorted(w for _, own, _, _ in results for w in own)
    # From the first transaction to the last (not the processes' start-up).
    elapsed = max(end for *_, end in results) - min(began for _, _, began, _ in results)
    for worker in workers:
        worker.join()
    path.unlink()
    return {
        "writer": args.writer,
        "processes": processes,
        "think_ms": think_ms,
        "transactions": len(times),
        "rows_per_transaction": args.rows,
        "transactions_per_s": round(len(times) / elapsed, 1),
        "p50_ms": round(1000 * times[len(times) // 2], 3),
        "p99_ms": round(1000 * _p99(times), 3),
        "max_ms": round(1000 * times[-1], 3),
        "wait_p99_ms": round(1000 * _p99(waits), 3),
        "wait_max_ms": round(1000 * waits[-1], 3),
    }


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--transactions", type=positive_int, default=None, help="in all, per run")
    parser.add_argument("--rows", type=positive_int, default=64, help="records per transaction")
    parser.add_argument(
        "--think-ms", type=float, default=4.0, help="other work between a process's transactions"
    )
    parser.add_argument(
        "--writer",
        choices=("sqlite3", "engine"),
        default="sqlite3",
        help="the driver alone, or puhui.store.create_engine (its turn)",
    )
    args = parser.parse_args()
    if not 0 <= args.think_ms <= 1000:
        parser.error("--think-ms must be 0 to 1000")
    args.transactions = args.transactions or (40 if args.quick else 2_000)
    workdir = Path(tempfile.mkdtemp(prefix="puhui-sqlite-writers-"))
    try:
        schema = _schema(workdir)
        runs = [
            run(schema, workdir, processes, args, think)
            for think in (0.0, args.think_ms)
            for processes in (1, 2)
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in runs:
        print(
            f"{r['processes']} process(es), {r['think_ms']:g} ms between: "
            f"{r['transactions_per_s']:,.0f} tx/s of {r['rows_per_transaction']} rows, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms; "
            f"wait p99 {r['wait_p99_ms']:.2f} ms, max {r['wait_max_ms']:.1f} ms"
        )
    if args.json:
        report = {
            "writer": args.writer,
            "runs": runs,
            "machine": {"python": sys.version.split()[0]},
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
