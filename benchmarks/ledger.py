"""Ledger throughput on TigerBeetle's own benchmark workload (``tigerbeetle benchmark``).

Workload (variant ``tigerbeetle``): 10,000 accounts with the ``history`` flag, 10,000,000
transfers between uniformly chosen accounts, batches of 8,189, one client, every batch durable
before it is answered. Variants:

* ``zipf``          accounts chosen with a Zipf distribution (s = 1.2): hot merchant accounts;
* ``accounts_1m``   1,000,000 accounts;
* ``objects``       the same workload through the object API (dataclasses);
* ``concurrent_64`` 64 concurrent callers each submitting single transfers (group commit);
* ``postgres``      the tigerbeetle workload journalled to PostgreSQL (``--database-url``);
* ``recovery``      open after a crash with the transfers journalled since the last snapshot;
* ``reopen``        open after a clean close: the transfers are in the final snapshot (what a
                    restart costs when nothing is left to replay: reading and checking the
                    snapshot and its row files, rebuilding the indexes).

Each variant runs in its own process (peak memory is per variant), ``--runs`` times; the
median run is reported. A classic SQL ledger (one SQLite WAL transaction per transfer that
updates two balance rows and inserts the transfer) runs in the same invocation as the
baseline, and every variant's figure is also printed as a ratio to it.

    python benchmarks/ledger.py                 # full run (takes a while)
    python benchmarks/ledger.py --quick         # smoke run (the test suite calls this)
    python benchmarks/ledger.py --json          # ... and one JSON object as the last line
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _args import choose, existing_directory, positive_int, postgres_url

BATCH = 8189
VARIANTS = (
    "tigerbeetle",
    "zipf",
    "accounts_1m",
    "objects",
    "concurrent_64",
    "postgres",
    "sqlite",
    "recovery",
    "reopen",
)


# --- workload -------------------------------------------------------------------------------


def make_accounts(n: int) -> np.ndarray[Any, Any]:
    from puhui.ledger import ACCOUNT_DTYPE, AccountFlags

    accounts = np.zeros(n, ACCOUNT_DTYPE)
    accounts["id_lo"] = np.arange(1, n + 1, dtype=np.uint64)
    accounts["ledger"] = 1
    accounts["code"] = 1
    accounts["flags"] = int(AccountFlags.HISTORY)
    return accounts


def pick_accounts(
    rng: np.random.Generator, n_accounts: int, count: int, zipf: bool
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    if zipf:
        debit = (rng.zipf(1.2, count) - 1) % n_accounts + 1
        credit = (rng.zipf(1.2, count) - 1) % n_accounts + 1
    else:
        debit = rng.integers(1, n_accounts + 1, count)
        credit = rng.integers(1, n_accounts + 1, count)
    same = debit == credit
    credit[same] = credit[same] % n_accounts + 1
    return debit.astype(np.uint64), credit.astype(np.uint64)


def make_batch(
    rng: np.random.Generator, first_id: int, count: int, n_accounts: int, zipf: bool
) -> np.ndarray[Any, Any]:
    from puhui.ledger import TRANSFER_DTYPE

    batch = np.zeros(count, TRANSFER_DTYPE)
    batch["id_lo"] = np.arange(first_id, first_id + count, dtype=np.uint64)
    debit, credit = pick_accounts(rng, n_accounts, count, zipf)
    batch["debit_account_id_lo"] = debit
    batch["credit_account_id_lo"] = credit
    batch["amount_lo"] = rng.integers(1, 1000, count).astype(np.uint64)
    batch["ledger"] = 1
    batch["code"] = 1
    return batch


def rss_anon_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- one variant, in a child process ----------------------------------------------------------


def run_variant(
    variant: str,
    transfers: int,
    accounts: int,
    workdir: Path,
    url: str,
    journal_kind: str,
    loop: str = "uvloop",
) -> dict[str, Any]:
    from puhui.ledger import Ledger, LedgerOptions, open, verify
    from puhui.ledger._convert import array_to_transfers

    zipf = variant == "zipf"
    options = LedgerOptions(transfers_capacity=transfers + BATCH)
    if variant == "postgres":
        journal = _fresh_schema(url)
    elif journal_kind == "sqlite" or variant == "sqlite":
        journal = str(workdir / "journal.sqlite")
    else:
        journal = f"file://{workdir / 'journal'}"
    led: Ledger = open(journal, state_dir=workdir / "state", options=options)
    try:
        acc = make_accounts(accounts)
        for i in range(0, accounts, BATCH):
            led.create_accounts_array(acc[i : i + BATCH])
        rng = np.random.default_rng(42)
        latencies: list[float] = []
        journal_bytes_before = _journal_bytes(led)
        if variant == "concurrent_64":
            elapsed, latencies = _concurrent(led, rng, transfers, accounts, loop)
        else:
            batches = [
                make_batch(rng, 1 + i, min(BATCH, transfers - i), accounts, zipf)
                for i in range(0, transfers, BATCH)
            ]
            objects = [array_to_transfers(b) for b in batches] if variant == "objects" else None
            # The prepared inputs are the benchmark's, not the ledger's: keep the collector
            # from walking millions of them again and again (an application's inputs are
            # short-lived).
            gc.collect()
            gc.freeze()
            start = time.perf_counter()
            for k, batch in enumerate(batches):
                t0 = time.perf_counter()
                if objects is not None:
                    results = led.create_transfers(objects[k])
                    failed = sum(1 for r in results if r.status != 0xFFFFFFFF)
                else:
                    out = led.create_transfers_array(batch)
                    failed = int(np.count_nonzero(out["status"] != 0xFFFFFFFF))
                latencies.append(time.perf_counter() - t0)
                if failed:
                    raise SystemExit(f"{failed} transfers failed in batch {k}")
            elapsed = time.perf_counter() - start
        lag_s = _history_lag(led, transfers)
        sizes = led.read_state(
            lambda e: {
                "accounts": e.n_accounts,
                "transfers": e.n_transfers,
                "account_bytes": e.accounts.nbytes + e.acct_slots.nbytes,
                "transfer_index_bytes": e.xfer_slots.nbytes + e.xfer_state.nbytes,
            }
        )
        groups = led.stats.recent()
        journal_bytes = _journal_bytes(led) - journal_bytes_before
        verify_ok = verify(led).ok if transfers <= 2_000_000 else None
    finally:
        led.close()
        if variant == "postgres":
            _drop_schema(journal)
    lat = np.array(latencies) * 1e3
    return {
        "variant": variant,
        "transfers": transfers,
        "accounts": accounts,
        "transfers_per_s": transfers / elapsed,
        "batch_p50_ms": float(np.percentile(lat, 50)),
        "batch_p99_ms": float(np.percentile(lat, 99)),
        "batch_p100_ms": float(lat.max()),
        "journal_bytes_per_transfer": journal_bytes / transfers if journal_bytes else None,
        "history_lag_s": lag_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_anon_bytes": rss_anon_bytes(),
        "bytes_per_account": sizes["account_bytes"] / max(1, sizes["accounts"]),
        "index_bytes_per_transfer": sizes["transfer_index_bytes"] / max(1, sizes["transfers"]),
        "verify_ok": verify_ok,
        "event_loop": loop if variant == "concurrent_64" else None,
        "slow_groups": _slow_groups(groups),
    }


def _slow_groups(groups: dict[str, Any]) -> dict[str, float] | None:
    """Where the slowest 1% of group commits spent their time (what bounds p99)."""
    total = groups["total_s"]
    if total.shape[0] < 100:
        return None
    slow = total >= np.percentile(total, 99)
    return {
        "count": int(slow.sum()),
        "total_ms": float(total[slow].mean() * 1e3),
        "journal_ms": float(groups["journal_s"][slow].mean() * 1e3),
        "apply_ms": float(groups["apply_s"][slow].mean() * 1e3),
        "median_journal_ms": float(np.median(groups["journal_s"]) * 1e3),
        "median_apply_ms": float(np.median(groups["apply_s"]) * 1e3),
    }


def _fresh_schema(url: str) -> str:
    """A URL whose connections use a new, empty schema (the benchmark's own journal)."""
    import uuid

    import psycopg

    schema = f"puhui_bench_{uuid.uuid4().hex[:12]}"
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def _drop_schema(url: str) -> None:
    """Drop the schema ``_fresh_schema`` made for a run (the database is shared)."""
    import psycopg

    match = re.search(r"search_path%3D(puhui_bench_[0-9a-f]{12})", url)
    if match is None:
        return
    base = url.split("?", maxsplit=1)[0].replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{match.group(1)}" CASCADE')


def run_recovery(
    transfers: int, accounts: int, workdir: Path, *, crash: bool = True
) -> dict[str, Any]:
    """Open after a crash with ``transfers`` journalled since the last snapshot, or (not
    ``crash``) after a clean close, the transfers in the final snapshot."""
    writer = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--variant",
            "recovery_writer" if crash else "reopen_writer",
            "--transfers",
            str(transfers),
            "--accounts",
            str(accounts),
            "--workdir",
            str(workdir),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if writer.returncode != 0:
        raise SystemExit(f"recovery writer failed:\n{writer.stderr[-4000:]}")
    from puhui.ledger import open, verify

    journal = workdir / "journal"
    start = time.perf_counter()
    led = open(f"file://{journal}", state_dir=workdir / "state")
    opened = time.perf_counter() - start
    try:
        recovered = led.read_state(lambda e: e.n_transfers)
        verify_ok = verify(led).ok if transfers <= 2_000_000 else None
    finally:
        led.close()
    if recovered != transfers:
        raise SystemExit(f"recovered {recovered} transfers, expected {transfers}")
    return {
        "variant": "recovery" if crash else "reopen",
        "transfers": transfers,
        "accounts": accounts,
        "recovery_s": opened,
        "transfers_per_s": transfers / opened,
        "verify_ok": verify_ok,
    }


def recovery_writer(transfers: int, accounts: int, workdir: Path, *, crash: bool = True) -> None:
    """Journal ``transfers`` with no snapshot after the accounts, then die without closing
    (``crash``) or close (the final snapshot holds them all)."""
    from puhui.ledger import LedgerOptions, open

    options = LedgerOptions(snapshot_interval_events=1 << 62, transfers_capacity=transfers + BATCH)
    led = open(f"file://{workdir / 'journal'}", state_dir=workdir / "state", options=options)
    acc = make_accounts(accounts)
    for i in range(0, accounts, BATCH):
        led.create_accounts_array(acc[i : i + BATCH])
    led.snapshot_now()  # the snapshot holds the accounts only
    rng = np.random.default_rng(7)
    for i in range(0, transfers, BATCH):
        led.create_transfers_array(
            make_batch(rng, 1 + i, min(BATCH, transfers - i), accounts, False)
        )
    if not crash:
        led.close()  # the final snapshot: nothing left to replay at the next open
        return
    os._exit(0)  # a crash: no close, no final snapshot; every batch was answered, so durable


def _concurrent(
    led: Any, rng: np.random.Generator, transfers: int, accounts: int, loop: str
) -> tuple[float, list[float]]:
    """64 asyncio callers (the API server's situation), each awaiting one transfer at a time."""
    import asyncio

    from puhui.ledger import AsyncLedger

    callers = 64
    batch = make_batch(rng, 1, transfers, accounts, False)
    client = AsyncLedger(led)
    latencies: list[float] = []

    async def caller(index: int) -> None:
        for i in range(index, transfers, callers):
            t0 = time.perf_counter()
            out = await client.create_transfers_array(batch[i : i + 1])
            latencies.append(time.perf_counter() - t0)
            if out["status"][0] != 0xFFFFFFFF:
                raise SystemExit(f"transfer {i} failed: {out['status'][0]}")

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        return time.perf_counter() - start

    if loop == "uvloop":  # what uvicorn runs the API server on
        import uvloop

        return uvloop.run(run()), latencies
    return asyncio.run(run()), latencies


def _journal_bytes(led: Any) -> int:
    path = getattr(led.journal, "path", None)
    directory = getattr(led.journal, "directory", None)
    if directory is not None:  # file journal: bytes appended
        return int(led.journal.bytes_appended)
    if path is None:
        return 0
    total = 0
    for suffix in ("", "-wal"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def _history_lag(led: Any, transfers: int) -> float:
    """Seconds from the last answer until the last transfer shows in its account's history."""
    from puhui.ledger import AccountFilter, AccountFilterFlags

    start = time.perf_counter()
    [last] = led.lookup_transfers([transfers])
    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED
    found = led.get_account_transfers(
        AccountFilter(last.debit_account_id, 0, 0, 0, 0, 0, 0, 1, flags)
    )
    if not found or found[0].id != transfers:
        raise SystemExit("the last transfer is missing from its account's history")
    return time.perf_counter() - start


# --- baseline: a classic SQL ledger -------------------------------------------------------------


def run_baseline(transfers: int, accounts: int, workdir: Path) -> dict[str, Any]:
    db = sqlite3.connect(workdir / "baseline.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, debits_posted INTEGER NOT NULL,"
        " credits_posted INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE transfers (id INTEGER PRIMARY KEY, debit_account_id INTEGER NOT NULL,"
        " credit_account_id INTEGER NOT NULL, amount INTEGER NOT NULL, ts INTEGER NOT NULL)"
    )
    db.execute("BEGIN")
    db.executemany("INSERT INTO accounts VALUES (?, 0, 0)", [(i,) for i in range(1, accounts + 1)])
    db.execute("COMMIT")
    rng = np.random.default_rng(42)
    debit, credit = pick_accounts(rng, accounts, transfers, False)
    amounts = rng.integers(1, 1000, transfers)
    start = time.perf_counter()
    for i in range(transfers):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE accounts SET debits_posted = debits_posted + ? WHERE id = ?",
            (int(amounts[i]), int(debit[i])),
        )
        db.execute(
            "UPDATE accounts SET credits_posted = credits_posted + ? WHERE id = ?",
            (int(amounts[i]), int(credit[i])),
        )
        db.execute(
            "INSERT INTO transfers VALUES (?, ?, ?, ?, ?)",
            (i + 1, int(debit[i]), int(credit[i]), int(amounts[i]), time.time_ns()),
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return {"transfers": transfers, "transfers_per_s": transfers / elapsed}


# --- driver ---------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="puhui-bench-", dir=args.workdir))
    try:
        if args.variant in ("recovery_writer", "reopen_writer"):
            crash = args.variant == "recovery_writer"
            recovery_writer(args.transfers, args.accounts, Path(args.workdir), crash=crash)
            return
        if args.variant == "baseline":
            result = run_baseline(args.transfers, args.accounts, workdir)
        elif args.variant in ("recovery", "reopen"):
            crash = args.variant == "recovery"
            result = run_recovery(args.transfers, args.accounts, workdir, crash=crash)
        else:
            result = run_variant(
                args.variant,
                args.transfers,
                args.accounts,
                workdir,
                args.database_url or "",
                args.journal,
                args.loop,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


def _spawn(variant: str, transfers: int, accounts: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--transfers",
        str(transfers),
        "--accounts",
        str(accounts),
    ]
    cmd += ["--journal", args.journal, "--loop", args.loop]
    if args.workdir:
        cmd += ["--workdir", args.workdir]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--transfers", type=positive_int, default=None, help="transfers per run")
    parser.add_argument(
        "--accounts", type=positive_int, default=None, help="accounts (tigerbeetle)"
    )
    parser.add_argument("--runs", type=positive_int, default=None, help="runs per variant (median)")
    parser.add_argument("--variants", default=None, help="comma-separated subset")
    parser.add_argument("--baseline-transfers", type=positive_int, default=None)
    parser.add_argument(
        "--database-url", type=postgres_url, default=os.environ.get("PUHUI_BENCH_DATABASE_URL")
    )
    parser.add_argument(
        "--workdir", type=existing_directory, default=None, help="where journals are written"
    )
    parser.add_argument(
        "--journal", choices=("file", "sqlite"), default="file", help="embedded journal kind"
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the concurrent_64 callers (uvicorn runs the API on uvloop)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    quick = args.quick
    transfers = args.transfers or (20_000 if quick else 10_000_000)
    accounts = args.accounts or (1_000 if quick else 10_000)
    runs = args.runs or (1 if quick else 3)
    baseline_transfers = args.baseline_transfers or (500 if quick else 5_000)
    variants = choose(parser, args.variants, list(VARIANTS))
    if "postgres" in variants and not args.database_url:
        variants.remove("postgres")
    sizes = {
        "recovery": (transfers, accounts),
        "reopen": (transfers, accounts),
        "accounts_1m": (transfers, 20_000 if quick else 1_000_000),
        "concurrent_64": (min(transfers, 5_000 if quick else 200_000), accounts),
        "objects": (min(transfers, 20_000 if quick else 2_000_000), accounts),
    }

    baseline = _spawn("baseline", baseline_transfers, accounts, args)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "baseline_transfers_per_s": baseline["transfers_per_s"],
        "variants": {},
    }
    for variant in variants:
        n, a = sizes.get(variant, (transfers, accounts))
        results = [_spawn(variant, n, a, args) for _ in range(runs)]
        results.sort(key=lambda r: r["transfers_per_s"])
        median = dict(results[len(results) // 2])
        median["runs_transfers_per_s"] = [r["transfers_per_s"] for r in results]
        median["baseline_transfers_per_s"] = baseline["transfers_per_s"]
        median["ratio_to_baseline"] = median["transfers_per_s"] / baseline["transfers_per_s"]
        report["variants"][variant] = median
        if variant in ("recovery", "reopen"):
            where = (
                "journalled since the last snapshot"
                if variant == "recovery"
                else "in the snapshot of a clean close"
            )
            print(
                f"{variant:14s} opened in {median['recovery_s']:.2f} s with {n:,} transfers"
                f" {where} ({median['transfers_per_s']:,.0f}/s)",
                flush=True,
            )
            continue
        print(
            f"{variant:14s} {median['transfers_per_s']:>12,.0f} transfers/s"
            f"  x{median['ratio_to_baseline']:,.0f} baseline"
            f"  batch p50 {median['batch_p50_ms']:.2f} ms p99 {median['batch_p99_ms']:.2f} ms"
            f" p100 {median['batch_p100_ms']:.2f} ms"
            f"  journal {median['journal_bytes_per_transfer'] or 0:.0f} B/transfer"
            f"  lag {median['history_lag_s'] * 1e3:.1f} ms"
            f"  peak RSS {median['peak_rss_bytes'] / 2**20:,.0f} MiB"
            f"  index {median['index_bytes_per_transfer']:.1f} B/transfer"
            f"  accounts {median['bytes_per_account']:.0f} B/account",
            flush=True,
        )
    print(
        f"{'baseline':14s} {baseline['transfers_per_s']:>12,.0f} transfers/s (classic SQL ledger)"
    )
    if args.json:
        summary = dict(report["variants"])
        summary["baseline_transfers_per_s"] = report["baseline_transfers_per_s"]
        summary["machine"] = report["machine"]
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
