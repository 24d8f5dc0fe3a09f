"""One account's history on a large ledger: ``get_account_transfers`` along the account's chain
(``AccountChains``) against the full scan of every transfer it replaced.

A ledger (the file journal, a fresh directory) gets ``--transfers`` transfers between random
accounts of ``--accounts``, then a *quiet* account gets three transfers at the end and a
*busy* one is any of the others. Once the writer has linked every row (while idle), each read
(newest first and oldest first, ``limit`` 100) is timed ``--reads`` times through the public
API (``read_ms``: the queue to the writer and the answer's objects included), and on the
writer's thread the new path alone (``chain_ms``) and the full scan it replaced
(``full_scan_ms``, ``K.scan_transfers``), for the ratio. Medians in milliseconds.

``first_read_quiet_newest_first``: the ledger's first per-account read (nothing linked yet,
every row scanned), while another thread writes one transfer at a time: what the writes
waited during it (the read scans ``QUERY_ROWS_PER_TURN`` rows a turn of the writer).

``query``: a ``query_transfers`` that matches nothing (every row of the ledger read), timed
through the public API (``query_ms``), against the one scan of every row on the writer's
thread that it was before (``one_turn_scan_ms``: every write waited that long), and what a
one-transfer write waits while such queries run back to back (``write_during_query_ms``:
median and largest, ``writes`` of them); the query now scans ``QUERY_ROWS_PER_TURN`` rows a
turn of the writer, and the writes go between its turns.

    python benchmarks/ledger_history.py --json
    python benchmarks/ledger_history.py --quick --json   # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _args import positive_int

BATCH = 8189


def _build(directory: Path, transfers: int, accounts: int) -> tuple[Any, int]:
    from puhui import ledger as L
    from puhui.ledger import TRANSFER_DTYPE, Account, LedgerOptions

    led = L.open(
        f"file://{directory / 'journal'}",
        state_dir=directory / "state",
        options=LedgerOptions(transfers_capacity=transfers + BATCH),
    )
    ids = list(range(1, accounts + 2))  # the last one is the quiet account
    for start in range(0, len(ids), BATCH):
        led.create_accounts([Account(id=a, ledger=1, code=1) for a in ids[start : start + BATCH]])
    rng = np.random.default_rng(1)
    made = 0
    while made < transfers:
        n = min(BATCH, transfers - made)
        events = np.zeros(n, TRANSFER_DTYPE)
        events["id_lo"] = np.arange(made + 1, made + n + 1)
        debit = rng.integers(1, accounts + 1, n)
        credit = debit % accounts + 1  # another account of the same range
        events["debit_account_id_lo"] = debit
        events["credit_account_id_lo"] = credit
        events["amount_lo"] = 1
        events["ledger"] = 1
        events["code"] = 1
        results = led.create_transfers_array(events)
        if int(np.count_nonzero(results["status"] != 0xFFFFFFFF)):
            raise SystemExit("a transfer failed")
        made += n
    quiet = accounts + 1
    events = np.zeros(3, TRANSFER_DTYPE)
    events["id_lo"] = np.arange(made + 1, made + 4)
    events["debit_account_id_lo"] = quiet
    events["credit_account_id_lo"] = 1
    events["amount_lo"] = 1
    events["ledger"] = 1
    events["code"] = 1
    led.create_transfers_array(events)
    return led, quiet


def _scan_times(
    led: Any, account: int, user_data_128: int, limit: int, reversed_: bool, reads: int
) -> list[float]:
    """Milliseconds of ``reads`` scans of every transfer on the writer's thread
    (``K.scan_transfers``): of one account's (``account``; 0: any), or of a ``user_data_128``."""
    from puhui.ledger import _kernel as K

    zero = np.uint64(0)
    by_account = account != 0

    def scan(engine: Any) -> list[float]:
        out = []
        for _ in range(reads):
            start = time.perf_counter()
            K.scan_transfers(
                engine.transfers, engine.n_transfers, np.uint64(account), zero,
                by_account, by_account, by_account, np.uint64(user_data_128), zero, zero,
                0, 0, 0, zero, zero, limit, reversed_,
            )  # fmt: skip
            out.append((time.perf_counter() - start) * 1000)
        return out

    times: list[float] = led.read_state(scan)
    return times


def _full_scan_ms(led: Any, account: int, limit: int, reversed_: bool, reads: int) -> float:
    return float(statistics.median(_scan_times(led, account, 0, limit, reversed_, reads)))


def _chain_ms(led: Any, account: int, limit: int, reversed_: bool, reads: int) -> float:
    """The new path on the writer's thread, as ``_full_scan_ms`` times the old one."""
    from puhui.ledger import AccountFilter, AccountFilterFlags
    from puhui.ledger._ledger import _account_filter, _scan_account

    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    if reversed_:
        flags |= AccountFilterFlags.REVERSED
    params = _account_filter(AccountFilter(account, 0, 0, 0, 0, 0, 0, limit, flags))

    def scan(engine: Any) -> list[float]:
        out = []
        for _ in range(reads):
            start = time.perf_counter()
            _scan_account(engine, params)  # type: ignore[arg-type]
            out.append((time.perf_counter() - start) * 1000)
        return out

    return float(statistics.median(led.read_state(scan)))


def _read_ms(led: Any, account: int, limit: int, reversed_: bool, reads: int) -> tuple[float, int]:
    from puhui.ledger import AccountFilter, AccountFilterFlags

    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    if reversed_:
        flags |= AccountFilterFlags.REVERSED
    f = AccountFilter(account, 0, 0, 0, 0, 0, 0, limit, flags)
    times, found = [], 0
    for _ in range(reads):
        start = time.perf_counter()
        found = len(led.get_account_transfers(f))
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times)), found


def _query(led: Any, reads: int) -> dict[str, Any]:
    import threading

    from puhui.ledger import QueryFilter, QueryFilterFlags, Transfer
    from puhui.ledger import _ledger as ledger_module

    nothing = QueryFilter(12345, 0, 0, 0, 0, 0, 0, 100, QueryFilterFlags.NONE)  # no such data
    scans = _scan_times(led, 0, 12345, 100, False, reads)
    queries: list[float] = []
    stop = threading.Event()

    def querying() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            if led.query_transfers(nothing):
                raise SystemExit("the query found something")
            queries.append((time.perf_counter() - start) * 1000)

    worker = threading.Thread(target=querying)
    worker.start()
    writes: list[float] = []
    next_id = 10**12
    try:
        while len(queries) < reads:
            next_id += 1
            transfer = Transfer(next_id, 1, 2, 1, ledger=1, code=1)
            start = time.perf_counter()
            led.create_transfers([transfer])
            writes.append((time.perf_counter() - start) * 1000)
    finally:
        stop.set()
        worker.join()
    return {
        "rows_per_turn": ledger_module.QUERY_ROWS_PER_TURN,
        "one_turn_scan_ms": round(statistics.median(scans), 3),
        "query_ms": round(statistics.median(queries), 3),
        "write_during_query_ms": {
            "median": round(statistics.median(writes), 3),
            "max": round(max(writes), 3),
            "writes": len(writes),
        },
    }


def _first_read(led: Any, account: int, limit: int) -> dict[str, Any]:
    """The first per-account read of a ledger (nothing linked yet: every row scanned), newest
    first, while another thread writes one transfer at a time: the read's time and what the
    writes waited meanwhile (in turns now, as ``query_transfers``)."""
    import threading

    from puhui.ledger import AccountFilter, AccountFilterFlags, Transfer

    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED
    f = AccountFilter(account, 0, 0, 0, 0, 0, 0, limit, flags)
    writes: list[float] = []
    stop = threading.Event()

    def writing() -> None:
        next_id = 10**13
        while not stop.is_set():
            next_id += 1
            start = time.perf_counter()
            led.create_transfers([Transfer(next_id, 1, 2, 1, ledger=1, code=1)])
            writes.append((time.perf_counter() - start) * 1000)

    worker = threading.Thread(target=writing)
    worker.start()
    try:
        while len(writes) < 20:  # the writer is going
            time.sleep(0.001)
        seen = len(writes)
        start = time.perf_counter()
        found = len(led.get_account_transfers(f))
        read_ms = (time.perf_counter() - start) * 1000
    finally:
        stop.set()
        worker.join()
    during = writes[seen:] or [0.0]  # after the join: with the write the read held up
    return {
        "read_ms": round(read_ms, 3),
        "transfers_found": found,
        "write_during_read_ms_max": round(max(during), 3),
        "writes_during_read": len(during),
    }


def run(transfers: int, accounts: int, reads: int, limit: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="puhui-ledger-history-"))
    try:
        led, quiet = _build(directory, transfers, accounts)
        try:
            busy = 7
            first_read = _first_read(led, quiet, limit)  # per-account reads begin here
            start = time.perf_counter()
            while led.read_state(lambda e: e.chains.count < e.n_transfers):
                time.sleep(0.005)
            linked_s = time.perf_counter() - start
            out: dict[str, Any] = {"transfers": transfers, "accounts": accounts, "limit": limit}
            out["linked_while_idle_s"] = round(linked_s, 3)
            out["first_read_quiet_newest_first"] = first_read
            for name, account in (("quiet", quiet), ("busy", busy)):
                for order, reversed_ in (("newest_first", True), ("oldest_first", False)):
                    ms, found = _read_ms(led, account, limit, reversed_, reads)
                    scan = _full_scan_ms(led, account, limit, reversed_, reads)
                    chain = _chain_ms(led, account, limit, reversed_, reads)
                    out[f"{name}_{order}"] = {
                        "read_ms": round(ms, 4),
                        "chain_ms": round(chain, 4),
                        "full_scan_ms": round(scan, 4),
                        "transfers_found": found,
                    }
            out["query"] = _query(led, reads)
            return out
        finally:
            led.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--transfers", type=positive_int, default=1_000_000)
    parser.add_argument("--accounts", type=positive_int, default=1_000)
    parser.add_argument("--reads", type=positive_int, default=50, help="timed reads per figure")
    parser.add_argument("--limit", type=positive_int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.transfers, args.accounts, args.reads = 20_000, 100, 5
    report = run(args.transfers, args.accounts, args.reads, args.limit)
    if not args.json:
        for key, value in report.items():
            print(f"{key}: {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
