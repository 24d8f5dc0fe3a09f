"""Risk feature store under a key-rotation flood: its memory stays bounded; what evictions cost.

Traffic: one event a millisecond of event time. A share ``--ordinary`` (10 %) are ordinary
customers' (``--customers``, 5,000, each with its own device and IP, paying one of 1,000
merchants or another customer); the rest are an attacker's: from one of 100 accounts, each
event from a new device and a new IP, paying a new payee (a new customer ``c:<id>`` every other
time, else a new card) — every such event brings a new key of four kinds. The store is bounded
at ``--entities`` of each kind (65,536) and twice as many pairs; ``compute`` runs in batches of
``--batch`` (1,000 events, a server's batch) built with ``batch_from_columns``, which evicts
when a batch would pass a bound.

Figures:

* ``memory_bytes``: the state arrays after the flood, and ``memory_bytes_max`` over all
  batches (the bound at work); ``max_rss_bytes``: the process's peak resident memory (the
  interning tables and Python included); ``unbounded_bytes``: what an unbounded store's state
  arrays would hold for the same keys (their count times the bytes per entity of
  docs/risk-features.md), not run;
* ``evictions`` and ``eviction_pause_ms_p50/p99/max``: ``batch_from_columns`` of a batch
  that evicted (interning included) against ``columns_ms_p50`` of one that did not;
* ``events_per_s``: the whole flood, ``batch_from_columns`` and ``compute``, wall clock.

    python benchmarks/risk_flood.py --json           # 1,000,000 events, 65,536 of each kind
    python benchmarks/risk_flood.py --quick --json   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
from typing import Any

import numpy as np

from _args import positive_int

NS = 1_000_000_000
START = 1_767_225_600 * NS  # 2026-01-01 UTC
ENTITY_BYTES = {  # docs/risk-features.md, "Memory"
    "customer": 2464,
    "device": 1648,
    "merchant": 1648,
    "counterparty": 1784,
    "ip": 1648,
}


def make_flood(events: int, customers: int, ordinary: float, seed: int) -> dict[str, Any]:
    """Columns of the flood (strings as Python lists)."""
    rng = np.random.default_rng(seed)
    legit = rng.random(events) < ordinary
    customer = np.where(
        legit, rng.integers(1, customers + 1, events), rng.integers(0, 100, events) + 10**9
    )
    kind = np.where(rng.random(events) < 0.5, 0, 1)  # payment, P2P
    merchants = rng.integers(0, 1000, events)
    payees = rng.integers(1, customers + 1, events)
    device, counterparty, ip = [], [], []
    for j, (good, c, k) in enumerate(
        zip(legit.tolist(), customer.tolist(), kind.tolist(), strict=True)
    ):
        if good:
            device.append(f"dev-{c}")
            ip.append(f"10.{c >> 16}.{(c >> 8) & 255}.{c & 255}")
            counterparty.append(f"m:{merchants[j]}" if k == 0 else f"c:{payees[j]}")
        else:
            device.append(f"rot-{j}")
            ip.append(f"rot-ip-{j}")
            counterparty.append(f"c:{2 * 10**9 + j}" if j % 2 else f"card:rot-{j}")
    return {
        "kind": kind.astype(np.int64),
        "customer_id": customer.astype(np.int64),
        "at_ns": START + np.arange(events, dtype=np.int64) * 1_000_000,
        "amount": rng.integers(100, 100_000, events),
        "device": device,
        "counterparty": counterparty,
        "ip": ip,
    }


def run(flood: dict[str, Any], entities: int, batch: int) -> dict[str, Any]:
    from puhui.risk import FeatureStore

    store = FeatureStore(entities_max=entities, pairs_max=2 * entities)
    n = len(flood["kind"])
    memory_max = 0
    pauses: list[float] = []
    columns_ms: list[float] = []
    gc.collect()
    started = time.perf_counter()
    for low in range(0, n, batch):
        part = {name: column[low : low + batch] for name, column in flood.items()}
        evictions = store.evictions
        t0 = time.perf_counter()
        built = store.batch_from_columns(**part)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        (pauses if store.evictions != evictions else columns_ms).append(elapsed_ms)
        store.compute(built)
        memory_max = max(memory_max, store.memory_bytes())
    wall_s = time.perf_counter() - started
    distinct = {
        "customer": len(
            set(flood["customer_id"].tolist())
            | {int(p[2:]) for p in flood["counterparty"] if p.startswith("c:")}
        ),
        "device": len(set(flood["device"])),
        "merchant": sum(1 for p in set(flood["counterparty"]) if p.startswith("m:")),
        "counterparty": len(set(flood["counterparty"])),
        "ip": len(set(flood["ip"])),
    }
    pauses.sort()
    columns_ms.sort()

    def at(values: list[float], share: float) -> float:
        return values[min(len(values) - 1, int(len(values) * share))] if values else 0.0

    return {
        "events": n,
        "batch": batch,
        "entities_max": entities,
        "pairs_max": 2 * entities,
        "entities": store.entity_counts(),
        "pairs": store.pair_count(),
        "memory_bytes": store.memory_bytes(),
        "memory_bytes_max": memory_max,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "keys_in_flood": distinct,
        "unbounded_bytes": sum(ENTITY_BYTES[kind] * count for kind, count in distinct.items()),
        "evictions": store.evictions,
        "eviction_pause_ms_p50": at(pauses, 0.5),
        "eviction_pause_ms_p99": at(pauses, 0.99),
        "eviction_pause_ms_max": pauses[-1] if pauses else 0.0,
        "columns_ms_p50": at(columns_ms, 0.5),
        "events_per_s": n / wall_s,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--events", type=positive_int, default=None)
    parser.add_argument("--entities", type=positive_int, default=None, help="bound of each kind")
    parser.add_argument("--customers", type=positive_int, default=5_000, help="ordinary customers")
    parser.add_argument("--ordinary", type=float, default=0.1, help="share of ordinary events")
    parser.add_argument("--batch", type=positive_int, default=1_000, help="events per batch")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    events = args.events or (40_000 if args.quick else 1_000_000)
    entities = args.entities or (4_096 if args.quick else 65_536)
    flood = make_flood(events, args.customers, args.ordinary, args.seed)
    warm = {name: column[: args.batch] for name, column in flood.items()}
    run(warm, entities, args.batch)  # compile / load the kernels
    report = run(flood, entities, args.batch)
    mib = 2**20
    print(
        f"flood    {events:,} events, {report['events_per_s']:,.0f} events/s, bound "
        f"{entities:,} of each kind; load average {report['load_average']:.1f}"
    )
    print(
        f"memory   {report['memory_bytes'] / mib:,.1f} MiB of state arrays (at most "
        f"{report['memory_bytes_max'] / mib:,.1f}); peak RSS {report['max_rss_bytes'] / mib:,.0f}"
        f" MiB; unbounded: {report['unbounded_bytes'] / mib:,.0f} MiB"
    )
    print(
        f"evict    {report['evictions']} evictions, batch_from_columns p50 "
        f"{report['eviction_pause_ms_p50']:.1f} ms, p99 {report['eviction_pause_ms_p99']:.1f} ms,"
        f" max {report['eviction_pause_ms_max']:.1f} ms (without one: "
        f"{report['columns_ms_p50']:.2f} ms)"
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
