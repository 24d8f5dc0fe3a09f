"""Crash recovery: SIGKILL a process in the middle of writing, reopen, and check what survived.

Each cycle starts ``crash_child.py`` on the same journal and state directory, lets it submit
transfer batches for a random fraction of a second, and kills it with SIGKILL. The test then
reopens the ledger and checks the durability contract of ``puhui.ledger``:

* every batch the child saw answered (``DONE``) is in the ledger exactly as answered: each
  created transfer with the reported timestamp and the submitted fields, each failed one
  absent (unless a later batch created that id), each ``exists`` pointing at the right one;
* the batch in flight at the kill (``SUBMIT`` without ``DONE``) is wholly applied or wholly
  absent, and the journal holds exactly the answered batches plus, at most, that one;
* no other transfer exists, and ``verify`` finds nothing wrong;
* a fresh ledger fed the same batches at the same clock gives the same statuses, the same
  transfers and the same balances (also after expiring every pending transfer that is due).

The next cycle's child continues from the next batch number, so state accumulates over kills,
snapshots (every 500 events in the child) and the expiries done by the test's own reopenings.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import puhui.ledger
from puhui.clock import ManualClock
from puhui.ledger import (
    AMOUNT_MAX,
    BATCH_EVENTS_MAX,
    Account,
    CreateTransferStatus,
    Ledger,
    LedgerLockedError,
    Transfer,
    TransferFlags,
    verify,
)
from puhui.ledger._convert import transfers_to_array
from puhui.ledger._engine import KIND_TRANSFERS, Engine
from puhui.ledger._journal import decode_group
from tests.ledger import crash_child as child

CHILD_SCRIPT = Path(child.__file__).resolve()
CYCLES = int(os.environ.get("PUHUI_CRASH_CYCLES", "14"))
RUN_AFTER_FIRST_DONE_S = (0.05, 0.6)
FIRST_DONE_TIMEOUT_S = 120.0
OLD_TRANSFERS_SAMPLED = 500

CREATED = int(CreateTransferStatus.CREATED)
EXISTS = int(CreateTransferStatus.EXISTS)
EXISTS_STATUSES = frozenset(int(s) for s in CreateTransferStatus if s.name.startswith("EXISTS"))
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
BALANCING = TransferFlags.BALANCING_DEBIT | TransferFlags.BALANCING_CREDIT
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
ACCOUNT_FIELDS = (
    *BALANCE_FIELDS,
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "ledger",
    "code",
    "flags",
)
TRANSFER_FIELDS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_id",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "timeout",
    "ledger",
    "code",
    "flags",
)

Results = list[tuple[int, int]]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warm_kernels(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compile (or load from numba's cache) every kernel before the first child starts."""
    warm_ledger(tmp_path_factory.mktemp("warm") / "journal.sqlite")


def warm_ledger(path: Path) -> None:
    """Run what compiles every ledger kernel the children use (``Engine.warm_up`` loads the
    kernels of a first request; tables that grow, a timeout's expiry, a restore from a
    snapshot compile more): also run by ``tests/warm_kernels.py`` before the suite."""
    clock = ManualClock(1_000_000_000_000)
    ledger = puhui.ledger.open(path, clock=clock)
    try:
        ledger.create_accounts(child.accounts())
        ledger.create_transfers(child.make_batch(1, 0))
        ledger.create_transfers(
            [
                Transfer(
                    id=1,
                    debit_account_id=6,
                    credit_account_id=7,
                    amount=1,
                    ledger=1,
                    code=1,
                    flags=TransferFlags.PENDING,
                    timeout=1,
                ),
            ]
        )
        for first in (10_000, 20_000):  # burn enough ids to grow (rehash) their table
            ledger.create_transfers(
                [
                    Transfer(id=i, debit_account_id=99, credit_account_id=7, ledger=1, code=1)
                    for i in range(first, first + 200)
                ]
            )
        clock.advance(2_000_000_000)
        ledger.tick()
        ledger.lookup_transfers([1])
        assert verify(ledger).ok
    finally:
        ledger.close()
    puhui.ledger.open(path, clock=clock).close()  # snapshot restore and index rebuild


@dataclass
class Backend:
    name: str
    url: str
    state_dir: Path


@pytest.fixture(params=["sqlite", "file", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """SQLite always; PostgreSQL when PUHUI_TEST_DATABASE_URL is set (else a visible skip)."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "journal.sqlite"), tmp_path / "journal.state")
    if request.param == "file":
        return Backend("file", f"file://{tmp_path / 'journal'}", tmp_path / "journal.state")
    url: str = request.getfixturevalue("postgres_schema_url")  # tests/conftest.py
    return Backend("postgresql", url, tmp_path / "journal.state")


# --- the child --------------------------------------------------------------------------------


@dataclass
class ChildRun:
    start: int
    done: list[tuple[int, Results]] = field(default_factory=list)
    in_flight: int | None = None
    """The batch SUBMITted without a (complete) DONE line, if any."""
    next_batch: int = 0


class Child:
    """One run of ``crash_child.py``, started early: it imports, then waits for ``go()``.

    Importing numpy and numba takes most of a child's start, so the test spawns the next
    child while it still checks the previous one; the child opens the ledger only on ``go``.
    """

    def __init__(self, backend: Backend, seed: int, start: int, workdir: Path) -> None:
        self.start = start
        self.stderr_path = workdir / f"child-{start}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(CHILD_SCRIPT),
                    backend.url,
                    str(backend.state_dir),
                    str(seed),
                    str(start),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                env={**os.environ, child.WAIT_FOR_GO_ENV: "1"},
            )
        self.lines: list[bytes] = []
        self.first_done = threading.Event()
        self.reader = threading.Thread(target=self._pump, name="crash-child-stdout", daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw)
            if raw.startswith(b"DONE "):
                self.first_done.set()

    def run(self, rng: random.Random) -> ChildRun:
        """Let it go, wait for its first DONE, let it run a random short time, SIGKILL it."""
        try:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died: reported below
                self.proc.stdin.write(b"go\n")
                self.proc.stdin.close()
            deadline = time.monotonic() + FIRST_DONE_TIMEOUT_S
            while not self.first_done.wait(0.05):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
            if self.first_done.is_set():
                time.sleep(rng.uniform(*RUN_AFTER_FIRST_DONE_S))
        finally:
            self.kill()
        if not self.first_done.is_set() or self.proc.returncode != -signal.SIGKILL:
            pytest.fail(
                f"child (start batch {self.start}) exited with {self.proc.returncode} before or "
                f"without being killed; stderr:\n{self.stderr_path.read_text()[-4000:]}"
            )
        return parse_child_output(self.lines, self.start)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


def parse_child_output(lines: list[bytes], start: int) -> ChildRun:
    run = ChildRun(start=start, next_batch=start)
    for raw in lines:
        complete = raw.endswith(b"\n")
        text = raw.decode()
        if text.startswith("SUBMIT "):
            assert run.in_flight is None, f"SUBMIT after SUBMIT {run.in_flight} without DONE"
            batch_no = int(text.split()[1]) if complete else run.next_batch
            assert batch_no == run.next_batch, f"child submitted {batch_no}, not {run.next_batch}"
            run.in_flight = batch_no
            run.next_batch += 1
        elif text.startswith("DONE ") and complete:
            _, number, payload = text.split(" ", 2)
            assert int(number) == run.in_flight, f"DONE {number} while {run.in_flight} in flight"
            run.done.append((int(number), [(int(s), int(ts)) for s, ts in json.loads(payload)]))
            run.in_flight = None
        elif complete:
            pytest.fail(f"unexpected line from the child: {text[:200]!r}")
        # else: the kill cut the last line short; its batch stays in flight
    return run


# --- the model of what must be in the ledger --------------------------------------------------


@dataclass
class Model:
    created: dict[int, tuple[int, Transfer]] = field(default_factory=dict)
    """id -> (timestamp, transfer as submitted) for every transfer a batch created."""
    created_order: list[int] = field(default_factory=list)

    def record(
        self,
        batch: list[Transfer],
        results: Results,
        now: int,
        where: str,
        check_timestamps: bool = True,
    ) -> None:
        """Check one answered batch's results for consistency and add what it created."""
        assert len(results) == len(batch), f"{where}: {len(results)} results for {len(batch)}"
        slots: dict[int, int] = {}  # ids of this batch -> first slot timestamp
        for index, (t, (status, timestamp)) in enumerate(zip(batch, results, strict=True)):
            slot = now + index + 1
            here = f"{where}, event {index} ({CreateTransferStatus(status).name}, {t})"
            if check_timestamps:
                # EXISTS: the existing transfer's, maybe one created earlier in a failed chain.
                created_at = self.created[t.id][0] if t.id in self.created else slots.get(t.id)
                expected = created_at if status == EXISTS else slot
                assert timestamp == expected, f"{here}: timestamp {timestamp} != {expected}"
            if status in EXISTS_STATUSES:
                assert t.id in self.created or t.id in slots, f"{here}: exists, but never created"
            if status == CREATED:
                assert t.id not in self.created, f"{here}: created twice"
                self.created[t.id] = (slot, t)
                self.created_order.append(t.id)
            slots.setdefault(t.id, slot)


def batch_now(results: Results) -> int:
    """The batch's clock: event 0 is never a duplicate, so its timestamp is its slot."""
    return results[0][1] - 1


def expected_transfer(
    submitted: Transfer, timestamp: int, pending: Transfer | None
) -> dict[str, Any]:
    """The fields a created transfer must have (amount None: at most the submitted one)."""
    expected = {name: getattr(submitted, name) for name in TRANSFER_FIELDS}
    expected["timestamp"] = timestamp
    if submitted.flags & (POST | VOID):
        assert pending is not None
        for name in (
            "debit_account_id",
            "credit_account_id",
            "ledger",
            "code",
            "user_data_128",
            "user_data_64",
            "user_data_32",
        ):
            if expected[name] == 0:
                expected[name] = getattr(pending, name)
        if (submitted.flags & POST and submitted.amount == AMOUNT_MAX) or (
            submitted.flags & VOID and submitted.amount == 0
        ):
            expected["amount"] = pending.amount
    elif submitted.flags & BALANCING:
        expected["amount"] = None
    return expected


def transfer_fields(t: Transfer, names: tuple[str, ...] = TRANSFER_FIELDS) -> dict[str, Any]:
    return {name: getattr(t, name) for name in names}


def account_fields(a: Account) -> dict[str, Any]:
    return {name: getattr(a, name) for name in ACCOUNT_FIELDS}


# --- the ledgers ------------------------------------------------------------------------------


def reopen(backend: Backend, clock: ManualClock) -> Ledger:
    deadline = time.monotonic() + 30
    while True:
        try:
            return puhui.ledger.open(backend.url, state_dir=backend.state_dir, clock=clock)
        except LedgerLockedError:
            # The killed child's PostgreSQL session may take a moment to end.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def lookup(ledger: Ledger, ids: list[int]) -> dict[int, Transfer]:
    """``lookup_transfers`` in requests of at most ``BATCH_EVENTS_MAX`` ids."""
    found: dict[int, Transfer] = {}
    for i in range(0, len(ids), BATCH_EVENTS_MAX):
        found.update((t.id, t) for t in ledger.lookup_transfers(ids[i : i + BATCH_EVENTS_MAX]))
    return found


def journalled_batches(ledger: Ledger, after_op: int) -> list[tuple[int, bytes]]:
    """(clock, event bytes) of every create_transfers request journalled after ``after_op``."""

    def read(_engine: Engine) -> list[tuple[int, bytes]]:
        out = []
        for _op, payload in ledger.journal.read(after_op):
            for kind, _count, now, events in decode_group(payload):
                if kind == KIND_TRANSFERS:
                    assert events is not None
                    out.append((now, events.tobytes()))
        return out

    batches: list[tuple[int, bytes]] = ledger.read_state(read)
    return batches


def expire_due(ledger: Ledger, clock: ManualClock, now: int) -> None:
    """Expire every pending transfer due at ``now`` (a pulse takes a bounded number)."""
    clock.set(now)
    for _ in range(1000):
        ledger.tick()
        if ledger.read_state(lambda engine: engine.due_count(now, 1)) == 0:
            return
    pytest.fail("pending transfers keep coming due")


# --- the test ---------------------------------------------------------------------------------


class CrashTest:
    def __init__(self, backend: Backend, tmp_path: Path, seed: int) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.seed = seed
        self.rng = random.Random(seed)
        self.known = child.Known()
        self.model = Model()
        self.journal_op = 0  # last journal op checked
        self.replay_clock = ManualClock(time.time_ns())
        replay_dir = tmp_path / "replay"
        self.replay = puhui.ledger.open(replay_dir / "journal.sqlite", clock=self.replay_clock)
        results = self.replay.create_accounts(child.accounts())
        assert all(r.status.name == "CREATED" for r in results)
        self.cycles = 0
        self.statuses: Counter[int] = Counter()
        self.in_flight_applied = 0
        self.in_flight_absent = 0
        self.batches = 0

    def close(self) -> None:
        self.replay.close()

    def cycle(self, current: Child, last: bool) -> Child | None:
        """Run and kill ``current``; check the ledger; return the next child (spawned early)."""
        run = current.run(self.rng)
        following = None if last else Child(self.backend, self.seed, run.next_batch, self.tmp_path)
        try:
            self.check_after_kill(run)
        except BaseException:
            if following is not None:
                following.kill()
            raise
        return following

    def check_after_kill(self, run: ChildRun) -> None:
        self.cycles += 1
        self.batches += len(run.done)
        now = time.time_ns()
        clock = ManualClock(now)
        ledger = reopen(self.backend, clock)
        try:
            batches = self.check(ledger, run)
            expire_due(ledger, clock, now)
            expire_due(self.replay, self.replay_clock, now)
            self.compare_with_replay(ledger, batches)
            report = verify(ledger)
            assert report.ok, report.problems
            assert report.transfers == len(self.model.created), (
                f"the ledger has {report.transfers} transfers; batches created "
                f"{len(self.model.created)}"
            )
            self.journal_op = ledger.last_op
        finally:
            ledger.close()

    def check(self, ledger: Ledger, run: ChildRun) -> list[list[Transfer]]:
        """Check the reopened ledger against the child's answers; returns the cycle's batches."""
        journalled = journalled_batches(ledger, self.journal_op)
        extra = len(journalled) - len(run.done)
        assert extra in ((0, 1) if run.in_flight is not None else (0,)), (
            f"journal has {len(journalled)} batches after op {self.journal_op}; the child had "
            f"{len(run.done)} answered and {run.in_flight} in flight"
        )
        cycle_batches: list[list[Transfer]] = []
        for (batch_no, results), (journal_now, raw) in zip(run.done, journalled, strict=False):
            batch = child.make_batch(self.seed, batch_no, self.known)
            cycle_batches.append(batch)
            where = f"batch {batch_no}"
            now = batch_now(results)
            assert raw == transfers_to_array(batch).tobytes(), f"{where}: journalled differently"
            assert journal_now == now, f"{where}: journal clock {journal_now}, results say {now}"
            self.replay_clock.set(now)
            replayed = [(int(r.status), r.timestamp) for r in self.replay.create_transfers(batch)]
            self.assert_same_statuses(batch, results, replayed, where)
            self.model.record(batch, results, now, where)
            self.statuses.update(s for s, _ in results)

        if run.in_flight is not None:
            batch = child.make_batch(self.seed, run.in_flight, self.known)
            cycle_batches.append(batch)
            where = f"in-flight batch {run.in_flight}"
            fresh = [t.id for t in batch if t.id not in self.model.created]
            present = set(lookup(ledger, fresh))
            if extra:
                now, raw = journalled[-1]
                assert raw == transfers_to_array(batch).tobytes(), f"{where}: journalled wrongly"
                self.replay_clock.set(now)
                replayed = [
                    (int(r.status), r.timestamp) for r in self.replay.create_transfers(batch)
                ]
                would_create = {
                    t.id for t, (s, _) in zip(batch, replayed, strict=True) if s == CREATED
                }
                assert present == would_create, (
                    f"{where} is journalled, but {len(present & would_create)} of the "
                    f"{len(would_create)} transfers it creates are in the ledger, and "
                    f"{len(present - would_create)} others: not all-or-nothing"
                )
                # No answer to check: record the statuses with the journalled clock's slots.
                self.model.record(batch, replayed, now, where, check_timestamps=False)
                self.in_flight_applied += 1
            else:
                assert not present, (
                    f"{where} is not in the journal, yet {len(present)} of its transfers are in "
                    "the ledger"
                )
                self.in_flight_absent += 1

        self.check_transfers(ledger, cycle_batches)
        return cycle_batches

    def assert_same_statuses(
        self, batch: list[Transfer], results: Results, replayed: Results, where: str
    ) -> None:
        if [s for s, _ in results] == [s for s, _ in replayed]:
            return
        for index, ((got, _), (want, _)) in enumerate(zip(results, replayed, strict=True)):
            if got != want:
                raise AssertionError(
                    f"{where}, event {index}: the child got {CreateTransferStatus(got).name}, "
                    f"a replay on a fresh ledger {CreateTransferStatus(want).name}: "
                    f"{batch[index]}"
                )

    def check_transfers(self, ledger: Ledger, cycle_batches: list[list[Transfer]]) -> None:
        """Every id of this cycle's batches: present iff created, as created; old ones too."""
        ids = list(dict.fromkeys(t.id for batch in cycle_batches for t in batch))
        created = self.model.created
        seen = set(ids)
        old = [i for i in self.model.created_order if i not in seen]
        sample = self.rng.sample(old, min(len(old), OLD_TRANSFERS_SAMPLED))
        pending_ids = {
            created[i][1].pending_id
            for i in ids
            if i in created and created[i][1].flags & (POST | VOID)
        }
        stored = lookup(ledger, [*ids, *sample, *pending_ids])
        for tid in ids:
            if tid not in created:
                absent = tid not in stored
                assert absent, f"transfer {tid} exists, but no batch created it"
                continue
            timestamp, submitted = created[tid]
            present = tid in stored
            assert present, f"transfer {tid} was created at {timestamp} and is lost"
            got = stored[tid]
            pending = stored.get(submitted.pending_id) if submitted.flags & (POST | VOID) else None
            expected = expected_transfer(submitted, timestamp, pending)
            actual = {**transfer_fields(got), "timestamp": got.timestamp}
            if expected["amount"] is None:
                assert got.amount <= submitted.amount, f"balancing amount grew: {got}"
                expected["amount"] = got.amount
            assert actual == expected, f"transfer {tid}: stored {got}, submitted {submitted}"
        for tid in sample:
            present = tid in stored
            assert present, f"old transfer {tid} is lost"
            assert stored[tid].timestamp == created[tid][0], f"old transfer {tid} changed"

    def compare_with_replay(self, ledger: Ledger, batches: list[list[Transfer]]) -> None:
        """Same balances and same transfers (but for timestamps) as the fresh ledger."""
        mine = [account_fields(a) for a in ledger.lookup_accounts(child.ACCOUNT_IDS)]
        theirs = [account_fields(a) for a in self.replay.lookup_accounts(child.ACCOUNT_IDS)]
        assert len(mine) == len(child.ACCOUNT_IDS)
        for a, b in zip(mine, theirs, strict=True):
            assert a == b, f"account {a} differs from the replay's {b}"
        ids = list(dict.fromkeys(t.id for batch in batches for t in batch))
        got = {i: transfer_fields(t) for i, t in lookup(ledger, ids).items()}
        want = {i: transfer_fields(t) for i, t in lookup(self.replay, ids).items()}
        assert got == want, "transfers differ from the replay's"


@pytest.mark.slow
def test_sigkill_loses_nothing_answered(
    backend: Backend, tmp_path: Path, warm_kernels: None
) -> None:
    seed = int(os.environ.get("PUHUI_CRASH_SEED") or random.randrange(1, 1 << 31))
    started = time.monotonic()
    test = CrashTest(backend, tmp_path, seed)
    current: Child | None = Child(backend, seed, 0, tmp_path)
    try:
        for cycle in range(CYCLES):
            assert current is not None
            try:
                current = test.cycle(current, last=cycle == CYCLES - 1)
            except (AssertionError, pytest.fail.Exception) as error:
                current = None  # killed by cycle()
                raise AssertionError(
                    f"[seed {seed} (PUHUI_CRASH_SEED), kill cycle {cycle}] {error}"
                ) from error
        report = verify(test.replay)
        assert report.ok, report.problems
    finally:
        if current is not None:
            current.kill()
        test.close()
    print(
        f"\ncrash test ({backend.name}): seed {seed}, {test.cycles} kills, "
        f"{test.batches} answered batches, {len(test.model.created)} transfers, in flight at "
        f"the kill: {test.in_flight_applied} applied, {test.in_flight_absent} absent, "
        f"{time.monotonic() - started:.1f} s; statuses: "
        + ", ".join(f"{CreateTransferStatus(s).name} {n}" for s, n in test.statuses.most_common())
    )
