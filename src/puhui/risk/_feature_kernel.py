"""Compiled kernels of the feature store (numba over numpy state).

All compiled code of the feature store lives in this one module on purpose: numba's on-disk
cache is invalidated by changes to a function's own source file only, so a caller in another
module would keep a stale copy of an edited kernel it inlines.

The state of a realistic population (tens of thousands of customers, devices, IPs and
counterparties) is hundreds of MB, far beyond the caches: most of an event's time went to
waiting for its entities' rows. ``compute`` therefore asks for the rows of the event
``FETCH_AHEAD`` places ahead (``_prefetch``, a hint that changes no result) while it works
on the one at hand (docs/benchmarks.md, "The whole engine on a quiet machine").

State is columnar and indexed by dense entity ids (see ``_features.FeatureStore``):

* velocity, per entity kind (customer, device, merchant, counterparty, IP):
  ``vel`` int64[cap, 2*SLOTS] (each slot's count then its sum, side by side: one cache line
  per update) and ``meta`` int64[cap, 3*RINGS]
  (per ring: the newest bucket number, the ring's total count, its total sum, the
  bucket of its last reset);
* customer profile: ``c_int`` int64[cap, C_INT] (see the ``CI_*`` columns), ``c_float``
  float64[cap, 4], ``c_hist`` int32[cap, HIST_BUCKETS] (log-bucket amount histogram),
  ``c_distinct`` int32[cap, 54] (distinct counterparties, two rings), ``c_out`` int64[cap, 24]
  (outflow ring);
* counterparty profile: ``p_int`` int64[cap, P_INT], ``p_payers`` int32[cap, 24];
* ``pairs`` int64[cap, 2]: an open-addressing hash table (linear probing, capacity a power
  of two; column 0 the key, 0 = empty; column 1 a time, side by side: one cache line) of
  (customer, counterparty) and (customer, device) pairs with the time of the newest payment
  (pairs of the first kind) or sighting (second kind);
* ``counters`` int64[COUNTERS]: see the ``K_*`` indices.

A ring of ``n`` buckets of ``g`` ns keeps, for each bucket number ``b = t // g`` in
``(head - n, head]``, the bucket's value in slot ``b % n``; its total is the sum of those
slots. Reading at time ``t`` first advances the ring to ``t // g`` (expiring old buckets),
so a windowed value counts exactly the events whose bucket lies in ``(t // g - n, t // g]``.

Everything is deterministic: the same state and the same events give the same features and
the same state, which is what makes recovery by replay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _jit(*, inline: Literal["never", "always"] = "never") -> Callable[[Callable[..., Any]], Any]:
    # No array is allocated in these kernels, so numba's reference counting is off (``_nrt``,
    # as the ledger's kernels: it costs more than the feature logic in the per-event loop).
    # Every division is by a constant or guarded, so numpy's error model (no zero-division
    # checks and their branches) changes no result.
    options: dict[str, Any] = {
        "cache": True,
        "nogil": True,
        "inline": inline,
        "_nrt": False,
        "error_model": "numpy",
    }
    decorator: Callable[[Callable[..., Any]], Any] = njit(**options)
    return decorator


@intrinsic
def _prefetch(typingctx: Any, array: Any, row: Any, column: Any) -> Any:
    """Ask the CPU to bring ``array[row, column]``'s cache line in (a hint: no fault, no
    effect on results). The state rows of an event a few places ahead are fetched while the
    event at hand is worked on: the state is far larger than the caches, and the kernel's
    time went to waiting for it."""
    if not isinstance(array, types.Array) or array.ndim != 2:
        return None
    signature = types.void(array, row, column)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        kind = sig.args[0]
        ary = context.make_array(kind)(context, builder, args[0])
        index = [context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2)]
        pointer = cgutils.get_item_pointer2(
            context,
            builder,
            data=ary.data,
            shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides),
            layout=kind.layout,
            inds=index,
            wraparound=False,
            boundscheck=False,
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # read, keep in all cache levels, data cache
        builder.call(hint, [builder.bitcast(pointer, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


NS = 1_000_000_000

# --- event kinds (the order of ``EventKind``) -------------------------------------------------
KIND_PAYMENT = 0
KIND_P2P = 1
KIND_TOP_UP = 2
KIND_WITHDRAWAL = 3
KIND_LOGIN = 4
KIND_DEVICE_CHANGE = 5
KIND_PASSWORD_RESET = 6
KIND_CARD_BINDING = 7
KIND_LOAN_APPLICATION = 8
KINDS = 9

# --- velocity rings: 1 min, 1 h, 24 h, 7 d, 30 d ----------------------------------------------
WINDOW_NAMES = ("1m", "1h", "24h", "7d", "30d")
RING_BUCKET_NS = np.array([5 * NS, 180 * NS, 3600 * NS, 86400 * NS, 86400 * NS], np.int64)
RING_BUCKETS = np.array([12, 20, 24, 7, 30], np.int64)
RING_OFFSET = np.array([0, 12, 32, 56, 63], np.int64)
RINGS = 5
SLOTS = 93
META = 4 * RINGS  # per ring: head bucket, total count, total sum, reset bucket
FETCH_AHEAD = 4  # events between the one worked on and the one whose state is fetched

# --- distinct-counterparty rings of a customer: 24 h (1 h buckets), 30 d (1 d buckets) -------
DISTINCT_BUCKET_NS = np.array([3600 * NS, 86400 * NS], np.int64)
DISTINCT_BUCKETS = np.array([24, 30], np.int64)
DISTINCT_OFFSET = np.array([0, 24], np.int64)
DISTINCT_SLOTS = 54
HOUR_NS = 3600 * NS
DAY_BUCKETS = 24  # outflow and distinct-payer rings: 24 buckets of 1 h

# --- customer profile columns -----------------------------------------------------------------
CI_CREATED = 0  # account creation (given) or first sighting, ns; -1 unknown
CI_PASSWORD_RESET = 1  # newest password reset, ns; -1 never
CI_DEVICE_CHANGE = 2  # newest device change, ns; -1 never
CI_LOCATION_AT = 3  # time of the newest known location, ns; -1 none
CI_KYC = 4  # newest known KYC level; -1 unknown
CI_AMOUNTS = 5  # money events in the running moments
CI_DISTINCT_HEAD = 6  # 24 h ring: head 6, reset 7
CI_DISTINCT_30D_HEAD = 8  # 30 d ring: head 8, reset 9
CI_DISTINCT_TOTAL = 10  # 24 h: 10, 30 d: 11
CI_OUT_HEAD = 12  # head 12, reset 13
CI_OUT_TOTAL = 14
C_INT = 15
C_INT_UNSET = (CI_CREATED, CI_PASSWORD_RESET, CI_DEVICE_CHANGE, CI_LOCATION_AT, CI_KYC)

CF_LAT = 0
CF_LON = 1
CF_MEAN = 2
CF_M2 = 3
C_FLOAT = 4

HIST_BUCKETS = 64

# --- counterparty profile columns -------------------------------------------------------------
PI_FIRST = 0  # first money event naming this counterparty, ns; -1 never
PI_LINK = 1  # the customer this counterparty is (``c:<id>``), dense id; -1 none
PI_PAYERS_HEAD = 2  # head 2, reset 3
PI_PAYERS_TOTAL = 4
P_INT = 5
P_INT_UNSET = (PI_FIRST, PI_LINK)

# --- pair table ---------------------------------------------------------------------------------
PAIR_COUNTERPARTY = 1
PAIR_DEVICE = 2
PAIR_ID_BITS = 30  # dense ids of every entity kind stay below 2**30
PAIR_ID_MAX = (1 << PAIR_ID_BITS) - 1

# --- counters -----------------------------------------------------------------------------------
K_WATERMARK = 0  # newest event time seen, ns (-1 before the first event)
K_PAIRS = 1  # pairs in the pair table
K_EVENTS = 2  # events applied
COUNTERS = 4

# --- output rows ----------------------------------------------------------------------------------
ENTITY_KINDS = ("customer", "device", "merchant", "counterparty", "ip")
VELOCITY_CUSTOMER = 0
VELOCITY_DEVICE = 10
VELOCITY_MERCHANT = 20
VELOCITY_COUNTERPARTY = 30
VELOCITY_IP = 40
I_DISTINCT_COUNTERPARTIES_24H = 50
I_DISTINCT_COUNTERPARTIES_30D = 51
I_DISTINCT_PAYERS_24H = 52
I_AMOUNT_HISTORY = 53
I_KYC = 54
I_LOCAL_HOUR = 55
I_OUTFLOW_24H = 56
I_COUNTERPARTY_OUTFLOW_24H = 57
I_LATE = 58
I_KIND = 59
I_AMOUNT = 60
N_INT = 61

F_ZSCORE = 0
F_PERCENTILE = 1
F_ACCOUNT_AGE = 2
F_SINCE_PASSWORD_RESET = 3
F_SINCE_DEVICE_CHANGE = 4
F_DISTANCE = 5
F_LOCATION_INTERVAL = 6
F_SPEED = 7
F_COUNTERPARTY_AGE = 8
F_PASSTHROUGH = 9
N_FLOAT = 10

B_FIRST_PAYMENT = 0
B_NEW_DEVICE = 1
B_NIGHT = 2
N_BOOL = 3

NIGHT_END_HOUR = 6  # local hours 0..5 are night
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
NAN = math.nan

_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)


# --- rings --------------------------------------------------------------------------------------


@_jit(inline="always")
def _fetch_entity(vel, meta, e, slots):
    if e >= 0:
        _prefetch(meta, e, 0)
        _prefetch(meta, e, META - 1)
        _prefetch(vel, e, 2 * slots[0])
        _prefetch(vel, e, 2 * (12 + slots[1]))
        _prefetch(vel, e, 2 * (32 + slots[2]))
        _prefetch(vel, e, 2 * (56 + slots[3]))
        _prefetch(vel, e, 2 * (63 + slots[4]))


@_jit(inline="always")
def _velocity(vel, meta, e, buckets, slots, money, amount, out_i, base, i):
    """Write the 10 velocity features of entity ``e`` (before the event), then add the event.

    One call per ring with literal sizes, so the compiler folds them (``% n`` by a constant).
    """
    if e < 0:
        for k in range(2 * RINGS):
            out_i[base + k, i] = 0
        return
    _ring(vel, meta, e, 0, 12, 0, buckets[0], slots[0], money, amount, out_i, base, i)
    _ring(vel, meta, e, 1, 20, 12, buckets[1], slots[1], money, amount, out_i, base, i)
    _ring(vel, meta, e, 2, 24, 32, buckets[2], slots[2], money, amount, out_i, base, i)
    _ring(vel, meta, e, 3, 7, 56, buckets[3], slots[3], money, amount, out_i, base, i)
    _ring(vel, meta, e, 4, 30, 63, buckets[4], slots[4], money, amount, out_i, base, i)


@_jit(inline="always")
def _ring(vel, meta, e, r, n, off, b, slot, money, amount, out_i, base, i):
    """Ring ``r`` (``n`` buckets from slot ``off``) of entity ``e``: move it to bucket ``b``,
    write its count and sum, then add the event.

    Moving expires the buckets that leave the ring. A ring idle for ``n`` buckets or more is
    reset lazily: its totals become 0 and the bucket is remembered (``reset``); a slot is
    subtracted from the totals later only if it was written at or after that bucket, so a
    reset costs one slot, not ``n``. Totals live in locals while the ring is worked on (the
    compiler cannot keep them in registers through stores to ``vel``, which might alias
    ``meta``).
    """
    head = meta[e, r]
    count = meta[e, RINGS + r]
    total = meta[e, 2 * RINGS + r]
    if b > head:
        if b - head >= n:
            count = 0
            total = 0
            meta[e, 3 * RINGS + r] = b
            s = 2 * (off + slot)
            vel[e, s] = 0
            vel[e, s + 1] = 0
        else:
            reset = meta[e, 3 * RINGS + r]
            k_slot = (head + 1) % n
            for k in range(head + 1, b + 1):
                s = 2 * (off + k_slot)
                if k - n >= reset:
                    count -= vel[e, s]
                    total -= vel[e, s + 1]
                vel[e, s] = 0
                vel[e, s + 1] = 0
                k_slot += 1
                if k_slot == n:
                    k_slot = 0
        meta[e, r] = b
    out_i[base + 2 * r, i] = count
    out_i[base + 2 * r + 1, i] = total
    if money:
        s = 2 * (off + slot)
        vel[e, s] += 1
        vel[e, s + 1] += amount
        count += 1
        total += amount
    meta[e, RINGS + r] = count
    meta[e, 2 * RINGS + r] = total


@_jit(inline="always")
def _advance_ring(values, heads, totals, e, head_col, total_col, off, n, b):
    """Move a single-valued ring (slots ``off .. off+n-1`` of ``values[e]``) to bucket ``b``;
    its reset bucket is kept in ``heads[e, head_col + 1]`` (lazy reset, as velocity rings)."""
    head = heads[e, head_col]
    if b <= head:
        return
    if b - head >= n:
        totals[e, total_col] = 0
        heads[e, head_col + 1] = b
        values[e, off + b % n] = 0
    else:
        reset = heads[e, head_col + 1]
        total = totals[e, total_col]
        k_slot = (head + 1) % n
        for k in range(head + 1, b + 1):
            s = off + k_slot
            if k - n >= reset:
                total -= values[e, s]
            values[e, s] = 0
            k_slot += 1
            if k_slot == n:
                k_slot = 0
        totals[e, total_col] = total
    heads[e, head_col] = b


@_jit(inline="always")
def _move_distinct(values, heads, totals, e, head_col, total_col, off, n, b, previous_bucket):
    """A pair's newest payment moves from ``previous_bucket`` (-1: none) to bucket ``b``."""
    if previous_bucket > b - n:
        values[e, off + previous_bucket % n] -= 1
        totals[e, total_col] -= 1
    values[e, off + b % n] += 1
    totals[e, total_col] += 1


# --- helpers --------------------------------------------------------------------------------------


@_jit(inline="always")
def amount_bucket(amount):
    """Log bucket of an amount: 0 and 1 have their own; then two per power of two, split at
    1.5 times the power (the bit after the leading one); the last bucket takes everything above."""
    if amount < 2:
        return max(amount, 0)
    p = 0
    x = amount
    while x > 1:
        x >>= 1
        p += 1
    bucket = 2 * p + ((amount >> (p - 1)) & 1)
    return min(bucket, HIST_BUCKETS - 1)


@_jit(inline="always")
def haversine_km(lat1, lon1, lat2, lon2):
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    a = min(max(a, 0.0), 1.0)
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


@_jit(inline="always")
def _pair_slot(pairs, key):
    """The slot holding ``key``, or the empty slot where it would go."""
    x = np.uint64(key)
    x ^= x >> _SHIFT
    x *= _MIX1
    x ^= x >> _SHIFT
    x *= _MIX2
    x ^= x >> _SHIFT
    mask = pairs.shape[0] - 1
    slot = np.int64(x & np.uint64(mask))
    while True:
        k = pairs[slot, 0]
        if k == key or k == 0:
            return slot
        slot = (slot + 1) & mask


@_jit(inline="always")
def pair_key(tag, customer, other):
    return (tag << (2 * PAIR_ID_BITS)) | (customer << PAIR_ID_BITS) | other


@_jit()
def rehash_pairs(old, new):
    for j in range(old.shape[0]):
        key = old[j, 0]
        if key != 0:
            slot = _pair_slot(new, key)
            new[slot, 0] = key
            new[slot, 1] = old[j, 1]


# --- the pass -------------------------------------------------------------------------------------


@_jit()
def compute(
    kinds,
    customers,
    at_ns,
    amounts,
    devices,
    merchants,
    counterparties,
    ips,
    lats,
    lons,
    tz_offsets,
    kyc_levels,
    created_ns,
    counters,
    c_vel,
    c_meta,
    d_vel,
    d_meta,
    m_vel,
    m_meta,
    p_vel,
    p_meta,
    i_vel,
    i_meta,
    c_int,
    c_float,
    c_hist,
    c_distinct,
    c_out,
    p_int,
    p_payers,
    pairs,
    out_i,
    out_f,
    out_b,
    buckets,
    slots,
):
    """Features of every event as of just before it, then the event applied, in batch order.

    ``buckets`` and ``slots`` (int64[RINGS]) are scratch: each ring's bucket number and slot
    for the event at hand, computed once per event (64-bit divisions are slow)."""
    watermark = counters[K_WATERMARK]
    for i in range(kinds.size):
        ahead = i + FETCH_AHEAD
        if ahead < kinds.size:  # slots of this event's time: the events ahead are close to it
            c_ahead = customers[ahead]
            _fetch_entity(c_vel, c_meta, c_ahead, slots)
            _fetch_entity(d_vel, d_meta, devices[ahead], slots)
            _fetch_entity(m_vel, m_meta, merchants[ahead], slots)
            _fetch_entity(p_vel, p_meta, counterparties[ahead], slots)
            _fetch_entity(i_vel, i_meta, ips[ahead], slots)
            _prefetch(c_int, c_ahead, 0)
            _prefetch(c_int, c_ahead, C_INT - 1)
            _prefetch(c_float, c_ahead, 0)
        at = at_ns[i]
        t = at
        late = 0
        if at < watermark:  # out of order: processed as if it happened at the watermark
            t = watermark
            late = watermark - at
        watermark = t
        kind = kinds[i]
        money = kind <= KIND_WITHDRAWAL
        outflow = kind == KIND_PAYMENT or kind == KIND_P2P or kind == KIND_WITHDRAWAL
        amount = amounts[i] if money else 0
        c = customers[i]
        d = devices[i]
        p = counterparties[i]
        hour_bucket = t // HOUR_NS
        day_bucket = t // (86400 * NS)
        buckets[0] = t // (5 * NS)
        buckets[1] = t // (180 * NS)
        buckets[2] = hour_bucket
        buckets[3] = day_bucket
        buckets[4] = day_bucket
        slots[0] = buckets[0] % 12
        slots[1] = buckets[1] % 20
        slots[2] = hour_bucket % 24
        slots[3] = day_bucket % 7
        slots[4] = day_bucket % 30

        out_i[I_LATE, i] = late
        out_i[I_KIND, i] = kind
        out_i[I_AMOUNT, i] = amounts[i]

        # --- velocity (reads, then the event added) ----------------------------------------
        _velocity(c_vel, c_meta, c, buckets, slots, money, amount, out_i, VELOCITY_CUSTOMER, i)
        _velocity(d_vel, d_meta, d, buckets, slots, money, amount, out_i, VELOCITY_DEVICE, i)
        _velocity(
            m_vel, m_meta, merchants[i], buckets, slots, money, amount, out_i, VELOCITY_MERCHANT, i
        )
        _velocity(p_vel, p_meta, p, buckets, slots, money, amount, out_i, VELOCITY_COUNTERPARTY, i)
        _velocity(i_vel, i_meta, ips[i], buckets, slots, money, amount, out_i, VELOCITY_IP, i)

        # --- customer: reads ----------------------------------------------------------------
        given_created = created_ns[i]
        created = c_int[c, CI_CREATED]
        if given_created > 0:
            created = given_created
        elif created < 0:
            created = t
        out_f[F_ACCOUNT_AGE, i] = (t - created) / NS
        reset = c_int[c, CI_PASSWORD_RESET]
        out_f[F_SINCE_PASSWORD_RESET, i] = (t - reset) / NS if reset >= 0 else NAN
        changed = c_int[c, CI_DEVICE_CHANGE]
        out_f[F_SINCE_DEVICE_CHANGE, i] = (t - changed) / NS if changed >= 0 else NAN
        kyc = kyc_levels[i]
        if kyc < 0:
            kyc = c_int[c, CI_KYC]
        out_i[I_KYC, i] = kyc
        local_hour = ((t // NS + tz_offsets[i]) // 3600) % 24
        out_i[I_LOCAL_HOUR, i] = local_hour
        out_b[B_NIGHT, i] = local_hour < NIGHT_END_HOUR

        lat = lats[i]
        lon = lons[i]
        has_location = not (math.isnan(lat) or math.isnan(lon))
        located_at = c_int[c, CI_LOCATION_AT]
        if has_location and located_at >= 0:
            km = haversine_km(c_float[c, CF_LAT], c_float[c, CF_LON], lat, lon)
            seconds = (t - located_at) / NS
            out_f[F_DISTANCE, i] = km
            out_f[F_LOCATION_INTERVAL, i] = seconds
            out_f[F_SPEED, i] = km * 3600.0 / max(seconds, 1.0)
        else:
            out_f[F_DISTANCE, i] = NAN
            out_f[F_LOCATION_INTERVAL, i] = NAN
            out_f[F_SPEED, i] = NAN

        history = c_int[c, CI_AMOUNTS]
        out_i[I_AMOUNT_HISTORY, i] = history
        bucket = amount_bucket(amounts[i])
        if money and history >= 2:
            std = math.sqrt(c_float[c, CF_M2] / (history - 1))
            if std > 0.0:
                out_f[F_ZSCORE, i] = (amount - c_float[c, CF_MEAN]) / std
            else:
                out_f[F_ZSCORE, i] = NAN
        else:
            out_f[F_ZSCORE, i] = NAN
        if money and history >= 1:
            below = 0
            for k in range(bucket):
                below += c_hist[c, k]
            out_f[F_PERCENTILE, i] = (below + 0.5 * c_hist[c, bucket]) / history
        else:
            out_f[F_PERCENTILE, i] = NAN

        _advance_ring(
            c_out, c_int, c_int, c, CI_OUT_HEAD, CI_OUT_TOTAL, 0, DAY_BUCKETS, hour_bucket
        )
        out_i[I_OUTFLOW_24H, i] = c_int[c, CI_OUT_TOTAL]

        # new device for this customer
        if d >= 0:
            device_slot = _pair_slot(pairs, pair_key(PAIR_DEVICE, c, d))
            out_b[B_NEW_DEVICE, i] = pairs[device_slot, 0] == 0
        else:
            device_slot = -1
            out_b[B_NEW_DEVICE, i] = False

        # --- counterparty: reads ------------------------------------------------------------
        for r in range(2):
            b = hour_bucket if r == 0 else day_bucket
            _advance_ring(
                c_distinct,
                c_int,
                c_int,
                c,
                CI_DISTINCT_HEAD + 2 * r,
                CI_DISTINCT_TOTAL + r,
                DISTINCT_OFFSET[r],
                DISTINCT_BUCKETS[r],
                b,
            )
        out_i[I_DISTINCT_COUNTERPARTIES_24H, i] = c_int[c, CI_DISTINCT_TOTAL]
        out_i[I_DISTINCT_COUNTERPARTIES_30D, i] = c_int[c, CI_DISTINCT_TOTAL + 1]
        if p >= 0:
            pair_slot = _pair_slot(pairs, pair_key(PAIR_COUNTERPARTY, c, p))
            known_pair = pairs[pair_slot, 0] != 0
            out_b[B_FIRST_PAYMENT, i] = not known_pair
            _advance_ring(
                p_payers,
                p_int,
                p_int,
                p,
                PI_PAYERS_HEAD,
                PI_PAYERS_TOTAL,
                0,
                DAY_BUCKETS,
                hour_bucket,
            )
            out_i[I_DISTINCT_PAYERS_24H, i] = p_int[p, PI_PAYERS_TOTAL]
            link = p_int[p, PI_LINK]
            first = p_int[p, PI_FIRST]
            if link >= 0 and c_int[link, CI_CREATED] >= 0:
                out_f[F_COUNTERPARTY_AGE, i] = (t - c_int[link, CI_CREATED]) / NS
            elif first >= 0:
                out_f[F_COUNTERPARTY_AGE, i] = (t - first) / NS
            else:
                out_f[F_COUNTERPARTY_AGE, i] = 0.0
            inflow = out_i[VELOCITY_COUNTERPARTY + 5, i]  # counterparty.sum_24h
            if link >= 0:
                _advance_ring(
                    c_out,
                    c_int,
                    c_int,
                    link,
                    CI_OUT_HEAD,
                    CI_OUT_TOTAL,
                    0,
                    DAY_BUCKETS,
                    hour_bucket,
                )
                linked_out = c_int[link, CI_OUT_TOTAL]
            else:
                linked_out = 0
            out_i[I_COUNTERPARTY_OUTFLOW_24H, i] = linked_out
            out_f[F_PASSTHROUGH, i] = linked_out / inflow if inflow > 0 else NAN

            # --- counterparty: updates --------------------------------------------------------
            if money:
                previous = pairs[pair_slot, 1] if known_pair else -1
                if not known_pair:
                    pairs[pair_slot, 0] = pair_key(PAIR_COUNTERPARTY, c, p)
                    counters[K_PAIRS] += 1
                    # a new pair may take the slot a new device pair found empty above
                    if device_slot == pair_slot:
                        device_slot = _pair_slot(pairs, pair_key(PAIR_DEVICE, c, d))
                pairs[pair_slot, 1] = t
                for r in range(2):
                    g = DISTINCT_BUCKET_NS[r]
                    _move_distinct(
                        c_distinct,
                        c_int,
                        c_int,
                        c,
                        CI_DISTINCT_HEAD + 2 * r,
                        CI_DISTINCT_TOTAL + r,
                        DISTINCT_OFFSET[r],
                        DISTINCT_BUCKETS[r],
                        hour_bucket if r == 0 else day_bucket,
                        previous // g if previous >= 0 else -1,
                    )
                _move_distinct(
                    p_payers,
                    p_int,
                    p_int,
                    p,
                    PI_PAYERS_HEAD,
                    PI_PAYERS_TOTAL,
                    0,
                    DAY_BUCKETS,
                    hour_bucket,
                    previous // HOUR_NS if previous >= 0 else -1,
                )
                if first < 0:
                    p_int[p, PI_FIRST] = t
        else:
            out_b[B_FIRST_PAYMENT, i] = False
            out_i[I_DISTINCT_PAYERS_24H, i] = 0
            out_f[F_COUNTERPARTY_AGE, i] = NAN
            out_i[I_COUNTERPARTY_OUTFLOW_24H, i] = 0
            out_f[F_PASSTHROUGH, i] = NAN

        # --- customer: updates --------------------------------------------------------------
        if given_created > 0 or c_int[c, CI_CREATED] < 0:
            c_int[c, CI_CREATED] = created
        if kind == KIND_PASSWORD_RESET:
            c_int[c, CI_PASSWORD_RESET] = t
        if kind == KIND_DEVICE_CHANGE:
            c_int[c, CI_DEVICE_CHANGE] = t
        if kyc_levels[i] >= 0:
            c_int[c, CI_KYC] = kyc_levels[i]
        if has_location:
            c_float[c, CF_LAT] = lat
            c_float[c, CF_LON] = lon
            c_int[c, CI_LOCATION_AT] = t
        if device_slot >= 0:
            if pairs[device_slot, 0] == 0:
                pairs[device_slot, 0] = pair_key(PAIR_DEVICE, c, d)
                counters[K_PAIRS] += 1
            pairs[device_slot, 1] = t
        if money:
            n = history + 1
            x = float(amount)
            delta = x - c_float[c, CF_MEAN]
            c_float[c, CF_MEAN] += delta / n
            c_float[c, CF_M2] += delta * (x - c_float[c, CF_MEAN])
            c_int[c, CI_AMOUNTS] = n
            c_hist[c, bucket] += 1
        if outflow:
            c_out[c, hour_bucket % DAY_BUCKETS] += amount
            c_int[c, CI_OUT_TOTAL] += amount
    counters[K_WATERMARK] = watermark
    counters[K_EVENTS] += kinds.size


# --- eviction (between batches) -------------------------------------------------------------------


@_jit()
def customer_seen(c_meta, p_meta, p_int, customers, counterparties, seen):
    """Each customer's last sighting (its 5 s ring's head bucket) into ``seen``, counting the
    sightings of a counterparty linked to it (``c:<id>``): naming that counterparty reads the
    customer's state (its account age, its outflow), so it keeps the customer in use."""
    for c in range(customers):
        seen[c] = c_meta[c, 0]
    for p in range(counterparties):
        link = p_int[p, PI_LINK]
        if link >= 0 and p_meta[p, 0] > seen[link]:
            seen[link] = p_meta[p, 0]


@_jit()
def keep_pairs(
    old, new, customer_gone, counterparty_gone, device_gone, before_ns, tie_ns, tie_key, held
):
    """Copy the pairs of ``old`` into ``new`` (empty, any power-of-two size) but those naming
    an evicted entity (``*_gone[id]``) and those last paid or seen before ``before_ns``, or at
    ``tie_ns`` with a key up to ``tie_key``, unless ``held`` (per slot of ``old``) marks them.
    Returns how many were kept."""
    kept = 0
    for j in range(old.shape[0]):
        key = old[j, 0]
        if key == 0:
            continue
        at = old[j, 1]
        if (at < before_ns or (at == tie_ns and key <= tie_key)) and not held[j]:
            continue
        tag = key >> (2 * PAIR_ID_BITS)
        customer = (key >> PAIR_ID_BITS) & PAIR_ID_MAX
        other = key & PAIR_ID_MAX
        if customer_gone[customer]:
            continue
        if tag == PAIR_COUNTERPARTY:
            if counterparty_gone[other]:
                continue
        elif device_gone[other]:
            continue
        slot = _pair_slot(new, key)
        new[slot, 0] = key
        new[slot, 1] = at
        kept += 1
    return kept


@_jit()
def pair_slots(pairs, keys, slots):
    """The slot of each of ``keys`` in the pair table (where it is, or would go) into
    ``slots``."""
    for j in range(keys.size):
        slots[j] = _pair_slot(pairs, keys[j])


@_jit()
def absent_pairs(pairs, keys):
    """How many of ``keys`` (distinct) the pair table does not hold."""
    absent = 0
    for j in range(keys.size):
        if pairs[_pair_slot(pairs, keys[j]), 0] == 0:
            absent += 1
    return absent
