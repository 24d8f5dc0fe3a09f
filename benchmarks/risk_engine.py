"""The whole risk engine: features, one model and thousands of rules, every decision logged.

Issue #6's figures: with 5,000 active rules and one model, batch throughput (target
>= 120,000 decisions/s), and events arriving one at a time at 10,000/s (target p99 <= 5 ms).
For the second, a producer thread offers events on a fixed schedule (open loop) and the
engine's thread decides whatever has arrived as one batch (as the API's coalescer does):
latency is from an event's scheduled arrival to its decision. Each batch is also decided
from columns (``decide_columns``) by a twin engine restored from the same snapshot, so the
two entry points are timed on the same events in the same state (and must agree).

Traffic is synthetic and cheap to make (not the simulator): 20,000 customers (each with
its phone and home network), Zipf-distributed merchants, the event kinds in realistic
shares, lognormal amounts. The ruleset is the shipped default plus generated rules over the
engine's features (thresholds at high quantiles of warm-up traffic, with event-kind
context); the model is LightGBM trained on the warm-up's features (100 trees of 15 leaves)
with a synthetic label. As ``puhui serve`` does, the state built before the timed part is
frozen out of the garbage collector's reach (``--no-gc-freeze`` leaves it in).

    python benchmarks/risk_engine.py [--quick] [--json] [--rules 5000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from _args import positive_int

KINDS = ("payment", "p2p", "top_up", "withdrawal", "login", "device_change", "password_reset")
KIND_SHARES = (0.5, 0.18, 0.1, 0.04, 0.15, 0.01, 0.02)
T0 = 1_767_000_000 * 10**9
CUSTOMERS = 20_000
RESERVED_ENTITIES = 1 << 16
"""Room per entity kind: the 20,000 customers plus the P2P payees among 100,000 ids."""
RESERVED_PAIRS = 1 << 17
"""Active customers; the warm-up gives each a few events, so their phones are known."""
EVENTS_PER_CUSTOMER_DAY = 10
STEP_NS = 86_400 * 10**9 // (CUSTOMERS * EVENTS_PER_CUSTOMER_DAY)
"""Event time between two events of the traffic (a customer acts about ten times a day): the
features see a realistic rate whatever the machine's speed."""


def make_events(rng: np.random.Generator, n: int, start_ns: int, step_ns: int) -> list[Any]:
    from puhui.risk import EventKind, RiskEvent

    customers = rng.integers(1, CUSTOMERS, n)
    merchants = rng.zipf(1.2, n) % 2_000
    kinds = rng.choice(len(KINDS), n, p=KIND_SHARES)
    amounts = np.round(rng.lognormal(8.5, 1.3, n)).astype(np.int64)
    out = []
    for i in range(n):
        kind = KINDS[kinds[i]]
        moves = kind in ("payment", "p2p", "top_up", "withdrawal")
        c = int(customers[i])
        if kind == "payment":
            counterparty = f"m:{merchants[i]}"
        elif kind == "p2p":
            counterparty = f"c:{(c * 7919 + i % 5) % 100_000}"
        elif kind in ("top_up", "withdrawal"):
            counterparty = f"card:{c}"
        else:
            counterparty = ""
        out.append(
            RiskEvent(
                kind=EventKind(kind),
                customer_id=c,
                at_ns=start_ns + i * step_ns,
                amount=int(amounts[i]) if moves else 0,
                currency="CNY",
                counterparty=counterparty,
                device_id=f"d{c if rng.random() > 0.01 else rng.integers(1 << 30)}",
                ip=f"10.{c % 250}.{(c // 250) % 250}.1",
                latitude=31.2 + (c % 100) / 100,
                longitude=121.4 + (c % 37) / 100,
                tz_offset_s=8 * 3600,
                kyc_level=2,
                account_created_ns=T0 - (c % 700 + 1) * 86_400 * 10**9,
            )
        )
    return out


def make_rules(active: int, features: dict[str, np.ndarray], seed: int) -> str:
    """The default ruleset plus generated rules up to ``active``."""
    from puhui.risk import FEATURE_SCHEMA
    from puhui.risk._engine import DEFAULT_RULES

    text = DEFAULT_RULES.read_text()
    rng = random.Random(seed)
    # Features of activity (counts, sums, amounts, distinct parties), not of elapsed time
    # (ages and "since" grow past any warm-up quantile), and only where the quantile is > 0.
    numeric = [
        n
        for n, s in FEATURE_SCHEMA.items()
        if s.type != "bool"
        and not n.startswith(("event.", "location."))
        and not n.endswith("_s")
        and np.quantile(np.nan_to_num(features[n]), 0.999) > 0
    ]
    base = text.count("[[rule]]")
    parts = [text]
    for k in range(max(0, active - base)):
        name = rng.choice(numeric)
        column = features[name][np.isfinite(features[name])]
        q = float(np.quantile(column, rng.uniform(0.999, 0.99999))) if column.size else 0.0
        other = rng.choice(numeric)
        column2 = features[other][np.isfinite(features[other])]
        q2 = float(np.quantile(column2, rng.uniform(0.99, 0.999))) if column2.size else 0.0
        kind = rng.choice(KINDS[:4])
        when = f'event.type == "{kind}" and {name} > {q:.6g} and {other} >= {q2:.6g}'
        tail = f'action = "{rng.choice(("challenge", "review"))}"' if k % 3 else "score = 50"
        parts.append(
            f'\n[[rule]]\nid = "gen.{k}"\ndescription = "generated"\nwhen = \'{when}\'\n'
            f'{tail}\npriority = {rng.randint(0, 100)}\nstatus = "active"\nowner = "bench"\n'
        )
    return "".join(parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from puhui.clock import SystemClock
    from puhui.risk import FeatureStore, RiskLists, parse_ruleset
    from puhui.risk._engine import RiskEngine, engine_schema, event_columns
    from puhui.risk._log import DecisionLog
    from puhui.risk._model import train

    rng = np.random.default_rng(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="puhui-risk-bench-"))
    try:
        warm_store = FeatureStore()
        warm_events = make_events(rng, args.warmup, T0, STEP_NS)
        features = warm_store.compute(warm_store.batch_from_events(warm_events))
        names = [n for n in features if not n.startswith("event.")]
        label = features["customer.count_1h"] > np.quantile(features["customer.count_1h"], 0.98)
        label |= rng.random(len(label)) < 0.01
        model = train(
            {n: np.asarray(features[n], dtype=np.float64) for n in names},
            label.astype(np.int8),
            rounds=100,
            leaves=15,
        )
        text = make_rules(args.rules, dict(features), args.seed)
        started = time.perf_counter()
        ruleset = parse_ruleset(text, engine_schema(), sample=None)
        compile_s = time.perf_counter() - started
        active = sum(1 for r in ruleset.evaluated_rules if r.status == "active")
        log = DecisionLog(workdir / "log")
        engine = RiskEngine(ruleset, lists=RiskLists(SystemClock()), model=model, log=log)
        # Sized for the population up front, as a server is (open_engine(entities=...)): a
        # store that doubles its arrays mid-run stalls one call for ~120 ms at this size.
        engine.features.reserve(RESERVED_ENTITIES, pairs=RESERVED_PAIRS)
        engine(warm_events[: args.batch])  # compile everything once
        # A twin in the same state decides the same batches from columns (decide_columns,
        # what a service holding its events as arrays calls; the columns are built before
        # its clock starts, they are the service's own): objects and columns alternate.
        engine.snapshot(workdir / "state")
        twin_log = DecisionLog(workdir / "twin-log")
        twin = RiskEngine(ruleset, lists=RiskLists(SystemClock()), model=model, log=twin_log)
        twin.recover(workdir / "state")
        twin.features.reserve(RESERVED_ENTITIES, pairs=RESERVED_PAIRS)
        clock_ns = T0 + args.warmup * STEP_NS
        # What exists now is the server's start-up state, which `puhui serve` keeps out of the
        # garbage collector's reach (gc.freeze, ApiOptions.freeze_gc_on_start); the warm-up's
        # event objects are not kept (a server does not hold its past requests).
        del warm_events, features
        if not args.no_gc_freeze:
            gc.collect()
            gc.freeze()
        # --- batches ------------------------------------------------------------------------
        rates = []
        columnar_rates = []
        decisions: dict[str, int] = {}
        for _ in range(args.runs):
            events = make_events(rng, args.batch, clock_ns, STEP_NS)
            clock_ns += args.batch * STEP_NS
            t0 = time.perf_counter()
            out = engine(events)
            rates.append(args.batch / (time.perf_counter() - t0))
            for d in out:
                decisions[str(d.decision)] = decisions.get(str(d.decision), 0) + 1
            columns = event_columns(events)
            t0 = time.perf_counter()
            decided = twin.decide_columns(columns)
            columnar_rates.append(args.batch / (time.perf_counter() - t0))
            if decided.decisions() != out:
                raise RuntimeError("decide_columns disagrees with decide on the same events")
        twin_log.close()
        # --- one at a time, offered at a fixed rate ----------------------------------------
        offered = make_events(rng, args.singles, clock_ns, STEP_NS)
        arrivals: queue.SimpleQueue[tuple[float, Any]] = queue.SimpleQueue()
        interval = 1.0 / args.offered_per_s
        latencies: list[float] = []
        begin = time.perf_counter() + 0.05

        def produce() -> None:
            # Events become due on a fixed schedule; the producer wakes every 0.5 ms and
            # hands over whatever is due (no busy-waiting: it would take the GIL from the
            # engine). Latency counts from each event's due time.
            k = 0
            while k < len(offered):
                now = time.perf_counter()
                while k < len(offered) and begin + k * interval <= now:
                    arrivals.put((begin + k * interval, offered[k]))
                    k += 1
                time.sleep(0.0005)
            arrivals.put((0.0, None))

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        batches = 0
        finished = False
        while not finished:
            items = [arrivals.get()]
            while True:
                try:
                    items.append(arrivals.get_nowait())
                except queue.Empty:
                    break
            if items[-1][1] is None:
                finished = True
                items.pop()
            if not items:
                continue
            engine([event for _, event in items])
            done = time.perf_counter()
            latencies.extend(done - due for due, _ in items)
            batches += 1
        producer.join()
        elapsed = time.perf_counter() - begin
        log.close()
        ms = np.asarray(latencies) * 1e3
        return {
            "gc_frozen": not args.no_gc_freeze,
            "rules_active": active,
            "compile_s": round(compile_s, 3),
            "model_trees": 100,
            "batch": args.batch,
            "decisions_per_s": float(np.median(rates)),
            "runs_decisions_per_s": [round(r) for r in rates],
            "decisions": decisions,
            "columnar_decisions_per_s": float(np.median(columnar_rates)),
            "runs_columnar_decisions_per_s": [round(r) for r in columnar_rates],
            "offered_per_s": args.offered_per_s,
            "single_events": len(latencies),
            "single_achieved_per_s": len(latencies) / elapsed,
            "single_batches": batches,
            "single_p50_ms": float(np.percentile(ms, 50)),
            "single_p99_ms": float(np.percentile(ms, 99)),
            "single_p100_ms": float(ms.max()),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--rules", type=positive_int, default=None, help="active rules")
    parser.add_argument("--batch", type=positive_int, default=None, help="events per batch")
    parser.add_argument("--runs", type=positive_int, default=None, help="batches timed")
    parser.add_argument("--warmup", type=int, default=None, help="events before timing")
    parser.add_argument(
        "--singles", type=positive_int, default=None, help="events offered one by one"
    )
    parser.add_argument("--offered-per-s", type=positive_int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="leave the start-up state in the garbage collector's reach (the server freezes it)",
    )
    args = parser.parse_args()
    quick = args.quick
    args.rules = args.rules or (200 if quick else 5_000)
    args.batch = args.batch or (1_000 if quick else 10_000)
    args.runs = args.runs or (2 if quick else 7)
    args.warmup = args.warmup or (5_000 if quick else 100_000)
    args.singles = args.singles or (500 if quick else 30_000)
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    report["engine"] = run(args)
    e = report["engine"]
    print(
        f"engine  {e['rules_active']:,} active rules + model: {e['decisions_per_s']:,.0f}"
        f" decisions/s at batch {e['batch']:,} (runs {e['runs_decisions_per_s']}), from columns"
        f" {e['columnar_decisions_per_s']:,.0f}/s (runs {e['runs_columnar_decisions_per_s']});"
        f" one at a time offered {e['offered_per_s']:,}/s: achieved"
        f" {e['single_achieved_per_s']:,.0f}/s, p50 {e['single_p50_ms']:.2f} ms,"
        f" p99 {e['single_p99_ms']:.2f} ms, p100 {e['single_p100_ms']:.2f} ms"
        f" ({e['single_batches']:,} engine calls); compile {e['compile_s']:.2f} s",
        flush=True,
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
