"""More conformance with TigerBeetle 0.17: rules read off ``src/state_machine.zig`` that the
port of the Zig reference model (``test_conformance.py``) does not pin down.

Same harnesses and conventions as ``test_conformance.py`` (every harness starts at
``now == 100``; a batch of ``n`` events takes the slots ``now + 1 .. now + n``).
"""

from __future__ import annotations

import dataclasses

from tests.ledger.harness import LedgerHarness
from tests.ledger.test_conformance import (
    AF,
    NS,
    POST,
    TF,
    A,
    T,
    account,
    balances,
    check_accounts,
    check_transfers,
    reject_transfer,
    resolution,
    submit,
    transfer,
    with_accounts,
)

TIMESTAMP_VALID_MAX = (1 << 63) - 1
"""TigerBeetle's ``TimestampRange.timestamp_max``: a u64 timestamp's top bit is the LSM
tombstone flag."""
TIMEOUT_MAX = (1 << 32) - 1


# --- imported posts and voids: the expiry is judged at the event's own timestamp --------------


def _pending_due_soon(h: LedgerHarness) -> int:
    """Accounts 1 and 2, and pending transfer 1 (timeout 1 s) at 103; the clock moved to two
    nanoseconds before its deadline (no expiry ran). Returns the deadline."""
    with_accounts(h)
    pending = submit(h, transfer(1, flags=TF.PENDING, timeout=1))
    deadline = pending.timestamp + NS
    h.set_now(deadline - 2)
    assert h.pulse() == 0
    return deadline


def test_imported_post_at_the_deadline_is_expired(harness: LedgerHarness) -> None:
    """state_machine.zig, post_or_void_pending_transfer: ``if (expires_at <= t.timestamp)
    return .pending_transfer_expired``, where ``t.timestamp`` of an imported event is the
    caller's (execute_create overwrites it only for non-imported events). An imported post
    timed at the deadline is expired although its slot is before the deadline."""
    deadline = _pending_due_soon(harness)
    imported = TF.IMPORTED
    post = resolution(2, post=True, flags=POST | imported, timestamp=deadline)
    # Three events: the import cutoff (now + 3 - 1) admits the deadline itself.
    events = [
        post,
        transfer(3, flags=imported, timestamp=deadline - 9),
        transfer(4, flags=imported, timestamp=deadline - 8),
    ]
    check_transfers(harness, events, [T.PENDING_TRANSFER_EXPIRED, T.CREATED, T.CREATED])
    # The slots went past the deadline: let the expiry run on both harnesses.
    harness.pulse()
    assert balances(harness, 1) == (0, 20, 0, 0)
    # Not burned (ledger-semantics): a resend is judged again.
    reject_transfer(
        harness,
        dataclasses.replace(post, timestamp=deadline + 1),
        T.PENDING_TRANSFER_EXPIRED,
    )


def test_imported_post_before_the_deadline_is_not_expired(harness: LedgerHarness) -> None:
    """state_machine.zig, post_or_void_pending_transfer (as above): an imported post timed
    before the deadline posts the pending transfer even when its slot is at the deadline."""
    deadline = _pending_due_soon(harness)
    imported = TF.IMPORTED
    events = [
        transfer(3, flags=imported, timestamp=deadline - 9),  # slot deadline - 1
        resolution(2, post=True, flags=POST | imported, timestamp=deadline - 8),  # slot deadline
        transfer(4, flags=imported, timestamp=deadline - 7),
    ]
    check_transfers(harness, events, [T.CREATED, T.CREATED, T.CREATED])
    assert balances(harness, 1) == (0, 30, 0, 0)
    [stored] = harness.lookup_transfers([2])
    assert (stored.amount, stored.timestamp, stored.timeout) == (10, deadline - 8, 0)
    assert harness.pulse() == 0  # posted: nothing left to expire
    harness.set_now(deadline + 10)
    assert harness.pulse() == 0
    assert balances(harness, 1) == (0, 30, 0, 0)


def test_imported_void_after_the_deadline_is_expired(harness: LedgerHarness) -> None:
    """As above, for a void: the check does not depend on post or void."""
    deadline = _pending_due_soon(harness)
    void = resolution(2, post=False, flags=TF.VOID_PENDING_TRANSFER | TF.IMPORTED)
    events = [
        dataclasses.replace(void, timestamp=deadline),  # slot deadline - 1
        transfer(3, flags=TF.IMPORTED, timestamp=deadline - 9),
        transfer(4, flags=TF.IMPORTED, timestamp=deadline - 8),
    ]
    check_transfers(harness, events, [T.PENDING_TRANSFER_EXPIRED, T.CREATED, T.CREATED])


# --- OVERFLOWS_TIMEOUT: the deadline must fit in 63 bits ----------------------------------------


def test_overflows_timeout_at_the_u63_boundary(harness: LedgerHarness) -> None:
    """state_machine.zig, create_transfer: ``if (sum_overflows(u63, t.timestamp,
    t.timeout * ns_per_s)) return .overflows_timeout`` ("u63 because the most significant bit
    of the u64 timestamp is used as the tombstone flag"): a deadline above 2**63 - 1
    overflows, even though it fits in a u64."""
    with_accounts(harness)
    harness.set_now(TIMESTAMP_VALID_MAX - NS - 1)
    pending = transfer(1, flags=TF.PENDING, timeout=1)
    # Slot 2**63 - 1 - NS: the deadline is 2**63 - 1, the last that fits.
    assert submit(harness, pending).timestamp == TIMESTAMP_VALID_MAX - NS
    # One nanosecond later the deadline would be 2**63.
    reject_transfer(harness, dataclasses.replace(pending, id=2), T.OVERFLOWS_TIMEOUT)
    # Without a timeout nothing can overflow.
    submit(harness, transfer(3, flags=TF.PENDING))
    submit(harness, transfer(4))


def test_overflows_timeout_with_the_largest_timeout(harness: LedgerHarness) -> None:
    """As above, with a timestamp well inside the u63 range: ``timeout = 2**32 - 1`` seconds
    from a timestamp above 2**63 - 1 - (2**32 - 1) s overflows; the same from below fits."""
    with_accounts(harness)
    fits = TIMESTAMP_VALID_MAX - TIMEOUT_MAX * NS
    harness.set_now(fits - 1)
    pending = transfer(1, flags=TF.PENDING, timeout=TIMEOUT_MAX)
    assert submit(harness, pending).timestamp == fits
    reject_transfer(harness, dataclasses.replace(pending, id=2), T.OVERFLOWS_TIMEOUT)
    # A smaller timeout from the same time still fits.
    submit(harness, dataclasses.replace(pending, id=3, timeout=TIMEOUT_MAX - 1))
    # The overflow check comes after the balance overflow checks and before the limits.
    check_accounts(
        harness,
        [account(5, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS)],
        [A.CREATED],
    )
    reject_transfer(
        harness,
        transfer(4, debit_account_id=5, flags=TF.PENDING, timeout=TIMEOUT_MAX),
        T.OVERFLOWS_TIMEOUT,
    )
