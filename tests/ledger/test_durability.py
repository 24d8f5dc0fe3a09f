"""The durable ledger: input validation, journal integrity, snapshots, recovery, locking."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from puhui.clock import ManualClock
from puhui.ledger import (
    ACCOUNT_DTYPE,
    AMOUNT_MAX,
    BATCH_EVENTS_MAX,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    BatchTooLargeError,
    CreateAccountStatus,
    CreateTransferStatus,
    FieldOutOfRangeError,
    JournalCorruptError,
    Ledger,
    LedgerClosedError,
    LedgerLockedError,
    LedgerOptions,
    QueryFilter,
    QueryFilterFlags,
    TooMuchDataError,
    Transfer,
    TransferFlags,
    UnknownFieldError,
    WrongTypeError,
    account_from_mapping,
    open,
    transfer_from_mapping,
    verify,
)

ALL = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS


def _accounts(ledger: Ledger, n: int = 4) -> None:
    results = ledger.create_accounts(
        [
            Account(
                id=i, ledger=1, code=1, flags=AccountFlags.HISTORY if i % 2 else AccountFlags.NONE
            )
            for i in range(1, n + 1)
        ]
    )
    assert all(r.status == CreateAccountStatus.CREATED for r in results)


def _transfer(i: int, amount: int = 10, **kw: object) -> Transfer:
    fields: dict[str, object] = {
        "id": i,
        "debit_account_id": 1,
        "credit_account_id": 2,
        "amount": amount,
        "ledger": 1,
        "code": 1,
    }
    fields.update(kw)
    return Transfer(**fields)  # type: ignore[arg-type]


def _state(ledger: Ledger) -> tuple[bytes, bytes, bytes]:
    def read(engine: object) -> tuple[bytes, bytes, bytes]:
        e = engine  # Engine
        return (
            e.accounts[: e.n_accounts].tobytes(),  # type: ignore[attr-defined]
            e.transfers[: e.n_transfers].tobytes(),  # type: ignore[attr-defined]
            e.xfer_state[: e.n_transfers].tobytes(),  # type: ignore[attr-defined]
        )

    state: tuple[bytes, bytes, bytes] = ledger.read_state(read)
    return state


@pytest.fixture
def ledger(journal_url: str, tmp_path: Path) -> Iterator[Ledger]:
    led = open(journal_url, state_dir=tmp_path / "state")
    _accounts(led)
    yield led
    led.close()


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (_transfer(1, amount=-1), FieldOutOfRangeError),
        (_transfer(1, amount=AMOUNT_MAX + 1), FieldOutOfRangeError),
        (_transfer(1 << 128), FieldOutOfRangeError),
        (_transfer(1, ledger=1 << 32), FieldOutOfRangeError),
        (_transfer(1, code=1 << 16), FieldOutOfRangeError),
        (_transfer(1, flags=1 << 16), FieldOutOfRangeError),
        (_transfer(1, amount=1.5), WrongTypeError),  # type: ignore[arg-type]
        (_transfer(1, amount="10"), WrongTypeError),  # type: ignore[arg-type]
        (_transfer(1, debit_account_id=None), WrongTypeError),
        (Account(id=1, ledger=1, code=1), WrongTypeError),
        ({"id": 1}, WrongTypeError),
    ],
)
def test_bad_transfer_input_is_rejected_and_changes_nothing(
    ledger: Ledger, event: object, error: type[Exception]
) -> None:
    before = _state(ledger)
    op = ledger.last_op
    with pytest.raises(error) as raised:
        ledger.create_transfers([_transfer(100), event])  # type: ignore[list-item]
    assert raised.value.details.get("index", 1) == 1  # type: ignore[attr-defined]
    assert _state(ledger) == before
    assert ledger.last_op == op  # nothing was journalled


def test_bad_account_input_is_rejected(ledger: Ledger) -> None:
    before = _state(ledger)
    with pytest.raises(FieldOutOfRangeError):
        ledger.create_accounts([Account(id=9, ledger=1, code=1, user_data_32=-5)])
    with pytest.raises(WrongTypeError):
        ledger.create_accounts([Account(id=9, ledger="1", code=1)])  # type: ignore[arg-type]
    assert _state(ledger) == before


def test_batch_over_the_limit_is_rejected(ledger: Ledger) -> None:
    before = _state(ledger)
    batch = [_transfer(1000 + i, amount=1) for i in range(BATCH_EVENTS_MAX + 1)]
    with pytest.raises(BatchTooLargeError):
        ledger.create_transfers(batch)
    with pytest.raises(BatchTooLargeError):
        ledger.lookup_transfers(list(range(1, BATCH_EVENTS_MAX + 2)))
    assert _state(ledger) == before
    results = ledger.create_transfers(batch[:BATCH_EVENTS_MAX])
    assert len(results) == BATCH_EVENTS_MAX
    assert {r.status for r in results} == {CreateTransferStatus.CREATED}


def test_columnar_input_must_have_the_ledger_layout(ledger: Ledger) -> None:
    wrong = np.zeros(2, dtype=[("id_lo", "<u8"), ("amount", "<f8")])
    with pytest.raises(UnknownFieldError) as raised:
        ledger.create_transfers_array(wrong)
    assert "amount" in raised.value.details["unknown"]
    with pytest.raises(UnknownFieldError):
        ledger.create_transfers_array(np.zeros(2, ACCOUNT_DTYPE))
    with pytest.raises(WrongTypeError):
        ledger.create_transfers_array([1, 2])  # type: ignore[arg-type]
    with pytest.raises(WrongTypeError):
        ledger.create_transfers_array(np.zeros((2, 2), TRANSFER_DTYPE))


def test_mapping_constructors_reject_unknown_fields() -> None:
    t = transfer_from_mapping({"id": 5, "amount": 7, "flags": 2})
    assert t.amount == 7
    assert t.flags == TransferFlags.PENDING
    assert account_from_mapping({"id": 1, "ledger": 2, "code": 3}).ledger == 2
    with pytest.raises(UnknownFieldError):
        transfer_from_mapping({"id": 5, "amont": 7})
    with pytest.raises(FieldOutOfRangeError):
        transfer_from_mapping({"id": -5})
    with pytest.raises(WrongTypeError):
        account_from_mapping({"id": "5"})


def test_too_much_data_for_a_query(ledger: Ledger) -> None:
    with pytest.raises(TooMuchDataError):
        ledger.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, BATCH_EVENTS_MAX + 1, ALL))
    with pytest.raises(TooMuchDataError):
        ledger.query_transfers(
            QueryFilter(0, 0, 0, 0, 0, 0, 0, BATCH_EVENTS_MAX + 1, QueryFilterFlags.NONE)
        )
    assert (
        ledger.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, BATCH_EVENTS_MAX, ALL))
        == []
    )


# --- columnar API ---------------------------------------------------------------------------


def test_columnar_and_object_apis_agree(tmp_path: Path) -> None:
    transfers = [
        _transfer(10),
        _transfer(11, flags=TransferFlags.PENDING, timeout=5),
        _transfer(12, amount=AMOUNT_MAX),
        _transfer(10),
        _transfer(13, flags=TransferFlags.LINKED),
        _transfer(14, debit_account_id=99),
    ]
    outcomes = []
    for name in ("objects", "columns"):
        led = open(tmp_path / f"{name}.sqlite", clock=ManualClock(1000))
        try:
            _accounts(led)
            if name == "objects":
                results = [(r.timestamp, int(r.status)) for r in led.create_transfers(transfers)]
            else:
                from puhui.ledger._convert import transfers_to_array

                array = led.create_transfers_array(transfers_to_array(transfers))
                assert array.dtype == RESULT_DTYPE
                results = list(
                    zip(array["timestamp"].tolist(), array["status"].tolist(), strict=True)
                )
            outcomes.append((results, led.lookup_accounts([1, 2])))
        finally:
            led.close()
    assert outcomes[0] == outcomes[1]


# --- durability -------------------------------------------------------------------------


def test_reopen_replays_the_journal_to_the_same_state(journal_url: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    options = LedgerOptions(snapshot_interval_events=7)  # several snapshots along the way
    led = open(journal_url, state_dir=state_dir, options=options)
    _accounts(led, 6)
    for batch in range(20):
        base = 1000 + batch * 10
        led.create_transfers(
            [
                _transfer(base, amount=3),
                _transfer(base + 1, flags=TransferFlags.PENDING, amount=5),
                _transfer(
                    base + 2,
                    flags=TransferFlags.POST_PENDING_TRANSFER,
                    pending_id=base + 1,
                    amount=2,
                    debit_account_id=0,
                    credit_account_id=0,
                    ledger=0,
                    code=0,
                ),
                _transfer(
                    base + 3, debit_account_id=3, credit_account_id=4, flags=TransferFlags.LINKED
                ),
                _transfer(base + 4, debit_account_id=77),  # fails: the chain rolls back
            ]
        )
    before = _state(led)
    assert verify(led).ok
    led.close()
    # Recovery from the newest snapshot plus the journal after it.
    led = open(journal_url, state_dir=state_dir, options=options)
    try:
        assert _state(led) == before
        assert verify(led).ok
        # Burned ids survive recovery.
        [again] = led.create_transfers([_transfer(1004)])
        assert again.status == CreateTransferStatus.ID_ALREADY_FAILED
    finally:
        led.close()
    # Without any snapshot (state lost): the journal alone rebuilds everything.
    import shutil

    shutil.rmtree(state_dir)
    led = open(journal_url, state_dir=state_dir, options=options)
    try:
        assert _state(led) == before  # the burned-id attempt changed nothing
        assert verify(led).ok
    finally:
        led.close()


def test_a_second_process_cannot_open_the_same_ledger(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    led = open(path)
    try:
        with pytest.raises(LedgerLockedError):
            open(path)
    finally:
        led.close()
    open(path).close()  # released on close


def test_closed_client_raises(tmp_path: Path) -> None:
    led = open(tmp_path / "journal.sqlite")
    led.close()
    led.close()  # idempotent
    with pytest.raises(LedgerClosedError):
        led.lookup_accounts([1])


def test_corrupt_journal_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    led = open(path, state_dir=tmp_path / "state")
    _accounts(led)
    led.create_transfers([_transfer(1)])
    led.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE journal SET payload = zeroblob(length(payload)) WHERE op = 2")
    db.commit()
    db.close()
    import shutil

    shutil.rmtree(tmp_path / "state")  # force a replay through the damaged record
    with pytest.raises(JournalCorruptError):
        open(path, state_dir=tmp_path / "state")


def test_state_of_another_journal_is_rebuilt(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    led = open(tmp_path / "a.sqlite", state_dir=state_dir)
    _accounts(led)
    led.close()
    other = open(tmp_path / "b.sqlite", state_dir=state_dir)
    try:
        assert other.lookup_accounts([1, 2]) == []
        assert verify(other).ok
    finally:
        other.close()


def test_expiry_is_journalled_and_survives_recovery(tmp_path: Path) -> None:
    clock = ManualClock(1_000)
    path = tmp_path / "journal.sqlite"
    led = open(path, state_dir=tmp_path / "state", clock=clock)
    _accounts(led)
    [created] = led.create_transfers([_transfer(5, flags=TransferFlags.PENDING, timeout=1)])
    assert created.status == CreateTransferStatus.CREATED
    assert led.lookup_accounts([1])[0].debits_pending == 10
    clock.set(created.timestamp + 1_000_000_000)
    assert led.tick() == 1
    assert led.lookup_accounts([1])[0].debits_pending == 0
    [post] = led.create_transfers(
        [Transfer(id=6, pending_id=5, amount=AMOUNT_MAX, flags=TransferFlags.POST_PENDING_TRANSFER)]
    )
    assert post.status == CreateTransferStatus.PENDING_TRANSFER_EXPIRED
    led.close()
    led = open(path, state_dir=tmp_path / "state", clock=clock)
    try:
        assert led.lookup_accounts([1])[0].debits_pending == 0
        [again] = led.create_transfers(
            [Transfer(id=6, pending_id=5, flags=TransferFlags.VOID_PENDING_TRANSFER)]
        )
        assert again.status == CreateTransferStatus.PENDING_TRANSFER_EXPIRED
        assert verify(led).ok
    finally:
        led.close()


def test_history_balances_and_queries_after_recovery(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    led = open(path, state_dir=tmp_path / "state")
    _accounts(led)
    led.create_transfers([_transfer(i, amount=i) for i in range(1, 6)])
    balances = led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL))
    transfers = led.get_account_transfers(
        AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL | AccountFilterFlags.REVERSED)
    )
    led.close()
    led = open(path, state_dir=tmp_path / "state")
    try:
        assert [b.debits_posted for b in balances] == [1, 3, 6, 10, 15]
        assert led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL)) == balances
        assert [t.id for t in transfers] == [5, 4, 3, 2, 1]
        # Account 2 has no history flag.
        assert led.get_account_balances(AccountFilter(2, 0, 0, 0, 0, 0, 0, 10, ALL)) == []
    finally:
        led.close()


def test_results_are_returned_for_every_event(ledger: Ledger) -> None:
    array = np.zeros(3, TRANSFER_DTYPE)
    array["id_lo"] = [1, 2, 0]
    array["debit_account_id_lo"] = 1
    array["credit_account_id_lo"] = 2
    array["amount_lo"] = 1
    array["ledger"] = 1
    array["code"] = 1
    results = ledger.create_transfers_array(array)
    assert results["status"].tolist() == [
        CreateTransferStatus.CREATED,
        CreateTransferStatus.CREATED,
        CreateTransferStatus.ID_MUST_NOT_BE_ZERO,
    ]
    assert results["timestamp"][1] == results["timestamp"][0] + 1


def test_burned_ids_stay_burned_when_their_table_grows(tmp_path: Path) -> None:
    """Regression: regrowing the burned-id table once rehashed ids with signed arithmetic."""
    led = open(tmp_path / "journal.sqlite", state_dir=tmp_path / "state")
    try:
        _accounts(led)
        burned: list[int] = []
        for round_ in range(6):
            ids = [(round_ << 100) + (1 << 63) + i for i in range(300)]  # high bits set
            results = led.create_transfers([_transfer(i, debit_account_id=99) for i in ids])
            assert {r.status for r in results} == {CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND}
            burned += ids
        again = led.create_transfers([_transfer(i) for i in burned[:BATCH_EVENTS_MAX]])
        assert {r.status for r in again} == {CreateTransferStatus.ID_ALREADY_FAILED}
    finally:
        led.close()


def test_a_request_queued_after_close_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    from concurrent.futures import Future

    from puhui.ledger._engine import KIND_TRANSFERS
    from puhui.ledger._ledger import _Request

    led = open(tmp_path / "journal")
    led.close()
    # What a caller racing with close() can leave behind: a request the writer never sees.
    orphan: Future[object] = Future()
    led._queue.put(_Request(KIND_TRANSFERS, None, future=orphan))
    led._fail_orphans()
    with pytest.raises(LedgerClosedError):
        orphan.result(timeout=1)


def test_concurrent_callers_share_group_commits(journal_url: str, tmp_path: Path) -> None:
    """Many callers at once: their requests are journalled and applied as groups, and each
    caller gets exactly its own results."""
    import asyncio

    from puhui.ledger import AsyncLedger

    led = open(journal_url, state_dir=tmp_path / "state")
    try:
        _accounts(led)

        async def caller(index: int, client: AsyncLedger) -> list[tuple[int, int]]:
            out = []
            for k in range(25):
                tid = 1_000 * (index + 1) + k
                amount = index + 1
                [result] = await client.create_transfers([_transfer(tid, amount=amount)])
                out.append((tid, int(result.status)))
            return out

        async def run() -> list[list[tuple[int, int]]]:
            client = AsyncLedger(led)
            return await asyncio.gather(*(caller(i, client) for i in range(16)))

        per_caller = asyncio.run(run())
        assert all(
            status == CreateTransferStatus.CREATED for out in per_caller for _, status in out
        )
        stored = {
            t.id: t.amount
            for t in led.lookup_transfers([tid for out in per_caller for tid, _ in out])
        }
        assert stored == {1_000 * (i + 1) + k: i + 1 for i in range(16) for k in range(25)}
        groups = led.stats.recent()["requests"]
        assert groups.max() > 1  # some group commits carried several callers' requests
        [debit] = led.lookup_accounts([1])
        assert debit.debits_posted == sum(25 * (i + 1) for i in range(16))
        assert verify(led).ok
    finally:
        led.close()


def _snapshots(state_dir: Path) -> list[Path]:
    return sorted(p for p in (state_dir / "snapshots").iterdir() if p.name.isdigit())


def test_a_snapshot_of_a_journal_rolled_back_is_not_restored(tmp_path: Path) -> None:
    """The journal restored from a backup (or a failover) lost ops a snapshot holds: once the
    journal has grown past that op again with other events, the snapshot must not be restored
    (it was: only ``op > last_op`` was checked, and the transfers the journal holds now were
    replaced by the lost ones)."""
    import shutil

    path = tmp_path / "journal.sqlite"
    backup = tmp_path / "backup.sqlite"
    state_dir = tmp_path / "state"
    led = open(path, state_dir=state_dir)
    _accounts(led)
    led.close()  # a snapshot at op 1
    shutil.copy(path, backup)  # the backup: op 1
    led = open(path, state_dir=state_dir)
    for i in range(1, 4):
        led.create_transfers([_transfer(i)])  # ops 2..4, lost with the journal
    led.close()  # a snapshot at op 4
    shutil.copy(backup, path)  # the journal restored from the backup
    led = open(path, state_dir=state_dir)
    for i in range(11, 15):
        led.create_transfers([_transfer(i, amount=1)])  # ops 2..5, acknowledged
    expected = _state(led)
    led.close()
    newest = _snapshots(state_dir)[-1]
    assert newest.name == f"{5:020d}"
    shutil.rmtree(newest)  # as if the process had been killed before its final snapshot
    led = open(path, state_dir=state_dir)
    try:
        assert [t.id for t in led.lookup_transfers([1, 2, 3, 11, 12, 13, 14])] == [11, 12, 13, 14]
        assert led.lookup_accounts([1])[0].debits_posted == 4  # was 31: 3 lost transfers + 1
        assert _state(led) == expected
        assert verify(led).ok
    finally:
        led.close()


def test_the_state_of_a_copied_ledger_that_went_its_own_way_is_not_restored(
    tmp_path: Path,
) -> None:
    """A ledger copied (journal and state) shares its journal's identity with the original;
    opening one's journal with the other's state once both went on must not restore the
    other's snapshot."""
    import shutil

    state_a, state_b = tmp_path / "a.state", tmp_path / "b.state"
    led = open(tmp_path / "a", state_dir=state_a)
    _accounts(led)
    led.close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(state_a, state_b)
    for name, state_dir, first in (("a", state_a, 100), ("b", state_b, 200)):
        led = open(tmp_path / name, state_dir=state_dir)
        led.create_transfers([_transfer(first + i) for i in range(3)])
        led.close()
    led = open(tmp_path / "a", state_dir=state_b)  # a's journal, b's state
    try:
        assert [t.id for t in led.lookup_transfers([100, 200])] == [100]
        assert verify(led).ok
    finally:
        led.close()


@pytest.mark.parametrize("lost", ["transfers.dat", "balances.dat"])
def test_a_snapshot_whose_rows_are_lost_is_not_restored(tmp_path: Path, lost: str) -> None:
    """A snapshot holds the mutable state; the transfer and balance rows below its count are
    in the row files. With a row file lost (deleted, or the state directory put together from
    two copies), the snapshot must not be restored: the journal rebuilds the state. (It was:
    the rows read as zeros, so the transfers vanished from every read while the accounts kept
    their balances.)"""
    path = tmp_path / "journal.sqlite"
    state_dir = tmp_path / "state"
    led = open(path, state_dir=state_dir)
    _accounts(led)
    led.create_transfers([_transfer(i) for i in range(1, 4)])
    history = led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL))
    before = _state(led)
    led.close()
    (state_dir / lost).unlink()
    led = open(path, state_dir=state_dir)
    try:
        assert [t.id for t in led.lookup_transfers([1, 2, 3])] == [1, 2, 3]
        assert led.get_account_balances(AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, ALL)) == history
        assert _state(led) == before
        assert verify(led).ok
    finally:
        led.close()


def test_a_snapshot_cut_short_by_a_crash_is_cleared_away(tmp_path: Path) -> None:
    """A crash while a snapshot is written leaves its temporary directory (``tmp-<op>``, a
    copy of the state) behind; it was never removed (only a later snapshot of the very same op
    cleared it), so each such crash kept a state's worth of disk. Opening clears them."""
    path = tmp_path / "journal.sqlite"
    state_dir = tmp_path / "state"
    led = open(path, state_dir=state_dir)
    _accounts(led)
    led.close()
    [snapshot] = _snapshots(state_dir)
    import shutil

    unfinished = state_dir / "snapshots" / "tmp-00000000000000000007"
    shutil.copytree(snapshot, unfinished)  # as the crash left it
    (unfinished / "manifest.json").unlink()
    led = open(path, state_dir=state_dir)
    try:
        assert not unfinished.exists()
        assert len(led.lookup_accounts([1, 2, 3, 4])) == 4
    finally:
        led.close()
