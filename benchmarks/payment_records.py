"""What a payment's SQL record costs on the embedded store: rows/s and pages per row.

A batch of payments writes one row per payment into ``payments_operations`` (the schema
``puhui.store.migrate`` builds) in one transaction, under SQLite's one write lock. This
script measures that step alone, with rows shaped like ``PaymentBatches``' records (a
time-ordered id, a random payer's scope and idempotency key, half of them merchant
payments), so the rest of the payments path is not in the figure:

* ``rows_per_s``: ``INSERT`` of ``--batch`` rows through the driver's ``executemany`` and
  the ``COMMIT`` (its WAL sync and, when due, the checkpoint), under two settings: SQLite's
  defaults (2 MiB page cache, a checkpoint every 1,000 WAL pages) and the ones
  ``puhui.store.create_engine`` sets;
* ``two_writes``: the same rows and then their outcome in a second transaction (``UPDATE``
  by id), as a batch records them, under ``puhui``'s settings: against ``puhui`` (the
  ``INSERT`` alone) it says what the outcome's write adds;
* ``pages_per_row``: WAL pages one batch writes, divided by its rows, for the table with
  its primary key alone and with each of the other indexes added (a random-order index
  changes a page per row, an index in insertion order a page per hundred rows or so).

    python benchmarks/payment_records.py --json
    python benchmarks/payment_records.py --quick --json   # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _args import positive_int

TABLE = "payments_operations"


def _columns() -> tuple[str, ...]:
    """The columns a batch's record gives, in the order its rows list them."""
    from puhui.payments.batch import _RECORD_COLUMNS

    return _RECORD_COLUMNS


def _schema(workdir: Path) -> Path:
    """A database file at the newest schema (built once, copied for every run)."""
    from puhui.store import create_engine, migrate

    path = workdir / "schema.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def _rows(rng: random.Random, start: int, count: int, payers: int) -> list[tuple[Any, ...]]:
    now = time.time_ns()
    rows = []
    for n in range(start, start + count):
        payer = rng.randrange(payers)
        merchant = rng.randrange(100) if n % 2 else None
        rows.append(
            (
                f"{(now << 20 | n) & ((1 << 128) - 1):032x}",  # time-ordered, as the id generator's
                "merchant_payment" if merchant is not None else "p2p",
                f"c:{payer}",
                f"{rng.getrandbits(64):016x}-{n}",
                f"{rng.getrandbits(64):016x}",
                "pending",
                "CNY",
                rng.randrange(1, 10_000),
                payer,
                None if merchant is not None else (payer + 7) % payers,
                merchant,
                "",
                20_000,
                "accept",
                0,
                '{"reasons": [], "ruleset": "pass-through", "model": null}',
                None,
                False,
                0,
                now,
                now,
            )
        )
    return rows


def _connect(path: Path, settings: str) -> sqlite3.Connection:
    from puhui.store._engine import SQLITE_CACHE_KIB, SQLITE_CHECKPOINT_PAGES

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if settings == "puhui":
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    elif settings == "no_checkpoint":
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def _insert(table: str) -> str:
    columns = _columns()
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def rows_per_s(
    schema: Path, settings: str, args: argparse.Namespace, seed: int, *, outcome: bool = False
) -> float:
    """Rows recorded per second of ``INSERT`` + ``COMMIT`` (the time a batch holds the write
    lock), over ``--batches`` batches into a table that starts empty. ``outcome``: as
    ``PaymentBatches`` records a batch, two writes — the rows (``pending``), then, in a
    second transaction, their outcome (``UPDATE`` by id over ``json_each``) — both timed."""
    workdir = Path(tempfile.mkdtemp(dir=schema.parent))
    path = workdir / "db.sqlite"
    shutil.copy(schema, path)
    conn = _connect(path, settings)
    rng = random.Random(seed)
    held = 0.0
    for b in range(args.batches):
        rows = _rows(rng, b * args.batch, args.batch, args.payers)
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_insert(TABLE), rows)
        conn.execute("COMMIT")
        if outcome:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"UPDATE {TABLE} SET status = 'completed', updated_at_ns = updated_at_ns + 1"
                " WHERE id IN (SELECT value FROM json_each(?)) AND status || '' = 'pending'",
                (json.dumps([r[0] for r in rows]),),
            )
            conn.execute("COMMIT")
        held += time.perf_counter() - started
    conn.close()
    shutil.rmtree(workdir)
    return float(args.batches * args.batch / held)


INDEXES = {
    "unique(scope, idempotency_key)": "CREATE UNIQUE INDEX u ON t (scope, idempotency_key)",
    "(payer_customer_id, created_at_ns)": "CREATE INDEX p ON t (payer_customer_id, created_at_ns)",
    "(merchant_id, settlement_id)": "CREATE INDEX m ON t (merchant_id, settlement_id)",
    "(status, created_at_ns)": "CREATE INDEX s ON t (status, created_at_ns)",
}


def pages_per_row(schema: Path, index: str | None, args: argparse.Namespace) -> float:
    """WAL pages the last of ``--batches`` batches wrote, per row: the table (its columns
    and primary key as in the schema) with no other index, or with ``index`` alone."""
    workdir = Path(tempfile.mkdtemp(dir=schema.parent))
    path = workdir / "db.sqlite"
    conn = _connect(path, "no_checkpoint")
    source = sqlite3.connect(schema)
    ddl = source.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()[0]
    source.close()
    # The table as the schema has it, less its unique constraint (measured as an index).
    ddl = ddl.replace(TABLE, "t", 1)
    ddl = re.sub(r",\s*CONSTRAINT uq_\w+ UNIQUE \([^)]*\)", "", ddl)
    conn.execute(ddl)
    if index is not None:
        conn.execute(INDEXES[index])
    rng = random.Random(7)
    insert = _insert("t")
    pages = 0
    for b in range(args.batches):
        rows = _rows(rng, b * args.batch, args.batch, args.payers)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        pages = os.path.getsize(f"{path}-wal") // 4096
    conn.close()
    shutil.rmtree(workdir)
    return float(pages / args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--batches", type=positive_int, default=200, help="batches per run")
    parser.add_argument("--batch", type=positive_int, default=1_000, help="rows per batch")
    parser.add_argument("--payers", type=positive_int, default=100_000, help="distinct payers")
    parser.add_argument("--runs", type=positive_int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.batch, args.runs = 5, 200, 1
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    workdir = Path(tempfile.mkdtemp(prefix="puhui-records-"))
    try:
        schema = _schema(workdir)
        report: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version},
            "batch": args.batch,
            "batches": args.batches,
            "payers": args.payers,
        }
        runs: dict[str, list[float]] = {"sqlite_defaults": [], "puhui": [], "two_writes": []}
        for run in range(args.runs):  # alternated, so a noisy moment hits each
            for settings, figures in runs.items():
                if settings == "two_writes":  # puhui's settings, the record and its outcome
                    figures.append(rows_per_s(schema, "puhui", args, seed=run, outcome=True))
                else:
                    figures.append(rows_per_s(schema, settings, args, seed=run))
        for settings, figures in runs.items():
            report[settings] = {
                "rows_per_s": statistics.median(figures),
                "runs_rows_per_s": figures,
            }
        pages = {"primary key only": pages_per_row(schema, None, args)}
        for index in INDEXES:
            pages[index] = pages_per_row(schema, index, args)
        report["pages_per_row"] = pages
        report["rows_per_s"] = report["puhui"]["rows_per_s"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.json:
        for settings in runs:
            print(f"{settings:16} {report[settings]['rows_per_s']:>10,.0f} rows/s")
        for name, value in pages.items():
            print(f"pages per row, {name:36} {value:.3f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
