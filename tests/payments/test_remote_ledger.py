"""Payments over a ledger another process serves (``serve``/``connect``): the same service,
bound to the same ledger by its identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui import ledger as L
from puhui.clock import ManualClock
from puhui.payments import (
    OperationStatus,
    Payee,
    Payments,
    SimulatedBank,
    StoreLedgerMismatchError,
)
from tests.payments.conftest import START_NS, World, verified_customer


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_payments_over_a_remote_ledger_share_the_embedded_ones_store(
    world: World, tmp_path: Path
) -> None:
    alice = verified_customer(world, 1, fund=100_00)  # bound through the embedded ledger
    bob = verified_customer(world, 2)
    with (
        L.serve(world.ledger, tmp_path / "ledger.sock"),
        L.connect(tmp_path / "ledger.sock") as remote,
    ):
        over_socket = Payments(
            world.engine, remote, clock=world.clock, bank=world.bank, decide=world.risk
        )
        done = over_socket.transfer(
            alice, Payee(customer_id=bob), 30_00, "CNY", key="over-the-socket"
        )
        assert done.status is OperationStatus.COMPLETED
        assert over_socket.balance(bob, "CNY") == world.payments.balance(bob, "CNY")
        assert world.payments.balance(alice, "CNY").available == 70_00

    # Another ledger, served: its identity is not the store's.
    clock = ManualClock(START_NS)
    with (
        L.open(str(tmp_path / "other"), state_dir=tmp_path / "other-state", clock=clock) as other,
        L.serve(other, tmp_path / "other.sock"),
        L.connect(tmp_path / "other.sock") as remote,
        pytest.raises(StoreLedgerMismatchError),
    ):
        Payments(world.engine, remote, clock=clock, bank=SimulatedBank(clock))
