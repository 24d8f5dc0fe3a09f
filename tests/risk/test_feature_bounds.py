"""The feature store's bounds: at most ``entities_max`` keys of each kind and ``pairs_max``
pairs, the least recently seen evicted beyond, so that a stream of ever-new keys (an attacker
rotating devices, IPs, payees) cannot grow the memory, nor reset an active entity's state."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puhui.errors import InvalidInputError
from puhui.risk import FEATURE_SCHEMA, EventKind, FeatureStore, InvalidRiskEventError, RiskEvent
from puhui.risk import _feature_kernel as K
from puhui.risk._features import ENTITIES_MAX_DEFAULT, SNAPSHOT_FORMAT
from tests.risk.test_features import START, compute_in_batches, streams

NS = 1_000_000_000
GOLDEN_FORMAT_1 = Path(__file__).parent / "data" / "features-format1.npz"
"""A snapshot written by the store before evictions (format 1; four events, see
``_golden_events``)."""

Columns = dict[str, Any]
P2P = list(EventKind).index(EventKind.P2P)


def _distinct_keys(events: Sequence[RiskEvent]) -> int:
    """The most keys of one kind ``events`` name (customers: also ``c:<id>`` payees)."""
    customers = {e.customer_id for e in events} | {
        int(e.counterparty[2:]) for e in events if e.counterparty.startswith("c:")
    }
    merchants = {
        e.merchant or (e.counterparty if e.counterparty[:2] == "m:" else "") for e in events
    }
    kinds: list[set[Any]] = [
        customers,
        {e.device_id for e in events} - {""},
        merchants - {""},
        {e.counterparty for e in events} - {""},
        {e.ip for e in events} - {""},
    ]
    return max(1, *(len(keys) for keys in kinds))


def _distinct_pairs(events: Sequence[RiskEvent]) -> int:
    """The pairs ``events`` name: (customer, device), and (customer, counterparty) of any
    kind of event (a login naming a payee reads its pair)."""
    devices = {(e.customer_id, e.device_id) for e in events if e.device_id}
    named = {(e.customer_id, e.counterparty) for e in events if e.counterparty}
    return max(1, len(devices) + len(named))


def assert_features_equal(
    got: dict[str, np.ndarray[Any, Any]], want: dict[str, np.ndarray[Any, Any]], rows: Any = ...
) -> None:
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(got[name][rows], want[name][rows], err_msg=name)


def assert_pairs_name_live_entities(store: FeatureStore) -> None:
    """Every pair in the table names entities the store holds; the pair count is right."""
    table = store._state["pairs"]
    keys = table[table[:, 0] != 0, 0]
    assert store.pair_count() == keys.size
    live = {kind: set(interner.ids.values()) for kind, interner in store._interners().items()}
    for key in keys.tolist():
        tag = key >> (2 * K.PAIR_ID_BITS)
        customer = (key >> K.PAIR_ID_BITS) & K.PAIR_ID_MAX
        other = key & K.PAIR_ID_MAX
        assert customer in live["customer"]
        assert other in live["counterparty" if tag == K.PAIR_COUNTERPARTY else "device"]


# --- under the bounds: nothing changes ----------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=streams(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_a_store_at_its_bounds_computes_what_an_unbounded_one_does(
    events: list[RiskEvent], cuts: list[int]
) -> None:
    # Bounds equal to what the stream needs: every batch takes the slow path (it could pass
    # a bound), and none evicts.
    bounded = FeatureStore(
        capacity=1,
        pair_capacity=2,
        entities_max=_distinct_keys(events),
        pairs_max=_distinct_pairs(events),
    )
    got = compute_in_batches(bounded, events, cuts)
    want = compute_in_batches(FeatureStore(capacity=1, pair_capacity=2), events, cuts)
    assert bounded.evictions == 0
    assert_features_equal(got, want)


# --- a flood of new keys --------------------------------------------------------------------------


def _flood(n: int, *, active_every: int = 10, start: int = START) -> Columns:
    """One P2P a second: customers 1 and 2 (the active ones, with their own device, IP and
    payee) take turns every ``active_every`` events; every other event comes from a new
    customer on a new device and IP, paying a new payee (``c:<id>``, a customer, or a card)."""
    columns: dict[str, list[Any]] = {
        "kind": [],
        "customer_id": [],
        "at_ns": [],
        "amount": [],
        "device": [],
        "counterparty": [],
        "ip": [],
    }
    for j in range(n):
        if j % active_every == 0:
            row = (1, "dev-1", "c:2", "10.0.0.1")
        elif j % active_every == active_every // 2:
            row = (2, "dev-2", "card:9", "10.0.0.2")
        else:
            payee = f"c:{100_000 + j}" if j % 2 else f"card:{j}"
            row = (10_000 + j, f"dev-x{j}", payee, f"ip-x{j}")
        customer, device, payee, ip = row
        columns["kind"].append(P2P)
        columns["customer_id"].append(customer)
        columns["at_ns"].append(start + j * NS)
        columns["amount"].append(100 + j % 7)
        columns["device"].append(device)
        columns["counterparty"].append(payee)
        columns["ip"].append(ip)
    return {
        name: np.asarray(values) if name in ("kind", "customer_id", "at_ns", "amount") else values
        for name, values in columns.items()
    }


def _part(columns: Columns, low: int, high: int) -> Columns:
    return {name: values[low:high] for name, values in columns.items()}


def test_a_key_rotation_flood_keeps_memory_bounded_and_active_entities_intact() -> None:
    n, batch = 4000, 50
    columns = _flood(n)
    bounded = FeatureStore(capacity=1, pair_capacity=2, entities_max=64, pairs_max=256)
    unbounded = FeatureStore()
    memory = []
    for low in range(0, n, batch):
        part = _part(columns, low, low + batch)
        got = bounded.compute(bounded.batch_from_columns(**part))
        want = unbounded.compute(unbounded.batch_from_columns(**part))
        # the active customers' events: every feature as if nothing were ever evicted
        active = np.isin(part["customer_id"], [1, 2])
        assert_features_equal(got, want, active)
        assert all(count <= 64 for count in bounded.entity_counts().values())
        assert bounded.pair_count() <= 256
        memory.append(bounded.memory_bytes())
    assert bounded.evictions > 0
    assert unbounded.entity_counts()["device"] == n * 8 // 10 + 2
    # Full after the first few hundred events; not a byte more after that.
    assert memory[10] == memory[-1] < unbounded.memory_bytes() // 10
    assert_pairs_name_live_entities(bounded)
    # the active ones' velocity over the hour and the day is all there
    last = bounded.compute(bounded.batch_from_columns(**_part(_flood(n + 1), n, n + 1)))
    assert last["device.count_24h"][0] == n // 10
    assert last["customer.distinct_counterparties_24h"][0] == 1
    assert last["counterparty.distinct_payers_24h"][0] == 1


def test_pairs_are_bounded_and_the_least_recently_used_go_first() -> None:
    # One customer pays a new payee from a new device every second, and its usual payee and
    # device every tenth: the pair table is the bound that binds.
    n = 2000
    columns = _flood(n, active_every=10)
    columns["customer_id"] = np.where(
        np.isin(columns["customer_id"], [1, 2]), columns["customer_id"], 1
    )
    bounded = FeatureStore(entities_max=4096, pairs_max=64)
    unbounded = FeatureStore()
    for low in range(0, n, 16):
        part = _part(columns, low, low + 16)
        got = bounded.compute(bounded.batch_from_columns(**part))
        want = unbounded.compute(unbounded.batch_from_columns(**part))
        assert bounded.pair_count() <= 64
        usual = np.asarray([d in ("dev-1", "dev-2") for d in part["device"]])
        for name in ("device.new_for_customer", "counterparty.first_payment"):
            np.testing.assert_array_equal(got[name][usual], want[name][usual], err_msg=name)
    assert bounded._state["pairs"].shape[0] <= 128
    assert bounded.evictions > 0


def test_a_pair_only_read_by_the_batch_is_not_evicted_for_it() -> None:
    """A card binding naming a payee the customer paid reads the pair
    (``counterparty.first_payment``): the eviction the batch's new device pair makes must
    take another pair (it took the least recently paid, this one: the payee looked new)."""

    def run(store: FeatureStore) -> dict[str, np.ndarray[Any, Any]]:
        store.compute_columns(
            kind=[P2P], customer_id=[1], at_ns=[START], counterparty=["c:2"], amount=[5]
        )
        store.compute_columns(
            kind=[4] * 3, customer_id=[1] * 3, at_ns=[START + NS] * 3, device=["d1", "d2", "d3"]
        )
        card_binding = list(EventKind).index(EventKind.CARD_BINDING)
        return store.compute_columns(
            kind=[card_binding],
            customer_id=[1],
            at_ns=[START + 2 * NS],
            counterparty=["c:2"],
            device=["d4"],
        )

    bounded = FeatureStore(pairs_max=4)
    got = run(bounded)
    assert bounded.evictions == 1 and bounded.pair_count() <= 4
    assert_features_equal(got, run(FeatureStore()))
    assert not got["counterparty.first_payment"][0]


def test_an_evicted_key_seen_again_is_a_key_never_seen(tmp_path: Path) -> None:
    store = FeatureStore(entities_max=32, pairs_max=64)
    first = [
        RiskEvent(EventKind.P2P, 7, START, 500, "CNY", "c:8", "dev-old", "10.9.9.9"),
        RiskEvent(EventKind.P2P, 7, START + NS, 700, "CNY", "c:8", "dev-old", "10.9.9.9"),
    ]
    store.compute(store.batch_from_events(first))
    flood = _flood(200, start=START + 10 * NS)
    for low in range(0, 200, 20):
        store.compute(store.batch_from_columns(**_part(flood, low, low + 20)))
    held = store.entity_counts()
    assert "dev-old" not in store._strings["device"].ids
    assert "c:8" not in store._strings["counterparty"].ids
    assert 7 not in store._customers.ids and 8 not in store._customers.ids
    assert_pairs_name_live_entities(store)
    store.snapshot(tmp_path / "state")
    # The same event with the evicted keys, and with keys never seen, on two copies.
    again = FeatureStore.restore(tmp_path / "state", entities_max=32, pairs_max=64)
    fresh = FeatureStore.restore(tmp_path / "state", entities_max=32, pairs_max=64)
    at = START + 300 * NS
    event = RiskEvent(EventKind.P2P, 7, at, 900, "CNY", "c:8", "dev-old", "10.9.9.9")
    got = again.compute(again.batch_from_events([event]))
    want = fresh.compute(
        fresh.batch_from_events(
            [
                dataclasses.replace(
                    event, customer_id=77, counterparty="c:88", device_id="d-new", ip="10.8.8.8"
                )
            ]
        )
    )
    assert_features_equal(got, want)
    assert got["device.new_for_customer"][0] and got["counterparty.first_payment"][0]
    assert got["customer.count_24h"][0] == 0 and got["device.count_24h"][0] == 0
    assert got["customer.amount_history_count"][0] == 0
    assert again.entity_counts() == fresh.entity_counts()
    assert sum(held.values()) <= 5 * 32


def test_a_customer_named_only_as_a_payee_stays_while_it_is_paid() -> None:
    # Customer 2 never pays: only the payee c:2 names it. It must not be evicted (and its
    # payee with it) while it is paid, however many new customers arrive.
    n = 1500
    columns = _flood(n)
    columns["counterparty"] = [
        "card:9" if c == 2 else p
        for c, p in zip(columns["customer_id"].tolist(), columns["counterparty"], strict=True)
    ]
    bounded = FeatureStore(entities_max=40)
    for low in range(0, n, 25):
        bounded.compute(bounded.batch_from_columns(**_part(columns, low, low + 25)))
    assert 2 in bounded._customers.ids and "c:2" in bounded._strings["counterparty"].ids
    assert bounded.evictions > 0


# --- batches ------------------------------------------------------------------------------------


def _fresh_keys_columns(n: int, batch: int, start: int) -> Columns:
    rng = np.random.default_rng(batch)
    customers = rng.integers(0, n // 2, n) + 10_000 * batch
    return {
        "kind": rng.integers(0, K.KINDS, n),
        "customer_id": customers,
        "at_ns": start + np.cumsum(rng.integers(0, 2 * NS, n)),
        "amount": rng.integers(0, 10_000, n),
        "device": [f"d{batch}-{x}" for x in rng.integers(0, n // 2, n).tolist()],
        "counterparty": [
            (f"c:{x + 10_000 * batch}", f"m:{x % 50}", "")[x % 3]
            for x in rng.integers(0, n // 2, n).tolist()
        ],
        "ip": [f"ip{batch}-{x}" for x in rng.integers(0, n // 3, n).tolist()],
    }


def test_a_large_batch_in_chunks_evicts_what_one_pass_does() -> None:
    """Evictions come before a batch, never between the chunks of ``compute_columns``: the
    chunked batch and the one-pass batch give the same features and the same state."""
    from puhui.risk._features import PIPELINE_EVENTS_MIN

    one_pass = FeatureStore(capacity=1, pair_capacity=2, entities_max=6000, pairs_max=12_000)
    chunked = FeatureStore(capacity=1, pair_capacity=2, entities_max=6000, pairs_max=12_000)
    start = START
    for batch in range(4):
        columns = _fresh_keys_columns(PIPELINE_EVENTS_MIN + 1000, batch, start)
        start = int(columns["at_ns"][-1])
        want = one_pass.compute(one_pass.batch_from_columns(**columns))
        got = chunked.compute_columns(**columns)
        assert_features_equal(got, want)
        assert chunked.entity_counts() == one_pass.entity_counts()
        assert chunked.pair_count() == one_pass.pair_count()
    assert one_pass.evictions == chunked.evictions > 0


def test_a_large_batch_in_chunks_gives_its_keys_the_ids_of_one_pass() -> None:
    """Evictions among equally idle entities go lowest id first, so the ids of a batch's new
    keys decide what a later eviction takes: ``compute_columns`` (interning chunk by chunk)
    and ``compute(batch_from_columns(...))`` must give the same ids. Customers 10,000+ in the
    first chunk, 0+ in the second: one pass had given the second the lower ids."""
    from puhui.risk._features import PIPELINE_CHUNK_EVENTS

    def logins(customers: list[int], at: int) -> Columns:
        n = len(customers)
        return {"kind": [4] * n, "customer_id": customers, "at_ns": [at] * n}

    half = PIPELINE_CHUNK_EVENTS
    first = [10_000 + j for j in range(half)] + list(range(half))
    one_pass = FeatureStore(entities_max=2 * half)
    chunked = FeatureStore(entities_max=2 * half)
    one_pass.compute(one_pass.batch_from_columns(**logins(first, START)))
    chunked.compute_columns(**logins(first, START))
    assert chunked._customers.ids == one_pass._customers.ids
    for store in (one_pass, chunked):  # a new customer evicts 1/8 of the (equally idle) rest
        store.compute_columns(**logins([99_999], START + NS))
        assert store.evictions == 1
    got = chunked.compute_columns(**logins([0, 10_000], START + 2 * NS))
    want = one_pass.compute_columns(**logins([0, 10_000], START + 2 * NS))
    assert_features_equal(got, want)


def test_a_batch_with_more_keys_than_the_bound_is_refused_and_changes_nothing() -> None:
    store = FeatureStore(entities_max=8, pairs_max=16)
    store.compute(store.batch_from_columns(kind=[1], customer_id=[1], at_ns=[START], device=["d"]))
    before = (store.entity_counts(), store.pair_count(), store.events_applied, store.evictions)
    nine_devices: Columns = {
        "kind": [4] * 9,
        "customer_id": [1] * 9,
        "at_ns": [START + NS] * 9,
        "device": [f"d{j}" for j in range(9)],
    }
    with pytest.raises(InvalidRiskEventError, match="9 distinct device keys"):
        store.batch_from_columns(**nine_devices)
    with pytest.raises(InvalidRiskEventError, match="distinct device keys"):
        store.compute_columns(**nine_devices)
    nine_customers = {**nine_devices, "customer_id": list(range(9)), "device": [""] * 9}
    with pytest.raises(InvalidRiskEventError, match="9 distinct customer keys"):
        store.compute_columns(**nine_customers)
    # 4 customers x 5 devices: 20 pairs, more than 16, with 8 keys of each kind at most
    pairs: Columns = {
        "kind": [4] * 20,
        "customer_id": [c for c in range(4) for _ in range(5)],
        "at_ns": [START + NS] * 20,
        "device": [f"d{d}" for _ in range(4) for d in range(5)],
    }
    with pytest.raises(InvalidRiskEventError, match="20 distinct customer-counterparty"):
        store.compute_columns(**pairs)
    after = (store.entity_counts(), store.pair_count(), store.events_applied, store.evictions)
    assert after == before
    # eight of each fit (the one held is evicted for them)
    store.compute_columns(**{k: v[:8] for k, v in nine_devices.items()})
    assert store.entity_counts()["device"] == 8


def test_a_batch_built_before_an_eviction_is_refused() -> None:
    store = FeatureStore(entities_max=8)
    early = store.batch_from_columns(kind=[4], customer_id=[1], at_ns=[START], device=["a"])
    store.compute_columns(
        kind=[4] * 8, customer_id=[2] * 8, at_ns=[START] * 8, device=[f"b{j}" for j in range(8)]
    )
    assert store.evictions == 1
    with pytest.raises(InvalidRiskEventError, match="evicted"):
        store.compute(early)


def test_bounds_are_checked() -> None:
    for bounds in ({"entities_max": 0}, {"pairs_max": 0}, {"entities_max": 1 << 30}):
        with pytest.raises(InvalidInputError):
            FeatureStore(**bounds)
    assert FeatureStore().entities_max == ENTITIES_MAX_DEFAULT
    # a reservation never goes past the bounds
    store = FeatureStore(capacity=1, pair_capacity=2, entities_max=100, pairs_max=50)
    store.reserve(1000, pairs=1000)
    assert store._state["c_vel"].shape[0] == 100
    assert store._state["pairs"].shape[0] == 128


# --- snapshots ------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 60), batch=st.sampled_from([7, 20, 33]))
def test_restore_after_evictions_then_replay_equals_an_uninterrupted_store(
    cut: int, batch: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    n = 1200
    columns = _flood(n)
    bounds = {"entities_max": 48, "pairs_max": 96}
    cuts = list(range(0, n, batch))
    uninterrupted = FeatureStore(**bounds)
    want = [
        uninterrupted.compute(uninterrupted.batch_from_columns(**_part(columns, low, low + batch)))
        for low in cuts
    ]
    before = FeatureStore(**bounds)
    for low in cuts[:cut]:
        before.compute(before.batch_from_columns(**_part(columns, low, low + batch)))
    path = tmp_path_factory.mktemp("state") / "features"
    before.snapshot(path)
    restored = FeatureStore.restore(path, **bounds)
    assert restored.entity_counts() == before.entity_counts()
    assert restored.pair_count() == before.pair_count()
    for step, low in enumerate(cuts[cut:], start=min(cut, len(cuts))):
        got = restored.compute(restored.batch_from_columns(**_part(columns, low, low + batch)))
        assert_features_equal(got, want[step])
    assert restored.entity_counts() == uninterrupted.entity_counts()


def _golden_events() -> list[RiskEvent]:
    return [
        RiskEvent(
            EventKind.P2P,
            1,
            START,
            100,
            "CNY",
            "c:2",
            "d1",
            "10.0.0.1",
            latitude=31.2,
            longitude=121.5,
        ),
        RiskEvent(EventKind.PAYMENT, 2, START + 60 * NS, 250, "CNY", "m:7", "d2", "10.0.0.2"),
        RiskEvent(EventKind.LOGIN, 3, START + 120 * NS, 0, "", "", "d1", "10.0.0.1", kyc_level=2),
        RiskEvent(EventKind.P2P, 1, START + 3600 * NS, 300, "CNY", "c:3", "d1", "10.0.0.1"),
    ]


def test_a_snapshot_of_the_format_before_evictions_still_restores() -> None:
    assert SNAPSHOT_FORMAT == 2
    restored = FeatureStore.restore(GOLDEN_FORMAT_1, entities_max=4, pairs_max=8)
    then = [
        RiskEvent(EventKind.P2P, 1, START + 3700 * NS, 50, "CNY", "c:2", "d1", "10.0.0.1"),
        RiskEvent(EventKind.P2P, 3, START + 3800 * NS, 70, "CNY", "c:1", "d1", "10.0.0.3"),
        RiskEvent(EventKind.PAYMENT, 2, START + 3900 * NS, 20, "CNY", "m:7", "d2", "10.0.0.2"),
    ]
    uninterrupted = FeatureStore()
    uninterrupted.compute(uninterrupted.batch_from_events(_golden_events()))
    assert restored.entity_counts() == uninterrupted.entity_counts()
    assert restored.events_applied == 4
    got = restored.compute(restored.batch_from_events(then))
    want = uninterrupted.compute(uninterrupted.batch_from_events(then))
    assert_features_equal(got, want)
    # and its store evicts like any other: a fifth device evicts the least recently seen
    restored.compute(
        restored.batch_from_columns(
            kind=[4] * 3,
            customer_id=[1] * 3,
            at_ns=[START + 4000 * NS] * 3,
            device=["d3", "d4", "d5"],
        )
    )
    # (d1 was last seen at 3,800 s, d2 at 3,900 s)
    assert set(restored._strings["device"].ids) == {"d2", "d3", "d4", "d5"}
    assert_pairs_name_live_entities(restored)


# --- properties over random streams with tiny bounds (evictions at nearly every batch) ---------

TINY = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _feed(store: FeatureStore, events: Sequence[RiskEvent], size: int) -> list[Any]:
    """``events`` in batches of ``size``, each batch's features (None: refused); the bounds
    and the pair table checked after each batch computed."""
    out: list[Any] = []
    for low in range(0, len(events), size):
        try:
            out.append(store.compute(store.batch_from_events(events[low : low + size])))
        except InvalidRiskEventError:
            out.append(None)
            continue
        assert all(count <= store.entities_max for count in store.entity_counts().values())
        assert store.pair_count() <= store.pairs_max
        assert_pairs_name_live_entities(store)
    return out


def _tiny(bounds: tuple[int, int]) -> FeatureStore:
    return FeatureStore(capacity=1, pair_capacity=2, entities_max=bounds[0], pairs_max=bounds[1])


def _renamed_unless_held(store: FeatureStore, event: RiskEvent) -> RiskEvent:
    """``event`` with every key the store does not hold renamed to one never seen (a customer
    and its payee ``c:<id>`` together); the merchant a payee ``m:<id>`` implies made explicit
    first, so that it is renamed as a merchant."""
    held = {kind: set(interner.ids) for kind, interner in store._interners().items()}
    merchant = event.merchant or (event.counterparty if event.counterparty[:2] == "m:" else "")

    def fresh(kind: str, key: str) -> str:
        return key if not key or key in held[kind] else f"{key}-new"

    counterparty = event.counterparty
    if counterparty.startswith("c:"):
        if int(counterparty[2:]) not in held["customer"]:
            counterparty = f"c:{int(counterparty[2:]) + 1000}"
    else:
        counterparty = fresh("counterparty", counterparty)
    customer = event.customer_id
    return dataclasses.replace(
        event,
        customer_id=customer if customer in held["customer"] else customer + 1000,
        counterparty=counterparty,
        device_id=fresh("device", event.device_id),
        ip=fresh("ip", event.ip),
        merchant=fresh("merchant", merchant),
    )


@TINY
@given(
    events=streams(max_size=60),
    after=streams(max_size=3),
    bounds=st.tuples(st.integers(2, 4), st.integers(2, 6)),
    size=st.integers(1, 2),
)
def test_evicted_keys_of_random_streams_are_keys_never_seen(
    events: list[RiskEvent],
    after: list[RiskEvent],
    bounds: tuple[int, int],
    size: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    store = _tiny(bounds)
    _feed(store, events, size)
    path = tmp_path_factory.mktemp("state") / "features"
    store.snapshot(path)
    again, fresh = (
        FeatureStore.restore(path, entities_max=bounds[0], pairs_max=bounds[1]) for _ in "ab"
    )
    later = [
        dataclasses.replace(
            e,
            at_ns=store.watermark_ns + 1,
            merchant=e.merchant or (e.counterparty if e.counterparty[:2] == "m:" else ""),
        )
        for e in after
    ]
    renamed = [_renamed_unless_held(store, e) for e in later]
    try:
        got = again.compute(again.batch_from_events(later))
    except InvalidRiskEventError:
        with pytest.raises(InvalidRiskEventError):
            fresh.batch_from_events(renamed)
        return
    assert_features_equal(got, fresh.compute(fresh.batch_from_events(renamed)))


@TINY
@given(
    events=streams(max_size=60),
    cut=st.integers(0, 60),
    bounds=st.tuples(st.integers(2, 4), st.integers(2, 6)),
    size=st.integers(1, 3),
)
def test_random_streams_restored_after_evictions_replay_as_uninterrupted(
    events: list[RiskEvent],
    cut: int,
    bounds: tuple[int, int],
    size: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cut = min(cut, len(events)) // size * size
    uninterrupted = _tiny(bounds)
    want = _feed(uninterrupted, events, size)
    before = _tiny(bounds)
    _feed(before, events[:cut], size)
    path = tmp_path_factory.mktemp("state") / "features"
    before.snapshot(path)
    restored = FeatureStore.restore(path, entities_max=bounds[0], pairs_max=bounds[1])
    got = _feed(restored, events[cut:], size)
    for part, expected in zip(got, want[cut // size :], strict=True):
        assert (part is None) == (expected is None)
        if part is not None:
            assert_features_equal(part, expected)
    assert restored.entity_counts() == uninterrupted.entity_counts()
    assert restored.pair_count() == uninterrupted.pair_count()


@TINY
@given(
    events=streams(max_size=40),
    extra=streams(max_size=8),
    bounds=st.tuples(st.integers(2, 4), st.integers(2, 6)),
)
def test_a_refused_batch_of_a_random_stream_changes_nothing(
    events: list[RiskEvent], extra: list[RiskEvent], bounds: tuple[int, int]
) -> None:
    store = _tiny(bounds)
    _feed(store, events, 1)
    before, evictions = store.snapshot_arrays(), store.evictions
    try:
        store.batch_from_events(extra)
    except InvalidRiskEventError:
        after = store.snapshot_arrays()
        assert store.evictions == evictions
        assert before.keys() == after.keys()
        for name, array in before.items():
            np.testing.assert_array_equal(after[name], array, err_msg=name)


@TINY
@given(
    events=streams(max_size=60),
    bounds=st.tuples(st.integers(3, 12), st.integers(3, 16)),
    size=st.integers(1, 12),
)
def test_chunked_batches_of_random_streams_equal_one_pass(
    events: list[RiskEvent], bounds: tuple[int, int], size: int
) -> None:
    """``compute_columns`` in chunks of 2 from 4 events on (the constants made small) against
    ``compute(batch_from_columns(…))``: the same features, the same ids, batch after batch."""
    from puhui.risk import _features
    from puhui.risk._engine import event_columns

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_features, "PIPELINE_EVENTS_MIN", 4)
        patch.setattr(_features, "PIPELINE_CHUNK_EVENTS", 2)
        one_pass, chunked = _tiny(bounds), _tiny(bounds)
        for low in range(0, len(events), size):
            columns: Columns = dict(event_columns(events[low : low + size]))
            del columns["currency"]
            for name in ("device", "merchant", "counterparty", "ip"):
                columns[name] = columns[name].tolist()
            try:
                want = one_pass.compute(one_pass.batch_from_columns(**columns))
            except InvalidRiskEventError:
                with pytest.raises(InvalidRiskEventError):
                    chunked.compute_columns(**columns)
                continue
            assert_features_equal(chunked.compute_columns(**columns), want)
            ids = {kind: i.ids for kind, i in chunked._interners().items()}
            assert ids == {kind: i.ids for kind, i in one_pass._interners().items()}
