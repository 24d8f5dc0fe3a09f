"""The child process of the payments crash test (``tests/payments/test_crash.py``).

``python tests/payments/crash_child.py DB_URL DATA_DIR MODE START`` opens the service with a
manual clock at ``START`` ns and then, by ``MODE``:

* ``setup``: creates customers 1..4 (full KYC, one card each) and tops each up with 1,000.00;
* ``kill-after-move``: starts a P2P payment (customer 1 → 2, 12.34, key ``crash``) and dies
  right after the ledger moved the money, before the operation's row says so;
* ``kill-after-record``: the same, but dies after the row is written, before the ledger;
* ``batch-kill-after-move``: pays a batch (``PaymentBatches.pay_many``: 1 → 2, 12.34, key
  ``bcrash-0``; 3 → 4, 5.00, key ``bcrash-1``) and dies right after the ledger moved the
  money, before the records say so;
* ``batch-kill-after-record``: the same, but dies after the records are written, before the
  ledger;
* ``loop``: makes P2P payments among the customers for ever (keys ``loop-<n>``), printing
  ``DONE <n> <status>`` after each answer, until it is killed (SIGKILL);
* ``batch-loop``: the same payments, ten at a time through ``PaymentBatches.pay_many``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from puhui import ledger as L
from puhui.clock import ManualClock
from puhui.payments import Payee, PaymentBatches, PaymentRequest, Payments, SimulatedBank
from puhui.store import create_engine, migrate

CUSTOMERS = 4
FUND = 1_000_00


def open_service(url: str, data: Path, start_ns: int) -> tuple[Payments, L.Ledger]:
    clock = ManualClock(start_ns)
    engine = create_engine(url)
    migrate(engine)
    ledger = L.open(str(data / "ledger"), state_dir=data / "state", clock=clock)
    return Payments(engine, ledger, clock=clock, bank=SimulatedBank(clock)), ledger


BATCH = [
    PaymentRequest(1, 12_34, "CNY", "bcrash-0", payee=Payee(customer_id=2)),
    PaymentRequest(3, 5_00, "CNY", "bcrash-1", payee=Payee(customer_id=4)),
]
"""The batch the ``batch-kill-*`` modes pay."""


def _loop_request(n: int) -> PaymentRequest:
    """The ``n``-th payment of the loops (the single one pays the same)."""
    payer = n % CUSTOMERS + 1
    payee = (n + 1) % CUSTOMERS + 1
    return PaymentRequest(payer, 1 + n % 500, "CNY", f"loop-{n}", payee=Payee(customer_id=payee))


def main() -> None:
    url, data, mode, start = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    payments, ledger = open_service(url, data, start)
    if mode == "setup":
        for k in range(1, CUSTOMERS + 1):
            c = payments.register_customer(f"1390000000{k}", f"Customer {k}")
            payments.verify_identity(c.id, f"ID-{k}")
            card = payments.bind_card(c.id, f"tok-{k}", "Rural Bank", f"000{k}")
            payments.verify_full(c.id, biometric_passed=True)
            op = payments.top_up(c.id, card.id, FUND, "CNY", key="fund")
            assert op.status == "completed", op
        ledger.close()
        return
    if mode in ("kill-after-move", "kill-after-record"):
        original = Payments._move if mode == "kill-after-move" else Payments._drive

        def die(self: Payments, *args: object, **kwargs: object) -> object:
            if mode == "kill-after-move":
                original(self, *args, **kwargs)  # type: ignore[arg-type]
            os._exit(0)  # no close, no cleanup: a crash

        setattr(Payments, "_move" if mode == "kill-after-move" else "_drive", die)
        payments.transfer(1, Payee(customer_id=2), 12_34, "CNY", key="crash")
        raise SystemExit("the crash hook did not fire")
    if mode in ("batch-kill-after-move", "batch-kill-after-record"):
        move = PaymentBatches._move

        def die_in_batch(self: PaymentBatches, items: list[Any]) -> None:
            if mode == "batch-kill-after-move":
                move(self, items)
            os._exit(0)  # no close, no cleanup: a crash

        PaymentBatches._move = die_in_batch  # type: ignore[method-assign]
        PaymentBatches(payments).pay_many(BATCH)
        raise SystemExit("the crash hook did not fire")
    if mode == "batch-loop":
        batches = PaymentBatches(payments)
        n = 0
        while True:
            requests = [_loop_request(n + i) for i in range(10)]
            for i, answer in enumerate(batches.pay_many(requests)):
                print(f"DONE {n + i} {getattr(answer, 'status', answer)}", flush=True)
            n += 10
    n = 0
    while True:
        payer = n % CUSTOMERS + 1
        payee = (n + 1) % CUSTOMERS + 1
        op = payments.transfer(payer, Payee(customer_id=payee), 1 + n % 500, "CNY", key=f"loop-{n}")
        print(f"DONE {n} {op.status}", flush=True)
        n += 1


if __name__ == "__main__":
    main()
