"""Idempotency records: replay, reuse with another request, in flight, crash take-over,
expiry."""

from __future__ import annotations

import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.platform import (
    Claim,
    IdempotencyOptions,
    IdempotencyRecords,
    StoredResponse,
    Tenants,
)

S = 1_000_000_000


def _records(engine: sa.Engine, clock: ManualClock) -> tuple[IdempotencyRecords, int, int]:
    tenants = Tenants(engine, clock=clock)
    a = tenants.create("Bank A", "bank").id
    b = tenants.create("Bank B", "bank").id
    options = IdempotencyOptions(window_s=3600, lock_timeout_s=30)
    return IdempotencyRecords(engine, clock=clock, options=options), a, b


def test_replay_reuse_and_in_flight(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, b = _records(engine, clock)
    assert records.begin(a, "k", "fp1").claim is Claim.STARTED
    assert records.begin(a, "k", "fp1").claim is Claim.IN_PROGRESS
    assert records.begin(a, "k", "fp2").claim is Claim.REUSED
    assert records.begin(b, "k", "fp2").claim is Claim.STARTED  # keys are per tenant
    stored = StoredResponse(201, "application/json", b'{"ok":true}')
    records.finish(a, "k", "fp1", stored)
    again = records.begin(a, "k", "fp1")
    assert again.claim is Claim.REPLAY and again.response == stored
    assert records.begin(a, "k", "fp2").claim is Claim.REUSED


def test_a_crashed_request_does_not_wedge_its_key(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, _ = _records(engine, clock)
    assert records.begin(a, "k", "fp").claim is Claim.STARTED
    clock.advance(29 * S)
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS
    clock.advance(2 * S)  # past the 30 s lock timeout: the first request is taken for dead
    assert records.begin(a, "k", "fp").claim is Claim.STARTED
    assert records.begin(a, "k", "fp").claim is Claim.IN_PROGRESS


def test_release_and_expiry(engine: sa.Engine, clock: ManualClock) -> None:
    records, a, _ = _records(engine, clock)
    assert records.begin(a, "k", "fp").claim is Claim.STARTED
    records.release(a, "k", "fp")
    assert records.begin(a, "k", "other").claim is Claim.STARTED  # the key is free again
    records.finish(a, "k", "other", StoredResponse(200, "application/json", b"{}"))
    clock.advance(3599 * S)
    assert records.begin(a, "k", "fp").claim is Claim.REUSED
    clock.advance(1 * S)  # the window (1 h) is over: the key is new
    assert records.purge_expired() == 1
    assert records.begin(a, "k", "fp").claim is Claim.STARTED


def test_a_group_of_claims_and_finishes_is_one_transaction_each(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """begin_many / finish_many (the API's group commit) answer as one-by-one calls would."""
    records, a, b = _records(engine, clock)
    records.begin(a, "old", "fp")
    claims = records.begin_many(
        [(a, "k1", "fp"), (a, "k1", "fp"), (b, "k1", "fp"), (a, "old", "other"), (a, "k2", "x")]
    )
    assert [c.claim for c in claims] == [
        Claim.STARTED,
        Claim.IN_PROGRESS,  # the same key twice in one group: the second waits its turn
        Claim.STARTED,
        Claim.REUSED,
        Claim.STARTED,
    ]
    one = StoredResponse(201, "application/json", b"1")
    two = StoredResponse(200, "application/json", b"2")
    records.finish_many([(a, "k1", "fp", one), (a, "k2", "x", two), (b, "k1", "wrong", two)])
    assert records.begin(a, "k1", "fp").response == one
    assert records.begin(a, "k2", "x").response == two
    assert records.begin(b, "k1", "fp").claim is Claim.IN_PROGRESS  # not finished: wrong fp
