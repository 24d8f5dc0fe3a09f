"""Risk feature store throughput: ``FeatureStore.compute`` over realistic synthetic traffic.

Traffic: ``--customers`` customers (100,000) active over ``--days`` days (30); each event is a
merchant payment (45 %, merchants Zipf-distributed, s = 1.3, over ``--merchants``), a P2P
transfer (30 %, to another customer, hot payees Zipf-distributed), a top-up from a bound card
(10 %), a withdrawal (5 %) or a login / device change / password reset / card binding
(10 %). Customers use one or two devices (a few per cent of events from a new one) and IPs
drawn Zipf-distributed from a pool a tenth the customer count; a third of the events carry a
location near the customer's home; every customer has a time-zone offset, a KYC level and an
account-opening time. Event times increase with exponential gaps over the period.

Figures (median of ``--runs`` runs, each on a fresh store whose first half of the stream
warms it: a server's store holds its customers already; growth and first touches of memory
are reported apart):

* ``events_per_s``      ``compute`` on the second half, in prebuilt batches of ``--batch``
  (10,000), wall clock; ``events_per_cpu_s`` the same over the thread's CPU time (on a
  shared machine the wall clock also counts other jobs' turns); ``cold_events_per_s`` the
  first half on the fresh store (every entity new, arrays growing);
* ``columns_per_s``     ``batch_from_columns`` (interning the keys) on the same batches;
* ``single_p50_ms``/``single_p99_ms``  one event at a time, ``batch_from_events`` then
  ``compute``, on the store after the whole stream (a warm, full store);
* ``memory_bytes`` and ``bytes_per_entity`` of the state arrays after the stream.

    python benchmarks/risk_features.py                 # full run (1,000,000 events)
    python benchmarks/risk_features.py --quick --json  # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from typing import Any

import numpy as np

from _args import positive_int

NS = 1_000_000_000


def make_traffic(
    events: int, customers: int, merchants: int, days: float, seed: int
) -> dict[str, Any]:
    """Columns of a synthetic event stream (strings as Python lists)."""
    rng = np.random.default_rng(seed)
    start = 1_767_225_600 * NS  # 2026-01-01 UTC
    gaps = rng.exponential(days * 86400 * NS / events, events)
    at_ns = start + np.cumsum(gaps).astype(np.int64)
    # kinds: payment 0, p2p 1, top_up 2, withdrawal 3, login 4, device_change 5,
    # password_reset 6, card_binding 7
    kind = rng.choice(8, events, p=[0.45, 0.30, 0.10, 0.05, 0.07, 0.01, 0.01, 0.01]).astype(
        np.int64
    )
    customer = rng.integers(1, customers + 1, events)
    amount = np.where(kind <= 3, np.exp(rng.normal(8.0, 1.5, events)).astype(np.int64) + 1, 0)
    merchant_ids = (rng.zipf(1.3, events) - 1) % merchants + 1
    payees = (rng.zipf(1.2, events) - 1) % customers + 1
    payees = np.where(payees == customer, payees % customers + 1, payees)
    counterparty = [
        f"m:{m}" if k == 0 else f"c:{p}" if k == 1 else f"card:{c}" if k in (2, 3, 7) else ""
        for k, m, p, c in zip(
            kind.tolist(), merchant_ids.tolist(), payees.tolist(), customer.tolist(), strict=True
        )
    ]
    second = rng.random(events) < 0.15
    fresh = rng.random(events) < 0.02
    device = [
        f"d{c}-{rng_i}" if f else f"d{c}-{int(s)}"
        for c, s, f, rng_i in zip(
            customer.tolist(), second.tolist(), fresh.tolist(), range(events), strict=True
        )
    ]
    ip_ids = (rng.zipf(1.1, events) - 1) % max(1, customers // 10)
    ip = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in ip_ids.tolist()]
    home_lat = rng.uniform(20, 45, customers + 1)
    home_lon = rng.uniform(100, 122, customers + 1)
    located = rng.random(events) < 0.33
    latitude = np.where(located, home_lat[customer] + rng.normal(0, 0.05, events), np.nan)
    longitude = np.where(located, home_lon[customer] + rng.normal(0, 0.05, events), np.nan)
    tz = np.full(events, 8 * 3600, np.int64)
    kyc = (customer % 3).astype(np.int64)
    created = start - (customer * 7919 % (3 * 365 * 86400)) * NS
    return {
        "kind": kind,
        "customer_id": customer.astype(np.int64),
        "at_ns": at_ns,
        "amount": amount.astype(np.int64),
        "device": device,
        "counterparty": counterparty,
        "ip": ip,
        "latitude": latitude,
        "longitude": longitude,
        "tz_offset_s": tz,
        "kyc_level": kyc,
        "account_created_ns": created.astype(np.int64),
    }


def _slice(traffic: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    return {name: column[a:b] for name, column in traffic.items()}


def run_once(traffic: dict[str, Any], batch: int, singles: int) -> dict[str, Any]:
    """One run on a fresh store: the first half of the stream warms it, the second is timed."""
    from puhui.risk import EventKind, FeatureStore, RiskEvent

    store = FeatureStore()
    n = len(traffic["kind"])
    half = (n // 2) // batch * batch
    started = time.perf_counter()
    batches = [
        store.batch_from_columns(**_slice(traffic, a, a + batch)) for a in range(0, n, batch)
    ]
    columns_s = time.perf_counter() - started
    warm = batches[: half // batch]
    timed = batches[half // batch :]
    gc.collect()
    gc.disable()
    try:
        cold_s = 0.0
        for b in warm:
            t0 = time.perf_counter()
            store.compute(b)
            cold_s += time.perf_counter() - t0
        wall_s = cpu_s = 0.0
        for b in timed:
            t0 = time.perf_counter()
            c0 = time.thread_time()
            store.compute(b)
            cpu_s += time.thread_time() - c0
            wall_s += time.perf_counter() - t0
    finally:
        gc.enable()
    timed_events = n - half
    kinds = list(EventKind)
    last_ns = int(traffic["at_ns"][-1])
    latencies = []
    for j in range(singles):
        row = j * 7919 % n
        event = RiskEvent(
            kind=kinds[int(traffic["kind"][row])],
            customer_id=int(traffic["customer_id"][row]),
            at_ns=last_ns + (j + 1) * 1_000_000,
            amount=int(traffic["amount"][row]),
            currency="CNY",
            counterparty=traffic["counterparty"][row],
            device_id=traffic["device"][row],
            ip=traffic["ip"][row],
        )
        t0 = time.perf_counter()
        store.compute(store.batch_from_events([event]))
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    entities = store.entity_counts()
    memory = store.memory_bytes()
    return {
        "events": n,
        "timed_events": timed_events,
        "events_per_s": timed_events / wall_s,
        "events_per_cpu_s": timed_events / cpu_s,
        "cold_events_per_s": half / cold_s if half else 0.0,
        "columns_per_s": n / columns_s,
        "single_p50_ms": latencies[len(latencies) // 2] if latencies else 0.0,
        "single_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else 0.0,
        "entities": entities,
        "memory_bytes": memory,
        "bytes_per_entity": memory / max(1, sum(entities.values())),
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--runs", type=positive_int, default=None)
    parser.add_argument("--events", type=positive_int, default=None, help="events per run")
    parser.add_argument("--customers", type=positive_int, default=None)
    parser.add_argument("--merchants", type=positive_int, default=None)
    parser.add_argument("--days", type=float, default=30.0, help="period the events span")
    parser.add_argument(
        "--batch", type=positive_int, default=10_000, help="events per compute call"
    )
    parser.add_argument("--singles", type=positive_int, default=None, help="one-event calls timed")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 5)
    events = args.events or (30_000 if quick else 1_000_000)
    customers = args.customers or (5_000 if quick else 100_000)
    merchants = args.merchants or (500 if quick else 10_000)
    singles = args.singles if args.singles is not None else (200 if quick else 5_000)
    if events < 2 * args.batch:
        parser.error("--events must be at least twice --batch (half warms the store)")

    traffic = make_traffic(events, customers, merchants, args.days, args.seed)
    run_once(_slice(traffic, 0, min(events, 2 * args.batch)), args.batch, 10)  # compile, warm
    results = [run_once(traffic, args.batch, singles) for _ in range(runs)]
    results.sort(key=lambda r: r["events_per_s"])
    median = dict(results[len(results) // 2])
    median["runs_events_per_s"] = [round(r["events_per_s"]) for r in results]
    median["batch"] = args.batch
    median["customers"] = customers
    median["days"] = args.days
    median["single_p50_ms_runs"] = statistics.median(r["single_p50_ms"] for r in results)
    print(
        f"compute  {median['events_per_s']:>12,.0f} events/s  (batch {args.batch}, warm store, "
        f"{median['timed_events']:,} of {events:,} events, {customers:,} customers, "
        f"runs {median['runs_events_per_s']})"
    )
    print(
        f"         {median['events_per_cpu_s']:>12,.0f} events per CPU second;"
        f" cold store {median['cold_events_per_s']:,.0f} events/s;"
        f" load average {median['load_average']:.1f}"
    )
    print(f"columns  {median['columns_per_s']:>12,.0f} events/s  (batch_from_columns)")
    print(
        f"single   p50 {median['single_p50_ms']:.3f} ms  p99 {median['single_p99_ms']:.3f} ms"
        "  (batch_from_events + compute, one event)"
    )
    print(
        f"memory   {median['memory_bytes'] / 2**20:,.1f} MiB for {median['entities']}"
        f"  ({median['bytes_per_entity']:,.0f} B per entity)"
    )
    if args.json:
        print(json.dumps(median))


if __name__ == "__main__":
    main()
