"""``query_transfers`` scans a bounded number of rows per turn of the ledger's writer, so a
query over a big ledger takes turns with the writes. Its answers are the one-turn scan's
(``K.scan_transfers`` over every row, checked against the reference model by the property
tests), whatever the turn size, and a query answers for the ledger as its first turn found
it."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from puhui import ledger as L
from puhui.ledger import (
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
)
from puhui.ledger import _kernel as K
from puhui.ledger import _ledger as ledger_module
from puhui.ledger._convert import array_to_balances, array_to_transfers
from puhui.ledger._engine import Engine
from puhui.ledger._ledger import _query_filter, _scan_args

from .test_account_chains import ACCOUNTS, _filters, _full_scan, _transfers


def _one_turn(engine: Engine, f: QueryFilter) -> list[Transfer]:
    """The query as one scan of every row (the reads before the turns)."""
    params = _query_filter(f)
    assert params is not None
    no_account = (np.uint64(0), np.uint64(0), False, False, False)
    rows, _ = K.scan_transfers(
        engine.transfers, engine.n_transfers, *no_account, *_scan_args(params)
    )
    return array_to_transfers(engine.transfers[rows].copy())


def _queries(rng: random.Random, first_ts: int, last_ts: int) -> list[QueryFilter]:
    out = []
    for _ in range(40):
        t_min = rng.choice([0, rng.randint(first_ts, last_ts)])
        t_max = rng.choice([0, rng.randint(max(first_ts, t_min), last_ts + 1)])
        out.append(
            QueryFilter(
                user_data_128=rng.choice([0, 0, 1]),
                user_data_64=rng.choice([0, 0, 2]),
                user_data_32=0,
                ledger=rng.choice([0, 1]),
                code=rng.choice([0, 0, 1, 2]),
                timestamp_min=t_min,
                timestamp_max=t_max,
                limit=rng.choice([1, 3, 64, 200, 8189]),
                flags=rng.choice([QueryFilterFlags.NONE, QueryFilterFlags.REVERSED]),
            )
        )
    return out


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    rng = random.Random(11)
    opened = L.open(str(tmp_path / "ledger"), state_dir=tmp_path / "state")
    opened.create_accounts([Account(id=a, ledger=1, code=1) for a in range(1, ACCOUNTS + 1)])
    pending: list[int] = []
    next_id = 1
    for _ in range(4):
        batch = _transfers(rng, next_id, 500, pending)
        next_id += len(batch)
        opened.create_transfers(batch)
    yield opened
    opened.close()


@pytest.mark.parametrize("rows_per_turn", [3, 300, 1 << 20])
def test_a_query_in_turns_answers_as_one_scan(
    ledger: Any, rows_per_turn: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "QUERY_ROWS_PER_TURN", rows_per_turn)

    def bounds(engine: Engine) -> tuple[int, int, int]:
        stamps = engine.transfers["timestamp"][: engine.n_transfers]
        return int(stamps[0]), int(stamps[-1]), engine.n_transfers

    first, last, count = ledger.read_state(bounds)
    assert count > 1_000
    rng = random.Random(rows_per_turn)
    answered = 0
    for f in _queries(rng, first, last):
        expected = ledger.read_state(lambda engine, f=f: _one_turn(engine, f))
        assert ledger.query_transfers(f) == expected, f
        answered += len(expected)
    assert answered > 0


def _with_writes_between_turns(ledger: Any, read: Any) -> tuple[Any, int]:
    """``read()``'s answer, with a transfer (1 to 2) written and done between each of its
    first three turns of the writer; and how many turns it took."""
    turns = 0
    new_id = 10**9
    turn = ledger._read

    def between_turns(fn: Any) -> Any:
        nonlocal turns, new_id
        answer = turn(fn)
        turns += 1
        if turns <= 3:
            new_id += 1
            transfer = Transfer(
                id=new_id, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1
            )
            assert ledger.create_transfers([transfer])[0].status == L.CreateTransferStatus.CREATED
        return answer

    ledger._read = between_turns
    try:
        return read(), turns
    finally:
        del ledger._read  # the method again


def test_writes_go_between_a_querys_turns_and_it_answers_for_its_first(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "QUERY_ROWS_PER_TURN", 256)
    everything = QueryFilter(0, 0, 0, 0, 0, 0, 0, 8189, QueryFilterFlags.NONE)
    before = ledger.read_state(lambda engine: _one_turn(engine, everything))
    answer, turns = _with_writes_between_turns(ledger, lambda: ledger.query_transfers(everything))
    assert answer == before  # the ledger as the first turn found it
    assert turns == -(-len(before) // 256)  # one turn per 256 rows of the range
    after = ledger.query_transfers(everything)
    assert len(after) == len(before) + 3  # the writes made between the turns are there


def _history_ledger(tmp_path: Path) -> Any:
    """Accounts with balances kept per transfer (``HISTORY``), transfers in four groups."""
    rng = random.Random(5)
    opened = L.open(str(tmp_path / "history"), state_dir=tmp_path / "history-state")
    opened.create_accounts(
        [
            Account(id=a, ledger=1, code=1, flags=AccountFlags.HISTORY)
            for a in range(1, ACCOUNTS + 1)
        ]
    )
    pending: list[int] = []
    next_id = 1
    for _ in range(4):
        batch = _transfers(rng, next_id, 400, pending)
        next_id += len(batch)
        opened.create_transfers(batch)
    return opened


def _expected(ledger: Any, f: AccountFilter) -> tuple[list[Transfer], list[AccountBalance]]:
    """What the full scan of every row answers (the reads before the chains and turns)."""

    def read(engine: Engine) -> tuple[list[Transfer], list[AccountBalance]]:
        rows, sides = (np.array(v, np.int64) for v in _full_scan(engine, f))
        balances = array_to_balances(
            engine.balances[2 * rows + sides].copy(), engine.transfers["timestamp"][rows].tolist()
        )
        return array_to_transfers(engine.transfers[rows].copy()), balances

    answer: tuple[list[Transfer], list[AccountBalance]] = ledger.read_state(read)
    return answer


@pytest.mark.parametrize("rows_per_turn", [5, 300, 1 << 20])
def test_account_reads_in_turns_answer_as_the_full_scan(
    tmp_path: Path, rows_per_turn: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the turn's size and however far the chains are linked (a few rows a read,
    more while the writer is idle, new rows written between reads), an account's transfers
    and balances are the full scan's."""
    monkeypatch.setattr(ledger_module, "QUERY_ROWS_PER_TURN", rows_per_turn)
    monkeypatch.setattr(ledger_module, "CHAIN_ROWS_PER_READ", 37)
    ledger = _history_ledger(tmp_path)
    rng = random.Random(rows_per_turn)
    pending: list[int] = []
    next_id = 10_000
    compared = 0
    try:
        for step in range(3):
            if step:  # rows the chains have not linked yet
                batch = _transfers(rng, next_id, 300, pending)
                next_id += len(batch)
                ledger.create_transfers(batch)

            def bounds(engine: Engine) -> tuple[int, int]:
                stamps = engine.transfers["timestamp"][: engine.n_transfers]
                return int(stamps[0]), int(stamps[-1])

            first, last = ledger.read_state(bounds)
            for account in range(1, ACCOUNTS + 1):
                for f in _filters(rng, account, first, last):
                    transfers, balances = _expected(ledger, f)
                    assert ledger.get_account_transfers(f) == transfers, f
                    assert ledger.get_account_balances(f) == balances, f
                    compared += 1
    finally:
        ledger.close()
    assert compared == 3 * ACCOUNTS * 12


def test_writes_go_between_an_account_reads_turns_and_it_answers_for_its_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "QUERY_ROWS_PER_TURN", 64)
    ledger = _history_ledger(tmp_path)
    try:
        both = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
        f = AccountFilter(1, 0, 0, 0, 0, 0, 0, 8189, both | AccountFilterFlags.REVERSED)
        before, _ = _expected(ledger, f)
        assert len(before) > 64
        answer, turns = _with_writes_between_turns(ledger, lambda: ledger.get_account_transfers(f))
        assert answer == before  # the ledger as the first turn found it
        assert turns > 3  # in turns: no chain was linked, the rows were scanned 64 a turn
        after = ledger.get_account_transfers(f)
        assert len(after) == len(before) + 3
    finally:
        ledger.close()


def test_an_account_newer_than_the_chains_reads_its_own_transfers(tmp_path: Path) -> None:
    """Accounts created after every row was linked lie past the chains' arrays (they grow
    when rows are linked): a newest-first read of one must find its transfers, and nothing of
    another's (the chain's start was read past the array's end: another account's transfer,
    or a crash)."""
    ledger = _history_ledger(tmp_path)
    both = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS

    def linked(engine: Engine) -> bool:
        return bool(engine.chains.count == engine.n_transfers)

    try:
        ledger.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, both))
        deadline = time.monotonic() + 10
        while not ledger.read_state(linked):  # linked while the writer idles
            assert time.monotonic() < deadline
            time.sleep(0.01)
        next_account = 1_000
        for round_ in range(3):
            fresh = [
                Account(id=next_account + k, ledger=1, code=1, flags=AccountFlags.HISTORY)
                for k in range(3_000)
            ]
            next_account += len(fresh)
            ledger.create_accounts(fresh)
            newest = fresh[-1].id
            for flags in (both | AccountFilterFlags.REVERSED, both):
                f = AccountFilter(newest, 0, 0, 0, 0, 0, 0, 10, flags)
                assert ledger.get_account_transfers(f) == [], (round_, flags)
            transfer = Transfer(
                id=10**9 + round_, debit_account_id=newest, credit_account_id=1, amount=0,
                ledger=1, code=1,
            )  # fmt: skip
            assert ledger.create_transfers([transfer])[0].status == L.CreateTransferStatus.CREATED
            f = AccountFilter(newest, 0, 0, 0, 0, 0, 0, 10, both | AccountFilterFlags.REVERSED)
            assert [t.id for t in ledger.get_account_transfers(f)] == [transfer.id]
    finally:
        ledger.close()
