"""More conformance with TigerBeetle 0.17: rules read off ``src/state_machine.zig`` that the
port of the Zig reference model (``test_conformance.py``) does not pin down.

Same harnesses and conventions as ``test_conformance.py`` (every harness starts at
``now == 100``; a batch of ``n`` events takes the slots ``now + 1 .. now + n``).
"""

from __future__ import annotations

import dataclasses

from tests.ledger.harness import LedgerHarness
from tests.ledger.test_conformance import (
    NS,
    POST,
    TF,
    T,
    balances,
    check_transfers,
    reject_transfer,
    resolution,
    submit,
    transfer,
    with_accounts,
)

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
