"""Compiled kernels that apply batches to the ledger state (numba over numpy arrays).

All compiled code lives in this one module on purpose: numba's on-disk cache is invalidated
by changes to a function's own source file only, so a caller in another module would keep a
stale copy of an edited kernel it inlines.

Everything here is deterministic: the same state and the same journalled input give the same
state and the same results, which is what makes recovery by journal replay exact.

128-bit values are pairs of uint64 words ``(hi, lo)``. Numba promotes ``uint64`` mixed with a
signed integer to ``float64``, so every constant below is an explicit ``np.uint64``.

State arrays (see ``_state.State``):

* ``accounts``   ACCOUNT_DTYPE rows in creation (= timestamp) order; ``acct_slots`` indexes them.
* ``transfers``  TRANSFER_DTYPE rows in timestamp order (a memory-mapped file);
  ``xfer_slots`` indexes them; ``xfer_state`` holds each row's two-phase state.
* ``balances``   BALANCE_DTYPE rows, two per transfer row (debit side, credit side): the
  balances right after the transfer, written for accounts with the ``history`` flag.
* ``retired``    ids that failed with a transient status and can never be used again.
* ``heap_*``     pending transfers with a timeout, a binary heap by (deadline, timestamp).
* ``counters``   uint64[COUNTERS]: see the ``C_*`` indices.

Hash tables use open addressing with linear probing. A slot holds
``fingerprint << 40 | (row + 1)`` (0 = empty); the id itself is checked against the row.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit

# --- counters -------------------------------------------------------------------------------
C_ACCOUNTS = 0  # rows used in `accounts`
C_TRANSFERS = 1  # rows used in `transfers`
C_HEAP = 2  # entries in the expiry heap
C_RETIRED = 3  # ids in `retired`
C_WATERMARK = 4  # timestamp of the newest change (transfer or expiry)
C_CLOCK = 5  # newest timestamp handed out (batch slots and pulses)
COUNTERS = 8

# --- two-phase states -----------------------------------------------------------------------
STATE_NONE = 0
STATE_PENDING = 1
STATE_POSTED = 2
STATE_VOIDED = 3
STATE_EXPIRED = 4

U64 = np.uint64
ZERO = U64(0)
ONE = U64(1)
MAX64 = U64(0xFFFFFFFFFFFFFFFF)
TIMESTAMP_MAX = U64(0xFFFFFFFFFFFFFFFE)  # 2**64 - 2: the clock stays below it
# TigerBeetle's ``TimestampRange.timestamp_max``: the top bit of a u64 timestamp is its LSM
# tombstone flag, so an imported timestamp above 2**63 - 1 is out of range.
TIMESTAMP_VALID_MAX = U64(0x7FFFFFFFFFFFFFFF)
NS_PER_S = U64(1_000_000_000)
ROW_BITS = U64(40)
ROW_MASK = U64((1 << 40) - 1)

# Account flags
AF_LINKED = 1
AF_DEBITS_MUST_NOT_EXCEED_CREDITS = 2
AF_CREDITS_MUST_NOT_EXCEED_DEBITS = 4
AF_HISTORY = 8
AF_IMPORTED = 16
AF_CLOSED = 32
AF_ALL = 63

# Transfer flags
TF_LINKED = 1
TF_PENDING = 2
TF_POST = 4
TF_VOID = 8
TF_BALANCING_DEBIT = 16
TF_BALANCING_CREDIT = 32
TF_CLOSING_DEBIT = 64
TF_CLOSING_CREDIT = 128
TF_IMPORTED = 256
TF_ALL = 511

# CreateAccountStatus values (see _types.CreateAccountStatus)
A_CREATED = 0xFFFFFFFF
A_LINKED_EVENT_FAILED = 1
A_LINKED_EVENT_CHAIN_OPEN = 2
A_IMPORTED_EVENT_EXPECTED = 22
A_IMPORTED_EVENT_NOT_EXPECTED = 23
A_TIMESTAMP_MUST_BE_ZERO = 3
A_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 24
A_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 25
A_RESERVED_FIELD = 4
A_RESERVED_FLAG = 5
A_ID_MUST_NOT_BE_ZERO = 6
A_ID_MUST_NOT_BE_INT_MAX = 7
A_EXISTS_WITH_DIFFERENT_FLAGS = 15
A_EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
A_EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
A_EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
A_EXISTS_WITH_DIFFERENT_LEDGER = 19
A_EXISTS_WITH_DIFFERENT_CODE = 20
A_EXISTS = 21
A_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
A_DEBITS_PENDING_MUST_BE_ZERO = 9
A_DEBITS_POSTED_MUST_BE_ZERO = 10
A_CREDITS_PENDING_MUST_BE_ZERO = 11
A_CREDITS_POSTED_MUST_BE_ZERO = 12
A_LEDGER_MUST_NOT_BE_ZERO = 13
A_CODE_MUST_NOT_BE_ZERO = 14
A_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 26

# CreateTransferStatus values (see _types.CreateTransferStatus)
T_CREATED = 0xFFFFFFFF
T_LINKED_EVENT_FAILED = 1
T_LINKED_EVENT_CHAIN_OPEN = 2
T_IMPORTED_EVENT_EXPECTED = 56
T_IMPORTED_EVENT_NOT_EXPECTED = 57
T_TIMESTAMP_MUST_BE_ZERO = 3
T_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 58
T_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 59
T_RESERVED_FLAG = 4
T_ID_MUST_NOT_BE_ZERO = 5
T_ID_MUST_NOT_BE_INT_MAX = 6
T_EXISTS_WITH_DIFFERENT_FLAGS = 36
T_EXISTS_WITH_DIFFERENT_PENDING_ID = 40
T_EXISTS_WITH_DIFFERENT_TIMEOUT = 44
T_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 37
T_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 38
T_EXISTS_WITH_DIFFERENT_AMOUNT = 39
T_EXISTS_WITH_DIFFERENT_USER_DATA_128 = 41
T_EXISTS_WITH_DIFFERENT_USER_DATA_64 = 42
T_EXISTS_WITH_DIFFERENT_USER_DATA_32 = 43
T_EXISTS_WITH_DIFFERENT_LEDGER = 67
T_EXISTS_WITH_DIFFERENT_CODE = 45
T_EXISTS = 46
T_ID_ALREADY_FAILED = 68
T_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7
T_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 8
T_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 9
T_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 10
T_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 11
T_ACCOUNTS_MUST_BE_DIFFERENT = 12
T_PENDING_ID_MUST_BE_ZERO = 13
T_PENDING_ID_MUST_NOT_BE_ZERO = 14
T_PENDING_ID_MUST_NOT_BE_INT_MAX = 15
T_PENDING_ID_MUST_BE_DIFFERENT = 16
T_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 17
T_CLOSING_TRANSFER_MUST_BE_PENDING = 64
T_LEDGER_MUST_NOT_BE_ZERO = 19
T_CODE_MUST_NOT_BE_ZERO = 20
T_DEBIT_ACCOUNT_NOT_FOUND = 21
T_CREDIT_ACCOUNT_NOT_FOUND = 22
T_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 23
T_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 24
T_PENDING_TRANSFER_NOT_FOUND = 25
T_PENDING_TRANSFER_NOT_PENDING = 26
T_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 27
T_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 28
T_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 29
T_PENDING_TRANSFER_HAS_DIFFERENT_CODE = 30
T_EXCEEDS_PENDING_TRANSFER_AMOUNT = 31
T_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 32
T_PENDING_TRANSFER_ALREADY_POSTED = 33
T_PENDING_TRANSFER_ALREADY_VOIDED = 34
T_PENDING_TRANSFER_EXPIRED = 35
T_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 60
T_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT = 61
T_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT = 62
T_IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO = 63
T_DEBIT_ACCOUNT_ALREADY_CLOSED = 65
T_CREDIT_ACCOUNT_ALREADY_CLOSED = 66
T_OVERFLOWS_DEBITS_PENDING = 47
T_OVERFLOWS_CREDITS_PENDING = 48
T_OVERFLOWS_DEBITS_POSTED = 49
T_OVERFLOWS_CREDITS_POSTED = 50
T_OVERFLOWS_DEBITS = 51
T_OVERFLOWS_CREDITS = 52
T_OVERFLOWS_TIMEOUT = 53
T_EXCEEDS_CREDITS = 54
T_EXCEEDS_DEBITS = 55


# --- 128-bit arithmetic ---------------------------------------------------------------------


@jit(inline="always")
def _add_overflows(a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> bool:
    lo = a_lo + b_lo
    carry = ONE if lo < a_lo else ZERO
    hi = a_hi + b_hi
    if hi < a_hi:
        return True
    hi2 = hi + carry
    return hi2 < hi


@jit(inline="always")
def _add(a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> tuple[int, int]:
    lo = a_lo + b_lo
    carry = ONE if lo < a_lo else ZERO
    return a_hi + b_hi + carry, lo


@jit(inline="always")
def _sub(a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> tuple[int, int]:
    """a - b, for a >= b."""
    borrow = ONE if a_lo < b_lo else ZERO
    return a_hi - b_hi - borrow, a_lo - b_lo


@jit(inline="always")
def _lt(a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> bool:
    return a_hi < b_hi or (a_hi == b_hi and a_lo < b_lo)


@jit(inline="always")
def _sub_saturating(a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> tuple[int, int]:
    if _lt(a_hi, a_lo, b_hi, b_lo):
        return ZERO, ZERO
    return _sub(a_hi, a_lo, b_hi, b_lo)


# --- hashing --------------------------------------------------------------------------------


@jit(inline="always")
def _mix64(z: int) -> int:
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


@jit(inline="always")
def hash_id(lo: int, hi: int) -> int:
    # Explicit casts: a Python int argument may arrive typed int64, whose shifts sign-extend.
    return _mix64(U64(lo) ^ _mix64(U64(hi) ^ U64(0x9E3779B97F4A7C15)))


@jit(inline="always")
def _home(lo: int, hi: int, mask: int) -> int:
    """An id's first slot. Ids that differ only in their low 4 bits get neighbouring slots, so
    the sequential ids most clients make (``id()``, counters) fill cache lines in order
    instead of missing the cache once each; other ids spread as a hash spreads them."""
    lo = U64(lo)
    return (hash_id(lo & ~U64(15), hi) + (lo & U64(15))) & mask


@jit(inline="always")
def index_find(slots: np.ndarray, store: np.ndarray, lo: int, hi: int) -> int:
    """Row of the object with id (hi, lo) in ``store``, or -1."""
    mask = U64(slots.shape[0] - 1)
    fp = hash_id(lo, hi) >> ROW_BITS
    i = _home(lo, hi, mask)
    while True:
        entry = slots[i]
        if entry == ZERO:
            return -1
        if (entry >> ROW_BITS) == fp:
            row = np.int64(entry & ROW_MASK) - 1
            if store[row].id_lo == lo and store[row].id_hi == hi:
                return row
        i = (i + ONE) & mask


@jit(inline="always")
def index_insert(slots: np.ndarray, lo: int, hi: int, row: int) -> None:
    mask = U64(slots.shape[0] - 1)
    fp = hash_id(lo, hi) >> ROW_BITS
    i = _home(lo, hi, mask)
    while slots[i] != ZERO:
        i = (i + ONE) & mask
    slots[i] = (fp << ROW_BITS) | (U64(row) + ONE)


@jit()
def index_remove(slots: np.ndarray, lo: int, hi: int, row: int) -> None:
    """Clear the slot of (id, row). Only valid for the most recently inserted keys (LIFO)."""
    mask = U64(slots.shape[0] - 1)
    i = _home(lo, hi, mask)
    target = U64(row) + ONE
    while slots[i] != ZERO:
        if (slots[i] & ROW_MASK) == target:
            slots[i] = ZERO
            return
        i = (i + ONE) & mask


@jit()
def index_rebuild(slots: np.ndarray, store: np.ndarray, count: int) -> None:
    slots[:] = ZERO
    for row in range(count):
        index_insert(slots, store[row].id_lo, store[row].id_hi, row)


@jit()
def index_insert_rows(slots: np.ndarray, rows: np.ndarray, first_row: int) -> None:
    """Index ``rows``, the rows numbered from ``first_row`` (a piece of a row file read on
    opening: ``Engine.check_rows`` builds the index as it checks the rows)."""
    for i in range(rows.shape[0]):
        index_insert(slots, rows[i].id_lo, rows[i].id_hi, first_row + i)


@jit(inline="always")
def retired_contains(retired: np.ndarray, lo: int, hi: int) -> bool:
    lo = U64(lo)
    hi = U64(hi)
    mask = U64(retired.shape[0] - 1)
    i = hash_id(lo, hi) & mask
    while True:
        r_lo = retired[i, 0]
        r_hi = retired[i, 1]
        if r_lo == ZERO and r_hi == ZERO:
            return False
        if r_lo == lo and r_hi == hi:
            return True
        i = (i + ONE) & mask


@jit()
def retired_rehash(old: np.ndarray, new: np.ndarray) -> None:
    """Insert every id of the ``old`` burned-id table into the (larger, empty) ``new`` one."""
    for i in range(old.shape[0]):
        if old[i, 0] != ZERO or old[i, 1] != ZERO:
            retired_insert(new, old[i, 0], old[i, 1])


@jit()
def retired_insert(retired: np.ndarray, lo: int, hi: int) -> bool:
    lo = U64(lo)
    hi = U64(hi)
    mask = U64(retired.shape[0] - 1)
    i = hash_id(lo, hi) & mask
    while True:
        r_lo = retired[i, 0]
        r_hi = retired[i, 1]
        if r_lo == ZERO and r_hi == ZERO:
            retired[i, 0] = lo
            retired[i, 1] = hi
            return True
        if r_lo == lo and r_hi == hi:
            return False
        i = (i + ONE) & mask


# --- expiry heap ----------------------------------------------------------------------------


@jit(inline="always")
def _heap_less(heap_deadline: np.ndarray, heap_ts: np.ndarray, a: int, b: int) -> bool:
    if heap_deadline[a] != heap_deadline[b]:
        return heap_deadline[a] < heap_deadline[b]
    return heap_ts[a] < heap_ts[b]


@jit(inline="always")
def _heap_swap(
    heap_deadline: np.ndarray, heap_ts: np.ndarray, heap_row: np.ndarray, a: int, b: int
) -> None:
    heap_deadline[a], heap_deadline[b] = heap_deadline[b], heap_deadline[a]
    heap_ts[a], heap_ts[b] = heap_ts[b], heap_ts[a]
    heap_row[a], heap_row[b] = heap_row[b], heap_row[a]


@jit()
def heap_push(
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    counters: np.ndarray,
    deadline: int,
    ts: int,
    row: int,
) -> None:
    i = np.int64(counters[C_HEAP])
    counters[C_HEAP] = U64(i + 1)
    heap_deadline[i] = deadline
    heap_ts[i] = ts
    heap_row[i] = row
    while i > 0:
        parent = (i - 1) // 2
        if _heap_less(heap_deadline, heap_ts, i, parent):
            _heap_swap(heap_deadline, heap_ts, heap_row, i, parent)
            i = parent
        else:
            break


@jit()
def heap_pop(
    heap_deadline: np.ndarray, heap_ts: np.ndarray, heap_row: np.ndarray, counters: np.ndarray
) -> None:
    n = np.int64(counters[C_HEAP]) - 1
    counters[C_HEAP] = U64(n)
    if n == 0:
        return
    heap_deadline[0] = heap_deadline[n]
    heap_ts[0] = heap_ts[n]
    heap_row[0] = heap_row[n]
    i = 0
    while True:
        left = 2 * i + 1
        right = left + 1
        smallest = i
        if left < n and _heap_less(heap_deadline, heap_ts, left, smallest):
            smallest = left
        if right < n and _heap_less(heap_deadline, heap_ts, right, smallest):
            smallest = right
        if smallest == i:
            break
        _heap_swap(heap_deadline, heap_ts, heap_row, i, smallest)
        i = smallest


# --- helpers over state -----------------------------------------------------------------------


@jit(inline="always")
def _deadline_overflows(ts: int, timeout: int) -> bool:
    """Whether ts + timeout seconds overflows a u63, TigerBeetle's ``sum_overflows(u63,
    t.timestamp, t.timeout * ns_per_s)`` (the top bit of a u64 timestamp is its LSM tombstone
    flag): a deadline above TIMESTAMP_VALID_MAX. ``timeout * ns_per_s`` fits in a u63 (u32
    seconds); no timeout never overflows."""
    t = U64(timeout)
    if t == ZERO:
        return False
    if ts > TIMESTAMP_VALID_MAX:
        return True
    return t * NS_PER_S > TIMESTAMP_VALID_MAX - ts


@jit(inline="always")
def _deadline(ts: int, timeout: int) -> int:
    return ts + U64(timeout) * NS_PER_S


@jit(inline="always")
def _sorted_contains(store: np.ndarray, count: int, ts: int) -> bool:
    """Whether a row of ``store[:count]`` (sorted by timestamp) has timestamp ``ts``."""
    lo = 0
    hi = count
    while lo < hi:
        mid = (lo + hi) // 2
        if store[mid].timestamp < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo < count and store[lo].timestamp == ts


@jit(inline="always")
def _copy_account(dst: np.ndarray, i: int, src: np.ndarray, j: int) -> None:
    dst[i] = src[j]


@jit(inline="always")
def _write_balance(balances: np.ndarray, k: int, accounts: np.ndarray, row: int) -> None:
    b = balances[k]
    a = accounts[row]
    b.debits_pending_lo = a.debits_pending_lo
    b.debits_pending_hi = a.debits_pending_hi
    b.debits_posted_lo = a.debits_posted_lo
    b.debits_posted_hi = a.debits_posted_hi
    b.credits_pending_lo = a.credits_pending_lo
    b.credits_pending_hi = a.credits_pending_hi
    b.credits_posted_lo = a.credits_posted_lo
    b.credits_posted_hi = a.credits_posted_hi


# --- accounts -------------------------------------------------------------------------------


@jit(inline="always")
def _create_account(
    ev: np.ndarray,
    slot_ts: int,
    import_cutoff: int,
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    transfers: np.ndarray,
    counters: np.ndarray,
) -> tuple[int, int]:
    """Returns (status, timestamp of the existing account for EXISTS else 0)."""
    flags = np.int64(ev.flags)
    imported = (flags & AF_IMPORTED) != 0
    if not imported:
        if ev.timestamp != ZERO:
            return A_TIMESTAMP_MUST_BE_ZERO, ZERO
    else:
        if ev.timestamp == ZERO or ev.timestamp > TIMESTAMP_VALID_MAX:
            return A_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE, ZERO
        if ev.timestamp > import_cutoff:
            return A_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE, ZERO
    if ev.reserved != 0:
        return A_RESERVED_FIELD, ZERO
    if (flags & ~AF_ALL) != 0:
        return A_RESERVED_FLAG, ZERO
    if ev.id_lo == ZERO and ev.id_hi == ZERO:
        return A_ID_MUST_NOT_BE_ZERO, ZERO
    if ev.id_lo == MAX64 and ev.id_hi == MAX64:
        return A_ID_MUST_NOT_BE_INT_MAX, ZERO
    row = index_find(acct_slots, accounts, ev.id_lo, ev.id_hi)
    if row >= 0:
        e = accounts[row]
        if e.flags != ev.flags:
            return A_EXISTS_WITH_DIFFERENT_FLAGS, ZERO
        if e.user_data_128_lo != ev.user_data_128_lo or e.user_data_128_hi != ev.user_data_128_hi:
            return A_EXISTS_WITH_DIFFERENT_USER_DATA_128, ZERO
        if e.user_data_64 != ev.user_data_64:
            return A_EXISTS_WITH_DIFFERENT_USER_DATA_64, ZERO
        if e.user_data_32 != ev.user_data_32:
            return A_EXISTS_WITH_DIFFERENT_USER_DATA_32, ZERO
        if e.ledger != ev.ledger:
            return A_EXISTS_WITH_DIFFERENT_LEDGER, ZERO
        if e.code != ev.code:
            return A_EXISTS_WITH_DIFFERENT_CODE, ZERO
        return A_EXISTS, e.timestamp
    if (flags & AF_DEBITS_MUST_NOT_EXCEED_CREDITS) != 0 and (
        flags & AF_CREDITS_MUST_NOT_EXCEED_DEBITS
    ) != 0:
        return A_FLAGS_ARE_MUTUALLY_EXCLUSIVE, ZERO
    if ev.debits_pending_lo != ZERO or ev.debits_pending_hi != ZERO:
        return A_DEBITS_PENDING_MUST_BE_ZERO, ZERO
    if ev.debits_posted_lo != ZERO or ev.debits_posted_hi != ZERO:
        return A_DEBITS_POSTED_MUST_BE_ZERO, ZERO
    if ev.credits_pending_lo != ZERO or ev.credits_pending_hi != ZERO:
        return A_CREDITS_PENDING_MUST_BE_ZERO, ZERO
    if ev.credits_posted_lo != ZERO or ev.credits_posted_hi != ZERO:
        return A_CREDITS_POSTED_MUST_BE_ZERO, ZERO
    if ev.ledger == 0:
        return A_LEDGER_MUST_NOT_BE_ZERO, ZERO
    if ev.code == 0:
        return A_CODE_MUST_NOT_BE_ZERO, ZERO
    n_accounts = np.int64(counters[C_ACCOUNTS])
    if imported:
        if n_accounts > 0 and ev.timestamp <= accounts[n_accounts - 1].timestamp:
            return A_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ZERO
        if _sorted_contains(transfers, np.int64(counters[C_TRANSFERS]), ev.timestamp):
            return A_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ZERO
    accounts[n_accounts] = ev
    if not imported:
        accounts[n_accounts].timestamp = slot_ts
    index_insert(acct_slots, ev.id_lo, ev.id_hi, n_accounts)
    counters[C_ACCOUNTS] = U64(n_accounts + 1)
    return A_CREATED, ZERO


@jit()
def create_accounts(
    events: np.ndarray,
    starts: np.ndarray,
    nows: np.ndarray,
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    transfers: np.ndarray,
    counters: np.ndarray,
    results: np.ndarray,
) -> None:
    """Apply account batches ``events[starts[b]:starts[b+1]]``, each with clock ``nows[b]``.

    Capacity of ``accounts`` and ``acct_slots`` must have been ensured by the caller.
    """
    for b in range(starts.shape[0] - 1):
        s = starts[b]
        e = starts[b + 1]
        if s == e:
            continue
        now = nows[b]
        import_cutoff = now + U64(e - s) - ONE
        batch_imported = (np.int64(events[s].flags) & AF_IMPORTED) != 0
        i = s
        while i < e:
            chain_start = i
            chain_end = i + 1
            while chain_end < e and (np.int64(events[chain_end - 1].flags) & AF_LINKED) != 0:
                chain_end += 1
            accounts_before = np.int64(counters[C_ACCOUNTS])
            failed = -1
            for j in range(chain_start, chain_end):
                ev = events[j]
                slot_ts = now + U64(j - s) + ONE
                imported = (np.int64(ev.flags) & AF_IMPORTED) != 0
                existing_ts = ZERO
                if j == e - 1 and (np.int64(ev.flags) & AF_LINKED) != 0:
                    status = A_LINKED_EVENT_CHAIN_OPEN
                elif failed >= 0:
                    status = A_LINKED_EVENT_FAILED
                elif batch_imported and not imported:
                    status = A_IMPORTED_EVENT_EXPECTED
                elif not batch_imported and imported:
                    status = A_IMPORTED_EVENT_NOT_EXPECTED
                else:
                    status, existing = _create_account(
                        ev, slot_ts, import_cutoff, accounts, acct_slots, transfers, counters
                    )
                    existing_ts = U64(existing)
                results[j].status = status
                if status == A_CREATED:
                    results[j].timestamp = ev.timestamp if imported else slot_ts
                elif status == A_EXISTS:
                    results[j].timestamp = existing_ts
                else:
                    results[j].timestamp = slot_ts
                if status != A_CREATED and failed < 0:
                    failed = j
            if failed >= 0:
                n = np.int64(counters[C_ACCOUNTS])
                for row in range(n - 1, accounts_before - 1, -1):
                    index_remove(acct_slots, accounts[row].id_lo, accounts[row].id_hi, row)
                counters[C_ACCOUNTS] = U64(accounts_before)
                for j in range(chain_start, failed):
                    results[j].status = A_LINKED_EVENT_FAILED
            i = chain_end
        end_clock = now + U64(e - s)
        if end_clock > counters[C_CLOCK]:
            counters[C_CLOCK] = end_clock


# --- transfers ------------------------------------------------------------------------------


@jit(inline="always")
def _compare_transfer(
    ev: np.ndarray, e: np.ndarray, transfers: np.ndarray, xfer_slots: np.ndarray
) -> int:
    if ev.flags != e.flags:
        return T_EXISTS_WITH_DIFFERENT_FLAGS
    if ev.pending_id_lo != e.pending_id_lo or ev.pending_id_hi != e.pending_id_hi:
        return T_EXISTS_WITH_DIFFERENT_PENDING_ID
    if ev.timeout != e.timeout:
        return T_EXISTS_WITH_DIFFERENT_TIMEOUT
    flags = np.int64(ev.flags)
    dr_lo = ev.debit_account_id_lo
    dr_hi = ev.debit_account_id_hi
    cr_lo = ev.credit_account_id_lo
    cr_hi = ev.credit_account_id_hi
    amount_lo = ev.amount_lo
    amount_hi = ev.amount_hi
    ud128_lo = ev.user_data_128_lo
    ud128_hi = ev.user_data_128_hi
    ud64 = ev.user_data_64
    ud32 = ev.user_data_32
    ledger = ev.ledger
    code = ev.code
    if (flags & (TF_POST | TF_VOID)) != 0:
        prow = index_find(xfer_slots, transfers, ev.pending_id_lo, ev.pending_id_hi)
        p = transfers[prow]
        if dr_lo == ZERO and dr_hi == ZERO:
            dr_lo = p.debit_account_id_lo
            dr_hi = p.debit_account_id_hi
        if cr_lo == ZERO and cr_hi == ZERO:
            cr_lo = p.credit_account_id_lo
            cr_hi = p.credit_account_id_hi
        if ledger == 0:
            ledger = p.ledger
        if code == 0:
            code = p.code
        if ud128_lo == ZERO and ud128_hi == ZERO:
            ud128_lo = p.user_data_128_lo
            ud128_hi = p.user_data_128_hi
        if ud64 == ZERO:
            ud64 = p.user_data_64
        if ud32 == 0:
            ud32 = p.user_data_32
        if ((flags & TF_POST) != 0 and amount_lo == MAX64 and amount_hi == MAX64) or (
            (flags & TF_VOID) != 0 and amount_lo == ZERO and amount_hi == ZERO
        ):
            amount_lo = p.amount_lo
            amount_hi = p.amount_hi
    if dr_lo != e.debit_account_id_lo or dr_hi != e.debit_account_id_hi:
        return T_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if cr_lo != e.credit_account_id_lo or cr_hi != e.credit_account_id_hi:
        return T_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if (flags & (TF_BALANCING_DEBIT | TF_BALANCING_CREDIT)) != 0:
        if _lt(amount_hi, amount_lo, e.amount_hi, e.amount_lo):
            return T_EXISTS_WITH_DIFFERENT_AMOUNT
    elif amount_lo != e.amount_lo or amount_hi != e.amount_hi:
        return T_EXISTS_WITH_DIFFERENT_AMOUNT
    if ud128_lo != e.user_data_128_lo or ud128_hi != e.user_data_128_hi:
        return T_EXISTS_WITH_DIFFERENT_USER_DATA_128
    if ud64 != e.user_data_64:
        return T_EXISTS_WITH_DIFFERENT_USER_DATA_64
    if ud32 != e.user_data_32:
        return T_EXISTS_WITH_DIFFERENT_USER_DATA_32
    if ledger != e.ledger:
        return T_EXISTS_WITH_DIFFERENT_LEDGER
    if code != e.code:
        return T_EXISTS_WITH_DIFFERENT_CODE
    return T_EXISTS


@jit(inline="always")
def _is_transient(status: int) -> bool:
    return (
        status == T_DEBIT_ACCOUNT_NOT_FOUND
        or status == T_CREDIT_ACCOUNT_NOT_FOUND
        or status == T_PENDING_TRANSFER_NOT_FOUND
        or status == T_EXCEEDS_CREDITS
        or status == T_EXCEEDS_DEBITS
        or status == T_DEBIT_ACCOUNT_ALREADY_CLOSED
        or status == T_CREDIT_ACCOUNT_ALREADY_CLOSED
    )


@jit(inline="always")
def _create_transfer(
    ev: np.ndarray,
    slot_ts: int,
    import_cutoff: int,
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    transfers: np.ndarray,
    xfer_slots: np.ndarray,
    xfer_state: np.ndarray,
    balances: np.ndarray,
    retired: np.ndarray,
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    counters: np.ndarray,
    undo_rows: np.ndarray,
    undo_accounts: np.ndarray,
    undo_state_rows: np.ndarray,
    undo_state_values: np.ndarray,
    undo_counts: np.ndarray,
) -> tuple[int, int]:
    """Returns (status, timestamp of the existing transfer for EXISTS else 0)."""
    flags = np.int64(ev.flags)
    imported = (flags & TF_IMPORTED) != 0
    if not imported:
        if ev.timestamp != ZERO:
            return T_TIMESTAMP_MUST_BE_ZERO, ZERO
    else:
        if ev.timestamp == ZERO or ev.timestamp > TIMESTAMP_VALID_MAX:
            return T_IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE, ZERO
        if ev.timestamp > import_cutoff:
            return T_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE, ZERO
    if (flags & ~TF_ALL) != 0:
        return T_RESERVED_FLAG, ZERO
    if ev.id_lo == ZERO and ev.id_hi == ZERO:
        return T_ID_MUST_NOT_BE_ZERO, ZERO
    if ev.id_lo == MAX64 and ev.id_hi == MAX64:
        return T_ID_MUST_NOT_BE_INT_MAX, ZERO
    erow = index_find(xfer_slots, transfers, ev.id_lo, ev.id_hi)
    if erow >= 0:
        e = transfers[erow]
        status = _compare_transfer(ev, e, transfers, xfer_slots)
        if status == T_EXISTS:
            return status, e.timestamp
        return status, ZERO
    if counters[C_RETIRED] > ZERO and retired_contains(retired, ev.id_lo, ev.id_hi):
        return T_ID_ALREADY_FAILED, ZERO

    pending = (flags & TF_PENDING) != 0
    post = (flags & TF_POST) != 0
    void = (flags & TF_VOID) != 0
    void_or_post = post or void
    closing = (flags & (TF_CLOSING_DEBIT | TF_CLOSING_CREDIT)) != 0
    if pending and void_or_post:
        return T_FLAGS_ARE_MUTUALLY_EXCLUSIVE, ZERO
    if post and void:
        return T_FLAGS_ARE_MUTUALLY_EXCLUSIVE, ZERO
    if void_or_post and ((flags & (TF_BALANCING_DEBIT | TF_BALANCING_CREDIT)) != 0 or closing):
        return T_FLAGS_ARE_MUTUALLY_EXCLUSIVE, ZERO

    dr_lo = ev.debit_account_id_lo
    dr_hi = ev.debit_account_id_hi
    cr_lo = ev.credit_account_id_lo
    cr_hi = ev.credit_account_id_hi
    if void_or_post:
        if ev.pending_id_lo == ZERO and ev.pending_id_hi == ZERO:
            return T_PENDING_ID_MUST_NOT_BE_ZERO, ZERO
        if ev.pending_id_lo == MAX64 and ev.pending_id_hi == MAX64:
            return T_PENDING_ID_MUST_NOT_BE_INT_MAX, ZERO
        if ev.pending_id_lo == ev.id_lo and ev.pending_id_hi == ev.id_hi:
            return T_PENDING_ID_MUST_BE_DIFFERENT, ZERO
    else:
        if dr_lo == ZERO and dr_hi == ZERO:
            return T_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, ZERO
        if dr_lo == MAX64 and dr_hi == MAX64:
            return T_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, ZERO
        if cr_lo == ZERO and cr_hi == ZERO:
            return T_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO, ZERO
        if cr_lo == MAX64 and cr_hi == MAX64:
            return T_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX, ZERO
        if dr_lo == cr_lo and dr_hi == cr_hi:
            return T_ACCOUNTS_MUST_BE_DIFFERENT, ZERO
        if ev.pending_id_lo != ZERO or ev.pending_id_hi != ZERO:
            return T_PENDING_ID_MUST_BE_ZERO, ZERO
    if not pending and ev.timeout != 0:
        return T_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, ZERO
    if not pending and closing:
        return T_CLOSING_TRANSFER_MUST_BE_PENDING, ZERO

    ledger = ev.ledger
    code = ev.code
    amount_lo = ev.amount_lo
    amount_hi = ev.amount_hi
    ud128_lo = ev.user_data_128_lo
    ud128_hi = ev.user_data_128_hi
    ud64 = ev.user_data_64
    ud32 = ev.user_data_32
    prow = -1
    if void_or_post:
        prow = index_find(xfer_slots, transfers, ev.pending_id_lo, ev.pending_id_hi)
        if prow < 0:
            return T_PENDING_TRANSFER_NOT_FOUND, ZERO
        p = transfers[prow]
        if (np.int64(p.flags) & TF_PENDING) == 0:
            return T_PENDING_TRANSFER_NOT_PENDING, ZERO
        if (dr_lo != ZERO or dr_hi != ZERO) and (
            dr_lo != p.debit_account_id_lo or dr_hi != p.debit_account_id_hi
        ):
            return T_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID, ZERO
        dr_lo = p.debit_account_id_lo
        dr_hi = p.debit_account_id_hi
        if (cr_lo != ZERO or cr_hi != ZERO) and (
            cr_lo != p.credit_account_id_lo or cr_hi != p.credit_account_id_hi
        ):
            return T_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, ZERO
        cr_lo = p.credit_account_id_lo
        cr_hi = p.credit_account_id_hi
        if ledger != 0 and ledger != p.ledger:
            return T_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER, ZERO
        ledger = p.ledger
        if code != 0 and code != p.code:
            return T_PENDING_TRANSFER_HAS_DIFFERENT_CODE, ZERO
        code = p.code
        if (post and amount_lo == MAX64 and amount_hi == MAX64) or (
            void and amount_lo == ZERO and amount_hi == ZERO
        ):
            amount_lo = p.amount_lo
            amount_hi = p.amount_hi
        if _lt(p.amount_hi, p.amount_lo, amount_hi, amount_lo):
            return T_EXCEEDS_PENDING_TRANSFER_AMOUNT, ZERO
        if void and (amount_lo != p.amount_lo or amount_hi != p.amount_hi):
            return T_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, ZERO
        pstate = xfer_state[prow]
        if pstate == STATE_POSTED:
            return T_PENDING_TRANSFER_ALREADY_POSTED, ZERO
        if pstate == STATE_VOIDED:
            return T_PENDING_TRANSFER_ALREADY_VOIDED, ZERO
        if pstate == STATE_EXPIRED:
            return T_PENDING_TRANSFER_EXPIRED, ZERO
        # Due but not expired yet, judged at the event's timestamp: an imported event's own
        # (TigerBeetle's post_or_void_pending_transfer: ``expires_at <= t.timestamp``).
        event_ts = ev.timestamp if imported else slot_ts
        if p.timeout != 0 and _deadline(p.timestamp, p.timeout) <= event_ts:
            return T_PENDING_TRANSFER_EXPIRED, ZERO
        if ud128_lo == ZERO and ud128_hi == ZERO:
            ud128_lo = p.user_data_128_lo
            ud128_hi = p.user_data_128_hi
        if ud64 == ZERO:
            ud64 = p.user_data_64
        if ud32 == 0:
            ud32 = p.user_data_32
    else:
        if ledger == 0:
            return T_LEDGER_MUST_NOT_BE_ZERO, ZERO
        if code == 0:
            return T_CODE_MUST_NOT_BE_ZERO, ZERO

    dr_row = index_find(acct_slots, accounts, dr_lo, dr_hi)
    if dr_row < 0:
        return T_DEBIT_ACCOUNT_NOT_FOUND, ZERO
    cr_row = index_find(acct_slots, accounts, cr_lo, cr_hi)
    if cr_row < 0:
        return T_CREDIT_ACCOUNT_NOT_FOUND, ZERO
    dr = accounts[dr_row]
    cr = accounts[cr_row]
    if dr.ledger != cr.ledger:
        return T_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER, ZERO
    if ledger != dr.ledger:
        return T_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS, ZERO
    timestamp = slot_ts
    if imported:
        timestamp = ev.timestamp
        # Newer than the newest transfer (rows are in timestamp order), as TigerBeetle's
        # ``transfers.objects.key_range.key_max``: an expiry writes no transfer, so an import
        # may predate the expiries.
        n_transfers = np.int64(counters[C_TRANSFERS])
        if n_transfers > 0 and timestamp <= transfers[n_transfers - 1].timestamp:
            return T_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ZERO
        if _sorted_contains(accounts, np.int64(counters[C_ACCOUNTS]), timestamp):
            return T_IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS, ZERO
        if timestamp <= dr.timestamp:
            return T_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT, ZERO
        if timestamp <= cr.timestamp:
            return T_IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT, ZERO
        if ev.timeout != 0:
            return T_IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO, ZERO
    if not void:
        if (np.int64(dr.flags) & AF_CLOSED) != 0:
            return T_DEBIT_ACCOUNT_ALREADY_CLOSED, ZERO
        if (np.int64(cr.flags) & AF_CLOSED) != 0:
            return T_CREDIT_ACCOUNT_ALREADY_CLOSED, ZERO

    if not void_or_post:
        if (flags & TF_BALANCING_DEBIT) != 0:
            used_hi, used_lo = _add(
                dr.debits_posted_hi, dr.debits_posted_lo, dr.debits_pending_hi, dr.debits_pending_lo
            )
            avail_hi, avail_lo = _sub_saturating(
                dr.credits_posted_hi, dr.credits_posted_lo, used_hi, used_lo
            )
            if _lt(avail_hi, avail_lo, amount_hi, amount_lo):
                amount_hi = avail_hi
                amount_lo = avail_lo
        if (flags & TF_BALANCING_CREDIT) != 0:
            used_hi, used_lo = _add(
                cr.credits_posted_hi,
                cr.credits_posted_lo,
                cr.credits_pending_hi,
                cr.credits_pending_lo,
            )
            avail_hi, avail_lo = _sub_saturating(
                cr.debits_posted_hi, cr.debits_posted_lo, used_hi, used_lo
            )
            if _lt(avail_hi, avail_lo, amount_hi, amount_lo):
                amount_hi = avail_hi
                amount_lo = avail_lo
        if pending:
            if _add_overflows(amount_hi, amount_lo, dr.debits_pending_hi, dr.debits_pending_lo):
                return T_OVERFLOWS_DEBITS_PENDING, ZERO
            if _add_overflows(amount_hi, amount_lo, cr.credits_pending_hi, cr.credits_pending_lo):
                return T_OVERFLOWS_CREDITS_PENDING, ZERO
        if _add_overflows(amount_hi, amount_lo, dr.debits_posted_hi, dr.debits_posted_lo):
            return T_OVERFLOWS_DEBITS_POSTED, ZERO
        if _add_overflows(amount_hi, amount_lo, cr.credits_posted_hi, cr.credits_posted_lo):
            return T_OVERFLOWS_CREDITS_POSTED, ZERO
        dr_total_hi, dr_total_lo = _add(
            dr.debits_pending_hi, dr.debits_pending_lo, dr.debits_posted_hi, dr.debits_posted_lo
        )
        if _add_overflows(amount_hi, amount_lo, dr_total_hi, dr_total_lo):
            return T_OVERFLOWS_DEBITS, ZERO
        cr_total_hi, cr_total_lo = _add(
            cr.credits_pending_hi, cr.credits_pending_lo, cr.credits_posted_hi, cr.credits_posted_lo
        )
        if _add_overflows(amount_hi, amount_lo, cr_total_hi, cr_total_lo):
            return T_OVERFLOWS_CREDITS, ZERO
        if _deadline_overflows(timestamp, ev.timeout):
            return T_OVERFLOWS_TIMEOUT, ZERO
        if (np.int64(dr.flags) & AF_DEBITS_MUST_NOT_EXCEED_CREDITS) != 0:
            s_hi, s_lo = _add(dr_total_hi, dr_total_lo, amount_hi, amount_lo)
            if _lt(dr.credits_posted_hi, dr.credits_posted_lo, s_hi, s_lo):
                return T_EXCEEDS_CREDITS, ZERO
        if (np.int64(cr.flags) & AF_CREDITS_MUST_NOT_EXCEED_DEBITS) != 0:
            s_hi, s_lo = _add(cr_total_hi, cr_total_lo, amount_hi, amount_lo)
            if _lt(cr.debits_posted_hi, cr.debits_posted_lo, s_hi, s_lo):
                return T_EXCEEDS_DEBITS, ZERO

    # --- all checks passed: commit ---
    recording = undo_counts[2] != 0  # only chains of several events can need an undo
    if recording:
        k = undo_counts[0]
        undo_rows[k] = dr_row
        _copy_account(undo_accounts, k, accounts, dr_row)
        undo_rows[k + 1] = cr_row
        _copy_account(undo_accounts, k + 1, accounts, cr_row)
        undo_counts[0] = k + 2

    if prow >= 0:
        p = transfers[prow]
        dr.debits_pending_hi, dr.debits_pending_lo = _sub(
            dr.debits_pending_hi, dr.debits_pending_lo, p.amount_hi, p.amount_lo
        )
        cr.credits_pending_hi, cr.credits_pending_lo = _sub(
            cr.credits_pending_hi, cr.credits_pending_lo, p.amount_hi, p.amount_lo
        )
        if recording:
            m = undo_counts[1]
            undo_state_rows[m] = prow
            undo_state_values[m] = xfer_state[prow]
            undo_counts[1] = m + 1
        xfer_state[prow] = STATE_POSTED if post else STATE_VOIDED
        if void:
            pflags = np.int64(p.flags)
            if (pflags & TF_CLOSING_DEBIT) != 0:
                dr.flags = np.uint16(np.int64(dr.flags) & ~AF_CLOSED)
            if (pflags & TF_CLOSING_CREDIT) != 0:
                cr.flags = np.uint16(np.int64(cr.flags) & ~AF_CLOSED)
    if pending:
        dr.debits_pending_hi, dr.debits_pending_lo = _add(
            dr.debits_pending_hi, dr.debits_pending_lo, amount_hi, amount_lo
        )
        cr.credits_pending_hi, cr.credits_pending_lo = _add(
            cr.credits_pending_hi, cr.credits_pending_lo, amount_hi, amount_lo
        )
    elif not void:
        dr.debits_posted_hi, dr.debits_posted_lo = _add(
            dr.debits_posted_hi, dr.debits_posted_lo, amount_hi, amount_lo
        )
        cr.credits_posted_hi, cr.credits_posted_lo = _add(
            cr.credits_posted_hi, cr.credits_posted_lo, amount_hi, amount_lo
        )
    if (flags & TF_CLOSING_DEBIT) != 0:
        dr.flags = np.uint16(np.int64(dr.flags) | AF_CLOSED)
    if (flags & TF_CLOSING_CREDIT) != 0:
        cr.flags = np.uint16(np.int64(cr.flags) | AF_CLOSED)

    row = np.int64(counters[C_TRANSFERS])
    t = transfers[row]
    t.id_lo = ev.id_lo
    t.id_hi = ev.id_hi
    t.debit_account_id_lo = dr_lo
    t.debit_account_id_hi = dr_hi
    t.credit_account_id_lo = cr_lo
    t.credit_account_id_hi = cr_hi
    t.amount_lo = amount_lo
    t.amount_hi = amount_hi
    t.pending_id_lo = ev.pending_id_lo
    t.pending_id_hi = ev.pending_id_hi
    t.user_data_128_lo = ud128_lo
    t.user_data_128_hi = ud128_hi
    t.user_data_64 = ud64
    t.user_data_32 = ud32
    t.timeout = ev.timeout
    t.ledger = ledger
    t.code = code
    t.flags = ev.flags
    t.timestamp = timestamp
    xfer_state[row] = STATE_PENDING if pending else STATE_NONE
    index_insert(xfer_slots, ev.id_lo, ev.id_hi, row)
    counters[C_TRANSFERS] = U64(row + 1)
    if (np.int64(dr.flags) & AF_HISTORY) != 0:
        _write_balance(balances, 2 * row, accounts, dr_row)
    if (np.int64(cr.flags) & AF_HISTORY) != 0:
        _write_balance(balances, 2 * row + 1, accounts, cr_row)
    if pending and ev.timeout != 0:
        heap_push(
            heap_deadline,
            heap_ts,
            heap_row,
            counters,
            _deadline(timestamp, ev.timeout),
            timestamp,
            row,
        )
    if timestamp > counters[C_WATERMARK]:  # an import may predate an expiry
        counters[C_WATERMARK] = timestamp
    return T_CREATED, ZERO


@jit()
def create_transfers(
    events: np.ndarray,
    starts: np.ndarray,
    nows: np.ndarray,
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    transfers: np.ndarray,
    xfer_slots: np.ndarray,
    xfer_state: np.ndarray,
    balances: np.ndarray,
    retired: np.ndarray,
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    counters: np.ndarray,
    undo_rows: np.ndarray,
    undo_accounts: np.ndarray,
    undo_state_rows: np.ndarray,
    undo_state_values: np.ndarray,
    undo_counts: np.ndarray,
    results: np.ndarray,
) -> None:
    """Apply transfer batches ``events[starts[b]:starts[b+1]]``, each with clock ``nows[b]``.

    The caller ensures capacity: ``transfers``/``xfer_state``/``balances`` for every event,
    hash tables below half load after insertion, ``retired`` and the heap with room for
    every event. Linked chains are all-or-nothing; a failed chain is undone from an undo log
    (``undo_*``: room for two accounts and one two-phase state per event of the longest chain).
    """
    for b in range(starts.shape[0] - 1):
        s = starts[b]
        e = starts[b + 1]
        if s == e:
            continue
        now = nows[b]
        import_cutoff = now + U64(e - s) - ONE
        batch_imported = (np.int64(events[s].flags) & TF_IMPORTED) != 0
        i = s
        while i < e:
            chain_start = i
            chain_end = i + 1
            while chain_end < e and (np.int64(events[chain_end - 1].flags) & TF_LINKED) != 0:
                chain_end += 1
            transfers_before = np.int64(counters[C_TRANSFERS])
            watermark_before = counters[C_WATERMARK]
            undo_counts[0] = 0
            undo_counts[1] = 0
            undo_counts[2] = 1 if chain_end - chain_start > 1 else 0
            failed = -1
            for j in range(chain_start, chain_end):
                ev = events[j]
                slot_ts = now + U64(j - s) + ONE
                imported = (np.int64(ev.flags) & TF_IMPORTED) != 0
                existing_ts = ZERO
                if j == e - 1 and (np.int64(ev.flags) & TF_LINKED) != 0:
                    status = T_LINKED_EVENT_CHAIN_OPEN
                elif failed >= 0:
                    status = T_LINKED_EVENT_FAILED
                elif batch_imported and not imported:
                    status = T_IMPORTED_EVENT_EXPECTED
                elif not batch_imported and imported:
                    status = T_IMPORTED_EVENT_NOT_EXPECTED
                else:
                    status, existing = _create_transfer(
                        ev,
                        slot_ts,
                        import_cutoff,
                        accounts,
                        acct_slots,
                        transfers,
                        xfer_slots,
                        xfer_state,
                        balances,
                        retired,
                        heap_deadline,
                        heap_ts,
                        heap_row,
                        counters,
                        undo_rows,
                        undo_accounts,
                        undo_state_rows,
                        undo_state_values,
                        undo_counts,
                    )
                    existing_ts = U64(existing)
                results[j].status = status
                if status == T_CREATED:
                    results[j].timestamp = ev.timestamp if imported else slot_ts
                elif status == T_EXISTS:
                    results[j].timestamp = existing_ts
                else:
                    results[j].timestamp = slot_ts
                if status != T_CREATED and failed < 0:
                    failed = j
            if failed >= 0:
                # Undo in LIFO order: pending states, accounts, then transfer rows.
                for m in range(undo_counts[1] - 1, -1, -1):
                    xfer_state[undo_state_rows[m]] = undo_state_values[m]
                for k in range(undo_counts[0] - 1, -1, -1):
                    accounts[undo_rows[k]] = undo_accounts[k]
                n = np.int64(counters[C_TRANSFERS])
                for row in range(n - 1, transfers_before - 1, -1):
                    index_remove(xfer_slots, transfers[row].id_lo, transfers[row].id_hi, row)
                counters[C_TRANSFERS] = U64(transfers_before)
                counters[C_WATERMARK] = watermark_before
                for j in range(chain_start, failed):
                    results[j].status = T_LINKED_EVENT_FAILED
                if _is_transient(np.int64(results[failed].status)) and retired_insert(
                    retired, events[failed].id_lo, events[failed].id_hi
                ):
                    counters[C_RETIRED] += ONE
            i = chain_end
        end_clock = now + U64(e - s)
        if end_clock > counters[C_CLOCK]:
            counters[C_CLOCK] = end_clock


# --- expiry ---------------------------------------------------------------------------------


@jit(inline="always")
def _heap_entry_live(
    transfers: np.ndarray,
    xfer_state: np.ndarray,
    counters: np.ndarray,
    row: int,
    ts: int,
    deadline: int,
) -> bool:
    """Whether a heap entry still stands for a pending transfer awaiting its deadline.

    Entries are removed lazily: the transfer may have been posted, voided, or rolled back with
    its chain — and then its row reused, possibly by an imported transfer with the very same
    timestamp. Only a pending transfer with a timeout and this deadline matches.
    """
    if row >= np.int64(counters[C_TRANSFERS]):
        return False
    t = transfers[row]
    return (
        t.timestamp == ts
        and t.timeout != 0
        and (np.int64(t.flags) & TF_PENDING) != 0
        and _deadline(t.timestamp, t.timeout) == deadline
        and xfer_state[row] == STATE_PENDING
    )


@jit()
def drop_stale_deadlines(
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    transfers: np.ndarray,
    xfer_state: np.ndarray,
    counters: np.ndarray,
) -> None:
    """Pop the entries at the top of the heap that no longer stand for a pending transfer
    (posted, voided or rolled back before its deadline), so that the top is the next real
    deadline. Changes nothing ``count_due`` and ``expire`` see: they skip such entries."""
    while counters[C_HEAP] > ZERO and not _heap_entry_live(
        transfers, xfer_state, counters, heap_row[0], heap_ts[0], heap_deadline[0]
    ):
        heap_pop(heap_deadline, heap_ts, heap_row, counters)


@jit()
def count_due(
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    now: int,
    transfers: np.ndarray,
    xfer_state: np.ndarray,
    counters: np.ndarray,
) -> int:
    """How many live heap entries are due at ``now`` (what ``expire`` would expire)."""
    count = 0
    for i in range(np.int64(counters[C_HEAP])):
        if heap_deadline[i] <= now and _heap_entry_live(
            transfers, xfer_state, counters, heap_row[i], heap_ts[i], heap_deadline[i]
        ):
            count += 1
    return count


@jit()
def expire(
    now: int,
    limit: int,
    accounts: np.ndarray,
    acct_slots: np.ndarray,
    transfers: np.ndarray,
    xfer_state: np.ndarray,
    heap_deadline: np.ndarray,
    heap_ts: np.ndarray,
    heap_row: np.ndarray,
    counters: np.ndarray,
    expired_rows: np.ndarray,
) -> int:
    """Expire up to ``limit`` pending transfers whose deadline is <= ``now``.

    Expirations happen in (deadline, timestamp) order; the i-th of ``count`` takes timestamp
    ``W - count + i + 1`` with ``W = max(now, watermark + count)``; the watermark and the clock
    become ``W``. Returns ``count``; the expired rows are written to ``expired_rows``.
    """
    count = 0
    while counters[C_HEAP] > ZERO and count < limit:
        if heap_deadline[0] > now:
            break
        row = heap_row[0]
        ts = heap_ts[0]
        deadline = heap_deadline[0]
        heap_pop(heap_deadline, heap_ts, heap_row, counters)
        if not _heap_entry_live(transfers, xfer_state, counters, row, ts, deadline):
            continue
        expired_rows[count] = row
        count += 1
    if count == 0:
        return 0
    for i in range(count):
        row = expired_rows[i]
        t = transfers[row]
        dr_row = index_find(acct_slots, accounts, t.debit_account_id_lo, t.debit_account_id_hi)
        cr_row = index_find(acct_slots, accounts, t.credit_account_id_lo, t.credit_account_id_hi)
        dr = accounts[dr_row]
        cr = accounts[cr_row]
        dr.debits_pending_hi, dr.debits_pending_lo = _sub(
            dr.debits_pending_hi, dr.debits_pending_lo, t.amount_hi, t.amount_lo
        )
        cr.credits_pending_hi, cr.credits_pending_lo = _sub(
            cr.credits_pending_hi, cr.credits_pending_lo, t.amount_hi, t.amount_lo
        )
        tflags = np.int64(t.flags)
        if (tflags & TF_CLOSING_DEBIT) != 0:
            dr.flags = np.uint16(np.int64(dr.flags) & ~AF_CLOSED)
        if (tflags & TF_CLOSING_CREDIT) != 0:
            cr.flags = np.uint16(np.int64(cr.flags) & ~AF_CLOSED)
        xfer_state[row] = STATE_EXPIRED
    w = counters[C_WATERMARK] + U64(count)
    if now > w:
        w = now
    counters[C_WATERMARK] = w
    if w > counters[C_CLOCK]:
        counters[C_CLOCK] = w
    return count


# --- reads: lookups, queries, verification (same module: numba's cache tracks one file) ---


@jit(allocates=True)
def find_rows(
    slots: np.ndarray, store: np.ndarray, ids_lo: np.ndarray, ids_hi: np.ndarray
) -> np.ndarray:
    """Rows of the given ids (-1 where missing)."""
    out = np.empty(ids_lo.shape[0], dtype=np.int64)
    for i in range(ids_lo.shape[0]):
        out[i] = index_find(slots, store, ids_lo[i], ids_hi[i])
    return out


@jit(inline="always")
def _fields_match(
    record: np.ndarray,
    user_data_128_lo: int,
    user_data_128_hi: int,
    user_data_64: int,
    user_data_32: int,
    ledger: int,
    code: int,
) -> bool:
    """Whether an account or transfer matches a filter's fields (zero fields match all)."""
    if (user_data_128_lo != ZERO or user_data_128_hi != ZERO) and (
        record.user_data_128_lo != user_data_128_lo or record.user_data_128_hi != user_data_128_hi
    ):
        return False
    if user_data_64 != ZERO and record.user_data_64 != user_data_64:
        return False
    if user_data_32 != 0 and record.user_data_32 != user_data_32:
        return False
    if ledger != 0 and record.ledger != ledger:
        return False
    return code == 0 or record.code == code


@jit()
def timestamp_rows(
    transfers: np.ndarray, count: int, timestamp_min: int, timestamp_max: int
) -> tuple[int, int]:
    """The rows ``lo``..``hi`` (end excluded) of the first ``count`` transfers whose
    timestamps are within the inclusive bounds (0 = unbounded): rows are in timestamp
    order, so two binary searches."""
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
    return lo, hi


@jit(allocates=True)
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
    lo, hi = timestamp_rows(transfers, count, timestamp_min, timestamp_max)
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
        if not _fields_match(
            t, user_data_128_lo, user_data_128_hi, user_data_64, user_data_32, ledger, code
        ):
            continue
        rows[found] = row
        sides[found] = side
        found += 1
    return rows[:found], sides[:found]


@jit()
def chain_transfers(
    transfers: np.ndarray,
    start: int,
    end: int,
    slots: np.ndarray,
    accounts: np.ndarray,
    last: np.ndarray,
    prev: np.ndarray,
    links: np.ndarray,
) -> None:
    """Link transfer rows ``start``..``end`` into their two accounts' chains: ``last[a]`` is
    the newest row of account row ``a`` (-1: none), ``prev[r, 0]`` / ``prev[r, 1]`` the row
    before ``r`` of its debit / credit account, ``links[a]`` how many rows ``a`` has."""
    for r in range(start, end):
        t = transfers[r]
        d = index_find(slots, accounts, t.debit_account_id_lo, t.debit_account_id_hi)
        c = index_find(slots, accounts, t.credit_account_id_lo, t.credit_account_id_hi)
        prev[r, 0] = last[d]
        prev[r, 1] = last[c]
        last[d] = r
        last[c] = r
        links[d] += 1
        links[c] += 1


@jit(allocates=True)
def scan_account_chain(
    transfers: np.ndarray,
    prev: np.ndarray,
    head: int,
    account_lo: int,
    account_hi: int,
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
    """What ``scan_transfers`` answers for one account (``by_account``), read along the
    account's chain (``chain_transfers``) instead of every transfer: the same rows and sides
    in the same order, at a cost that follows the account's own transfers. ``head`` is the
    account's newest row on its chain (``AccountChains.last``; -1: none)."""
    capacity = limit if reversed_ else min(limit, 64)
    rows = np.empty(max(capacity, 1), dtype=np.int64)
    sides = np.empty(max(capacity, 1), dtype=np.int8)
    found = 0
    r = head if limit > 0 else -1
    while r >= 0:  # newest first
        t = transfers[r]
        debit_side = t.debit_account_id_lo == account_lo and t.debit_account_id_hi == account_hi
        before = prev[r, 0] if debit_side else prev[r, 1]
        if timestamp_min != ZERO and t.timestamp < timestamp_min:
            break  # every older one is earlier still
        if (
            (timestamp_max == ZERO or t.timestamp <= timestamp_max)
            and (debits if debit_side else credits)
            and _fields_match(
                t, user_data_128_lo, user_data_128_hi, user_data_64, user_data_32, ledger, code
            )
        ):
            if found == rows.shape[0]:  # oldest first: every match is kept until the end
                grown_rows = np.empty(2 * found, dtype=np.int64)
                grown_sides = np.empty(2 * found, dtype=np.int8)
                grown_rows[:found] = rows
                grown_sides[:found] = sides
                rows = grown_rows
                sides = grown_sides
            rows[found] = r
            sides[found] = 0 if debit_side else 1
            found += 1
            if reversed_ and found == limit:
                break
        r = before
    if reversed_:
        return rows[:found], sides[:found]
    k = min(found, limit)  # the oldest ``limit``, oldest first
    out_rows = np.empty(k, dtype=np.int64)
    out_sides = np.empty(k, dtype=np.int8)
    for i in range(k):
        out_rows[i] = rows[found - 1 - i]
        out_sides[i] = sides[found - 1 - i]
    return out_rows, out_sides


@jit(allocates=True)
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
        if not _fields_match(
            a, user_data_128_lo, user_data_128_hi, user_data_64, user_data_32, ledger, code
        ):
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


# --- row digests ----------------------------------------------------------------------------

_PRIME_1 = U64(0x9E3779B185EBCA87)
_PRIME_2 = U64(0xC2B2AE3D27D4EB4F)
_PRIME_3 = U64(0x165667B19E3779F9)


@jit(inline="always")
def _round(lane: int, word: int) -> int:
    lane = lane + word * _PRIME_2
    lane = (lane << U64(31)) | (lane >> U64(33))
    return lane * _PRIME_1


@jit()
def rows_digest(words: np.ndarray) -> int:
    """A 64-bit digest of ``words`` (uint64), xxHash64's round on four lanes: any bit
    flipped, any word zeroed, moved or swapped changes it. Several GB/s where ``zlib.crc32``
    managed 1.4, so that digesting every row as it goes to its file costs the ledger little
    (``_engine._RowFile``)."""
    n = words.shape[0]
    a = _PRIME_1 + _PRIME_2
    b = _PRIME_2
    c = ZERO
    d = ZERO - _PRIME_1
    i = 0
    while i + 4 <= n:
        a = _round(a, words[i])
        b = _round(b, words[i + 1])
        c = _round(c, words[i + 2])
        d = _round(d, words[i + 3])
        i += 4
    while i < n:
        a = _round(a, words[i])
        i += 1
    h = (a << U64(1) | a >> U64(63)) + (b << U64(7) | b >> U64(57))
    h += (c << U64(12) | c >> U64(52)) + (d << U64(18) | d >> U64(46))
    h = _mix64(h ^ _PRIME_3 ^ U64(n))
    return h
