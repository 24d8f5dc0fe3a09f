"""``SharedRateLimiter``: the API keys' token buckets in a table every worker process maps
from one file. The same answers as ``RateLimiter``; two processes together never get more
than one key's burst and rate; a full table shares a slot instead of failing; a file that is
not a table is refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import puhui
from puhui.api import ApiOptions, RateLimitedError, SharedRateLimiter, _shared_limits
from puhui.api._guards import RateLimiter
from puhui.clock import ManualClock

from . import limits_child

CHILD = Path(limits_child.__file__).resolve()
ENV = {**os.environ, "PYTHONPATH": str(Path(puhui.__file__).resolve().parents[1])}
CHILD_TIMEOUT_S = 120.0
"""How long a child may take at most (a loaded CI machine); a bound, not a measurement."""
START_NS = 10**18


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return tmp_path / "rate-limits"


def _shared(
    table: Path, clock: ManualClock, rate: float, burst: int, slots: int = 64
) -> SharedRateLimiter:
    """A fresh table at ``table``, opened (closed when it is collected)."""
    SharedRateLimiter.create(table, rate, burst, slots=slots)
    return SharedRateLimiter.open(table, clock)


def _outcome(limiter: RateLimiter | SharedRateLimiter, key: str) -> int:
    """0 if the take was granted, else its ``retry_after_s``."""
    try:
        limiter.take(key)
    except RateLimitedError as error:
        retry_after_s = error.details["retry_after_s"]
        assert isinstance(retry_after_s, int) and retry_after_s >= 1
        return retry_after_s
    return 0


@pytest.mark.parametrize("kind", ["per_process", "shared"])
def test_a_bucket_grants_its_burst_then_its_rate(kind: str, table: Path) -> None:
    clock = ManualClock(START_NS)
    shared = _shared(table, clock, rate=2.0, burst=3)
    limiter = shared if kind == "shared" else RateLimiter(clock, 2.0, 3)
    assert [_outcome(limiter, "a") for _ in range(4)] == [0, 0, 0, 1]
    assert _outcome(limiter, "b") == 0  # another key has its own bucket
    clock.advance(500_000_000)  # one token back at 2/s
    assert [_outcome(limiter, "a") for _ in range(2)] == [0, 1]
    clock.advance(10 * 10**9)  # back to the brim, not beyond
    assert [_outcome(limiter, "a") for _ in range(4)] == [0, 0, 0, 1]


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 1000.0]),
    burst=st.integers(1, 5),
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 3 * 10**9)),
        max_size=60,
    ),
)
def test_the_same_answers_as_the_per_process_limiter(
    tmp_path_factory: pytest.TempPathFactory,
    rate: float,
    burst: int,
    steps: list[tuple[str, int]],
) -> None:
    """Any sequence of takes and waits: granted or refused alike, with the same
    ``retry_after_s`` (four keys: the table always has room for them)."""
    clock = ManualClock(START_NS)
    table = tmp_path_factory.mktemp("shared") / "rate-limits"
    shared = _shared(table, clock, rate, burst)
    own = RateLimiter(clock, rate, burst)
    for key, wait_ns in steps:
        clock.advance(wait_ns)
        assert _outcome(shared, key) == _outcome(own, key)


def _run_workers(table: Path, mode: str, seconds: float) -> list[dict[str, int]]:
    workers = [
        subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(table), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.stderr
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outs = [worker.communicate(timeout=CHILD_TIMEOUT_S) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    for worker, (_, err) in zip(workers, outs, strict=True):
        assert worker.returncode == 0, err
    return [json.loads(out) for out, _ in outs]


@pytest.mark.parametrize("mode", ["shared", "per_process"])
def test_two_processes_never_get_more_than_one_keys_burst_and_rate(table: Path, mode: str) -> None:
    """Two workers take from one key's bucket as fast as they can: together they are granted
    at most ``burst + rate * elapsed``. A ``RateLimiter`` per process (the control) grants
    each that much — about twice the bound."""
    rate, burst, seconds = 100.0, 200, 0.5
    SharedRateLimiter.create(table, rate, burst)
    reports = _run_workers(table, mode, seconds)
    granted = sum(r["granted"] for r in reports)
    elapsed_s = (max(r["last_ns"] for r in reports) - min(r["first_ns"] for r in reports)) / 1e9
    bound = burst + rate * elapsed_s
    if mode == "shared":
        assert granted <= bound
        assert granted >= burst  # and they were granted the burst, at least
    else:
        assert granted > bound


def test_a_full_table_shares_a_slot_and_frees_it_when_a_bucket_refills(table: Path) -> None:
    """Eight slots, eight keys mid-use: a ninth key shares one bucket, always the same (its
    home slot's): the two together get one key's limit, the seven others keep theirs (a
    key sharing the fullest bucket each time drained all eight in turn: 72 requests at
    once against a burst of 10); once buckets have refilled to the brim, it gets its own."""
    clock = ManualClock(START_NS)
    limiter = _shared(table, clock, rate=1.0, burst=10, slots=8)
    keys = [f"k{n}" for n in range(8)]
    for key in keys:
        assert _outcome(limiter, key) == 0  # nine tokens left in each bucket

    def drain(key: str) -> int:
        granted = 0
        while _outcome(limiter, key) == 0:
            granted += 1
        return granted

    assert drain("newcomer") == 9  # one bucket's tokens, no more
    left = sorted(drain(key) for key in keys)
    assert left == [0] + [9] * 7  # the one it shared is spent; the others untouched
    clock.advance(20 * 10**9)  # every bucket refilled to the brim
    assert drain("newcomer") == 10  # a slot of its own
    # Nine keys, eight slots, all drained at once: eight full buckets, one key sharing.
    assert sorted(drain(key) for key in keys)[1:] == [10] * 7


def test_a_table_of_one_slot_still_answers(table: Path) -> None:
    clock = ManualClock(START_NS)
    limiter = _shared(table, clock, rate=1.0, burst=1, slots=1)
    assert _outcome(limiter, "a") == 0
    assert _outcome(limiter, "b") == 1  # sharing a's bucket
    clock.advance(10**9)
    assert _outcome(limiter, "b") == 0  # a's bucket was full again: b's now


def test_the_table_is_created_0600_and_replaces_an_older_one(table: Path) -> None:
    table.write_bytes(b"an older file")
    table.chmod(0o644)
    SharedRateLimiter.create(table, 5.0, 7, slots=100)
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    size = _shared_limits.HEADER_BYTES + 100 * _shared_limits.SLOT_BYTES
    assert table.stat().st_size == size
    assert [p.name for p in table.parent.iterdir()] == [table.name]  # no partial file left
    limiter = SharedRateLimiter.open(table, ManualClock(START_NS))
    assert (limiter.rate_per_s, limiter.burst, limiter.slots) == (5.0, 7, 100)
    limiter.close()


def _corrupt(table: Path, how: str) -> None:
    SharedRateLimiter.create(table, 5.0, 7, slots=100)
    data = bytearray(table.read_bytes())
    if how == "empty":
        data = bytearray()
    elif how == "short_header":
        data = data[:10]
    elif how == "cut_short":
        data = data[:-1]
    elif how == "grown":
        data += b"\0" * 24
    elif how == "magic":
        data[:8] = b"NOTATABL"
    elif how == "version":
        data[8] = 99
    elif how == "slots":
        data[12:16] = (0).to_bytes(4, "little")
    elif how == "rate":
        data[16:24] = b"\xff" * 8  # a NaN
    table.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("empty", "shorter than the header"),
        ("short_header", "shorter than the header"),
        ("cut_short", "cut short or grown"),
        ("grown", "cut short or grown"),
        ("magic", "not a rate-limit table"),
        ("version", "layout 99"),
        ("slots", "0 slots"),
        ("rate", "positive rate and burst"),
    ],
)
def test_a_file_that_is_not_a_table_is_refused_clearly(table: Path, how: str, message: str) -> None:
    _corrupt(table, how)
    with pytest.raises(ValueError, match=message):
        SharedRateLimiter.open(table, ManualClock(START_NS))


@pytest.mark.parametrize(
    ("rate", "burst", "slots"), [(0.0, 1, 1), (float("nan"), 1, 1), (1.0, 0, 1), (1.0, 1, 0)]
)
def test_a_table_of_nonsense_limits_is_not_created(
    table: Path, rate: float, burst: int, slots: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        SharedRateLimiter.create(table, rate, burst, slots=slots)
    assert not table.exists()


def test_the_app_refuses_a_table_of_other_limits_than_its_options(table: Path) -> None:
    from puhui.api import create_app

    SharedRateLimiter.create(table, 5.0, 7)
    limiter = SharedRateLimiter.open(table, ManualClock(START_NS))
    options = ApiOptions(rate_per_key_per_s=5.0, rate_burst_requests=8)
    with pytest.raises(ValueError, match="are not the options'"):
        create_app(None, None, options=options, limiter=limiter)  # type: ignore[arg-type]
    limiter.close()
