"""Crashes across an operation that moves money and writes a row: nothing moves twice.

A child process (``crash_child.py``) is killed between the ledger transfer and the row that
records it (and between the row and the transfer), for a single payment and for a batch;
the test reopens the service, runs ``recover()`` (after a retry, for the batch) and checks
that each operation finished exactly once. Another test SIGKILLs a child making payments
(one at a time, or in batches) at a random moment, repeatedly, and checks that every
answered payment is recorded as answered and that the books match the records.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from puhui.ledger import Ledger, verify
from puhui.payments import OperationStatus, Payee, PaymentBatches, Payments
from puhui.payments.model import transfer_id

from . import crash_child as child
from .conftest import START_NS

CHILD = Path(child.__file__).resolve()
HOUR_NS = 3600 * 10**9


def _run(url: str, data: Path, mode: str, start_ns: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), url, str(data), mode, str(start_ns)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _setup(url: str, data: Path) -> None:
    done = _run(url, data, "setup", START_NS)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def _reopened(url: str, data: Path, start_ns: int) -> Iterator[tuple[Payments, Ledger]]:
    """The service reopened after a crash, as a restarted process would: its books verified
    and it closed at the end."""
    payments, ledger = child.open_service(url, data, start_ns)
    try:
        yield payments, ledger
        assert verify(ledger).ok
    finally:
        ledger.close()
        payments.engine.dispose()


@pytest.mark.parametrize("mode", ["kill-after-move", "kill-after-record"])
def test_recovery_finishes_an_operation_cut_short_exactly_once(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    _setup(database_url, tmp_path)
    crashed = _run(database_url, tmp_path, mode, START_NS + HOUR_NS)
    assert crashed.returncode == 0, crashed.stderr  # os._exit(0) inside the hook
    with _reopened(database_url, tmp_path, START_NS + 2 * HOUR_NS) as (payments, _):
        [op] = payments.operations(status=OperationStatus.PENDING)
        moved = payments.balance(2, "CNY").posted - child.FUND
        assert moved == (12_34 if mode == "kill-after-move" else 0)
        assert payments.recover() == {"completed": 1}
        assert payments.operation(op.id).status is OperationStatus.COMPLETED
        assert payments.balance(1, "CNY").posted == child.FUND - 12_34
        assert payments.balance(2, "CNY").posted == child.FUND + 12_34
        # The caller's retry, after the crash, returns the result and moves nothing.
        again = payments.transfer(1, Payee(customer_id=2), 12_34, "CNY", key="crash")
        assert again.id == op.id and again.status is OperationStatus.COMPLETED
        assert payments.recover() == {}
        assert payments.balance(2, "CNY").posted == child.FUND + 12_34


@pytest.mark.parametrize("mode", ["batch-kill-after-move", "batch-kill-after-record"])
def test_a_batch_cut_short_is_found_by_a_retry_and_finished_once(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    """A batch killed after its records, before or after the ledger: a retry after the
    restart, before any recovery, finds its first attempt and moves nothing twice;
    ``recover()`` finishes the rest, and a batch retrying both moves nothing."""
    _setup(database_url, tmp_path)
    crashed = _run(database_url, tmp_path, mode, START_NS + HOUR_NS)
    assert crashed.returncode == 0, crashed.stderr  # os._exit(0) inside the hook
    with _reopened(database_url, tmp_path, START_NS + 2 * HOUR_NS) as (payments, _):
        assert len(payments.operations(status=OperationStatus.PENDING)) == 2
        moved = payments.balance(2, "CNY").posted - child.FUND
        assert moved == (12_34 if mode == "batch-kill-after-move" else 0)
        first = child.BATCH[0]
        assert first.payee is not None
        again = payments.transfer(1, first.payee, 12_34, "CNY", key="bcrash-0")
        assert again.status is OperationStatus.COMPLETED
        [left] = payments.operations(status=OperationStatus.PENDING)  # the other one
        assert payments.recover() == {"completed": 1}
        assert payments.operation(left.id).status is OperationStatus.COMPLETED
        for payer, payee, amount in ((1, 2, 12_34), (3, 4, 5_00)):
            assert payments.balance(payer, "CNY").posted == child.FUND - amount
            assert payments.balance(payee, "CNY").posted == child.FUND + amount
        # A second retry, and a batch retrying both, return the same and move nothing.
        assert payments.transfer(1, first.payee, 12_34, "CNY", key="bcrash-0") == again
        answers = PaymentBatches(payments).pay_many(child.BATCH)
        assert answers == [again, payments.operation(left.id)]
        assert payments.recover() == {}
        assert payments.balance(2, "CNY").posted == child.FUND + 12_34


@pytest.mark.parametrize("mode", ["kill-after-record", "batch-kill-after-record"])
def test_recovery_makes_no_payment_for_a_payer_frozen_after_the_crash(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    """Killed after the record, before the ledger; then customer 1 (the payer of ``crash``
    and of ``bcrash-0``) frozen. Recovery used to make the transfer from the frozen wallet;
    it now stops that payment (``failed``, ``account_frozen``, nothing moved, the day's
    outflow given back) and finishes the batch's other payment as usual. Leg 0's id is
    fenced: the dead call's transfer, were it sent now, is refused by the ledger."""
    _setup(database_url, tmp_path)
    crashed = _run(database_url, tmp_path, mode, START_NS + HOUR_NS)
    assert crashed.returncode == 0, crashed.stderr  # os._exit(0) inside the hook
    with _reopened(database_url, tmp_path, START_NS + 2 * HOUR_NS) as (payments, _):
        pending = payments.operations(status=OperationStatus.PENDING)
        [stopped] = [op for op in pending if op.payer_customer_id == 1]
        payments.set_frozen(1, True)
        expected = {"failed": 1} | ({"completed": 1} if mode.startswith("batch") else {})
        assert payments.recover() == expected
        done = payments.operation(stopped.id)
        assert (done.status, done.error_code) == (OperationStatus.FAILED, "account_frozen")
        for customer in (1, 2):
            balance = payments.balance(customer, "CNY")
            assert (balance.posted, balance.held) == (child.FUND, 0)
        assert payments._move(stopped, hold_s=None).name == "EXISTS_WITH_DIFFERENT_FLAGS"
        assert payments.balance(2, "CNY").posted == child.FUND
        assert payments.recover() == {}


@pytest.mark.parametrize("loop", ["loop", "batch-loop"])
def test_random_kills_lose_no_answered_payment_and_move_nothing_twice(
    database_url: str, tmp_path: Path, loop: str
) -> None:
    _setup(database_url, tmp_path)
    rng = random.Random(7)
    answered: dict[int, str] = {}
    start = START_NS
    for cycle in range(5):
        start += HOUR_NS
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), database_url, str(tmp_path), loop, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()  # wait for the first answer, then kill at random
        assert line.startswith("DONE"), proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        # The rest through the same reader as the first line: ``communicate`` would read
        # the pipe beneath it, missing what the reader had buffered (a line cut in two).
        out = proc.stdout.read()
        proc.stdout.close()
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()
        assert time.monotonic() < deadline
        for text in [line, *out.splitlines()]:
            _, n, status = text.split()
            answered[int(n)] = status
        # Every child starts again at key loop-0: its first answers are replays of payments
        # answered before, which must return the same result and move nothing.
        start += HOUR_NS
        with _reopened(database_url, tmp_path, start) as (payments, ledger):
            payments.recover()
            ops = payments.operations(limit=100_000)
            assert all(op.final for op in ops)  # recovery left nothing half-way
            p2p = [op for op in ops if op.kind == "p2p"]
            assert all(status == "completed" for status in answered.values())
            assert {op.status for op in p2p} == {OperationStatus.COMPLETED}
            assert len(p2p) >= len(answered)  # the answered ones, plus one finished by recovery
            # Each completed payment moved its money exactly once.
            found = ledger.lookup_transfers([transfer_id(op.id, 0) for op in p2p])
            assert sorted(t.user_data_128 for t in found) == sorted(op.id for op in p2p)
            # The books match the records: each wallet is its top-up plus what the completed
            # payments brought in, minus what they took out.
            for k in range(1, child.CUSTOMERS + 1):
                expected = child.FUND
                for op in p2p:
                    if op.payer_customer_id == k:
                        expected -= op.amount
                    if op.payee_customer_id == k:
                        expected += op.amount
                assert payments.balance(k, "CNY").posted == expected, (cycle, k)
