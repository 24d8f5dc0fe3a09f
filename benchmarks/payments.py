"""Payments through the service layer: P2P and merchant payments, and escrow orders.

Every payment goes the whole way: checks (parties, KYC limits, funds), ``risk.decide`` (the
pass-through engine), the record under its idempotency key with the day's outflow reserved,
the ledger transfer (journalled and durable before the answer), and the outcome's record —
on the embedded default (a SQLite file and the file journal) unless ``--database-url`` names
PostgreSQL for the SQL store.

Variants (each in a fresh process, median of ``--runs``):

* ``batch``   ``--callers`` threads each submitting batches of ``--batch`` payments
              (``PaymentBatches.pay_many``), half P2P, half merchant payments;
* ``coalesced`` ``--async-callers`` coroutines (uvloop) each paying one payment at a time
              through ``PaymentCoalescer``, which carries concurrent payments out together
              (what an API server would do);
* ``single``  the same payments one at a time (``Payments.transfer`` / ``pay_merchant``)
              from ``--callers`` threads: what an API call per payment costs;
* ``escrow``  guaranteed-transaction orders, each created, paid, shipped and confirmed
              (four operations, two of them money movements) from ``--callers`` threads.

Latency is per call: a whole batch for ``batch``, one payment or one order for the others.
The callers' requests are made before the clock starts and kept out of the garbage
collector's reach while they run (the load generator's input, not the service's work).

    python benchmarks/payments.py --json          # full run
    python benchmarks/payments.py --quick --json  # smoke run (the test suite calls this)
    python benchmarks/payments.py --variants batch --steps   # where a batch's time goes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from _args import choose, positive_int, postgres_url

VARIANTS = ("batch", "coalesced", "single", "escrow")
HUGE = 10**12  # limits (major units) the benchmark's customers never reach


def _service(workdir: Path, database_url: str | None) -> tuple[Any, Any, Any]:
    from puhui import ledger as L
    from puhui.clock import SystemClock
    from puhui.payments import KycLevel, KycLimits, Payments, PaymentsOptions, SimulatedBank
    from puhui.store import create_engine, migrate

    clock = SystemClock()
    url = database_url or f"sqlite:///{workdir / 'puhui.sqlite'}"
    if database_url:
        url = _fresh_schema(database_url)
    engine = create_engine(url)
    migrate(engine)
    ledger = L.open(str(workdir / "ledger"), state_dir=workdir / "state", clock=clock)
    limits = {level: KycLimits(HUGE, HUGE, HUGE) for level in KycLevel}
    payments = Payments(
        engine,
        ledger,
        clock=clock,
        bank=SimulatedBank(clock),
        options=PaymentsOptions(kyc_limits=limits),
    )
    return payments, ledger, engine


def _fresh_schema(url: str) -> str:
    import uuid

    import psycopg

    schema = f"puhui_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    ) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def _drop_schema(url: str) -> None:
    """Drop the schema ``_fresh_schema`` made for a run (the database is shared)."""
    import psycopg

    match = re.search(r"search_path%3D(puhui_bench_[0-9a-f]{12})", url)
    if match is None:
        return
    base = url.split("?", maxsplit=1)[0].replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{match.group(1)}" CASCADE')


def _parties(payments: Any, customers: int, merchants: int) -> tuple[list[int], list[int]]:
    ids = []
    for k in range(customers):
        c = payments.register_customer(f"+86139{k:08d}", f"C{k}")
        payments.verify_identity(c.id, f"ID{k:012d}")
        card = payments.bind_card(c.id, f"tok{k}", "Bank", f"{k % 10_000:04d}")
        payments.verify_full(c.id, biometric_passed=True)
        op = payments.top_up(c.id, card.id, 10_000_000_00, "CNY", key="fund")
        if op.status != "completed":
            raise SystemExit(f"funding failed: {op}")
        ids.append(c.id)
    shops = [
        payments.register_merchant(f"M{k}", "retail", 60, f"mtok{k}").id for k in range(merchants)
    ]
    return ids, shops


def _requests(
    rng: random.Random, n: int, customers: list[int], merchants: list[int], tag: str
) -> list[Any]:
    from puhui.payments import Payee, PaymentRequest, merchant_qr

    out = []
    for i in range(n):
        payer = rng.choice(customers)
        amount = rng.randint(1_00, 100_00)
        if i % 2:
            payee = rng.choice(customers)
            while payee == payer:
                payee = rng.choice(customers)
            out.append(
                PaymentRequest(payer, amount, "CNY", f"{tag}-{i}", payee=Payee(customer_id=payee))
            )
        else:
            out.append(
                PaymentRequest(
                    payer,
                    amount,
                    "CNY",
                    f"{tag}-{i}",
                    merchant_qr=merchant_qr(rng.choice(merchants)),
                )
            )
    return out


# The steps of ``PaymentBatches`` that ``--steps`` times: a batch's parse, replays, facts,
# accounts, checks (``_check``'s own part: the balances looked up, the passes' loop; and each
# pass), risk, record, ledger move and outcome, and the payments sent one at a time.
BATCH_STEPS = (
    "_parse",
    "_replays",
    "_check",
    "_facts",
    "_open_accounts",
    "_pass",
    "_decide",
    "_record",
    "_move",
    "_finish",
    "_one",
)


class StepTimer:
    """Wall time spent in each step of ``PaymentBatches``, each step's own (a step called
    within another is taken out of the caller's), and in ``_pay_many`` as a whole.

    Batches run one at a time (concurrent calls are combined), so wall time per step adds
    up to the batches' time: the steps' shares of it, not a sampling profile's guess.
    """

    def __init__(self) -> None:
        self.own_s: dict[str, float] = {}
        self._local = threading.local()

    def install(self, cls: Any) -> None:
        for name in (*BATCH_STEPS, "_pay_many"):
            setattr(cls, name, self._wrap(name, getattr(cls, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # the time of the steps this one calls
            t0 = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                spent = time.perf_counter() - t0
                inner = stack.pop()
                if stack:
                    stack[-1] += spent
                self.own_s[name] = self.own_s.get(name, 0.0) + spent - inner

        return timed

    def report(self, count: int) -> dict[str, Any]:
        """µs per payment of each step (``other``: ``_pay_many``'s own glue) and its share."""
        total = sum(self.own_s.values())
        steps = {name.lstrip("_"): self.own_s.get(name, 0.0) for name in BATCH_STEPS}
        steps["other"] = self.own_s.get("_pay_many", 0.0)
        return {
            name: {"us_per_payment": s / count * 1e6, "share": s / total if total else 0.0}
            for name, s in steps.items()
        }


def run_variant(variant: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from puhui.payments import Checkout, Fulfilment, Operation, PaymentBatches

    timer = StepTimer() if args.steps and variant in ("batch", "coalesced") else None
    if timer is not None:
        timer.install(PaymentBatches)
    payments, ledger, engine = _service(workdir, args.database_url)
    try:
        started = time.perf_counter()
        customers, merchants = _parties(payments, args.customers, args.merchants)
        setup_s = time.perf_counter() - started
        latencies: list[float] = []
        lock = threading.Lock()
        failures: list[str] = []
        total = {
            "batch": args.payments,
            "coalesced": args.payments,
            "single": args.single_payments,
            "escrow": args.orders,
        }[variant]
        per_caller = total // args.callers

        # The callers' requests are the load generator's input: made before the clock starts
        # and kept out of the collector's reach (a service does not keep its requests).
        tag = {"batch": "b", "single": "s"}.get(variant)
        prepared = [
            _requests(random.Random(k), per_caller, customers, merchants, f"{tag}{k}")
            if tag is not None
            else []
            for k in range(args.callers)
        ]

        def batch_caller(index: int) -> None:
            batches = PaymentBatches(payments)
            requests = prepared[index]
            for start in range(0, len(requests), args.batch):
                chunk = requests[start : start + args.batch]
                t0 = time.perf_counter()
                answers = batches.pay_many(chunk)
                elapsed = time.perf_counter() - t0
                bad = [
                    a for a in answers if not isinstance(a, Operation) or a.status != "completed"
                ]
                with lock:
                    latencies.append(elapsed)
                    failures.extend(str(a) for a in bad[:3])

        def single_caller(index: int) -> None:
            for request in prepared[index]:
                t0 = time.perf_counter()
                if request.payee is not None:
                    op = payments.transfer(
                        request.payer_id, request.payee, request.amount, "CNY", key=request.key
                    )
                else:
                    op = payments.pay_merchant(
                        request.payer_id,
                        request.merchant_qr,
                        request.amount,
                        "CNY",
                        key=request.key,
                    )
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if op.status != "completed":
                        failures.append(str(op))

        checkout = Checkout(payments)

        def escrow_caller(index: int) -> None:
            rng = random.Random(index)
            for i in range(per_caller):
                buyer, shop = rng.choice(customers), rng.choice(merchants)
                t0 = time.perf_counter()
                order = checkout.create_order(
                    buyer,
                    shop,
                    rng.randint(1_00, 500_00),
                    "CNY",
                    Fulfilment.EXPRESS,
                    "goods",
                    key=f"e{index}-{i}",
                )
                paid = checkout.pay_order(order.id, buyer, key=f"pay-{order.id}")
                checkout.ship_order(order.id, shop)
                done = checkout.confirm_receipt(order.id, buyer)
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    if paid.status != "completed" or done.status != "finished":
                        failures.append(f"order {order.id:#x}: {paid.status} {done.status}")

        if variant == "coalesced":
            cpu0 = time.process_time()
            elapsed, latencies = _coalesced(payments, customers, merchants, args)
            cpu_s = time.process_time() - cpu0
            return _result(
                variant, args, args.payments, elapsed, latencies, setup_s, ledger, cpu_s, timer
            )
        target = {"batch": batch_caller, "single": single_caller, "escrow": escrow_caller}[variant]
        threads = [threading.Thread(target=target, args=(k,)) for k in range(args.callers)]
        gc.collect()
        gc.freeze()
        try:
            t0, cpu0 = time.perf_counter(), time.process_time()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            gc.unfreeze()
        if failures:
            raise SystemExit(f"{len(failures)} payments did not complete, e.g. {failures[:3]}")
        count = per_caller * args.callers
        return _result(variant, args, count, elapsed, latencies, setup_s, ledger, cpu_s, timer)
    finally:
        ledger.close()
        engine.dispose()
        if args.database_url:
            _drop_schema(str(engine.url.render_as_string(hide_password=False)))


def _result(
    variant: str,
    args: argparse.Namespace,
    count: int,
    elapsed: float,
    latencies: list[float],
    setup_s: float,
    ledger: Any,
    cpu_s: float,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    from puhui.ledger import verify

    lat = np.array(latencies) * 1e3
    return {
        "variant": variant,
        "callers": args.async_callers if variant == "coalesced" else args.callers,
        "batch": args.batch if variant == "batch" else 1,
        "count": count,
        "per_s": count / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p100_ms": float(lat.max()),
        "setup_s": setup_s,
        "cpu_us_per_op": cpu_s / count * 1e6,
        "store": "postgresql" if args.database_url else "sqlite",
        "verify_ok": verify(ledger).ok if args.verify else None,
        "steps": timer.report(count) if timer is not None else None,
    }


def _coalesced(
    payments: Any, customers: list[int], merchants: list[int], args: argparse.Namespace
) -> tuple[float, list[float]]:
    import asyncio

    import uvloop

    from puhui.payments import Operation, PaymentBatches, PaymentCoalescer

    coalescer = PaymentCoalescer(PaymentBatches(payments), batch_max=args.batch)
    per_caller = args.payments // args.async_callers
    latencies: list[float] = []
    failures: list[str] = []

    async def caller(index: int) -> None:
        requests = _requests(random.Random(index), per_caller, customers, merchants, f"a{index}")
        for request in requests:
            t0 = time.perf_counter()
            op = await coalescer.pay(request)
            latencies.append(time.perf_counter() - t0)
            if not isinstance(op, Operation) or op.status != "completed":
                failures.append(str(op))

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(args.async_callers)))
        return time.perf_counter() - start

    elapsed = uvloop.run(run())
    if failures:
        raise SystemExit(f"{len(failures)} payments did not complete, e.g. {failures[:3]}")
    args.payments = per_caller * args.async_callers
    return elapsed, latencies


def _spawn(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant]
    for name in (
        "customers",
        "merchants",
        "payments",
        "single_payments",
        "orders",
        "callers",
        "async_callers",
        "batch",
    ):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    if args.verify:
        cmd.append("--verify")
    if args.steps:
        cmd.append("--steps")
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=positive_int, default=None)
    parser.add_argument("--customers", type=positive_int, default=None)
    parser.add_argument("--merchants", type=positive_int, default=None)
    parser.add_argument("--payments", type=positive_int, default=None, help="payments per run")
    parser.add_argument(
        "--single-payments", type=positive_int, default=None, help="payments per run of `single`"
    )
    parser.add_argument("--orders", type=positive_int, default=None, help="escrow orders per run")
    parser.add_argument(
        "--callers", type=positive_int, default=None, help="concurrent caller threads"
    )
    parser.add_argument(
        "--async-callers",
        type=positive_int,
        default=None,
        help="coroutines of the coalesced variant",
    )
    parser.add_argument("--batch", type=positive_int, default=None, help="payments per batch call")
    parser.add_argument(
        "--database-url", type=postgres_url, default=os.environ.get("PUHUI_BENCH_DATABASE_URL")
    )
    parser.add_argument("--verify", action="store_true", help="verify the ledger after each run")
    parser.add_argument(
        "--steps",
        action="store_true",
        help="time each step of a batch (batch, coalesced): us per payment and share",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = args.quick
    args.customers = args.customers or (20 if quick else 1_000)
    args.merchants = args.merchants or (5 if quick else 100)
    args.payments = args.payments or (400 if quick else 200_000)
    args.single_payments = args.single_payments or (100 if quick else 4_000)
    args.orders = args.orders or (40 if quick else 1_000)
    args.callers = args.callers or (4 if quick else 8)
    args.async_callers = args.async_callers or (16 if quick else 256)
    args.batch = args.batch or (50 if quick else 1_000)
    runs = args.runs or (1 if quick else 3)
    if args.child:
        workdir = Path(tempfile.mkdtemp(prefix="puhui-pay-bench-"))
        try:
            print(json.dumps(run_variant(args.child, args, workdir)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    for variant in choose(parser, args.variants, list(VARIANTS)):
        results = sorted((_spawn(variant, args) for _ in range(runs)), key=lambda r: r["per_s"])
        median = dict(results[len(results) // 2])
        median["runs_per_s"] = [r["per_s"] for r in results]
        report[variant] = median
        unit = "orders/s" if variant == "escrow" else "payments/s"
        print(
            f"{variant:8s} {median['per_s']:>10,.0f} {unit}  ({median['callers']} callers,"
            f" {median['batch']} per call)  p50 {median['p50_ms']:.2f} ms"
            f"  p99 {median['p99_ms']:.2f} ms"
            f"  p100 {median['p100_ms']:.2f} ms  cpu {median['cpu_us_per_op']:.0f} us/op"
            f"  runs {[round(r) for r in median['runs_per_s']]}",
            flush=True,
        )
        if median.get("steps"):
            print(
                "  steps (us/payment, share): "
                + ", ".join(
                    f"{name} {v['us_per_payment']:.1f} ({v['share']:.0%})"
                    for name, v in median["steps"].items()
                ),
                flush=True,
            )
    if args.json:
        summary = {
            "payments_per_s": report.get("batch", report.get("single", {})).get("per_s"),
            "p99_ms": report.get("batch", report.get("single", {})).get("p99_ms"),
            "escrow_orders_per_s": report.get("escrow", {}).get("per_s"),
            **report,
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
