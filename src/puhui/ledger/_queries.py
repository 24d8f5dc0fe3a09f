"""Compiled scans that answer lookups and queries over the ledger state.

Queries read committed rows only: ``transfers[:count]`` never changes once written (rows are
appended in timestamp order and chain rollback only ever removes rows that no reader saw).
"""

from __future__ import annotations

import numpy as np

from ._jit import jit
from ._kernel import (
    AF_HISTORY,
    STATE_EXPIRED,
    STATE_NONE,
    STATE_PENDING,
    STATE_POSTED,
    STATE_VOIDED,
    TF_PENDING,
    TF_VOID,
    U64,
    ZERO,
    _add,
    index_find,
)


@jit()
def find_rows(
    slots: np.ndarray, store: np.ndarray, ids_lo: np.ndarray, ids_hi: np.ndarray
) -> np.ndarray:
    """Rows of the given ids (-1 where missing)."""
    out = np.empty(ids_lo.shape[0], dtype=np.int64)
    for i in range(ids_lo.shape[0]):
        out[i] = index_find(slots, store, ids_lo[i], ids_hi[i])
    return out


@jit()
def scan_transfers(
    transfers: np.ndarray,
    count: int,
    account_lo: int,
    account_hi: int,
    by_account: bool,
    debits: bool,
    credits: bool,
    user_data_128_lo: int,
    user_data_128_hi: int,
    user_data_64: int,
    user_data_32: int,
    ledger: int,
    code: int,
    timestamp_min: int,
    timestamp_max: int,
    limit: int,
    reversed_: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of transfers matching a filter, in timestamp order, at most ``limit``.

    Returns (rows, sides) where side is 0 when the account is the debit side, 1 for credit.
    Zero-valued filter fields are wildcards; timestamp bounds are inclusive (0 = unbounded).
    """
    rows = np.empty(limit, dtype=np.int64)
    sides = np.empty(limit, dtype=np.int8)
    found = 0
    # Rows are in timestamp order: binary-search the timestamp bounds first.
    lo = 0
    hi = count
    if timestamp_min != ZERO:
        a = 0
        b = count
        while a < b:
            mid = (a + b) // 2
            if transfers[mid].timestamp < timestamp_min:
                a = mid + 1
            else:
                b = mid
        lo = a
    if timestamp_max != ZERO:
        a = lo
        b = count
        while a < b:
            mid = (a + b) // 2
            if transfers[mid].timestamp <= timestamp_max:
                a = mid + 1
            else:
                b = mid
        hi = a
    n = hi - lo
    for k in range(n):
        if found == limit:
            break
        row = hi - 1 - k if reversed_ else lo + k
        t = transfers[row]
        side = 0
        if by_account:
            is_debit = (
                debits
                and t.debit_account_id_lo == account_lo
                and t.debit_account_id_hi == account_hi
            )
            is_credit = (
                credits
                and t.credit_account_id_lo == account_lo
                and t.credit_account_id_hi == account_hi
            )
            if not is_debit and not is_credit:
                continue
            side = 0 if is_debit else 1
        if (user_data_128_lo != ZERO or user_data_128_hi != ZERO) and (
            t.user_data_128_lo != user_data_128_lo or t.user_data_128_hi != user_data_128_hi
        ):
            continue
        if user_data_64 != ZERO and t.user_data_64 != user_data_64:
            continue
        if user_data_32 != 0 and t.user_data_32 != user_data_32:
            continue
        if ledger != 0 and t.ledger != ledger:
            continue
        if code != 0 and t.code != code:
            continue
        rows[found] = row
        sides[found] = side
        found += 1
    return rows[:found], sides[:found]


@jit()
def scan_accounts(
    accounts: np.ndarray,
    count: int,
    user_data_128_lo: int,
    user_data_128_hi: int,
    user_data_64: int,
    user_data_32: int,
    ledger: int,
    code: int,
    timestamp_min: int,
    timestamp_max: int,
    limit: int,
    reversed_: bool,
) -> np.ndarray:
    """Rows of accounts matching a query filter, in timestamp order, at most ``limit``."""
    rows = np.empty(limit, dtype=np.int64)
    found = 0
    for k in range(count):
        if found == limit:
            break
        row = count - 1 - k if reversed_ else k
        a = accounts[row]
        if timestamp_min != ZERO and a.timestamp < timestamp_min:
            continue
        if timestamp_max != ZERO and a.timestamp > timestamp_max:
            continue
        if (user_data_128_lo != ZERO or user_data_128_hi != ZERO) and (
            a.user_data_128_lo != user_data_128_lo or a.user_data_128_hi != user_data_128_hi
        ):
            continue
        if user_data_64 != ZERO and a.user_data_64 != user_data_64:
            continue
        if user_data_32 != 0 and a.user_data_32 != user_data_32:
            continue
        if ledger != 0 and a.ledger != ledger:
            continue
        if code != 0 and a.code != code:
            continue
        rows[found] = row
        found += 1
    return rows[:found]


@jit()
def account_has_history(accounts: np.ndarray, row: int) -> bool:
    return (np.int64(accounts[row].flags) & AF_HISTORY) != 0


@jit()
def recompute_balances(
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    n_accounts: int,
    transfers: np.ndarray,
    xfer_state: np.ndarray,
    n_transfers: int,
    out: np.ndarray,
) -> int:
    """Recompute every account's four balances from the stored transfers into ``out``.

    Independent of the kernel's bookkeeping: a single-phase transfer adds to posted; a pending
    transfer adds to pending while it is still pending; a posting transfer adds its amount to
    posted; voids and expiries add nothing. Returns -1, or the first transfer row that refers
    to an unknown account or overflows.
    """
    for i in range(n_accounts):
        out[i].debits_pending_lo = ZERO
        out[i].debits_pending_hi = ZERO
        out[i].debits_posted_lo = ZERO
        out[i].debits_posted_hi = ZERO
        out[i].credits_pending_lo = ZERO
        out[i].credits_pending_hi = ZERO
        out[i].credits_posted_lo = ZERO
        out[i].credits_posted_hi = ZERO
    for row in range(n_transfers):
        t = transfers[row]
        flags = np.int64(t.flags)
        state = xfer_state[row]
        dr = index_find(acct_slots, accounts, t.debit_account_id_lo, t.debit_account_id_hi)
        cr = index_find(acct_slots, accounts, t.credit_account_id_lo, t.credit_account_id_hi)
        if dr < 0 or cr < 0:
            return row
        if (flags & TF_PENDING) != 0:
            if state == STATE_PENDING:
                out[dr].debits_pending_hi, out[dr].debits_pending_lo = _add(
                    out[dr].debits_pending_hi, out[dr].debits_pending_lo, t.amount_hi, t.amount_lo
                )
                out[cr].credits_pending_hi, out[cr].credits_pending_lo = _add(
                    out[cr].credits_pending_hi, out[cr].credits_pending_lo, t.amount_hi, t.amount_lo
                )
            elif state != STATE_POSTED and state != STATE_VOIDED and state != STATE_EXPIRED:
                return row
        elif (flags & TF_VOID) != 0:
            if state != STATE_NONE:
                return row
        else:
            if state != STATE_NONE:
                return row
            # Single-phase and posting transfers move their amount to posted.
            out[dr].debits_posted_hi, out[dr].debits_posted_lo = _add(
                out[dr].debits_posted_hi, out[dr].debits_posted_lo, t.amount_hi, t.amount_lo
            )
            out[cr].credits_posted_hi, out[cr].credits_posted_lo = _add(
                out[cr].credits_posted_hi, out[cr].credits_posted_lo, t.amount_hi, t.amount_lo
            )
    return -1


@jit()
def sum_by_ledger(
    accounts: np.ndarray, n_accounts: int, ledgers: np.ndarray, sums: np.ndarray
) -> None:
    """Add each account's balances into ``sums[k]`` where ``ledgers[k]`` is its ledger.

    ``sums`` is uint64[len(ledgers), 4 balances, 5 limbs of 32 bits] so nothing overflows for
    up to 2**32 accounts; the caller combines limbs into Python integers.
    """
    mask32 = U64(0xFFFFFFFF)
    for i in range(n_accounts):
        a = accounts[i]
        k = np.searchsorted(ledgers, a.ledger)
        words = (
            (a.debits_pending_lo, a.debits_pending_hi),
            (a.debits_posted_lo, a.debits_posted_hi),
            (a.credits_pending_lo, a.credits_pending_hi),
            (a.credits_posted_lo, a.credits_posted_hi),
        )
        for b in range(4):
            lo, hi = words[b]
            sums[k, b, 0] += lo & mask32
            sums[k, b, 1] += lo >> U64(32)
            sums[k, b, 2] += hi & mask32
            sums[k, b, 3] += hi >> U64(32)
