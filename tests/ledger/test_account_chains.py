"""One account's transfers and balances are read along the account's chain of transfer rows
(``AccountChains``), the rows not linked yet scanned: the same answers as scanning every
transfer, at a cost that follows the account's own transfers. Checked against the full scan
(``K.scan_transfers``, the reads before the chains) over a random ledger built in steps, with
reads in between (so the chains are brought up to date incrementally) and across a reopen
(rebuilt from the rows)."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from puhui import ledger as L
from puhui.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    Transfer,
    TransferFlags,
)
from puhui.ledger import _kernel as K
from puhui.ledger import _ledger as ledger_module
from puhui.ledger._engine import Engine
from puhui.ledger._ledger import _account_filter, _scan_account, _scan_args

ACCOUNTS = 12
FLAGS = AccountFilterFlags


def _filters(rng: random.Random, account: int, first_ts: int, last_ts: int) -> list[AccountFilter]:
    out = []
    for _ in range(12):
        flags = rng.choice([FLAGS.DEBITS, FLAGS.CREDITS, FLAGS.DEBITS | FLAGS.CREDITS])
        if rng.random() < 0.5:
            flags |= FLAGS.REVERSED
        t_min = rng.choice([0, rng.randint(first_ts, last_ts)])
        t_max = rng.choice([0, rng.randint(max(first_ts, t_min), last_ts + 1)])
        out.append(
            AccountFilter(
                account,
                user_data_128=rng.choice([0, 0, 0, 1]),
                user_data_64=rng.choice([0, 0, 0, 2]),
                user_data_32=0,
                code=rng.choice([0, 0, 1, 2]),
                timestamp_min=t_min,
                timestamp_max=t_max,
                limit=rng.choice([1, 3, 64, 65, 200, 8189]),
                flags=flags,
            )
        )
    return out


def _params(f: AccountFilter) -> dict[str, Any]:
    params = _account_filter(f)  # the ledger's own reading of a filter
    assert params is not None  # every filter drawn here asks for something
    return params


def _full_scan(engine: Engine, f: AccountFilter) -> tuple[list[int], list[int]]:
    """The reads before the chains: every transfer scanned, filtered by the account."""
    params = _params(f)
    lo, hi = params["account"]
    rows, sides = K.scan_transfers(
        engine.transfers,
        engine.n_transfers,
        np.uint64(lo),
        np.uint64(hi),
        True,
        params["debits"],
        params["credits"],
        *_scan_args(params),
    )
    return rows.tolist(), sides.tolist()


def _chain_scan(engine: Engine, f: AccountFilter) -> tuple[list[int], list[int]]:
    rows, sides = _scan_account(engine, _params(f))
    return rows.tolist(), sides.tolist()


def _transfers(rng: random.Random, start_id: int, count: int, pending: list[int]) -> list[Transfer]:
    out = []
    for i in range(count):
        debit, credit = rng.sample(range(1, ACCOUNTS + 1), 2)
        flags = TransferFlags.NONE
        pending_id = 0
        roll = rng.random()
        if roll < 0.15:
            flags = TransferFlags.PENDING
            pending.append(start_id + i)
        elif roll < 0.25 and pending:
            flags = rng.choice(
                [TransferFlags.POST_PENDING_TRANSFER, TransferFlags.VOID_PENDING_TRANSFER]
            )
            pending_id = pending.pop(rng.randrange(len(pending)))
            debit = credit = 0  # taken from the pending transfer
        elif roll < 0.3:
            flags = TransferFlags.LINKED  # a chain that fails (the next one is refused)
        amount = 0 if pending_id else rng.randint(1, 50)
        out.append(
            Transfer(
                id=start_id + i,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=amount,
                pending_id=pending_id,
                user_data_128=rng.choice([0, 1]),
                user_data_64=rng.choice([0, 2]),
                ledger=0 if pending_id else 1,
                code=0 if pending_id else rng.choice([1, 2]),
                flags=flags,
            )
        )
    if out and out[-1].flags & TransferFlags.LINKED:
        out[-1] = replace(out[-1], flags=TransferFlags.NONE)
    return out


@pytest.mark.parametrize("rows_per_read", [37, 1 << 15])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chains_answer_as_the_full_scan(
    tmp_path: Path, seed: int, rows_per_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With few rows linked a read (the chains behind, the newest rows scanned) and with
    many (the chains caught up), every answer is the full scan's."""
    monkeypatch.setattr(ledger_module, "CHAIN_ROWS_PER_READ", rows_per_read)
    rng = random.Random(seed)
    ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state")
    try:
        ledger.create_accounts([Account(id=a, ledger=1, code=1) for a in range(1, ACCOUNTS + 1)])
        pending: list[int] = []
        next_id = 1
        compared = 0
        for step in range(6):
            if step == 3:  # reopened: the chains are rebuilt from the rows
                ledger.close()
                ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state")
            batch = _transfers(rng, next_id, rng.randint(50, 400), pending)
            next_id += len(batch)
            ledger.create_transfers(batch)

            def check(engine: Engine) -> int:
                n = engine.n_transfers
                stamps = engine.transfers["timestamp"][:n]
                first, last = int(stamps[0]), int(stamps[-1])
                done = 0
                for account in range(1, ACCOUNTS + 1):
                    for f in _filters(rng, account, first, last):
                        assert _chain_scan(engine, f) == _full_scan(engine, f), f
                        done += 1
                return done

            compared += ledger.read_state(check)
        assert compared == 6 * ACCOUNTS * 12
    finally:
        ledger.close()


def test_the_writer_links_rows_while_idle_once_accounts_are_read(tmp_path: Path) -> None:
    """A ledger nobody reads per account links nothing; once one is read, the writer links
    the rest whenever no request waits, until every row is on its accounts' chains."""
    rng = random.Random(7)
    ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state")
    try:
        ledger.create_accounts([Account(id=a, ledger=1, code=1) for a in range(1, ACCOUNTS + 1)])
        pending: list[int] = []
        next_id = 1
        for _ in range(8):
            batch = _transfers(rng, next_id, 4000, pending)
            next_id += len(batch)
            ledger.create_transfers(batch)

        def linked(engine: Engine) -> tuple[int, int, bool]:
            return engine.chains.count, engine.n_transfers, engine.chains.active

        time.sleep(0.2)
        count, total, active = ledger.read_state(linked)
        assert (count, active) == (0, False) and total > 20_000  # nobody read: nothing linked
        both = FLAGS.DEBITS | FLAGS.CREDITS
        ledger.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, both))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            count, total, active = ledger.read_state(linked)
            if count == total:
                break
            time.sleep(0.01)
        assert active and count == total  # linked while idle, past what one read links
        assert total > ledger_module.CHAIN_ROWS_PER_READ
    finally:
        ledger.close()


def test_a_pending_transfer_resolved_before_its_deadline_does_not_keep_the_writer_awake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending transfer posted (or voided, or rolled back with its chain) before its deadline
    leaves its entry in the expiry heap. Once that deadline passed, the writer woke every
    millisecond for it for ever (nothing is due, so nothing popped it), and so never linked
    the accounts' chains while idle (it links only when no deadline is nearer than 2 ms)."""
    from puhui.clock import ManualClock

    monkeypatch.setattr(ledger_module, "CHAIN_ROWS_PER_READ", 1)
    clock = ManualClock(1_000_000_000_000)
    ledger = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state", clock=clock)
    try:
        ledger.create_accounts([Account(id=a, ledger=1, code=1) for a in (1, 2)])
        pending = Transfer(
            id=1,
            debit_account_id=1,
            credit_account_id=2,
            amount=5,
            ledger=1,
            code=1,
            flags=TransferFlags.PENDING,
            timeout=1,
        )
        post = Transfer(id=2, pending_id=1, amount=5, flags=TransferFlags.POST_PENDING_TRANSFER)
        chain = [
            replace(pending, id=3, flags=TransferFlags.PENDING | TransferFlags.LINKED),
            replace(pending, id=4, code=0),  # fails: the chain rolls back
        ]
        ledger.create_transfers([pending, post, *chain])
        ledger.create_transfers(
            [
                Transfer(
                    id=10 + i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1
                )
                for i in range(50)
            ]
        )
        clock.advance(2_000_000_000)  # past the deadlines
        ledger.tick()

        def linked(engine: Engine) -> tuple[int, int, int | None]:
            return engine.chains.count, engine.n_transfers, engine.next_deadline()

        both = FLAGS.DEBITS | FLAGS.CREDITS
        ledger.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, both))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            count, total, due = ledger.read_state(linked)
            if count == total:
                break
            time.sleep(0.01)
        assert due is None  # no pending transfer awaits a deadline
        assert count == total == 52  # linked while idle
    finally:
        ledger.close()
