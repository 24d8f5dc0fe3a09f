"""Risk rules: compile and evaluate a synthetic ruleset of 5,000 active rules over ~45 features.

The ruleset is what a fraud team accumulates: single thresholds at the tail of a feature,
conjunctions of an event kind / channel / category with thresholds and flags, ``in [...]``
lists of merchant categories and countries, ratios and differences of features (from a pool
of shared forms, as real rules reuse them), block-list lookups, a few ``or`` rules and
feature-against-feature comparisons; 70% add a score, 30% ask for an action; 250 more rules
in shadow and 250 off. Thresholds are set on quantiles of a sample of the synthetic features
(rules aim at tails). The feature batches are drawn from the same distributions.

Reported (median of ``--runs``): compile time of the ruleset file, batch throughput at
``--batch`` events (decisions/s of wall time, and per CPU-second of this process, which the
other jobs on a shared machine disturb less; the kernel runs on one thread), and the
latency of one-event batches (p50/p99) — the figures the engine's 120,000 decisions/s budget
(features + rules + a model) must leave room for.

    python benchmarks/risk.py --json          # full run
    python benchmarks/risk.py --quick --json  # smoke run (the test suite calls this)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import numpy as np

from _args import positive_int

EVENT_KINDS = ("payment", "p2p", "top_up", "withdrawal", "login", "card_binding")
CHANNELS = ("app", "web", "pos", "api")
COUNTRIES = ("CN", "HK", "SG", "US", "GB", "TH", "VN", "MY", "ID", "PH")
OSES = ("android", "ios", "harmony", "windows", "macos")
MCCS = tuple(str(code) for code in (5411, 5812, 5999, 6011, 6051, 7995, 4829, 5732, 5311, 4111))

NUMBER_FEATURES = (
    "amount",
    "customer.count_1m",
    "customer.count_1h",
    "customer.count_24h",
    "customer.count_7d",
    "customer.count_30d",
    "customer.sum_1h",
    "customer.sum_24h",
    "customer.sum_7d",
    "customer.avg_amount_30d",
    "customer.distinct_counterparties_24h",
    "customer.failed_logins_24h",
    "customer.account_age_days",
    "customer.since_password_reset_s",
    "customer.since_device_change_s",
    "customer.kyc_level",
    "device.count_1h",
    "device.customers_24h",
    "ip.count_1h",
    "ip.customers_24h",
    "merchant.count_1h",
    "merchant.sum_1h",
    "counterparty.count_24h",
    "counterparty.fan_in_24h",
    "counterparty.account_age_days",
    "amount_zscore",
    "amount_percentile",
    "distance_km",
    "speed_kmh",
    "hour",
    "graph.flagged_neighbours",
)
BOOLEAN_FEATURES = (
    "device.is_new",
    "counterparty.is_first",
    "is_night",
    "ip.is_proxy",
    "card.is_new",
)
CATEGORY_FEATURES = (
    "kind",
    "channel",
    "country",
    "ip_country",
    "card_country",
    "device.os",
    "merchant.category",
    "customer.id",
    "device.id",
    "card.id",
    "ip",
    "merchant.id",
)
ID_SPACE = 200_000


def schema() -> dict[str, Any]:
    from puhui.risk import FeatureType

    out: dict[str, Any] = {name: FeatureType.NUMBER for name in NUMBER_FEATURES}
    out.update({name: FeatureType.BOOLEAN for name in BOOLEAN_FEATURES})
    out.update({name: FeatureType.CATEGORY for name in CATEGORY_FEATURES})
    return out


def make_batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` events of synthetic, plausibly distributed features."""
    counts_1h = rng.poisson(0.8, n)
    f: dict[str, np.ndarray] = {
        "amount": np.round(rng.lognormal(8.5, 1.4, n)).astype(np.int64),
        "customer.count_1m": rng.poisson(0.1, n),
        "customer.count_1h": counts_1h,
        "customer.count_24h": counts_1h + rng.poisson(4, n),
        "customer.count_7d": rng.poisson(25, n),
        "customer.count_30d": rng.poisson(90, n),
        "customer.sum_1h": np.round(rng.lognormal(8.0, 1.6, n) * counts_1h).astype(np.int64),
        "customer.sum_24h": np.round(rng.lognormal(9.5, 1.5, n)).astype(np.int64),
        "customer.sum_7d": np.round(rng.lognormal(11.0, 1.3, n)).astype(np.int64),
        "customer.avg_amount_30d": np.round(rng.lognormal(8.3, 1.0, n)) * (rng.random(n) > 0.03),
        "customer.distinct_counterparties_24h": rng.poisson(1.5, n),
        "customer.failed_logins_24h": rng.poisson(0.2, n),
        "customer.account_age_days": np.round(rng.exponential(400, n)),
        "customer.since_password_reset_s": np.round(rng.exponential(3e6, n)),
        "customer.since_device_change_s": np.round(rng.exponential(5e6, n)),
        "customer.kyc_level": rng.integers(0, 4, n),
        "device.count_1h": rng.poisson(1.0, n),
        "device.customers_24h": 1 + rng.poisson(0.05, n),
        "ip.count_1h": rng.poisson(2.0, n),
        "ip.customers_24h": 1 + rng.poisson(0.3, n),
        "merchant.count_1h": rng.poisson(30, n),
        "merchant.sum_1h": np.round(rng.lognormal(12, 1.5, n)).astype(np.int64),
        "counterparty.count_24h": rng.poisson(3, n),
        "counterparty.fan_in_24h": rng.poisson(1.2, n),
        "counterparty.account_age_days": np.round(rng.exponential(500, n)),
        "amount_zscore": rng.normal(0, 1.2, n),
        "amount_percentile": rng.random(n),
        "distance_km": rng.exponential(15, n),
        "speed_kmh": rng.exponential(20, n),
        "hour": rng.integers(0, 24, n),
        "graph.flagged_neighbours": rng.poisson(0.05, n),
        "device.is_new": rng.random(n) < 0.05,
        "counterparty.is_first": rng.random(n) < 0.2,
        "is_night": rng.random(n) < 0.15,
        "ip.is_proxy": rng.random(n) < 0.02,
        "card.is_new": rng.random(n) < 0.03,
        "kind": rng.choice(np.array(EVENT_KINDS), n, p=[0.45, 0.25, 0.1, 0.08, 0.1, 0.02]),
        "channel": rng.choice(np.array(CHANNELS), n, p=[0.7, 0.1, 0.15, 0.05]),
        "country": rng.choice(np.array(COUNTRIES), n, p=[0.82] + [0.02] * 9),
        "ip_country": rng.choice(np.array(COUNTRIES), n, p=[0.8] + [0.0222] * 8 + [0.0224]),
        "card_country": rng.choice(np.array(COUNTRIES), n, p=[0.85] + [0.0166] * 8 + [0.0172]),
        "device.os": rng.choice(np.array(OSES), n, p=[0.55, 0.3, 0.1, 0.03, 0.02]),
        "merchant.category": rng.choice(np.array(MCCS), n),
    }
    for name, prefix in (
        ("customer.id", "c"),
        ("device.id", "d"),
        ("card.id", "k"),
        ("ip", "ip"),
        ("merchant.id", "m"),
    ):
        f[name] = np.char.add(prefix, rng.integers(0, ID_SPACE, n).astype(str))
    return f


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out: np.ndarray = np.divide(a, b, out=np.zeros_like(a), where=b != 0)
    return out


def _max(a: np.ndarray, b: float) -> np.ndarray:
    return np.maximum(np.asarray(a, dtype=np.float64), b)


Columns = dict[str, np.ndarray]
ARITHMETIC_FORMS: tuple[tuple[str, Any], ...] = (
    ("amount / customer.avg_amount_30d", lambda f: _div(f["amount"], f["customer.avg_amount_30d"])),
    (
        "amount / max(customer.avg_amount_30d, 100)",
        lambda f: _div(f["amount"], _max(f["customer.avg_amount_30d"], 100)),
    ),
    (
        "customer.sum_1h / max(customer.sum_24h, 1)",
        lambda f: _div(f["customer.sum_1h"], _max(f["customer.sum_24h"], 1)),
    ),
    (
        "customer.count_24h - customer.count_7d / 7",
        lambda f: f["customer.count_24h"] - f["customer.count_7d"] / 7,
    ),
    (
        "customer.count_1h * 24 - customer.count_24h",
        lambda f: f["customer.count_1h"] * 24 - f["customer.count_24h"],
    ),
    ("abs(amount_zscore)", lambda f: np.abs(f["amount_zscore"])),
    (
        "distance_km / max(customer.since_device_change_s / 3600, 0.1)",
        lambda f: _div(f["distance_km"], _max(f["customer.since_device_change_s"] / 3600, 0.1)),
    ),
    (
        "amount / max(customer.account_age_days, 1)",
        lambda f: _div(f["amount"], _max(f["customer.account_age_days"], 1)),
    ),
    ("customer.sum_24h + amount", lambda f: f["customer.sum_24h"] + f["amount"]),
    (
        "ip.customers_24h + device.customers_24h",
        lambda f: f["ip.customers_24h"] + f["device.customers_24h"],
    ),
    (
        "counterparty.fan_in_24h / max(counterparty.account_age_days, 1)",
        lambda f: _div(f["counterparty.fan_in_24h"], _max(f["counterparty.account_age_days"], 1)),
    ),
    (
        "merchant.sum_1h / max(merchant.count_1h, 1)",
        lambda f: _div(f["merchant.sum_1h"], _max(f["merchant.count_1h"], 1)),
    ),
    (
        "min(customer.since_password_reset_s, customer.since_device_change_s)",
        lambda f: (
            -np.minimum(f["customer.since_password_reset_s"], f["customer.since_device_change_s"])
        ),
    ),
    (
        "amount * (1 - amount_percentile)",
        lambda f: f["amount"] * (1 - f["amount_percentile"]),
    ),
    ("-amount_zscore", lambda f: -f["amount_zscore"]),
)
"""Shared arithmetic forms of the rules, each with its numpy twin (to set thresholds on).

A twin returning the negated value marks a form compared with ``<`` (small is risky).
"""


class _Thresholds:
    def __init__(self, sample: dict[str, np.ndarray]) -> None:
        self.sample = sample
        self.forms = [np.asarray(twin(sample), dtype=np.float64) for _, twin in ARITHMETIC_FORMS]

    def tail(self, rng: random.Random, name: str, low: float, high: float, op: str) -> str:
        column = self.sample[name]
        level = rng.uniform(low, high)
        value = float(np.quantile(column, level if op in (">", ">=") else 1 - level))
        integral = np.issubdtype(column.dtype, np.integer) or bool(
            np.all(column == np.round(column))
        )
        if integral:
            value = round(value) + (1 if op == ">=" else 0)
            return str(value)
        return f"{value:.6g}"

    def form(self, rng: random.Random, low: float, high: float) -> str:
        index = rng.randrange(len(ARITHMETIC_FORMS))
        text = ARITHMETIC_FORMS[index][0]
        value = float(np.quantile(self.forms[index], rng.uniform(low, high)))
        if text.startswith("min("):
            return f"{text} < {-value:.6g}"
        return f"{text} > {value:.6g}"


def _threshold(rng: random.Random, t: _Thresholds, low: float, high: float) -> str:
    name = rng.choice(NUMBER_FEATURES)
    op = rng.choice((">", ">=", ">", "<") if name.endswith(("age_days", "_s")) else (">", ">="))
    return f"{name} {op} {t.tail(rng, name, low, high, op)}"


def _context(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        return f'kind == "{rng.choice(EVENT_KINDS)}"'
    if roll < 0.5:
        kinds = ", ".join(f'"{k}"' for k in rng.sample(EVENT_KINDS, 2))
        return f"kind in [{kinds}]"
    if roll < 0.65:
        return f'channel == "{rng.choice(CHANNELS)}"'
    if roll < 0.8:
        return rng.choice(BOOLEAN_FEATURES)
    if roll < 0.9:
        return f"customer.kyc_level <= {rng.randint(0, 1)}"
    return f'device.os == "{rng.choice(OSES)}"'


def _expression(rng: random.Random, t: _Thresholds) -> str:
    roll = rng.random()
    if roll < 0.30:
        return _threshold(rng, t, 0.998, 0.99995)
    if roll < 0.60:
        parts = [_context(rng), _threshold(rng, t, 0.99, 0.9995)]
        if rng.random() < 0.5:
            parts.append(_threshold(rng, t, 0.7, 0.95))
        rng.shuffle(parts)
        return " and ".join(parts)
    if roll < 0.70:
        codes = ", ".join(f'"{c}"' for c in rng.sample(MCCS, rng.randint(2, 5)))
        countries = ", ".join(f'"{c}"' for c in rng.sample(COUNTRIES[1:], rng.randint(2, 4)))
        if rng.random() < 0.5:
            return f"merchant.category in [{codes}] and {_threshold(rng, t, 0.99, 0.999)}"
        return f"ip_country in [{countries}] and {_threshold(rng, t, 0.98, 0.999)}"
    if roll < 0.85:
        expression = t.form(rng, 0.995, 0.9999)
        if rng.random() < 0.5:
            expression = f"{_context(rng)} and {expression}"
        return expression
    if roll < 0.90:
        what, list_name = rng.choice(
            (
                ("device.id", "blocked_devices"),
                ("customer.id", "blocked_customers"),
                ("card.id", "blocked_cards"),
                ("ip", "blocked_ips"),
                ("merchant.id", "blocked_merchants"),
            )
        )
        expression = f'{what} in list("{list_name}")'
        if rng.random() < 0.5:
            expression += f" and {_context(rng)}"
        if rng.random() < 0.3:
            expression += ' and customer.id not in list("allowed_customers")'
        return expression
    if roll < 0.95:
        left = _threshold(rng, t, 0.998, 0.9999)
        right = _threshold(rng, t, 0.998, 0.9999)
        return f"({left} or {right}) and {_context(rng)}"
    pair = rng.choice((("ip_country", "card_country"), ("country", "ip_country")))
    return f"{pair[0]} != {pair[1]} and {_threshold(rng, t, 0.99, 0.999)}"


def make_ruleset(active: int, seed: int = 7, shadow: int = 250, off: int = 250) -> str:
    """The text of a synthetic ruleset file with ``active`` active rules."""
    rng = random.Random(seed)
    t = _Thresholds(make_batch(np.random.default_rng(seed), 20_000))
    lines = [
        'name = "synthetic"',
        f'version = "bench-{active}"',
        "",
        "[thresholds]",
        "challenge = 400",
        "review = 700",
        "reject = 950",
    ]
    statuses = ["active"] * active + ["shadow"] * shadow + ["off"] * off
    rng.shuffle(statuses)
    for number, status in enumerate(statuses):
        when = _expression(rng, t)
        if rng.random() < 0.3:
            outcome = f'action = "{rng.choice(("challenge", "challenge", "review", "reject"))}"'
        else:
            outcome = f"score = {rng.choice((-50, 10, 20, 40, 60, 80, 120, 200, 300))}"
        lines += [
            "",
            "[[rule]]",
            f'id = "r{number:05d}"',
            f'description = "synthetic rule {number}"',
            f"when = '{when}'",
            outcome,
            f"priority = {rng.randint(0, 100)}",
            f'status = "{status}"',
            f'owner = "team-{number % 7}"',
        ]
    return "\n".join(lines) + "\n"


def make_lists(seed: int = 7, per_list: int = 2_000) -> Any:
    """Block lists of ``per_list`` ids each (some expired), and an allow list of customers."""
    from puhui.clock import SystemClock
    from puhui.risk import RiskLists

    clock = SystemClock()
    lists = RiskLists(clock)
    rng = random.Random(seed)
    now = clock.now_ns()
    for name, prefix in (
        ("blocked_devices", "d"),
        ("blocked_customers", "c"),
        ("blocked_cards", "k"),
        ("blocked_ips", "ip"),
        ("blocked_merchants", "m"),
        ("allowed_customers", "c"),
    ):
        for _ in range(per_list):
            expiry = now - 1 if rng.random() < 0.1 else None
            lists.add(
                name, f"{prefix}{rng.randrange(ID_SPACE)}", reason="bench", expires_at_ns=expiry
            )
    return lists


def run(args: argparse.Namespace) -> dict[str, Any]:
    from puhui.risk import parse_ruleset

    text = make_ruleset(args.rules)
    features = schema()
    sample = make_batch(np.random.default_rng(3), 4_096) if args.sample else None
    parse_ruleset(text, features)  # warm-up: numba loads its cached kernel
    compile_s = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        ruleset = parse_ruleset(text, features, source="synthetic.toml", sample=sample)
        compile_s.append(time.perf_counter() - t0)
    lists = make_lists()
    rng = np.random.default_rng(11)
    batches = [make_batch(rng, args.batch) for _ in range(args.runs)]
    ruleset.evaluate(batches[0], lists=lists)
    throughput = []
    cpu_throughput = []
    hit_rates = []
    decided: dict[str, int] = {}
    for batch in batches:
        c0, t0 = time.process_time(), time.perf_counter()
        result = ruleset.evaluate(batch, lists=lists)
        throughput.append(args.batch / (time.perf_counter() - t0))
        cpu_throughput.append(args.batch / max(time.process_time() - c0, 1e-6))
        hit_rates.append(result.hits.size / args.batch)
        for severity, count in zip(*np.unique(result.severity, return_counts=True), strict=True):
            key = ("accept", "challenge", "review", "reject")[int(severity)]
            decided[key] = decided.get(key, 0) + int(count)
    single = make_batch(rng, args.singles)
    one_event = [{name: column[i : i + 1] for name, column in single.items()} for i in range(200)]
    latencies = []
    for i in range(args.singles):
        event = one_event[i % len(one_event)]
        t0 = time.perf_counter()
        result = ruleset.evaluate(event, lists=lists)
        result.outcome(0)
        latencies.append(time.perf_counter() - t0)
    lat_ms = np.array(latencies) * 1e3
    return {
        "rules_active": sum(1 for r in ruleset.rules if r.status == "active"),
        "rules_shadow": sum(1 for r in ruleset.rules if r.status == "shadow"),
        "features": len(features),
        "compile_s": float(np.median(compile_s)),
        "sample": bool(args.sample),
        "batch": args.batch,
        "decisions_per_s": float(np.median(throughput)),
        "runs_decisions_per_s": [round(x) for x in throughput],
        "decisions_per_cpu_s": float(np.median(cpu_throughput)),
        "hits_per_event": float(np.median(hit_rates)),
        "decisions": decided,
        "single_p50_ms": float(np.percentile(lat_ms, 50)),
        "single_p99_ms": float(np.percentile(lat_ms, 99)),
        "index": ruleset.index_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--rules", type=positive_int, default=5_000, help="active rules")
    parser.add_argument("--batch", type=positive_int, default=None, help="events per batch")
    parser.add_argument("--runs", type=positive_int, default=None)
    parser.add_argument(
        "--singles", type=positive_int, default=None, help="one-event batches timed"
    )
    parser.add_argument(
        "--no-sample",
        dest="sample",
        action="store_false",
        help="compile without a sample batch (guards chosen by kind, not measured)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rules = min(args.rules, 300)
    args.batch = args.batch or (1_000 if args.quick else 10_000)
    args.runs = args.runs or (1 if args.quick else 5)
    args.singles = args.singles or (100 if args.quick else 5_000)
    figures = run(args)
    key = f"rules_{args.rules}"
    print(
        f"{key}: compile {figures['compile_s']:.2f} s · batch {figures['batch']:,}:"
        f" {figures['decisions_per_s']:,.0f} decisions/s {figures['runs_decisions_per_s']}"
        f" ({figures['decisions_per_cpu_s']:,.0f} per CPU-second)"
        f" · one event p50 {figures['single_p50_ms']:.3f} ms p99 {figures['single_p99_ms']:.3f} ms"
        f" · {figures['hits_per_event']:.2f} hits/event · {figures['decisions']}"
        f" · index {figures['index']}",
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.json:
        print(json.dumps({key: figures}))


if __name__ == "__main__":
    main()
