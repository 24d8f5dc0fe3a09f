"""The risk feature store: columnar event batches, features in one compiled pass, snapshots.

``FeatureStore.compute(batch)`` returns, for every event of the batch, its features as of just
before it (then applies the event to the state), in batch order: a batch gives exactly the
features its events give when fed one by one. Features and their windows are described in
``docs/risk-features.md`` and, one line each, in ``FEATURE_SCHEMA``.

Entity keys (devices, IPs, merchants, counterparties: strings; customers: ints) are mapped to
dense ids by the store's interning tables; all state is numpy arrays indexed by those ids,
grown by doubling. The store has one writer: callers serialise ``batch_*``, ``compute`` and
``snapshot``.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from puhui.errors import InvalidInputError, PuhuiError

from . import _feature_kernel as K
from ._decide import EventKind, RiskEvent
from ._workers import worker

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
FeatureType = Literal["int64", "float64", "bool"]

BATCH_EVENTS_MAX: Final = 1_000_000
"""Most events in one ``compute`` call (unit: events); larger streams go in several batches."""

ENTITIES_MAX: Final = K.PAIR_ID_MAX
"""Most distinct keys of one entity kind (customers, devices, …) a store can hold (unit: keys):
the highest bound ``FeatureStore(entities_max=…)`` takes."""

ENTITIES_MAX_DEFAULT: Final = 1 << 18
"""Entities of each kind a store holds unless told otherwise (unit: keys): 262,144 customers,
devices, merchants, counterparties and IPs, at most 2.24 GiB of state arrays for the five kinds.
Beyond it the least recently seen are evicted (``FeatureStore``)."""

PAIRS_MAX_DEFAULT: Final = 1 << 19
"""Customer-counterparty and customer-device pairs a store holds unless told otherwise (unit:
pairs; a table of at most 2**20 slots, 16 MiB)."""

PAIRS_MAX: Final = 1 << 31
"""The highest bound ``FeatureStore(pairs_max=…)`` takes (unit: pairs)."""

EVICTION_SHARE: Final = 8
"""A full kind (or pair table) makes room for at least 1/8 of its bound at once: the cost of an
eviction (a pass over the kind's rows and the pair table) is paid once per that many new keys."""

AMOUNT_MAX: Final = 10**15
"""Largest amount accepted (unit: minor units; 10 trillion CNY). Window sums are int64: even
9,000 events at this amount in one window stay below 2**63."""

TZ_OFFSET_S_MAX: Final = 18 * 3600
"""Largest time-zone offset accepted, either side of UTC (unit: seconds)."""

SNAPSHOT_FORMAT: Final = 2
"""Version 2 (evictions) saves each kind's ids beside its keys (freed ids are holes); version 1
(ids dense, in order of first sighting) is still read."""

_KIND_CODES: dict[EventKind, int] = {kind: code for code, kind in enumerate(EventKind)}


class InvalidRiskEventError(InvalidInputError):
    """A risk event (or a column of a batch) that can never be valid; nothing was changed."""

    code = "risk_event_invalid"


class FeatureSnapshotCorruptError(PuhuiError):
    """A feature-store snapshot that cannot be read back (truncated, altered, unknown format)."""

    code = "feature_snapshot_corrupt"


# --- schema -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature column: its name, numpy type and what it means (one line)."""

    name: str
    type: FeatureType
    description: str


_WINDOW_TEXT = {
    "1m": "1 min (5 s buckets)",
    "1h": "1 h (3 min buckets)",
    "24h": "24 h (1 h buckets)",
    "7d": "7 d (1 d buckets)",
    "30d": "30 d (1 d buckets)",
}
_ENTITY_TEXT = {
    "customer": "made by this customer",
    "device": "made from this device",
    "merchant": "paid to this merchant",
    "counterparty": "naming this counterparty",
    "ip": "made from this IP address",
}


def _velocity_specs() -> list[FeatureSpec]:
    specs = []
    for entity in K.ENTITY_KINDS:
        for window in K.WINDOW_NAMES:
            where = f"{_ENTITY_TEXT[entity]}, last {_WINDOW_TEXT[window]}"
            specs.append(FeatureSpec(f"{entity}.count_{window}", "int64", f"Money events {where}."))
            specs.append(
                FeatureSpec(
                    f"{entity}.sum_{window}",
                    "int64",
                    f"Amount (minor units) of money events {where}.",
                )
            )
    return specs


_INT_SPECS: Final = (
    *_velocity_specs(),
    FeatureSpec(
        "customer.distinct_counterparties_24h",
        "int64",
        "Counterparties this customer paid in the last 24 h (1 h buckets).",
    ),
    FeatureSpec(
        "customer.distinct_counterparties_30d",
        "int64",
        "Counterparties this customer paid in the last 30 d (1 d buckets).",
    ),
    FeatureSpec(
        "counterparty.distinct_payers_24h",
        "int64",
        "Customers who paid this counterparty in the last 24 h (1 h buckets): fan-in.",
    ),
    FeatureSpec(
        "customer.amount_history_count",
        "int64",
        "Money events of this customer before this one (the basis of z-score and percentile).",
    ),
    FeatureSpec(
        "customer.kyc_level", "int64", "KYC level given with the event, else the last known; -1."
    ),
    FeatureSpec("event.local_hour", "int64", "Hour of day 0-23 at the customer's time zone."),
    FeatureSpec(
        "customer.outflow_24h",
        "int64",
        "Amount this customer sent out (payment, P2P, withdrawal) in the last 24 h (1 h buckets).",
    ),
    FeatureSpec(
        "counterparty.outflow_24h",
        "int64",
        "Amount the counterparty (when it is a customer, c:<id>) sent out in the last 24 h.",
    ),
    FeatureSpec(
        "event.late_ns",
        "int64",
        "How far the event is older than the newest one seen (0: in order).",
    ),
    FeatureSpec("event.kind", "int64", "Event kind code (position in EventKind: payment = 0)."),
    FeatureSpec("event.amount", "int64", "The event's amount in minor units."),
)

_FLOAT_SPECS: Final = (
    FeatureSpec(
        "customer.amount_zscore",
        "float64",
        "(amount - mean) / std of the customer's past amounts; NaN under 2 or std 0.",
    ),
    FeatureSpec(
        "customer.amount_percentile",
        "float64",
        "Share of the customer's past amounts below this one (log-bucket estimate); NaN: none.",
    ),
    FeatureSpec(
        "customer.account_age_s",
        "float64",
        "Seconds since the account was created (given) or first seen.",
    ),
    FeatureSpec(
        "customer.since_password_reset_s",
        "float64",
        "Seconds since the customer's last password reset; NaN: never.",
    ),
    FeatureSpec(
        "customer.since_device_change_s",
        "float64",
        "Seconds since the customer's last device change; NaN: never.",
    ),
    FeatureSpec(
        "location.distance_km",
        "float64",
        "Great-circle km from the customer's previous location; NaN: no location.",
    ),
    FeatureSpec(
        "location.interval_s",
        "float64",
        "Seconds since the customer's previous location; NaN: no location.",
    ),
    FeatureSpec(
        "location.speed_kmh",
        "float64",
        "Implied speed from the previous location (interval at least 1 s); NaN: no location.",
    ),
    FeatureSpec(
        "counterparty.account_age_s",
        "float64",
        "Seconds since the counterparty's account was created or first seen (0: new); NaN: none.",
    ),
    FeatureSpec(
        "counterparty.passthrough_ratio_24h",
        "float64",
        "Counterparty's outflow over its inflow in the last 24 h; NaN: no inflow.",
    ),
)

_BOOL_SPECS: Final = (
    FeatureSpec(
        "counterparty.first_payment",
        "bool",
        "The customer has never paid this counterparty before.",
    ),
    FeatureSpec(
        "device.new_for_customer", "bool", "The customer has never used this device before."
    ),
    FeatureSpec("event.is_night", "bool", "Local hour is 0-5 (00:00-05:59)."),
)

FEATURE_SCHEMA: Final[dict[str, FeatureSpec]] = {
    spec.name: spec for spec in (*_INT_SPECS, *_FLOAT_SPECS, *_BOOL_SPECS)
}
"""Every feature ``FeatureStore.compute`` returns: name → type and one-line description."""

if len(_INT_SPECS) != K.N_INT or len(_FLOAT_SPECS) != K.N_FLOAT or len(_BOOL_SPECS) != K.N_BOOL:
    raise RuntimeError("feature schema and kernel rows disagree")  # pragma: no cover


# --- batches ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class EventBatch:
    """Events as columns. Entity columns hold dense ids of the store that built the batch
    (-1: none); build batches with ``FeatureStore.batch_from_events``/``batch_from_columns``
    and compute them with the same store."""

    kind: IntArray
    customer: IntArray
    at_ns: IntArray
    amount: IntArray
    device: IntArray
    merchant: IntArray
    counterparty: IntArray
    ip: IntArray
    latitude: FloatArray
    longitude: FloatArray
    tz_offset_s: IntArray
    kyc_level: IntArray
    account_created_ns: IntArray
    evictions: int = 0
    """The store's eviction count when the batch was built: an eviction since may have given
    its ids to other keys, so ``compute`` refuses the batch then."""

    def __len__(self) -> int:
        return int(self.kind.size)


@dataclass(frozen=True, slots=True, eq=False)
class _Checked:
    """A batch's columns, checked, before interning (``FeatureStore._checked_columns``)."""

    kind: IntArray
    customer_id: IntArray
    at_ns: IntArray
    amount: IntArray
    latitude: FloatArray
    longitude: FloatArray
    tz_offset_s: IntArray
    kyc_level: IntArray
    account_created_ns: IntArray
    strings: dict[str, list[str]]

    def __len__(self) -> int:
        return int(self.kind.size)


class _Interner:
    """Dense ids for the keys of one entity kind: a new key takes the lowest id an eviction
    freed, else the next after ``rows`` (the ids ever used; state arrays hold ``rows`` rows).

    A dict of keys to ids, the keys by id (a numpy object array) and a list of free ids: a
    dict of strings or ints to ints is not tracked by the garbage collector, nor is a numpy
    array, so a million keys cost no collection pauses.
    """

    __slots__ = ("free", "ids", "keys", "reused", "rows")

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.keys: np.ndarray[Any, np.dtype[np.object_]] = np.empty(16, object)
        """The key of each id (None: free), for evictions: grown by doubling."""
        self.free: list[int] = []
        """Ids freed by evictions, highest first (``pop`` reuses the lowest)."""
        self.reused: list[int] = []
        """Freed ids given to new keys whose state rows are not reset yet."""
        self.rows = 0

    def __len__(self) -> int:
        return len(self.ids)

    def intern(self, key: Any) -> int:
        ids = self.ids
        found = ids.get(key)
        if found is not None:
            return found
        if self.free:
            new = self.free.pop()
            self.reused.append(new)
        else:
            new = self.rows
            if new >= ENTITIES_MAX:
                raise InvalidRiskEventError(f"more than {ENTITIES_MAX} keys of one entity kind")
            self.rows = new + 1
            if new == self.keys.size:
                grown = np.empty(2 * new, object)
                grown[:new] = self.keys
                self.keys = grown
        ids[key] = new
        self.keys[new] = key
        return new

    def live(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which ids of ``0 .. rows - 1`` name a key."""
        live = np.ones(self.rows, np.bool_)
        live[self.free] = False
        return live

    def forget(self, gone: np.ndarray[Any, np.dtype[np.bool_]]) -> None:
        """Remove the keys whose ids ``gone`` marks; their ids are free for new keys."""
        evicted = np.flatnonzero(gone)
        ids = self.ids
        for key in self.keys[evicted].tolist():
            del ids[key]
        self.keys[evicted] = None
        self.free = sorted([*self.free, *evicted.tolist()], reverse=True)


# --- the store ----------------------------------------------------------------------------------


def _entity_arrays(capacity: int) -> dict[str, np.ndarray[Any, Any]]:
    return {
        "vel": np.zeros((capacity, 2 * K.SLOTS), np.int64),
        "meta": np.zeros((capacity, K.META), np.int64),
    }


def _touch(array: np.ndarray[Any, Any]) -> None:
    """Fault every page of ``array`` in for writing, its values unchanged."""
    flat = array.reshape(-1).view(np.uint8)
    every_page = flat[:: mmap.PAGESIZE]
    every_page[:] = every_page.copy()


def _customer_arrays(capacity: int) -> dict[str, np.ndarray[Any, Any]]:
    c_int = np.zeros((capacity, K.C_INT), np.int64)
    c_int[:, list(K.C_INT_UNSET)] = -1
    return {
        "c_int": c_int,
        "c_float": np.zeros((capacity, K.C_FLOAT), np.float64),
        "c_hist": np.zeros((capacity, K.HIST_BUCKETS), np.int32),
        "c_distinct": np.zeros((capacity, K.DISTINCT_SLOTS), np.int32),
        "c_out": np.zeros((capacity, K.DAY_BUCKETS), np.int64),
    }


def _counterparty_arrays(capacity: int) -> dict[str, np.ndarray[Any, Any]]:
    p_int = np.zeros((capacity, K.P_INT), np.int64)
    p_int[:, list(K.P_INT_UNSET)] = -1
    return {"p_int": p_int, "p_payers": np.zeros((capacity, K.DAY_BUCKETS), np.int32)}


_STRING_KINDS: Final = ("device", "merchant", "counterparty", "ip")
_VELOCITY_PREFIX: Final = {
    "customer": "c",
    "device": "d",
    "merchant": "m",
    "counterparty": "p",
    "ip": "i",
}


def _grown(array: np.ndarray[Any, Any], fresh: np.ndarray[Any, Any]) -> Any:
    """``fresh`` (more rows, holding the defaults) with ``array``'s rows copied in first."""
    fresh[: array.shape[0]] = array
    return fresh


PIPELINE_EVENTS_MIN: Final = 4096
"""From this many events on, ``compute_columns`` overlaps interning and the compiled pass."""
PIPELINE_CHUNK_EVENTS: Final = 2048
"""Events per chunk of ``compute_columns`` (unit: events)."""

_TIME_MIN: Final = -(1 << 63)
"""Earlier than any time (int64's least): "no pair is too old"."""

RESERVE_MAX = 1 << 26
"""Most entities of one kind (or pairs) ``FeatureStore.reserve`` makes room for at once."""


def write_snapshot(
    arrays: Mapping[str, np.ndarray[Any, Any]], path: str | os.PathLike[str]
) -> None:
    """Write ``FeatureStore.snapshot_arrays()`` to ``path`` atomically (temp file, fsync,
    rename, fsync of the directory). Concurrent writers to one path must take turns (the
    temp file is named by process)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FeatureStore:
    """Risk features over sliding windows, computed in one compiled pass per batch.

    Holds at most ``entities_max`` keys of each entity kind and ``pairs_max`` pairs: when a
    batch would bring more, the least recently seen entities (pairs) are evicted before its
    keys are interned, at least 1/``EVICTION_SHARE`` of the bound at once, so that a stream of
    ever-new keys keeps the memory bounded. An evicted key seen again starts from nothing, as
    a key never seen (docs/risk-features.md, "Bounds and eviction").

    Not thread-safe: one writer at a time (as the ledger's writer).
    """

    def __init__(
        self,
        *,
        capacity: int = 1024,
        pair_capacity: int = 4096,
        entities_max: int = ENTITIES_MAX_DEFAULT,
        pairs_max: int = PAIRS_MAX_DEFAULT,
    ) -> None:
        if capacity < 1 or pair_capacity < 2:
            raise InvalidInputError("capacities must be positive")
        for value, name, most in (
            (entities_max, "entities_max", ENTITIES_MAX),
            (pairs_max, "pairs_max", PAIRS_MAX),
        ):
            if type(value) is not int or not 1 <= value <= most:
                raise InvalidInputError(f"{name} must be an int from 1 to {most}")
        self.entities_max: Final = entities_max
        """Most keys of each entity kind held (unit: keys)."""
        self.pairs_max: Final = pairs_max
        """Most customer-counterparty and customer-device pairs held (unit: pairs)."""
        self.evictions = 0
        """Evictions so far (each of a batch of entities or pairs): 0 while under the bounds."""
        capacity = min(capacity, entities_max)
        pair_capacity = min(pair_capacity, 2 * pairs_max)
        self._customers = _Interner()
        self._strings = {kind: _Interner() for kind in _STRING_KINDS}
        self._capacity = {kind: capacity for kind in K.ENTITY_KINDS}
        self._state: dict[str, np.ndarray[Any, Any]] = {}
        for prefix in _VELOCITY_PREFIX.values():
            for name, array in _entity_arrays(capacity).items():
                self._state[f"{prefix}_{name}"] = array
        self._state.update(_customer_arrays(capacity))
        self._state.update(_counterparty_arrays(capacity))
        pairs = 1 << max(1, (pair_capacity - 1).bit_length())
        self._state["pairs"] = np.zeros((pairs, 2), np.int64)
        self._state["counters"] = np.zeros(K.COUNTERS, np.int64)
        self._state["counters"][K.K_WATERMARK] = -1
        self._links: list[tuple[int, int]] = []
        """New counterparties naming a customer (``c:<id>``), written into ``p_int`` next."""

    # --- facts ----------------------------------------------------------------------------

    @property
    def events_applied(self) -> int:
        """Events computed since the store was created (snapshots carry it over)."""
        return int(self._state["counters"][K.K_EVENTS])

    @property
    def watermark_ns(self) -> int:
        """Time of the newest event seen (-1 before the first); older events count as at it."""
        return int(self._state["counters"][K.K_WATERMARK])

    def entity_counts(self) -> dict[str, int]:
        """Keys held per entity kind."""
        return {kind: len(interner) for kind, interner in self._interners().items()}

    def pair_count(self) -> int:
        """Customer-counterparty and customer-device pairs held."""
        return int(self._state["counters"][K.K_PAIRS])

    def _interners(self) -> dict[str, _Interner]:
        return {"customer": self._customers, **self._strings}

    def _rows(self) -> dict[str, int]:
        """Ids ever used per entity kind: the rows of its state arrays in use."""
        return {kind: interner.rows for kind, interner in self._interners().items()}

    def memory_bytes(self) -> int:
        """Bytes held by the state arrays (interning tables not included)."""
        return sum(int(array.nbytes) for array in self._state.values())

    # --- batches --------------------------------------------------------------------------

    def batch_from_events(self, events: Sequence[RiskEvent]) -> EventBatch:
        """Columns of ``events``, their keys interned (new keys get new ids)."""
        if len(events) > BATCH_EVENTS_MAX:
            raise InvalidRiskEventError(f"more than {BATCH_EVENTS_MAX} events in one batch")
        kinds = []
        for event in events:
            code = _KIND_CODES.get(event.kind)
            if code is None:
                raise InvalidRiskEventError(f"unknown event kind {event.kind!r}")
            kinds.append(code)
        nan = math.nan
        return self.batch_from_columns(
            kind=kinds,
            customer_id=[e.customer_id for e in events],
            at_ns=[e.at_ns for e in events],
            amount=[e.amount for e in events],
            device=[e.device_id for e in events],
            merchant=[e.merchant for e in events],
            counterparty=[e.counterparty for e in events],
            ip=[e.ip for e in events],
            latitude=[nan if e.latitude is None else e.latitude for e in events],
            longitude=[nan if e.longitude is None else e.longitude for e in events],
            tz_offset_s=[e.tz_offset_s or 0 for e in events],
            kyc_level=[-1 if e.kyc_level is None else e.kyc_level for e in events],
            account_created_ns=[e.account_created_ns or 0 for e in events],
        )

    def batch_from_columns(
        self,
        *,
        kind: Iterable[int] | IntArray,
        customer_id: Iterable[int] | IntArray,
        at_ns: Iterable[int] | IntArray,
        amount: Iterable[int] | IntArray | None = None,
        device: Sequence[str] | None = None,
        merchant: Sequence[str] | None = None,
        counterparty: Sequence[str] | None = None,
        ip: Sequence[str] | None = None,
        latitude: Iterable[float] | FloatArray | None = None,
        longitude: Iterable[float] | FloatArray | None = None,
        tz_offset_s: Iterable[int] | IntArray | None = None,
        kyc_level: Iterable[int] | IntArray | None = None,
        account_created_ns: Iterable[int] | IntArray | None = None,
    ) -> EventBatch:
        """A batch from columns (``kind``: ``EventKind`` positions; strings: "" = none).

        A merchant payment may name its merchant only as its counterparty (``m:<id>``): the
        merchant column then takes it. Everything is checked before any key is interned.
        """
        checked = self._checked_columns(
            kind=kind,
            customer_id=customer_id,
            at_ns=at_ns,
            amount=amount,
            device=device,
            merchant=merchant,
            counterparty=counterparty,
            ip=ip,
            latitude=latitude,
            longitude=longitude,
            tz_offset_s=tz_offset_s,
            kyc_level=kyc_level,
            account_created_ns=account_created_ns,
        )
        self._make_room(checked)
        return self._interned(checked, 0, len(checked))

    def compute_columns(
        self,
        *,
        kind: Iterable[int] | IntArray,
        customer_id: Iterable[int] | IntArray,
        at_ns: Iterable[int] | IntArray,
        amount: Iterable[int] | IntArray | None = None,
        device: Sequence[str] | None = None,
        merchant: Sequence[str] | None = None,
        counterparty: Sequence[str] | None = None,
        ip: Sequence[str] | None = None,
        latitude: Iterable[float] | FloatArray | None = None,
        longitude: Iterable[float] | FloatArray | None = None,
        tz_offset_s: Iterable[int] | IntArray | None = None,
        kyc_level: Iterable[int] | IntArray | None = None,
        account_created_ns: Iterable[int] | IntArray | None = None,
        meanwhile: Callable[[], object] | None = None,
        on_chunk: Callable[[int, int, dict[str, np.ndarray[Any, Any]]], object] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """``compute(batch_from_columns(...))``: the same features and the same state after.

        A large batch goes in chunks of ``PIPELINE_CHUNK_EVENTS``, each computed on a helper
        thread (the compiled pass releases the GIL) while the caller's thread interns the keys
        of the next: interning (Python dictionaries) and the pass overlap on two cores. The
        whole batch is checked before anything changes, as ``batch_from_columns`` does.

        The caller's own work can overlap the passes too (neither callback may touch the
        store; both run on the caller's thread): ``meanwhile`` (work that needs no feature)
        is called while the first chunk's pass runs, or after the pass for a small batch;
        ``on_chunk(low, high, features)`` is called with each chunk's features (events
        ``low:high``, in order) as soon as its pass has finished, while the next chunk's
        runs — for a small batch once, with the whole batch."""
        checked = self._checked_columns(
            kind=kind,
            customer_id=customer_id,
            at_ns=at_ns,
            amount=amount,
            device=device,
            merchant=merchant,
            counterparty=counterparty,
            ip=ip,
            latitude=latitude,
            longitude=longitude,
            tz_offset_s=tz_offset_s,
            kyc_level=kyc_level,
            account_created_ns=account_created_ns,
        )
        self._make_room(checked)  # evictions before the batch, never between its chunks
        n = len(checked)
        if n < PIPELINE_EVENTS_MIN:
            features = self.compute(self._interned(checked, 0, n))
            if meanwhile is not None:
                meanwhile()
            if on_chunk is not None:
                on_chunk(0, n, features)
            return features
        outputs: list[tuple[IntArray, FloatArray, np.ndarray[Any, Any]]] = []
        running: Future[None] | None = None

        def finished(chunk: int) -> None:
            if on_chunk is not None:
                low = chunk * PIPELINE_CHUNK_EVENTS
                on_chunk(low, low + outputs[chunk][0].shape[1], _named(*outputs[chunk]))

        try:
            for low in range(0, n, PIPELINE_CHUNK_EVENTS):
                high = min(n, low + PIPELINE_CHUNK_EVENTS)
                batch = self._interned(checked, low, high)  # while the chunk before runs
                if running is not None:
                    done, running = running, None
                    done.result()  # its error, if any, is raised here
                self._prepare(batch)  # writes state arrays: only between two passes
                output = _outputs(high - low)
                outputs.append(output)
                running = worker("risk-features").submit(self._run, batch, *output)
                if meanwhile is not None:
                    meanwhile()
                    meanwhile = None
                if len(outputs) > 1:
                    finished(len(outputs) - 2)  # while this chunk's pass runs
            if running is not None:
                done, running = running, None
                done.result()
            finished(len(outputs) - 1)
        finally:
            if running is not None:  # an error on this thread: the pass must end first
                wait([running])
        return _named(
            np.concatenate([o[0] for o in outputs], axis=1),
            np.concatenate([o[1] for o in outputs], axis=1),
            np.concatenate([o[2] for o in outputs], axis=1),
        )

    def _checked_columns(
        self,
        *,
        kind: Iterable[int] | IntArray,
        customer_id: Iterable[int] | IntArray,
        at_ns: Iterable[int] | IntArray,
        amount: Iterable[int] | IntArray | None,
        device: Sequence[str] | None,
        merchant: Sequence[str] | None,
        counterparty: Sequence[str] | None,
        ip: Sequence[str] | None,
        latitude: Iterable[float] | FloatArray | None,
        longitude: Iterable[float] | FloatArray | None,
        tz_offset_s: Iterable[int] | IntArray | None,
        kyc_level: Iterable[int] | IntArray | None,
        account_created_ns: Iterable[int] | IntArray | None,
    ) -> _Checked:
        kinds = _int_column("kind", kind)
        n = kinds.size
        if n > BATCH_EVENTS_MAX:
            raise InvalidRiskEventError(f"more than {BATCH_EVENTS_MAX} events in one batch")
        customer_ids = _int_column("customer_id", customer_id, n)
        times = _int_column("at_ns", at_ns, n)
        amounts = _int_column("amount", amount, n, default=0)
        lats = _float_column("latitude", latitude, n)
        lons = _float_column("longitude", longitude, n)
        tz = _int_column("tz_offset_s", tz_offset_s, n, default=0)
        kyc = _int_column("kyc_level", kyc_level, n, default=-1)
        created = _int_column("account_created_ns", account_created_ns, n, default=0)
        strings = {
            "device": _str_column("device", device, n),
            "merchant": _str_column("merchant", merchant, n),
            "counterparty": _str_column("counterparty", counterparty, n),
            "ip": _str_column("ip", ip, n),
        }
        _check(kinds.size == 0 or (kinds.min() >= 0 and kinds.max() < K.KINDS), "kind", "unknown")
        _check(not (times < 0).any(), "at_ns", "negative")
        _check(not (amounts < 0).any(), "amount", "negative")
        _check(not (amounts > AMOUNT_MAX).any(), "amount", "above AMOUNT_MAX")
        _check(not (created < 0).any(), "account_created_ns", "negative")
        _check(not (kyc < -1).any(), "kyc_level", "below -1")
        _check(not (np.abs(tz) > TZ_OFFSET_S_MAX).any(), "tz_offset_s", "beyond ±18 h")
        with np.errstate(invalid="ignore"):
            _check(not (np.abs(lats) > 90).any(), "latitude", "beyond ±90")
            _check(not (np.abs(lons) > 180).any(), "longitude", "beyond ±180")
        strings["merchant"] = [
            merchant or (cp if cp.startswith("m:") else merchant)
            for merchant, cp in zip(strings["merchant"], strings["counterparty"], strict=True)
        ]
        return _Checked(kinds, customer_ids, times, amounts, lats, lons, tz, kyc, created, strings)

    def _interned(self, checked: _Checked, low: int, high: int) -> EventBatch:
        """Events ``low:high`` of checked columns as a batch, their keys interned.

        A whole batch of ``PIPELINE_EVENTS_MIN`` events or more is interned chunk by chunk,
        as ``compute_columns`` does: new keys get the same ids either way (the order of
        evictions among equally idle entities, and of pairs, goes by id)."""
        rows = slice(low, high)
        n = high - low
        if low == 0 and high == len(checked) and n >= PIPELINE_EVENTS_MIN:
            parts = [
                self._interned_ids(checked, chunk, min(n, chunk + PIPELINE_CHUNK_EVENTS))
                for chunk in range(0, n, PIPELINE_CHUNK_EVENTS)
            ]
            batch_ids = {kind_: np.concatenate([p[kind_] for p in parts]) for kind_ in parts[0]}
        else:
            batch_ids = self._interned_ids(checked, low, high)
        return EventBatch(
            kind=checked.kind[rows],
            customer=batch_ids["customer"],
            at_ns=checked.at_ns[rows],
            amount=checked.amount[rows],
            device=batch_ids["device"],
            merchant=batch_ids["merchant"],
            counterparty=batch_ids["counterparty"],
            ip=batch_ids["ip"],
            latitude=checked.latitude[rows],
            longitude=checked.longitude[rows],
            tz_offset_s=checked.tz_offset_s[rows],
            kyc_level=checked.kyc_level[rows],
            account_created_ns=checked.account_created_ns[rows],
            evictions=self.evictions,
        )

    def _interned_ids(self, checked: _Checked, low: int, high: int) -> dict[str, IntArray]:
        """The ids of events ``low:high``'s keys, each kind's column (new keys interned: the
        string kinds first, in column order, then the customers)."""
        whole = low == 0 and high == len(checked)
        rows = slice(low, high)
        batch_ids = {
            kind_: self._intern_strings(kind_, keys if whole else keys[rows])
            for kind_, keys in checked.strings.items()
        }
        batch_ids["customer"] = self._intern_customers(checked.customer_id[rows])
        return batch_ids

    def _intern_customers(self, customer_ids: IntArray) -> IntArray:
        if customer_ids.size == 0:
            return np.zeros(0, np.int64)
        interner = self._customers
        get = interner.ids.get
        found = [get(key, -1) for key in customer_ids.tolist()]  # most are known
        ids = np.asarray(found, np.int64)
        if -1 in found:  # new customers get ids in the order of their numbers
            missing = np.flatnonzero(ids == -1)
            keys = customer_ids[missing]
            for key in np.unique(keys).tolist():
                interner.intern(key)
            ids[missing] = [interner.ids[key] for key in keys.tolist()]
        return ids

    def _intern_strings(self, kind: str, keys: list[str]) -> IntArray:
        interner = self._strings[kind]
        links = self._links
        get = interner.ids.get
        # Most keys are known: one pass in C; empty keys (no merchant, no counterparty: in
        # nearly every batch) are -2 there, so that only new keys are visited one by one.
        found = [get(key, -1) if key else -2 for key in keys]
        ids = np.asarray(found, np.int64)
        if -1 in found:  # new keys, interned in order of first sighting
            for j in np.flatnonzero(ids == -1).tolist():
                key = keys[j]
                known = get(key)
                if known is None:
                    known = interner.intern(key)
                    if kind == "counterparty":
                        links.append((known, self._customer_link(key)))
                ids[j] = known
        if -2 in found:
            ids[ids == -2] = -1
        return ids

    def _customer_link(self, key: str) -> int:
        customer = _customer_of(key)
        return -1 if customer is None else self._customers.intern(customer)

    # --- computing ------------------------------------------------------------------------

    def compute(self, batch: EventBatch) -> dict[str, np.ndarray[Any, Any]]:
        """Features of each event as of just before it, in batch order; then the events are
        part of the state. Returns one column per feature of ``FEATURE_SCHEMA``."""
        self._prepare(batch)
        output = _outputs(len(batch))
        self._run(batch, *output)
        return _named(*output)

    def _prepare(self, batch: EventBatch) -> None:
        self._check_batch(batch)
        self._ensure_capacity(batch)

    def _run(
        self,
        batch: EventBatch,
        out_i: np.ndarray[Any, Any],
        out_f: np.ndarray[Any, Any],
        out_b: np.ndarray[Any, Any],
    ) -> None:
        """The compiled pass over a prepared batch (``_prepare``): writes the outputs and the
        state arrays, nothing of Python's (so it may run beside interning)."""
        s = self._state
        K.compute(
            batch.kind,
            batch.customer,
            batch.at_ns,
            batch.amount,
            batch.device,
            batch.merchant,
            batch.counterparty,
            batch.ip,
            batch.latitude,
            batch.longitude,
            batch.tz_offset_s,
            batch.kyc_level,
            batch.account_created_ns,
            s["counters"],
            *(s[f"{prefix}_{name}"] for prefix in "cdmpi" for name in ("vel", "meta")),
            s["c_int"],
            s["c_float"],
            s["c_hist"],
            s["c_distinct"],
            s["c_out"],
            s["p_int"],
            s["p_payers"],
            s["pairs"],
            out_i,
            out_f,
            out_b,
            np.empty(K.RINGS, np.int64),
            np.empty(K.RINGS, np.int64),
        )

    def _check_batch(self, batch: EventBatch) -> None:
        """The kernel runs without bounds checks: a batch must fit this store's tables."""
        n = len(batch)
        if n > BATCH_EVENTS_MAX:
            raise InvalidRiskEventError(f"more than {BATCH_EVENTS_MAX} events in one batch")
        if batch.evictions != self.evictions:
            raise InvalidRiskEventError(
                "the batch was built before the store evicted entities: build it again"
            )
        limits = self._rows()
        for name in ("kind", "at_ns", "amount", "tz_offset_s", "kyc_level", "account_created_ns"):
            _check_array(batch, name, np.int64, n)
        for name in ("latitude", "longitude"):
            _check_array(batch, name, np.float64, n)
        for kind, size in limits.items():
            column = _check_array(batch, kind, np.int64, n)
            low = 0 if kind == "customer" else -1
            if n and (int(column.min()) < low or int(column.max()) >= size):
                raise InvalidRiskEventError(
                    f"column {kind} holds ids this store did not issue", column=kind
                )
        if n and (int(batch.kind.min()) < 0 or int(batch.kind.max()) >= K.KINDS):
            raise InvalidRiskEventError("column kind: a value is unknown", column="kind")
        if n and int(batch.at_ns.min()) < 0:
            raise InvalidRiskEventError("column at_ns: a value is negative", column="at_ns")

    def reserve(self, entities: int, *, pairs: int = 0) -> None:
        """Make room now for ``entities`` of each kind (customers, devices, merchants,
        counterparties, IPs) and ``pairs`` customer-counterparty pairs, so that the store
        does not grow while deciding: growing doubles every array of a kind at once, O(state)
        under the engine's lock (measured: a 120 ms stall at 33,000 customers). Sized up
        front, as TigerBeetle allocates at start-up, and every page is touched now: the
        kernel would otherwise fault in and zero each fresh page on the deciding thread the
        first time a new entity's row lands on it. Never shrinks."""
        for value, name in ((entities, "entities"), (pairs, "pairs")):
            if type(value) is not int or value < 0 or value > RESERVE_MAX:
                raise InvalidInputError(f"{name} must be an int from 0 to {RESERVE_MAX}")
        entities = min(entities, self.entities_max)  # room beyond the bounds is never used
        pairs = min(pairs, self.pairs_max)
        self._grow({kind: max(entities, n) for kind, n in self._rows().items()})
        table = self._state["pairs"]
        used = int(self._state["counters"][K.K_PAIRS])
        wanted = max(pairs, used)
        if 2 * wanted > table.shape[0]:
            size = table.shape[0]
            while 2 * wanted > size:
                size *= 2
            grown = np.zeros((size, 2), np.int64)
            K.rehash_pairs(table, grown)
            self._state["pairs"] = grown
        for array in self._state.values():
            _touch(array)

    def _ensure_capacity(self, batch: EventBatch | None) -> None:
        self._grow(self._rows())
        self._reset_reused()  # before the links of new counterparties are written
        self._link_and_size_pairs(batch)

    def _grow(self, sizes: dict[str, int]) -> None:
        for kind, prefix in _VELOCITY_PREFIX.items():
            capacity = self._capacity[kind]
            if sizes[kind] <= capacity:
                continue
            while capacity < sizes[kind]:
                capacity = max(1, 2 * capacity)
            # never past the bound (a restored store may hold more rows than its bound)
            capacity = min(capacity, max(sizes[kind], self.entities_max))
            self._capacity[kind] = capacity
            fresh = _entity_arrays(capacity)
            for name in ("vel", "meta"):
                key = f"{prefix}_{name}"
                self._state[key] = _grown(self._state[key], fresh[name])
            extra = (
                _customer_arrays(capacity)
                if kind == "customer"
                else _counterparty_arrays(capacity)
                if kind == "counterparty"
                else {}
            )
            for key, array in extra.items():
                self._state[key] = _grown(self._state[key], array)

    def _link_and_size_pairs(self, batch: EventBatch | None) -> None:
        p_int = self._state["p_int"]
        for counterparty, customer in self._links:
            p_int[counterparty, K.PI_LINK] = customer
        self._links.clear()
        pairs = self._state["pairs"]
        used = int(self._state["counters"][K.K_PAIRS])
        # Each event adds at most two pairs; keep the load at or under one half. Near the
        # bound, the pairs the batch will add are counted: ``_make_room`` left room for them,
        # so the table stays within 2 * pairs_max slots.
        wanted = used if batch is None else used + 2 * len(batch)
        if batch is not None and wanted > self.pairs_max:
            wanted = used + K.absent_pairs(pairs, _pair_keys(batch))
        if 2 * wanted > pairs.shape[0]:
            size = pairs.shape[0]
            while 2 * wanted > size:
                size *= 2
            grown = np.zeros((size, 2), np.int64)
            K.rehash_pairs(pairs, grown)
            self._state["pairs"] = grown

    # --- bounds ---------------------------------------------------------------------------

    def _make_room(self, checked: _Checked) -> None:
        """Before a batch's keys are interned: evict the least recently seen entities of each
        kind that the batch would take past ``entities_max``, then the least recently used
        pairs past ``pairs_max``. A batch naming more keys of one kind (or more pairs) than
        the bound is refused first, with nothing changed.

        The batch's own entities are never evicted for it; each eviction takes at least
        1/``EVICTION_SHARE`` of the bound, so that the next batches of new keys find room."""
        n = len(checked)
        cap = self.entities_max
        interners = self._interners()
        full = [
            kind
            for kind, interner in interners.items()
            if len(interner) + (2 * n if kind == "customer" else n) > cap
        ]
        pairs_full = self.pair_count() + 2 * n > self.pairs_max
        if not full and not pairs_full:
            return  # the fast path: nothing near a bound
        named = {kind: _batch_keys(checked, kind) for kind in full}
        for kind, keys in named.items():
            if len(keys) > cap:
                raise InvalidRiskEventError(
                    f"the batch names {len(keys)} distinct {kind} keys, more than the store "
                    f"holds ({cap}): split it",
                    column="customer_id" if kind == "customer" else kind,
                )
        batch_pairs = _batch_pairs(checked) if pairs_full else set()
        if len(batch_pairs) > self.pairs_max:
            raise InvalidRiskEventError(
                f"the batch names {len(batch_pairs)} distinct customer-counterparty and "
                f"customer-device pairs, more than the store holds ({self.pairs_max}): split it"
            )
        if full:
            self._ensure_capacity(None)  # pending counterparty links go into the arrays
            gone = {kind: np.zeros(rows, np.bool_) for kind, rows in self._rows().items()}
            for kind in ("customer", *_STRING_KINDS):  # customers first: see _choose_evicted
                if kind in named:
                    self._choose_evicted(kind, named[kind], gone)
            if any(mask.any() for mask in gone.values()):
                self._evict(gone)
        if pairs_full:
            held = self._pair_slots_held(batch_pairs)  # the batch's pairs already in the table
            excess = self.pair_count() + len(batch_pairs) - held.size - self.pairs_max
            if excess > 0:
                self._evict_pairs(max(excess, self.pairs_max // EVICTION_SHARE), held)

    def _pair_slots_held(self, pairs: set[tuple[int, str, str]]) -> IntArray:
        """The pair-table slots of those of ``pairs`` the table holds."""
        customers = self._customers.ids
        bits = K.PAIR_ID_BITS
        keys = []
        for customer, kind, other in pairs:
            c = customers.get(customer)
            o = self._strings[kind].ids.get(other)
            if c is not None and o is not None:
                tag = K.PAIR_DEVICE if kind == "device" else K.PAIR_COUNTERPARTY
                keys.append((tag << (2 * bits)) | (c << bits) | o)
        known: IntArray = np.unique(np.asarray(keys, np.int64))
        table = self._state["pairs"]
        slots = np.empty(known.size, np.int64)
        K.pair_slots(table, known, slots)
        held: IntArray = slots[table[slots, 0] == known]
        return held

    def _choose_evicted(self, kind: str, keys: set[Any], gone: dict[str, Any]) -> None:
        """Mark in ``gone[kind]`` the entities of ``kind`` to evict so that ``keys`` (the
        batch's) fit: the least recently seen of those not named by the batch (by the 5 s
        bucket of their last event; among equals, the lowest ids first).

        A counterparty ``c:<id>`` goes with customer ``<id>`` (its link would otherwise
        name an id given to someone else); it was last named no later than the customer was
        last seen (``K.customer_seen``), so it too is idle longer than any customer kept."""
        interner = self._interners()[kind]
        ids = interner.ids
        rows = interner.rows
        batch_ids = [ids[key] for key in keys if key in ids]
        new = len(keys) - len(batch_ids)
        already = int(gone[kind].sum())  # counterparties going with their customers
        excess = len(interner) - already + new - self.entities_max
        if excess <= 0:
            return
        candidate = interner.live() & ~gone[kind]
        candidate[batch_ids] = False
        prefix = _VELOCITY_PREFIX[kind]
        if kind == "customer":
            seen = np.empty(rows, np.int64)
            counterparties = self._strings["counterparty"].rows
            K.customer_seen(
                self._state["c_meta"],
                self._state["p_meta"],
                self._state["p_int"],
                rows,
                counterparties,
                seen,
            )
        else:
            seen = self._state[f"{prefix}_meta"][:rows, 0]
        chosen = _least(np.flatnonzero(candidate), seen, excess, self.entities_max)
        gone[kind][chosen] = True
        if kind == "customer" and chosen.size:
            p_rows = self._strings["counterparty"].rows
            links = self._state["p_int"][:p_rows, K.PI_LINK]
            linked = links >= 0
            gone["counterparty"][linked] |= gone["customer"][links[linked]]

    def _evict(self, gone: dict[str, np.ndarray[Any, np.dtype[np.bool_]]]) -> None:
        """Evict the entities marked in ``gone``: their rows back to a fresh entity's, their
        keys out of the interners (their ids free for new keys), every pair naming them out
        of the pair table."""
        for kind, mask in gone.items():
            if mask.any():
                self._interners()[kind].forget(mask)
        # A freed row is reset when its id is given again (``_reset_reused``: the cost goes
        # with the new keys, batch by batch); only its link must go now (``K.customer_seen``).
        self._state["p_int"][np.flatnonzero(gone["counterparty"]), K.PI_LINK] = -1
        self._purge_pairs(gone)
        self.evictions += 1

    def _reset_reused(self) -> None:
        """Rows of ids given again since an eviction freed them: back to a fresh entity's."""
        state = self._state
        for kind, interner in self._interners().items():
            if not interner.reused:
                continue
            rows = np.asarray(interner.reused, np.int64)
            interner.reused.clear()
            prefix = _VELOCITY_PREFIX[kind]
            fresh: dict[str, np.ndarray[Any, Any]] = {
                f"{prefix}_{name}": array for name, array in _entity_arrays(1).items()
            }
            if kind == "customer":
                fresh.update(_customer_arrays(1))
            elif kind == "counterparty":
                fresh.update(_counterparty_arrays(1))
            for name, row in fresh.items():
                state[name][rows] = row[0]

    def _evict_pairs(self, count: int, held_slots: IntArray) -> None:
        """Evict the ``count`` pairs least recently paid or seen (among equal times, the
        lowest keys first), but those in ``held_slots`` (the batch's)."""
        table = self._state["pairs"]
        held = np.zeros(table.shape[0], np.bool_)
        held[held_slots] = True
        candidate = (table[:, 0] != 0) & ~held
        times = table[candidate, 1]
        count = min(count, times.size)
        if count == 0:
            return
        before = int(np.partition(times, count - 1)[count - 1])
        ties = count - int((times < before).sum())
        tie_keys = table[candidate, 0][times == before]
        tie_key = int(np.partition(tie_keys, ties - 1)[ties - 1])
        none = {kind: np.zeros(rows, np.bool_) for kind, rows in self._rows().items()}
        self._purge_pairs(none, (before, before, tie_key), held)
        self.evictions += 1

    def _purge_pairs(
        self,
        gone: dict[str, np.ndarray[Any, np.dtype[np.bool_]]],
        older: tuple[int, int, int] = (_TIME_MIN, _TIME_MIN, -1),
        held: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
    ) -> None:
        """Rebuild the pair table without the pairs naming an entity ``gone`` marks, nor those
        older than ``older`` (``K.keep_pairs``: before, at, key up to), but ``held``."""
        table = self._state["pairs"]
        kept = np.zeros_like(table)
        self._state["counters"][K.K_PAIRS] = K.keep_pairs(
            table,
            kept,
            gone["customer"],
            gone["counterparty"],
            gone["device"],
            *older,
            np.zeros(table.shape[0], np.bool_) if held is None else held,
        )
        self._state["pairs"] = kept

    # --- recovery -------------------------------------------------------------------------

    def snapshot(self, path: str | os.PathLike[str]) -> None:
        """Write the whole state to ``path`` atomically (temp file, fsync, rename, fsync dir).

        After ``FeatureStore.restore(path)``, computing the events that came after the snapshot
        gives exactly the features an uninterrupted store gives.
        """
        write_snapshot(self.snapshot_arrays(), path)

    def snapshot_arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        """A copy of the whole state as ``write_snapshot`` takes it: taken while nothing
        else changes the store (a memory copy), written after without holding anyone up."""
        self._ensure_capacity(None)  # pending counterparty links go into the arrays
        sizes = self._rows()
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "format": np.array([SNAPSHOT_FORMAT], np.int64),
            "rows": np.array([sizes[kind] for kind in K.ENTITY_KINDS], np.int64),
            "customers": np.array(list(self._customers.ids), np.int64),
            "ids_customer": np.array(list(self._customers.ids.values()), np.int64),
        }
        for kind, interner in self._strings.items():
            blob, offsets = _pack_strings(list(interner.ids))
            arrays[f"keys_{kind}_blob"] = blob
            arrays[f"keys_{kind}_offsets"] = offsets
            arrays[f"ids_{kind}"] = np.array(list(interner.ids.values()), np.int64)
        for name, array in self._state.items():
            rows = _rows_for(name, sizes)
            arrays[f"state_{name}"] = (array if rows is None else array[:rows]).copy()
        return arrays

    @classmethod
    def restore(
        cls,
        path: str | os.PathLike[str],
        *,
        entities_max: int = ENTITIES_MAX_DEFAULT,
        pairs_max: int = PAIRS_MAX_DEFAULT,
    ) -> FeatureStore:
        """A store holding exactly the state saved by ``snapshot(path)``, with these bounds
        (give the ones the snapshot's store had: the events replayed after it then evict
        exactly what they evicted; a store over its bounds evicts on its next batch).

        Reads the format before evictions (1) too: its ids are dense, in order of first
        sighting, and every entity's last sighting is in its state already."""
        name = Path(path).name
        try:
            # The file is opened here, not by np.load, which leaks it when the zip is bad.
            with Path(path).open("rb") as f, np.load(f, allow_pickle=False) as npz:
                loaded = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise FeatureSnapshotCorruptError(f"snapshot {name} cannot be read: {error}") from error
        try:
            version = loaded["format"].tolist()
            if version not in ([1], [SNAPSHOT_FORMAT]):
                raise FeatureSnapshotCorruptError(f"snapshot {name} has an unknown format")
            store = cls(capacity=1, pair_capacity=2, entities_max=entities_max, pairs_max=pairs_max)
            keys: dict[str, list[Any]] = {"customer": loaded["customers"].tolist()}
            for kind in _STRING_KINDS:
                keys[kind] = _unpack_strings(
                    loaded[f"keys_{kind}_blob"], loaded[f"keys_{kind}_offsets"]
                )
            for kind, interner in store._interners().items():
                if version == [1]:  # dense ids, in order of first sighting
                    used, ids = len(keys[kind]), np.arange(len(keys[kind]), dtype=np.int64)
                else:
                    used = int(loaded["rows"][K.ENTITY_KINDS.index(kind)])
                    ids = loaded[f"ids_{kind}"]
                _restore_interner(interner, keys[kind], ids, used, name)
            sizes = store._rows()
            for kind in K.ENTITY_KINDS:
                store._capacity[kind] = sizes[kind]
            for state_name, array in store._state.items():
                saved = loaded[f"state_{state_name}"]
                rows = _rows_for(state_name, sizes)
                if saved.dtype != array.dtype or saved.shape[1:] != array.shape[1:]:
                    raise FeatureSnapshotCorruptError(
                        f"snapshot {name}: {state_name} has a bad shape"
                    )
                if rows is not None and saved.shape[0] != rows:
                    raise FeatureSnapshotCorruptError(
                        f"snapshot {name}: {state_name} has a bad size"
                    )
                store._state[state_name] = np.ascontiguousarray(saved)
        except (KeyError, IndexError) as error:
            raise FeatureSnapshotCorruptError(f"snapshot {name} lacks {error}") from error
        pairs = store._state["pairs"].shape[0]
        if pairs & (pairs - 1) or pairs < 2:
            raise FeatureSnapshotCorruptError(f"snapshot {name}: the pair table has a bad size")
        return store


def _restore_interner(
    interner: _Interner, keys: list[Any], ids: IntArray, rows: int, name: str
) -> None:
    """Fill an empty interner with a snapshot's keys and their ids (distinct, below ``rows``);
    the ids no key holds are free, reused lowest first as they would have been."""
    if (
        ids.ndim != 1
        or ids.size != len(keys)
        or not 0 <= rows <= ENTITIES_MAX
        or (ids.size and (int(ids.min()) < 0 or int(ids.max()) >= rows))
    ):
        raise FeatureSnapshotCorruptError(f"snapshot {name}: bad entity ids")
    live = np.zeros(rows, np.bool_)
    live[ids] = True
    interner.ids = dict(zip(keys, ids.tolist(), strict=True))
    if len(interner.ids) != ids.size or int(live.sum()) != ids.size:
        raise FeatureSnapshotCorruptError(f"snapshot {name}: repeated keys or ids")
    interner.rows = rows
    interner.free = np.flatnonzero(~live)[::-1].tolist()
    interner.keys = np.empty(max(16, rows), object)
    column = np.empty(len(keys), object)
    column[:] = keys
    interner.keys[ids] = column


_WHOLE_ARRAYS: Final = frozenset({"pairs", "counters"})
_KIND_OF_PREFIX: Final = {prefix: kind for kind, prefix in _VELOCITY_PREFIX.items()}


def _rows_for(name: str, sizes: dict[str, int]) -> int | None:
    """Rows of state array ``name`` in use (None: the array is saved whole).

    State names start with the prefix of the entity kind that indexes them (``c_int``: customer,
    ``p_payers``: counterparty, ``d_counts``: device, …)."""
    if name in _WHOLE_ARRAYS:
        return None
    return sizes[_KIND_OF_PREFIX[name.split("_", 1)[0]]]


def _least(candidates: IntArray, seen: IntArray, excess: int, bound: int) -> IntArray:
    """Of ``candidates`` (ascending), the ``max(excess, bound // EVICTION_SHARE)`` least
    recently seen (``seen[candidate]``; among equals, the lowest first), or all of them."""
    count = min(max(excess, bound // EVICTION_SHARE), candidates.size)
    if count == candidates.size:
        return candidates
    times = seen[candidates]
    before = np.partition(times, count - 1)[count - 1]
    older = times < before
    ties = np.flatnonzero(times == before)[: count - int(older.sum())]
    return np.sort(np.concatenate([candidates[older], candidates[ties]]))


def _customer_of(counterparty: str) -> int | None:
    """The customer a counterparty ``c:<id>`` names (None: not a customer)."""
    if counterparty.startswith("c:"):
        text = counterparty[2:]
        if text.isdigit() and text.isascii():
            return int(text)
    return None


def _batch_keys(checked: _Checked, kind: str) -> set[Any]:
    """The distinct keys of ``kind`` a batch names (customers: also those its counterparties
    ``c:<id>`` name, which are interned with them)."""
    if kind != "customer":
        keys = set(checked.strings[kind])
        keys.discard("")
        return keys
    customers: set[Any] = set(checked.customer_id.tolist())
    for counterparty in set(checked.strings["counterparty"]):
        linked = _customer_of(counterparty)
        if linked is not None:
            customers.add(linked)
    return customers


def _batch_pairs(checked: _Checked) -> set[tuple[int, str, str]]:
    """The distinct pairs a batch names, as (customer, kind, key): (customer, device) of its
    events with a device, (customer, counterparty) of its events with a counterparty (the
    pairs its events look up or add: an event of any kind reads its pair for
    ``counterparty.first_payment``, so an eviction for the batch must not take it)."""
    customers = checked.customer_id.tolist()
    pairs = {
        (c, "device", d) for c, d in zip(customers, checked.strings["device"], strict=True) if d
    }
    pairs.update(
        (c, "counterparty", p)
        for c, p in zip(customers, checked.strings["counterparty"], strict=True)
        if p
    )
    return pairs


def _pair_keys(batch: EventBatch) -> IntArray:
    """The distinct pair-table keys a batch's events look up or add."""
    bits = K.PAIR_ID_BITS
    money = batch.kind <= K.KIND_WITHDRAWAL
    paid = money & (batch.counterparty >= 0)
    used = batch.device >= 0
    keys = np.concatenate(
        [
            (K.PAIR_COUNTERPARTY << (2 * bits))
            | (batch.customer[paid] << bits)
            | batch.counterparty[paid],
            (K.PAIR_DEVICE << (2 * bits)) | (batch.customer[used] << bits) | batch.device[used],
        ]
    )
    return np.unique(keys)


def _pack_strings(keys: list[str]) -> tuple[np.ndarray[Any, Any], IntArray]:
    encoded = [key.encode("utf-8") for key in keys]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    if encoded:
        offsets[1:] = np.cumsum([len(b) for b in encoded])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _unpack_strings(blob: np.ndarray[Any, Any], offsets: IntArray) -> list[str]:
    raw = blob.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]


def _outputs(n: int) -> tuple[IntArray, FloatArray, np.ndarray[Any, Any]]:
    return (
        np.empty((K.N_INT, n), np.int64),
        np.empty((K.N_FLOAT, n), np.float64),
        np.empty((K.N_BOOL, n), np.bool_),
    )


def _named(
    out_i: np.ndarray[Any, Any], out_f: np.ndarray[Any, Any], out_b: np.ndarray[Any, Any]
) -> dict[str, np.ndarray[Any, Any]]:
    features: dict[str, np.ndarray[Any, Any]] = {}
    for row, spec in enumerate(_INT_SPECS):
        features[spec.name] = out_i[row]
    for row, spec in enumerate(_FLOAT_SPECS):
        features[spec.name] = out_f[row]
    for row, spec in enumerate(_BOOL_SPECS):
        features[spec.name] = out_b[row]
    return features


# --- column checks ------------------------------------------------------------------------------


def _check_array(batch: EventBatch, name: str, dtype: Any, n: int) -> np.ndarray[Any, Any]:
    array: np.ndarray[Any, Any] = getattr(batch, name)
    if (
        not isinstance(array, np.ndarray)
        or array.dtype != dtype
        or array.shape != (n,)
        or not array.flags.c_contiguous
    ):
        raise InvalidRiskEventError(f"column {name} must be a contiguous {np.dtype(dtype)} array")
    return array


def _check(ok: bool, column: str, problem: str) -> None:
    if not ok:
        raise InvalidRiskEventError(f"column {column}: a value is {problem}", column=column)


def _int_column(
    column: str, values: Any, n: int | None = None, *, default: int | None = None
) -> IntArray:
    if values is None:
        if default is None or n is None:
            raise InvalidRiskEventError(f"column {column} is required", column=column)
        return np.full(n, default, np.int64)
    try:
        array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    except (TypeError, ValueError) as error:
        raise InvalidRiskEventError(f"column {column}: {error}", column=column) from error
    if array.size == 0:
        array = array.astype(np.int64)
    if array.ndim != 1 or not (
        np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_)
    ):
        raise InvalidRiskEventError(f"column {column} must hold integers", column=column)
    if n is not None and array.size != n:
        raise InvalidRiskEventError(f"column {column} has {array.size} values, not {n}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise InvalidRiskEventError(f"column {column}: a value is too large", column=column)
    return np.ascontiguousarray(array, dtype=np.int64)


def _float_column(column: str, values: Any, n: int) -> FloatArray:
    if values is None:
        return np.full(n, np.nan, np.float64)
    try:
        array = np.asarray(
            values if isinstance(values, np.ndarray) else list(values), dtype=np.float64
        )
    except (TypeError, ValueError) as error:
        raise InvalidRiskEventError(f"column {column}: {error}", column=column) from error
    if array.ndim != 1 or array.size != n:
        raise InvalidRiskEventError(f"column {column} has {array.size} values, not {n}")
    return np.ascontiguousarray(array)


def _str_column(column: str, values: Sequence[str] | None, n: int) -> list[str]:
    if values is None:
        return [""] * n
    out = list(values)
    if len(out) != n:
        raise InvalidRiskEventError(f"column {column} has {len(out)} values, not {n}")
    # The distinct types, not every value (a batch holds one or two: str, numpy's str_).
    if not all(issubclass(kind, str) for kind in set(map(type, out))):
        raise InvalidRiskEventError(f"column {column} must hold strings", column=column)
    return out
