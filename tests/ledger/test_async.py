"""AsyncLedger: batches submitted in one event-loop turn are joined into one request.

Joining must be invisible to callers: each keeps its own results, timestamps and linked
chains, exactly as if it had been submitted alone, and replay rebuilds the same state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from puhui.ledger import (
    Account,
    AccountFlags,
    AsyncLedger,
    CreateAccountStatus,
    CreateTransferStatus,
    Ledger,
    LedgerClosedError,
    Transfer,
    TransferFlags,
    open,
    verify,
)
from puhui.ledger._convert import transfers_to_array

T = CreateTransferStatus


def _ledger(tmp_path: Path, url: str | None = None) -> Ledger:
    led = open(url or str(tmp_path / "journal"), state_dir=tmp_path / "state")
    results = led.create_accounts(
        [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY) for i in range(1, 5)]
    )
    assert {r.status for r in results} == {CreateAccountStatus.CREATED}
    return led


def _transfer(i: int, amount: int = 1, flags: TransferFlags = TransferFlags.NONE) -> Transfer:
    return Transfer(
        id=i, debit_account_id=1, credit_account_id=2, amount=amount, ledger=1, code=1, flags=flags
    )


async def _same_turn(client: AsyncLedger, batches: list[list[Transfer]]) -> list[list[int]]:
    """Submit every batch from its own coroutine, all started in the same loop turn."""
    results = await asyncio.gather(*(client.create_transfers(b) for b in batches))
    return [[int(r.status) for r in out] for out in results]


def test_callers_of_one_turn_share_a_request_but_keep_their_own_answers(
    tmp_path: Path,
) -> None:
    led = _ledger(tmp_path)
    try:
        batches = [
            [_transfer(100 * c + k + 1, amount=c + 1) for k in range(c + 1)] for c in range(8)
        ]
        statuses = asyncio.run(_same_turn(AsyncLedger(led), batches))
        assert statuses == [[T.CREATED] * (c + 1) for c in range(8)]
        stats = led.stats.recent()
        assert stats["requests"].tolist()[-1] == 8  # eight callers' requests, one group
        stored = led.lookup_transfers([t.id for b in batches for t in b])
        assert [t.amount for t in stored] == [t.amount for b in batches for t in b]
        stamps = [t.timestamp for t in stored]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert verify(led).ok
    finally:
        led.close()


def test_an_open_linked_chain_does_not_run_into_the_next_callers_batch(tmp_path: Path) -> None:
    """A batch ending in a linked event is an open chain for that caller alone."""
    led = _ledger(tmp_path)
    try:
        linked = TransferFlags.LINKED
        batches = [
            [_transfer(1, flags=linked), _transfer(2, flags=linked)],  # chain left open
            [_transfer(3)],
            [_transfer(4, flags=linked), _transfer(5)],  # a closed chain
        ]
        statuses = asyncio.run(_same_turn(AsyncLedger(led), batches))
        assert statuses == [
            [T.LINKED_EVENT_FAILED, T.LINKED_EVENT_CHAIN_OPEN],
            [T.CREATED],
            [T.CREATED, T.CREATED],
        ]
        assert [t.id for t in led.lookup_transfers([1, 2, 3, 4, 5])] == [3, 4, 5]
    finally:
        led.close()


def test_joined_requests_replay_to_the_same_state(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    try:
        batches = [[_transfer(10 + c, amount=c + 1)] for c in range(16)]
        batches.append([_transfer(10, amount=99)])  # the same id again, in the same turn
        statuses = asyncio.run(_same_turn(AsyncLedger(led), batches))
        assert statuses[-1] == [T.EXISTS_WITH_DIFFERENT_AMOUNT]
        before = led.lookup_transfers(list(range(10, 26)))
        [debit_before] = led.lookup_accounts([1])
    finally:
        led.close()
    # Rebuild from the journal alone (a fresh state directory: no snapshot to start from).
    again = open(str(tmp_path / "journal"), state_dir=tmp_path / "replayed")
    try:
        assert again.lookup_transfers(list(range(10, 26))) == before
        assert again.lookup_accounts([1]) == [debit_before]
        assert verify(again).ok
    finally:
        again.close()


def test_a_cancelled_caller_does_not_disturb_the_others(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    try:
        client = AsyncLedger(led)

        async def run() -> list[int]:
            first = asyncio.ensure_future(client.create_transfers([_transfer(1)]))
            second = asyncio.ensure_future(client.create_transfers([_transfer(2)]))
            await asyncio.sleep(0)  # both have submitted
            first.cancel()
            [result] = await second
            with pytest.raises(asyncio.CancelledError):
                await first
            return [int(result.status)]

        assert asyncio.run(run()) == [T.CREATED]
        # The cancelled caller's transfer may or may not have been applied, but the ledger
        # stays consistent and the other caller's transfer is there.
        assert 2 in [t.id for t in led.lookup_transfers([1, 2])]
        assert verify(led).ok
    finally:
        led.close()


def test_requests_pending_when_the_ledger_closes_get_an_error(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    client = AsyncLedger(led)

    async def run() -> list[BaseException | object]:
        calls = [client.create_transfers([_transfer(k)]) for k in range(1, 5)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0)  # submitted; the joined request is not queued yet
        led.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    outcomes = asyncio.run(run())
    assert all(isinstance(o, LedgerClosedError) for o in outcomes), outcomes


def test_columnar_callers_get_views_of_their_own_rows(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    try:
        client = AsyncLedger(led)
        arrays = [transfers_to_array([_transfer(50 + k), _transfer(60 + k)]) for k in range(5)]

        async def run() -> list[np.ndarray[Any, Any]]:
            return list(await asyncio.gather(*(client.create_transfers_array(a) for a in arrays)))

        outs = asyncio.run(run())
        assert [o.shape[0] for o in outs] == [2] * 5
        assert all((o["status"] == 0xFFFFFFFF).all() for o in outs)
        assert len({int(t) for o in outs for t in o["timestamp"]}) == 10
    finally:
        led.close()
