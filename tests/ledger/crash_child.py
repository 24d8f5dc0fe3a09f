"""The child process of the crash-recovery test (``tests/ledger/test_crash.py``).

Run as ``python tests/ledger/crash_child.py JOURNAL_URL STATE_DIR SEED START_BATCH``: opens the
ledger (snapshots every few hundred events), creates the accounts 1..20 if missing, then
submits transfer batches ``START_BATCH, START_BATCH + 1, ...`` until it is killed. Around
each ``create_transfers`` call it writes to stdout (flushed):

    SUBMIT <batch_no>
    DONE <batch_no> <json of [[status_int, timestamp], ...]>

Batches are a pure function of ``(seed, batch_no)``: every event, including the ones that
refer to earlier events (post/void of a pending transfer, duplicates of an earlier id), is
regenerated from ``(seed, batch_no, index)`` alone, so ``make_batch`` needs no ledger results
and the parent can rebuild any batch from its number (``known`` is empty: see ``Known``).

Accounts, in each of the two ledgers (ids ``base + k``, base 0 for ledger 1, 10 for ledger 2):
k = 1, 2 debits must not exceed credits (1 with history); k = 3, 4 credits must not exceed
debits (3 with history); k = 5 history; k = 6..10 no flags (10 is the target of closing
pending transfers, which reopen it when they are voided or expire).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import random
import sys
import time
from functools import lru_cache

import puhui.ledger
from puhui.ledger import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    LedgerLockedError,
    LedgerOptions,
    Transfer,
    TransferFlags,
)

SNAPSHOT_INTERVAL_EVENTS = 500
BATCH_SIZE_MAX = 200
WINDOW_BATCHES = 40
"""Post/void and duplicates refer to events of at most this many batches back."""
CLOSABLE = 10

_ACCOUNT_FLAGS = {
    1: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.HISTORY,
    2: AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    3: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS | AccountFlags.HISTORY,
    4: AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    5: AccountFlags.HISTORY,
}
ACCOUNT_IDS = list(range(1, 21))


def accounts() -> list[Account]:
    """The fixed accounts 1..20: 1..10 in ledger 1, 11..20 in ledger 2."""
    out: list[Account] = []
    for base, ledger in ((0, 1), (10, 2)):
        for k in range(1, 11):
            out.append(
                Account(
                    id=base + k,
                    user_data_64=base + k,
                    ledger=ledger,
                    code=100 + k,
                    flags=_ACCOUNT_FLAGS.get(k, AccountFlags.NONE),
                )
            )
    return out


def fresh_id(seed: int, batch_no: int, index: int) -> int:
    """The id of a new transfer: unique per (seed, batch, index), across both 64-bit words."""
    return ((seed & 0xFFFF_FFFF) << 96) | ((batch_no + 1) << 32) | (index + 1)


def missing_id(seed: int, batch_no: int, index: int) -> int:
    """An id no event of this seed ever creates (bit 95 set)."""
    return fresh_id(seed, batch_no, index) | (1 << 95)


# --- the plan of a batch: its size, the kind of each event, linked chains --------------------

_KINDS = (
    "single",
    "pending",
    "post",
    "void",
    "balancing",
    "exceed",
    "invalid",
    "closing",
    "huge",
    "dup",
    "dup_diff",
)
_WEIGHTS = (30, 16, 10, 5, 6, 4, 4, 1, 1, 7, 6)
_FIRST = tuple(k for k in _KINDS if not k.startswith("dup"))
_FIRST_WEIGHTS = tuple(w for k, w in zip(_KINDS, _WEIGHTS, strict=True) if not k.startswith("dup"))


def _rng(seed: int, batch_no: int, index: int) -> random.Random:
    """The random source of one event (index -1: of the batch's plan)."""
    return random.Random(((seed & 0xFFFF_FFFF) << 96) | (batch_no << 16) | (index + 1))


@lru_cache(maxsize=4096)
def _plan(seed: int, batch_no: int) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Kinds and linked flags of the events of one batch.

    Event 0 is never a duplicate, so its result timestamp always tells the batch's clock.
    """
    r = _rng(seed, batch_no, -1)
    x = r.random()
    if x < 0.25:
        n = r.randint(1, 8)
    elif x < 0.9:
        n = r.randint(1, BATCH_SIZE_MAX)
    else:
        n = BATCH_SIZE_MAX
    kinds = r.choices(_FIRST, _FIRST_WEIGHTS) + r.choices(_KINDS, _WEIGHTS, k=n - 1)
    linked = [False] * n
    i = 0
    while i < n:
        if r.random() < 0.07:
            length = r.randint(2, 6)
            for j in range(i, min(i + length - 1, n)):
                linked[j] = True  # a chain running past the end is left open
            i += length
        else:
            i += 1
    if r.random() < 0.02:
        linked[-1] = True
    return tuple(kinds), tuple(linked)


# --- the events -------------------------------------------------------------------------------


def _amount(r: random.Random) -> int:
    x = r.random()
    if x < 0.04:
        return 0
    if x < 0.75:
        return r.randint(1, 100)
    return r.randint(100, 10_000)


def _user_data(r: random.Random, t: Transfer) -> None:
    if r.random() < 0.5:
        t.user_data_128 = r.getrandbits(128)
        t.user_data_64 = r.getrandbits(64)
        t.user_data_32 = r.getrandbits(32)


def _pair(r: random.Random, base: int) -> tuple[int, int]:
    """Two different accounts of one ledger; rarely the closable one."""
    dr, cr = r.sample(range(1, 11 if r.random() < 0.1 else 10), 2)
    return base + dr, base + cr


@lru_cache(maxsize=4096)
def _indices(seed: int, batch_no: int, kinds: tuple[str, ...]) -> list[int]:
    """Indices of the events of one of ``kinds`` in a batch, ascending."""
    return [i for i, kind in enumerate(_plan(seed, batch_no)[0]) if kind in kinds]


def _target(
    seed: int, batch_no: int, index: int, r: random.Random, kinds: tuple[str, ...]
) -> tuple[int, int] | None:
    """An earlier event (batch, index) of one of ``kinds`` (any kind if empty), or None."""
    for _ in range(4):
        b = r.randint(max(0, batch_no - WINDOW_BATCHES), batch_no)
        if not kinds:
            limit = index if b == batch_no else len(_plan(seed, b)[0])
            if limit:
                return b, r.randrange(limit)
            continue
        choices = _indices(seed, b, kinds)
        limit = bisect.bisect_left(choices, index) if b == batch_no else len(choices)
        if limit:
            return b, choices[r.randrange(limit)]
    return None


@lru_cache(maxsize=1 << 16)
def _event_cached(seed: int, batch_no: int, index: int) -> Transfer:
    return _make_event(seed, batch_no, index)


def event(seed: int, batch_no: int, index: int) -> Transfer:
    """Event ``index`` of batch ``batch_no`` as submitted, except for the ``LINKED`` flag."""
    return _copy(_event_cached(seed, batch_no, index))


_TRANSFER_FIELDS = tuple(f.name for f in dataclasses.fields(Transfer))


def _copy(t: Transfer) -> Transfer:
    return Transfer(*(getattr(t, name) for name in _TRANSFER_FIELDS))


def _make_event(seed: int, batch_no: int, index: int) -> Transfer:
    kind = _plan(seed, batch_no)[0][index]
    r = _rng(seed, batch_no, index)
    tid = fresh_id(seed, batch_no, index)
    base = r.choice((0, 10))
    ledger = 1 if base == 0 else 2
    code = r.randint(1, 3)

    if kind in ("single", "pending"):
        dr, cr = _pair(r, base)
        t = Transfer(
            id=tid,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=_amount(r),
            ledger=ledger,
            code=code,
        )
        if kind == "pending":
            t.flags = TransferFlags.PENDING
            t.timeout = r.choice((0, 0, 1))
        _user_data(r, t)
        return t

    if kind == "closing":
        dr, cr = _pair(r, base)
        if r.random() < 0.5:
            flags = TransferFlags.PENDING | TransferFlags.CLOSING_DEBIT
            dr = base + CLOSABLE
            cr = base + r.randint(5, 9)
        else:
            flags = TransferFlags.PENDING | TransferFlags.CLOSING_CREDIT
            cr = base + CLOSABLE
            dr = base + r.randint(5, 9)
        return Transfer(
            id=tid,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=r.randint(0, 9),
            ledger=ledger,
            code=code,
            flags=flags,
            timeout=1,
        )

    if kind == "balancing":
        which = r.random()
        dr, cr = _pair(r, base)
        flags = TransferFlags.NONE
        if which < 0.6:
            flags |= TransferFlags.BALANCING_DEBIT
            dr = base + r.randint(1, 2)
        if which > 0.4:
            flags |= TransferFlags.BALANCING_CREDIT
            cr = base + r.randint(3, 4)
        if r.random() < 0.2:
            flags |= TransferFlags.PENDING
        amount = AMOUNT_MAX if r.random() < 0.3 else r.randint(1, 5000)
        t = Transfer(
            id=tid,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=amount,
            ledger=ledger,
            code=code,
            flags=flags,
        )
        _user_data(r, t)
        return t

    if kind in ("exceed", "huge"):
        dr, cr = _pair(r, base)
        amount = 10**15 + r.randint(0, 10**6) if kind == "exceed" else AMOUNT_MAX - r.randint(1, 9)
        if r.random() < 0.5:
            dr = base + r.randint(1, 2)
            cr = base + r.randint(5, 9)
        else:
            cr = base + r.randint(3, 4)
            dr = base + r.randint(5, 9)
        flags = TransferFlags.PENDING if r.random() < 0.3 else TransferFlags.NONE
        return Transfer(
            id=tid,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=amount,
            ledger=ledger,
            code=code,
            flags=flags,
        )

    if kind == "invalid":
        dr, cr = _pair(r, base)
        t = Transfer(
            id=tid,
            debit_account_id=dr,
            credit_account_id=cr,
            amount=_amount(r),
            ledger=ledger,
            code=code,
        )
        variant = r.randrange(11 if index > 0 else 10)
        if variant == 0:
            t.debit_account_id = 999  # not found: the id is burned
        elif variant == 1:
            t.credit_account_id = 1000 + r.randint(0, 5)
        elif variant == 2:
            t.credit_account_id = dr
        elif variant == 3:
            t.credit_account_id = (cr + 10) % 20 or 20  # the other ledger
        elif variant == 4:
            t.ledger = 3
        elif variant == 5:
            t.code = 0
        elif variant == 6:
            t.timeout = 1
        elif variant == 7:
            t.pending_id = tid + 1
        elif variant == 8:
            t.flags = TransferFlags.PENDING | TransferFlags.POST_PENDING_TRANSFER
        elif variant == 9:
            t.timestamp = 1
        else:
            t.flags = TransferFlags.IMPORTED  # in a batch that is not imported
        return t

    if kind in ("post", "void"):
        found = _target(
            seed, batch_no, index, r, ("pending",) if kind == "post" else ("pending", "closing")
        )
        if found is None:
            return Transfer(
                id=tid,
                pending_id=missing_id(seed, batch_no, index),
                amount=AMOUNT_MAX,
                flags=TransferFlags.POST_PENDING_TRANSFER,
            )
        p = _event_cached(seed, *found)
        t = Transfer(id=tid, pending_id=p.id)
        if kind == "post":
            t.flags = TransferFlags.POST_PENDING_TRANSFER
            t.amount = r.choice((AMOUNT_MAX, AMOUNT_MAX, p.amount, p.amount // 2, p.amount + 1))
        else:
            t.flags = TransferFlags.VOID_PENDING_TRANSFER
            t.amount = r.choice((0, 0, p.amount, p.amount + 1, max(0, p.amount - 1)))
        x = r.random()
        if x < 0.25:
            t.debit_account_id = p.debit_account_id
            t.credit_account_id = p.credit_account_id
            t.ledger = p.ledger
            t.code = p.code
        elif x < 0.3:
            t.debit_account_id = p.credit_account_id  # differs from the pending transfer's
        elif x < 0.33:
            t.code = p.code + 1
        if r.random() < 0.3:
            _user_data(r, t)
        return t

    # Duplicates: the same id as an earlier event (maybe never created, maybe not yet).
    found = _target(seed, batch_no, index, r, ())
    if found is None:
        return Transfer(
            id=tid,
            debit_account_id=base + 5,
            credit_account_id=base + 6,
            amount=1,
            ledger=ledger,
            code=code,
        )
    t = event(seed, *found)
    if kind == "dup":
        return t
    mutation = r.randrange(9)
    if mutation == 0:
        t.amount = t.amount + 1 if t.amount < AMOUNT_MAX else t.amount - 1
    elif mutation == 1:
        t.user_data_64 = (t.user_data_64 + 1) % (1 << 64)
    elif mutation == 2:
        t.user_data_32 = (t.user_data_32 + 1) % (1 << 32)
    elif mutation == 3:
        t.user_data_128 = (t.user_data_128 + 1) % (1 << 128)
    elif mutation == 4:
        t.code = t.code % 3 + 1
    elif mutation == 5 and t.flags & TransferFlags.PENDING:
        t.timeout += 1
    elif mutation == 6 and t.amount < 10**12:  # not an "exceed" or "huge" one, even via a dup
        t.debit_account_id, t.credit_account_id = t.credit_account_id, t.debit_account_id
    elif mutation == 7 and t.pending_id:
        t.pending_id = missing_id(seed, batch_no, index)
    elif mutation == 8 and not t.flags & (
        TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER
    ):
        t.flags ^= TransferFlags.PENDING
    else:
        t.ledger = 3 - t.ledger if t.ledger in (1, 2) else 1
    return t


class Known:
    """The state ``make_batch`` needs besides (seed, batch number): none.

    Events that refer to earlier ones (post/void, duplicates) regenerate them from their
    (seed, batch, index), so results never feed back into generation, and the parent rebuilds
    any batch from its number alone (the DONE lines only tell it which numbers to rebuild).
    Generated plans and events are memoized per process in bounded caches.
    """


def make_batch(seed: int, batch_no: int, known: Known | None = None) -> list[Transfer]:
    """The transfers of batch ``batch_no`` (1..200 events), a pure function of its arguments."""
    del known  # see Known
    linked = _plan(seed, batch_no)[1]
    batch = []
    for index, is_linked in enumerate(linked):
        t = event(seed, batch_no, index)
        if is_linked:
            t.flags |= TransferFlags.LINKED
        batch.append(t)
    return batch


# --- the child process ------------------------------------------------------------------------


WAIT_FOR_GO_ENV = "PUHUI_CRASH_CHILD_WAIT"
"""If set, the child reads one line from stdin before opening the ledger (the test starts
the next child while it still checks the ledger, and lets it go once the ledger is closed)."""


def main(argv: list[str]) -> None:
    url, state_dir, seed, batch_no = argv[1], argv[2], int(argv[3]), int(argv[4])
    if os.environ.get(WAIT_FOR_GO_ENV) and not sys.stdin.readline():
        return  # the parent went away
    options = LedgerOptions(snapshot_interval_events=SNAPSHOT_INTERVAL_EVENTS)
    deadline = time.monotonic() + 30
    while True:
        try:
            ledger = puhui.ledger.open(url, state_dir=state_dir, options=options)
            break
        except LedgerLockedError:
            # The parent's session on a PostgreSQL journal may take a moment to end.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    present = {a.id for a in ledger.lookup_accounts(ACCOUNT_IDS)}
    missing = [a for a in accounts() if a.id not in present]
    if missing:
        ledger.create_accounts(missing)
    known = Known()
    out = sys.stdout
    while True:
        batch = make_batch(seed, batch_no, known)
        out.write(f"SUBMIT {batch_no}\n")
        out.flush()
        results = ledger.create_transfers(batch)
        out.write(
            f"DONE {batch_no} {json.dumps([[int(r.status), r.timestamp] for r in results])}\n"
        )
        out.flush()
        batch_no += 1


if __name__ == "__main__":
    main(sys.argv)
