"""More conformance with TigerBeetle 0.17: rules read off ``src/state_machine.zig`` that the
port of the Zig reference model (``test_conformance.py``) does not pin down.

Same harnesses and conventions as ``test_conformance.py`` (every harness starts at
``now == 100``; a batch of ``n`` events takes the slots ``now + 1 .. now + n``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from puhui.ledger import ACCOUNT_DTYPE
from tests.ledger.engine_harness import EngineHarness
from tests.ledger.harness import LedgerHarness
from tests.ledger.test_conformance import (
    AF,
    NS,
    POST,
    START,
    TF,
    A,
    M,
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


# --- posts and voids take their accounts from the pending transfer ----------------------------


def test_resolution_skips_the_account_id_checks(harness: LedgerHarness) -> None:
    """state_machine.zig, create_transfer: a post or void returns
    ``post_or_void_pending_transfer(t)`` before ``debit_account_id_must_not_be_zero`` ..
    ``accounts_must_be_different`` are checked, and that function compares a non-zero account
    id with the pending transfer's only (``pending_transfer_has_different_*``). So an account
    id of ``2**128 - 1``, or the same id on both sides, is a mismatch, not an invalid id."""
    with_accounts(harness)
    submit(harness, transfer(1, flags=TF.PENDING))
    for flags in (POST, TF.VOID_PENDING_TRANSFER):
        post = flags == POST
        for fields, status in (
            ({"debit_account_id": M}, T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID),
            ({"credit_account_id": M}, T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID),
            (
                {"debit_account_id": 1, "credit_account_id": 1},
                T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID,
            ),
            (
                {"debit_account_id": 2, "credit_account_id": 2},
                T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
            ),
        ):
            reject_transfer(harness, resolution(2, post=post, **fields), status)
    # The pending transfer's own accounts, given explicitly, are accepted.
    submit(harness, resolution(2, post=True, debit_account_id=1, credit_account_id=2))
    assert balances(harness, 1) == (0, 10, 0, 0)


# --- scenarios of TigerBeetle's src/state_machine_tests.zig -----------------------------------
# Its ``setup`` rows write balances in place; here they come from transfers with account 9,
# which has no limit flags (only accounts 1..3 are asserted on).


def _fund(h: LedgerHarness, id_: int, *, debits_posted: int = 0, credits_posted: int = 0) -> None:
    """Give account ``id_`` posted debits and/or credits against account 9."""
    if debits_posted:
        submit(
            h, transfer(900 + id_, debit_account_id=id_, credit_account_id=9, amount=debits_posted)
        )
    if credits_posted:
        submit(
            h, transfer(950 + id_, debit_account_id=9, credit_account_id=id_, amount=credits_posted)
        )


def test_per_transfer_balance_invariant(harness: LedgerHarness) -> None:
    """state_machine_tests.zig, "create_transfers: per-transfer balance invariant" (its first
    table): a limit is checked per transfer inside a chain, so a chain that credits an account
    and then debits it with a pending balancing transfer fails on the limit of the account it
    credits; the failing event's id is burned (EXCEEDS_DEBITS is transient), the rolled-back
    ones are not."""
    with_accounts(
        harness,
        account(1),
        account(2),
        account(3, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
        account(9),
    )
    _fund(harness, 2, debits_posted=40)
    balancing = TF.LINKED | TF.PENDING | TF.BALANCING_DEBIT
    void = TF.VOID_PENDING_TRANSFER
    check_transfers(
        harness,
        [
            transfer(1, debit_account_id=1, credit_account_id=2, amount=41, flags=TF.LINKED),
            transfer(2, debit_account_id=2, credit_account_id=3, amount=1, flags=balancing),
            transfer(
                3, debit_account_id=2, credit_account_id=3, amount=0, pending_id=2, flags=void
            ),
        ],
        [T.LINKED_EVENT_FAILED, T.EXCEEDS_DEBITS, T.LINKED_EVENT_FAILED],
    )
    check_transfers(
        harness,
        [
            transfer(1, debit_account_id=1, credit_account_id=2, amount=0),
            transfer(2, debit_account_id=2, credit_account_id=3, amount=0),
            transfer(3, debit_account_id=2, credit_account_id=3, amount=0),
        ],
        [T.CREATED, T.ID_ALREADY_FAILED, T.CREATED],
    )
    check_transfers(
        harness,
        [
            transfer(4, debit_account_id=1, credit_account_id=2, amount=40, flags=TF.LINKED),
            transfer(5, debit_account_id=2, credit_account_id=3, amount=1, flags=balancing),
            transfer(
                6, debit_account_id=2, credit_account_id=3, amount=0, pending_id=5, flags=void
            ),
        ],
        [T.CREATED, T.CREATED, T.CREATED],
    )
    assert balances(harness, 1) == (0, 40, 0, 0)
    assert balances(harness, 2) == (0, 40, 0, 40)
    assert balances(harness, 3) == (0, 0, 0, 0)
    assert [t.amount for t in harness.lookup_transfers([5, 6])] == [0, 0]


def test_per_transfer_balance_invariant_on_the_debit_side(harness: LedgerHarness) -> None:
    """The same file's second table, mirrored: DEBITS_MUST_NOT_EXCEED_CREDITS and
    BALANCING_CREDIT give EXCEEDS_CREDITS."""
    with_accounts(
        harness,
        account(1),
        account(2),
        account(3, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(9),
    )
    _fund(harness, 1, credits_posted=40)
    balancing = TF.LINKED | TF.PENDING | TF.BALANCING_CREDIT
    void = TF.VOID_PENDING_TRANSFER
    check_transfers(
        harness,
        [
            transfer(1, debit_account_id=1, credit_account_id=2, amount=41, flags=TF.LINKED),
            transfer(2, debit_account_id=3, credit_account_id=1, amount=1, flags=balancing),
            transfer(
                3, debit_account_id=3, credit_account_id=1, amount=0, pending_id=2, flags=void
            ),
        ],
        [T.LINKED_EVENT_FAILED, T.EXCEEDS_CREDITS, T.LINKED_EVENT_FAILED],
    )
    check_transfers(
        harness,
        [
            transfer(1, debit_account_id=1, credit_account_id=2, amount=0),
            transfer(2, debit_account_id=3, credit_account_id=1, amount=0),
            transfer(3, debit_account_id=3, credit_account_id=1, amount=0),
        ],
        [T.CREATED, T.ID_ALREADY_FAILED, T.CREATED],
    )
    check_transfers(
        harness,
        [
            transfer(4, debit_account_id=1, credit_account_id=2, amount=40, flags=TF.LINKED),
            transfer(5, debit_account_id=3, credit_account_id=1, amount=1, flags=balancing),
            transfer(
                6, debit_account_id=3, credit_account_id=1, amount=0, pending_id=5, flags=void
            ),
        ],
        [T.CREATED, T.CREATED, T.CREATED],
    )
    assert balances(harness, 1) == (0, 40, 0, 40)
    assert balances(harness, 2) == (0, 0, 0, 40)
    assert balances(harness, 3) == (0, 0, 0, 0)


@pytest.mark.parametrize(("third_funds", "last"), [(21, T.CREATED), (19, T.EXCEEDS_CREDITS)])
def test_multiple_debits_single_credit(harness: LedgerHarness, third_funds: int, last: T) -> None:
    """state_machine_tests.zig, "create_transfers: multiple debits, single credit, balancing
    debits" (docs/coding/recipes/multi-debit-credit-transfers.md): a control account (4) and
    a limit account (5) collect 100 from three sources with balancing debits in one chain.
    With 40 + 40 + 21 available the chain is created (the third source gives 20); with
    40 + 40 + 19 the last event's EXCEEDS_CREDITS rolls every other back."""
    limit = AF.DEBITS_MUST_NOT_EXCEED_CREDITS
    with_accounts(
        harness,
        account(1, flags=limit),
        account(2, flags=limit),
        account(3, flags=limit),
        account(4),
        account(5, flags=limit),
        account(6),
        account(9),
    )
    _fund(harness, 1, credits_posted=40)
    _fund(harness, 2, credits_posted=40)
    _fund(harness, 3, credits_posted=third_funds)
    both = TF.LINKED | TF.BALANCING_DEBIT | TF.BALANCING_CREDIT
    events = [
        transfer(1, debit_account_id=4, credit_account_id=5, amount=100, flags=TF.LINKED),
        transfer(2, debit_account_id=1, credit_account_id=4, amount=100, flags=both),
        transfer(3, debit_account_id=2, credit_account_id=4, amount=100, flags=both),
        transfer(4, debit_account_id=3, credit_account_id=4, amount=100, flags=both),
        transfer(5, debit_account_id=4, credit_account_id=6, amount=100, flags=TF.LINKED),
        transfer(6, debit_account_id=5, credit_account_id=4, amount=M, flags=TF.BALANCING_CREDIT),
    ]
    if last is T.CREATED:
        check_transfers(harness, events, [T.CREATED] * 6)
        assert balances(harness, 1) == (0, 40, 0, 40)
        assert balances(harness, 2) == (0, 40, 0, 40)
        assert balances(harness, 3) == (0, 20, 0, 21)
        assert balances(harness, 4) == (0, 200, 0, 200)
        assert balances(harness, 5) == (0, 100, 0, 100)
        assert balances(harness, 6) == (0, 0, 0, 100)
        return
    check_transfers(harness, events, [T.LINKED_EVENT_FAILED] * 5 + [last])
    assert balances(harness, 4) == (0, 0, 0, 0)
    assert harness.lookup_transfers([1, 2, 3, 4, 5, 6]) == []
    reject_transfer(harness, events[5], T.ID_ALREADY_FAILED)


# --- the account's reserved field: only the columnar API can set it ---------------------------


def test_account_reserved_field_precedence_on_the_columnar_api(tmp_path: Path) -> None:
    """state_machine.zig: ``execute_create`` checks the timestamp first, then
    ``create_account`` returns ``.reserved_field`` before ``.reserved_flag`` and the id checks
    (state_machine_tests.zig, "create_accounts": ``timestamp_must_be_zero``,
    ``reserved_field``, ``reserved_flag``, ``id_must_not_be_zero`` in that order). The object
    API has no ``reserved`` field; ``ACCOUNT_DTYPE`` has TigerBeetle's, and a non-zero one is
    refused and creates nothing."""
    engine = EngineHarness(tmp_path, now=START)
    try:
        events = np.zeros(5, ACCOUNT_DTYPE)
        events["ledger"] = 1
        events["code"] = 1
        events["id_lo"] = [0, 0, 0, 4, 5]
        events["reserved"] = [1, 1, 1, 1, 0]
        events["timestamp"] = [1, 0, 0, 0, 0]
        events["flags"] = [1 << 6, 1 << 6, 0, 0, 0]
        results = engine.ledger.create_accounts_array(events)
        assert results["status"].tolist() == [
            A.TIMESTAMP_MUST_BE_ZERO,
            A.RESERVED_FIELD,
            A.RESERVED_FIELD,
            A.RESERVED_FIELD,
            A.CREATED,
        ]
        assert results["timestamp"].tolist() == [START + 1 + i for i in range(5)]
        assert [a.id for a in engine.lookup_accounts([4, 5])] == [5]
    finally:
        engine.close()
