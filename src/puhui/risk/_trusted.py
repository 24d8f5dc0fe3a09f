"""The devices the risk engine trusts, per customer: the state behind ``device.*`` features.

A (customer, device) pair is trusted from an accepted login or device change from that device,
or a passed step-up on it (a customer's first device: from any accepted event). Each trusted
pair holds a slot in flat arrays — when it was first trusted, when it was last used, where it
was last seen in an accepted event, and how many payments it made to payees the customer
already had — so that a batch's features and what it teaches are
array operations: one dictionary lookup per event (the pair's slot, as of the start of the
batch) is the only per-event Python on the decision path, and a batch's accepted events
update their pairs with one pass in Python only over the pairs not trusted before it.

At most ``bound`` pairs are kept (the feature store's ``pairs_max``): beyond it the least
recently used are forgotten, the most recently used 7/8 of the bound kept (a forgotten
device is new again: more checks, never fewer). ``EverTrusted`` remembers, in fixed memory,
the customers ever trusted a device for, so that a customer whose devices were all
forgotten does not get the next one counted as the one they came with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._feature_kernel import EARTH_RADIUS_KM

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Pair = tuple[int, str]
Place = tuple[float, float, float]

TRUSTED_LONG_AGO_NS: Final = -(2**62)
"""When a customer's first trusted device (the one they came with) was trusted, and a device
in a snapshot written before trust times were kept."""
EVER_TRUSTED_BITS: Final = 2**26
"""The size of the filter of customers ever trusted (unit: bits; 8 MiB): with three hashes a
customer never trusted answers "trusted before" with probability about 1e-4 among a million
customers ever trusted, 0.4 % among four million."""
_U: Final = np.uint64
_FIRST_CAPACITY: Final = 1024


class EverTrusted:
    """The customers the engine ever trusted a device for, in fixed memory: a Bloom filter
    (three hashes). A customer once added always answers yes — no false "never trusted" —
    so a customer whose trusted devices were all forgotten (beyond ``trusted_max``) does not
    get the next device counted as the one they came with; a customer never trusted answers
    yes with a small probability (``EVER_TRUSTED_BITS``), and then has their first device
    counted as newly trusted: more checks, never fewer."""

    __slots__ = ("_bits", "bits")

    def __init__(self, bits: int = EVER_TRUSTED_BITS, saved: bytes | None = None) -> None:
        if bits <= 0 or bits % 8:
            raise ValueError("bits must be a positive multiple of 8")
        self.bits = bits
        if saved is not None and len(saved) != bits // 8:
            raise ValueError("saved bits of another size")
        self._bits = (
            np.frombuffer(saved, dtype=np.uint8).copy()
            if saved is not None
            else np.zeros(bits // 8, dtype=np.uint8)
        )

    def _positions(self, customers: IntArray) -> npt.NDArray[np.uint64]:
        """Each customer's three bit positions (rows): splitmix64, then double hashing."""
        x = customers.astype(np.int64).astype(np.uint64)
        x = x * _U(0x9E3779B97F4A7C15) + _U(0x632BE59BD9B4E019)
        x = (x ^ (x >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U(27))) * _U(0x94D049BB133111EB)
        x ^= x >> _U(31)
        h1, h2 = x & _U(0xFFFFFFFF), (x >> _U(32)) | _U(1)
        n = _U(self.bits)
        return np.stack((h1 % n, (h1 + h2) % n, (h1 + _U(2) * h2) % n), axis=1)

    def contains(self, customers: IntArray) -> npt.NDArray[np.bool_]:
        """Per customer: ever added (or, rarely, a false yes)."""
        at = self._positions(customers)
        found = (self._bits[at >> _U(3)] >> (at & _U(7)).astype(np.uint8)) & 1
        return np.asarray(found.all(axis=1), dtype=np.bool_)

    def add_many(self, customers: IntArray) -> None:
        at = self._positions(customers).ravel()
        np.bitwise_or.at(self._bits, at >> _U(3), np.left_shift(1, at & _U(7)).astype(np.uint8))

    def add(self, customer: int) -> None:
        self.add_many(np.array([customer], dtype=np.int64))

    def __contains__(self, customer: int) -> bool:
        return bool(self.contains(np.array([customer], dtype=np.int64))[0])

    def to_array(self) -> npt.NDArray[np.uint8]:
        return self._bits.copy()


class TrustedDevices:
    """The trusted (customer, device) pairs with their state, in slots of flat arrays."""

    def __init__(self, ever: EverTrusted | None = None) -> None:
        self._slot_of: dict[Pair, int] = {}
        """Each trusted pair's slot (a plain dict of tuples of an int and a str, and ints:
        it leaves the garbage collector's care)."""
        self._pair_of: list[Pair | None] = []
        self._free: list[int] = []
        self._since = np.zeros(_FIRST_CAPACITY, np.int64)
        """When the pair was first trusted (ns)."""
        self._used = np.zeros(_FIRST_CAPACITY, np.int64)
        """When the pair was last used, as a count of uses: the least are forgotten first."""
        self._place = np.full((_FIRST_CAPACITY, 3), np.nan)
        """Latitude, longitude and time (ns) of the pair's last accepted event with a place
        (NaN: none): only the owner's accepted events move it, never a refused attempt."""
        self._familiar = np.zeros(_FIRST_CAPACITY, np.int64)
        """``device.familiar_payees_paid``."""
        self._uses = 0
        self.devices_of: dict[int, int] = {}
        """How many trusted devices each customer has."""
        self.ever = ever if ever is not None else EverTrusted()

    def __len__(self) -> int:
        return len(self._slot_of)

    # --- reading, per event (as of the start of a batch) ------------------------------------

    def slots(self, customers: Sequence[int], devices: Sequence[str]) -> IntArray:
        """Each (customer, device)'s slot, -1 where it is not trusted."""
        get = self._slot_of.get
        return np.fromiter(
            (get(pair, -1) for pair in zip(customers, devices, strict=True)),
            dtype=np.int64,
            count=len(devices),
        )

    def trusted_for_s(self, slots: IntArray, at_ns: IntArray) -> FloatArray:
        """Seconds since each event's device was first trusted (NaN: not trusted; never
        negative)."""
        since = self._since[np.maximum(slots, 0)]
        seconds = np.where(slots < 0, np.nan, (at_ns - since) / 1e9)
        return np.maximum(seconds, 0.0)

    def travel(
        self, slots: IntArray, latitude: FloatArray, longitude: FloatArray, at_ns: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """How far (km) and how fast (km/h) each event's trusted device moved since its last
        accepted event with a place (NaN: not trusted, or a place unknown)."""
        last = self._place[np.maximum(slots, 0)]
        last[slots < 0] = np.nan
        km = haversine_km(last[:, 0], last[:, 1], latitude, longitude)
        seconds = (at_ns - last[:, 2]) / 1e9
        return km, km * 3600.0 / np.maximum(seconds, 1.0)

    def familiar(self, slots: IntArray) -> IntArray:
        """Each event's device's ``device.familiar_payees_paid`` (0 when not trusted)."""
        return np.where(slots < 0, 0, self._familiar[np.maximum(slots, 0)])

    # --- learning ---------------------------------------------------------------------------

    def learn(
        self,
        customers: Sequence[int],
        devices: Sequence[str],
        slots: IntArray,
        accepted: npt.NDArray[np.bool_],
        at_ns: IntArray,
        latitude: FloatArray | None = None,
        longitude: FloatArray | None = None,
        familiar_events: IntArray | None = None,
        *,
        binds: npt.NDArray[np.bool_] | None = None,
        bound: int,
    ) -> None:
        """What a batch's ``accepted`` events teach, in their order: each one's (customer,
        device) trusted (since the event, unless it already was; a customer's first device
        since long ago) and the most recently used; placed where the event's place is
        known; the pairs of ``familiar_events`` (event positions, each one of an accepted
        event) paid one more familiar payee, if trusted. ``slots``: as ``slots`` gave at the
        start of the batch. Then the least recently used beyond ``bound`` are forgotten.

        ``binds``: the events that may make a device trusted for a customer who was trusted
        a device before (a login, a device change, a passed step-up; None: all): any other
        event from a device new to such a customer teaches nothing, accepted or not — a small
        payment let through from an attacker's phone must not make it familiar."""
        taken = np.flatnonzero(accepted)
        event_slots = slots.copy()
        fresh = taken[slots[taken] < 0]
        if len(fresh):
            self._trust_new(customers, devices, fresh, at_ns, event_slots, binds)
        used = taken[event_slots[taken] >= 0]  # not an empty device
        if len(used):
            last = _last_of_each(event_slots[used])
            self._used[event_slots[used[last]]] = self._uses + 1 + last
            self._uses += len(used)
        if latitude is not None and longitude is not None and len(used):
            seen = used[~(np.isnan(latitude[used]) | np.isnan(longitude[used]))]
            if len(seen):
                at = seen[_last_of_each(event_slots[seen])]
                self._place[event_slots[at]] = np.column_stack(
                    (latitude[at], longitude[at], at_ns[at].astype(np.float64))
                )
        if familiar_events is not None and len(familiar_events):
            paid_from = event_slots[familiar_events]
            np.add.at(self._familiar, paid_from[paid_from >= 0], 1)  # not an untrusted device
        self.forget(bound)

    def _trust_new(
        self,
        customers: Sequence[int],
        devices: Sequence[str],
        fresh: IntArray,
        at_ns: IntArray,
        event_slots: IntArray,
        binds: npt.NDArray[np.bool_] | None,
    ) -> None:
        """Slots for the pairs of accepted events not trusted at the start of the batch, in
        the events' order; each first trusted at its first event here, a customer's first
        device (one not in ``ever``) long ago. An event that does not bind (``learn``)
        trusts only a customer's first device."""
        slot_of, devices_of = self._slot_of, self.devices_of
        # Per event: it does not bind, and its customer was trusted a device before the batch
        # (one who was not, and gets a device in it, is known for the rest of the batch).
        if binds is not None and not binds[fresh].all():
            before = self.ever.contains(np.asarray(customers, dtype=np.int64)[fresh])
            ever_before: list[bool] = before.tolist()
            unbound: list[bool] = (~binds[fresh]).tolist()
        else:
            ever_before = unbound = [False] * len(fresh)
        slots: list[int] = []
        since: list[int] = []
        firsts: list[int] = []  # positions in slots of a customer's first device
        first_customers: list[int] = []
        times: list[int] = at_ns[fresh].tolist()
        for i, at, no_bind, trusted_before in zip(
            fresh.tolist(), times, unbound, ever_before, strict=True
        ):
            device = devices[i]
            if not device:
                continue
            customer = customers[i]
            pair = (customer, device)
            slot = slot_of.get(pair)
            if slot is None:
                known = devices_of.get(customer, 0)
                if no_bind and (known or trusted_before):
                    continue  # not the customer's first device: it takes a login or step-up
                devices_of[customer] = known + 1
                if not known:
                    firsts.append(len(slots))
                    first_customers.append(customer)
                slot = self._take(pair)
                slots.append(slot)
                since.append(at)
            event_slots[i] = slot
        if not slots:
            return
        new = np.asarray(slots, dtype=np.int64)
        first_trusted = np.asarray(since, dtype=np.int64)
        if firsts:
            # A customer is in ``firsts`` once a batch (then known), so the filter as of the
            # batch's start answers for all of them.
            them = np.asarray(first_customers, dtype=np.int64)
            came_with = np.asarray(firsts, dtype=np.int64)[~self.ever.contains(them)]
            first_trusted[came_with] = TRUSTED_LONG_AGO_NS
            self.ever.add_many(them)
        self._fill(new, first_trusted)

    def _take(self, pair: Pair) -> int:
        """A slot for a new pair (its arrays' values are set by ``_fill``)."""
        if self._free:
            slot = self._free.pop()
            self._pair_of[slot] = pair
        else:
            slot = len(self._pair_of)
            self._pair_of.append(pair)
        self._slot_of[pair] = slot
        return slot

    def _fill(self, slots: IntArray, since: IntArray) -> None:
        """New pairs' slots: first trusted ``since``, never used, nowhere, nothing paid."""
        while len(self._pair_of) > len(self._since):
            self._grow()
        self._since[slots] = since
        self._used[slots] = 0
        self._place[slots] = np.nan
        self._familiar[slots] = 0

    def _grow(self) -> None:
        size = 2 * len(self._since)
        self._since = np.resize(self._since, size)
        self._used = np.resize(self._used, size)
        self._familiar = np.resize(self._familiar, size)
        place = np.full((size, 3), np.nan)
        place[: len(self._place)] = self._place
        self._place = place

    def place(self, pair: Pair, place: Place) -> None:
        """A trusted pair seen at ``place`` (a passed step-up confirms a challenged event's)."""
        slot = self._slot_of.get(pair)
        if slot is not None:
            self._place[slot] = place

    def forget(self, bound: int) -> None:
        """Beyond ``bound`` pairs, keep the most recently used 7/8 of it (one pass per 1/8 of
        the bound new pairs)."""
        if len(self._slot_of) <= bound:
            return
        drop = len(self._slot_of) - (bound - bound // 8)
        live = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        gone = live[np.argpartition(self._used[live], drop - 1)[:drop]]
        devices_of = self.devices_of
        for slot in gone.tolist():
            pair = self._pair_of[slot]
            assert pair is not None
            del self._slot_of[pair]
            self._pair_of[slot] = None
            left = devices_of[pair[0]] - 1
            if left:
                devices_of[pair[0]] = left
            else:
                del devices_of[pair[0]]
        self._free.extend(gone.tolist())
        self._place[gone] = np.nan
        self._familiar[gone] = 0

    # --- views and snapshots ----------------------------------------------------------------

    def _in_order(self) -> list[tuple[Pair, int]]:
        """(pair, slot), least recently used first."""
        items = list(self._slot_of.items())
        slots = np.fromiter((slot for _, slot in items), dtype=np.int64, count=len(items))
        return [items[k] for k in np.argsort(self._used[slots], kind="stable").tolist()]

    def since(self) -> dict[Pair, int]:
        """Each trusted pair with when it was first trusted (ns), least recently used first."""
        return {pair: int(self._since[slot]) for pair, slot in self._in_order()}

    def places(self) -> dict[Pair, Place]:
        """Each trusted pair's last place (latitude, longitude, time in ns), where known."""
        return {
            pair: (float(row[0]), float(row[1]), float(row[2]))
            for pair, slot in self._slot_of.items()
            if not np.isnan((row := self._place[slot])[0])
        }

    def familiar_counts(self) -> dict[Pair, int]:
        """Each trusted pair's ``device.familiar_payees_paid``, where not 0."""
        return {
            pair: int(self._familiar[slot])
            for pair, slot in self._slot_of.items()
            if self._familiar[slot]
        }

    def saved(self) -> dict[str, list[list[Any]]]:
        """The state as a snapshot keeps it (JSON lists; ``load`` reads them back)."""
        return {
            "trusted": [[c, d, since] for (c, d), since in self.since().items()],
            "places": [[c, d, *place] for (c, d), place in self.places().items()],
            "familiar": [[c, d, count] for (c, d), count in self.familiar_counts().items()],
        }

    @classmethod
    def load(
        cls,
        trusted: Iterable[tuple[Pair, int]],
        places: Iterable[tuple[Pair, Place]],
        familiar: Iterable[tuple[Pair, int]],
        ever: EverTrusted,
    ) -> TrustedDevices:
        """The state from a snapshot's pairs (least recently used first, with since when),
        places and familiar counts (pairs not trusted are ignored)."""
        state = cls(ever)
        slots: list[int] = []  # new pairs' slots, and since when each was trusted
        since_ns: list[int] = []
        order: list[int] = []  # every pair's slot, least recently used first
        for pair, since in trusted:
            slot = state._slot_of.get(pair)
            if slot is None:
                slot = state._take(pair)
                slots.append(slot)
                since_ns.append(since)
                state.devices_of[pair[0]] = state.devices_of.get(pair[0], 0) + 1
            order.append(slot)
        state._fill(np.asarray(slots, dtype=np.int64), np.asarray(since_ns, dtype=np.int64))
        if order:
            used = np.asarray(order, dtype=np.int64)
            last = _last_of_each(used)
            state._used[used[last]] = 1 + last
            state._uses = len(order)
        get = state._slot_of.get
        placed = [(slot, place) for pair, place in places if (slot := get(pair)) is not None]
        if placed:
            state._place[[slot for slot, _ in placed]] = [place for _, place in placed]
        counted = [(slot, count) for pair, count in familiar if (slot := get(pair)) is not None]
        if counted:
            state._familiar[[slot for slot, _ in counted]] = [count for _, count in counted]
        return state


def _last_of_each(slots: IntArray) -> IntArray:
    """Positions in ``slots`` of the last occurrence of each distinct value."""
    reverse = slots[::-1]
    _, first = np.unique(reverse, return_index=True)
    return np.asarray(len(slots) - 1 - first, dtype=np.int64)


def haversine_km(
    lat1: FloatArray, lon1: FloatArray, lat2: FloatArray, lon2: FloatArray
) -> FloatArray:
    """The feature kernel's ``haversine_km`` over arrays (NaN where a place is unknown)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2) ** 2
        + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    )
    km: FloatArray = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return km
