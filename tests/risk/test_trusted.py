"""The trusted devices' state in array slots against a plain model of it: an ordered dict of
pairs, least recently used first, each event applied one at a time (what the engine kept
before the slots)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from puhui.risk._trusted import TRUSTED_LONG_AGO_NS, EverTrusted, TrustedDevices

Pair = tuple[int, str]


class _Model:
    def __init__(self) -> None:
        self.since: dict[Pair, int] = {}
        self.places: dict[Pair, tuple[float, float, float]] = {}
        self.familiar: dict[Pair, int] = {}
        self.ever: set[int] = set()

    def learn(
        self,
        events: list[tuple[int, str, bool, int, float, float]],
        familiar: list[int],
        bound: int,
    ) -> None:
        for customer, device, accepted, at, lat, lon in events:
            if not (accepted and device):
                continue
            pair = (customer, device)
            if not (math.isnan(lat) or math.isnan(lon)):
                self.places[pair] = (lat, lon, float(at))
            since = self.since.pop(pair, None)
            if since is None:
                known = any(c == customer for c, _ in self.since)
                since = at if known or customer in self.ever else TRUSTED_LONG_AGO_NS
                self.ever.add(customer)
            self.since[pair] = since
        for i in familiar:
            pair = (events[i][0], events[i][1])
            self.familiar[pair] = self.familiar.get(pair, 0) + 1
        if len(self.since) > bound:
            keep = bound - bound // 8
            self.since = dict(list(self.since.items())[len(self.since) - keep :])
            self.places = {p: v for p, v in self.places.items() if p in self.since}
            self.familiar = {p: v for p, v in self.familiar.items() if p in self.since}


_event = st.tuples(
    st.integers(1, 4),  # customer
    st.sampled_from(["", "a", "b", "c", "d", "e"]),  # device
    st.booleans(),  # accepted
    st.sampled_from([math.nan, 30.0, 31.5]),  # latitude
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_event, min_size=1, max_size=12), min_size=1, max_size=8),
    bound=st.integers(1, 12),
    pick=st.randoms(use_true_random=False),
)
def test_slots_keep_what_the_ordered_dict_kept(
    batches: list[list[tuple[int, str, bool, float]]], bound: int, pick: object
) -> None:
    import random

    assert isinstance(pick, random.Random)
    state, model = TrustedDevices(EverTrusted(bits=1024)), _Model()
    at = 1_000
    for batch in batches:
        events = []
        for customer, device, accepted, lat in batch:
            at += 1_000_000_000
            events.append((customer, device, accepted, at, lat, lat if math.isnan(lat) else 121.0))
        customers = [e[0] for e in events]
        devices = [e[1] for e in events]
        slots = state.slots(customers, devices)
        pairs = zip(customers, devices, strict=True)
        assert (slots < 0).tolist() == [pair not in model.since for pair in pairs]
        taken = np.array([e[2] for e in events], dtype=np.bool_)
        familiar = [i for i, e in enumerate(events) if e[2] and e[1] and pick.random() < 0.5]
        state.learn(
            customers,
            devices,
            slots,
            taken,
            np.array([e[3] for e in events], dtype=np.int64),
            np.array([e[4] for e in events]),
            np.array([e[5] for e in events]),
            np.array(familiar, dtype=np.int64),
            bound=bound,
        )
        model.learn(events, familiar, bound)
        assert list(state.since().items()) == list(model.since.items())
        assert state.places() == model.places
        assert state.familiar_counts() == model.familiar
        counts: dict[int, int] = {}
        for c, _ in model.since:
            counts[c] = counts.get(c, 0) + 1
        assert state.devices_of == counts
        again = TrustedDevices.load(
            state.since().items(),
            state.places().items(),
            state.familiar_counts().items(),
            state.ever,
        )
        assert list(again.since().items()) == list(model.since.items())
        assert again.places() == state.places() and again.familiar_counts() == model.familiar


def test_travel_and_trust_read_the_slots_as_of_the_lookup() -> None:
    """Distance from the last accepted place, time since first trusted, NaN where the pair
    is not trusted; a slot freed by forgetting and taken by a new pair starts clean."""
    state = TrustedDevices(EverTrusted(bits=1024))
    ns = 10**9
    first = state.slots([1], ["a"])
    state.learn(
        [1],
        ["a"],
        first,
        np.ones(1, bool),
        np.array([5 * ns]),
        np.array([31.0]),
        np.array([121.0]),
        np.array([0]),
        bound=1,
    )
    slots = state.slots([1, 2], ["a", "a"])
    assert slots[1] == -1
    km, kmh = state.travel(
        slots, np.array([32.0, 32.0]), np.array([121.0] * 2), np.array([3605 * ns] * 2)
    )
    assert 110 < km[0] < 112 and 110 < kmh[0] < 112 and math.isnan(km[1]) and math.isnan(kmh[1])
    trusted_for = state.trusted_for_s(slots, np.array([7 * ns, 7 * ns]))
    assert trusted_for[0] > 4e9 and math.isnan(trusted_for[1])  # the first device: long ago
    assert state.familiar(slots).tolist() == [1, 0]
    second = state.slots([2], ["b"])  # forgets (1, "a"): bound 1
    state.learn([2], ["b"], second, np.ones(1, bool), np.array([9 * ns]), bound=1)
    assert list(state.since()) == [(2, "b")]
    assert state.places() == {} and state.familiar_counts() == {}
    assert state.familiar(state.slots([2], ["b"])).tolist() == [0]


_MASK64 = 2**64 - 1


def _scalar_positions(customer: int, bits: int) -> tuple[int, int, int]:
    """The filter's bit positions as the engine computed them one customer at a time before
    (a saved filter must keep its meaning)."""
    x = (customer * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    h1, h2 = x & 0xFFFFFFFF, (x >> 32) | 1
    return h1 % bits, (h1 + h2) % bits, (h1 + 2 * h2) % bits


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40))
def test_ever_trusted_sets_the_bits_a_saved_filter_was_written_with(customers: list[int]) -> None:
    bits = 8 * 4096
    saved = bytearray(bits // 8)
    for customer in customers[::2]:
        for slot in _scalar_positions(customer, bits):
            saved[slot >> 3] |= 1 << (slot & 7)
    ever = EverTrusted(bits=bits)
    ever.add_many(np.array(customers[::2], dtype=np.int64))
    assert ever.to_array().tobytes() == bytes(saved)
    loaded = EverTrusted(bits=bits, saved=bytes(saved))
    expected = [
        all(saved[s >> 3] >> (s & 7) & 1 for s in _scalar_positions(c, bits)) for c in customers
    ]
    assert loaded.contains(np.array(customers, dtype=np.int64)).tolist() == expected
    assert [c in loaded for c in customers] == expected
    assert all(c in loaded for c in customers[::2])  # never a false "never trusted"


DIFF_RULES = """
name = "t"
version = "1"

[[rule]]
id = "stranger"
description = "a reset or device change from a stranger's device"
when = 'event.type in ["password_reset", "device_change"] and event.device == "x"'
action = "challenge"
priority = 1
status = "active"
owner = "t"

[[rule]]
id = "blocked"
description = "blocked"
when = 'event.device == "evil"'
action = "reject"
priority = 9
status = "active"
owner = "t"

[[rule]]
id = "new_device_money"
description = "money from a device not trusted"
when = 'event.type in ["p2p", "payment"] and device.new_for_customer and event.amount > 500'
action = "challenge"
priority = 2
status = "active"
owner = "t"

[[rule]]
id = "after_change"
description = "money soon after a reset or a device change"
when = '''event.amount > 0
  and (customer.since_password_reset_s < 3600 or customer.since_device_change_s < 3600)'''
action = "review"
priority = 3
status = "active"
owner = "t"

[[rule]]
id = "moved"
description = "a trusted device far from its last place, or paying familiar payees"
when = 'device.distance_km > 100 or device.familiar_payees_paid >= 2 or device.trusted_for_s < 120'
score = 10
priority = 4
status = "active"
owner = "t"

[[rule]]
id = "strangers_money"
description = "money in from customers paying for the first time (the values shown)"
when = 'customer.new_payers_inflow_24h >= 300 or customer.new_payers_24h >= 2'
score = 10
priority = 5
status = "active"
owner = "t"
"""

_KINDS_DRAWN = ["payment", "p2p", "login", "password_reset", "device_change"]
_step = st.one_of(
    st.tuples(
        st.just("event"),
        st.integers(1, 3),  # customer
        st.sampled_from(_KINDS_DRAWN),
        st.sampled_from(["phone", "tab", "x", "evil", ""]),
        st.sampled_from([0, 300, 900]),  # amount
        st.sampled_from(["c:1", "c:2", "m:1"]),  # counterparty
        st.sampled_from([(31.2, 121.4), (30.5, 104.0)]),  # place
    ),
    st.tuples(st.just("step_up"), st.integers(1, 3), st.sampled_from(["phone", "tab", "x"])),
    st.tuples(st.just("cut")),  # the end of a batch
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, min_size=1, max_size=40))
def test_the_engine_learns_trust_and_changes_as_the_one_event_at_a_time_reference(
    steps: list[tuple[object, ...]],
) -> None:
    """Random batches of logins, payments, resets and device changes from known, new,
    challenged and blocked devices, with step-ups between: the engine (array slots, batch
    passes) decides as ``EngineBefore`` (one event at a time, plain dicts), reasons with
    their feature values included."""
    from puhui.clock import ManualClock
    from puhui.risk import EventKind, RiskEvent, RiskLists, parse_ruleset
    from puhui.risk._engine import RiskEngine, engine_schema

    from .engine_before import EngineBefore

    t0 = 1_767_000_000 * 10**9
    rules = parse_ruleset(DIFF_RULES, engine_schema())
    engine = RiskEngine(rules, lists=RiskLists(ManualClock(t0)))
    reference = EngineBefore(rules, lists=RiskLists(ManualClock(t0)))
    batch: list[RiskEvent] = []
    minute = 0

    def decide() -> None:
        if batch:
            assert engine(batch) == reference(batch)
            batch.clear()

    for step in steps:
        if step[0] == "event":
            _, customer, kind, device, amount, payee, place = step
            assert isinstance(place, tuple)
            lat, lon = place
            minute += 1
            money = kind in ("payment", "p2p")
            batch.append(
                RiskEvent(
                    kind=EventKind(str(kind)), customer_id=int(str(customer)),
                    at_ns=t0 + minute * 60 * 10**9, amount=int(str(amount)) if money else 0,
                    currency="CNY", counterparty=str(payee) if money else "",
                    device_id=str(device), ip="10.0.0.1", latitude=float(str(lat)),
                    longitude=float(str(lon)), kyc_level=2, account_created_ns=t0 - 10**15,
                )
            )  # fmt: skip
        elif step[0] == "step_up":
            decide()
            engine.trust_device(int(str(step[1])), str(step[2]))
            reference.trust_device(int(str(step[1])), str(step[2]))
        else:
            decide()
    decide()
