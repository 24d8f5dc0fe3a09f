"""The feature store against its plain-Python reference, and its promises: windows and their
error bound, batch == one by one, snapshot/restore + replay, out-of-order events, growth."""

from __future__ import annotations

import dataclasses
import itertools
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puhui.errors import InvalidInputError
from puhui.risk import (
    FEATURE_SCHEMA,
    EventKind,
    FeatureSnapshotCorruptError,
    FeatureStore,
    InvalidRiskEventError,
    RiskEvent,
)
from puhui.risk import _feature_kernel as K
from tests.risk.feature_reference import NS, WINDOW_NS, WINDOWS, Reference

START = 1_767_225_600 * NS  # 2026-01-01 00:00 UTC, on every bucket boundary

GAPS_S = [
    0,
    1,
    4,
    5,
    6,
    59,
    60,
    61,
    179,
    180,
    3599,
    3600,
    3601,
    86399,
    86400,
    7 * 86400,
    31 * 86400,
]


@st.composite
def streams(draw: st.DrawFn, max_size: int = 40) -> list[RiskEvent]:
    n = draw(st.integers(1, max_size))
    t = START + draw(st.sampled_from([0, 1, 4 * NS, 59 * NS, 3599 * NS]))
    events = []
    for _ in range(n):
        gap = draw(st.sampled_from(GAPS_S)) * NS + draw(st.sampled_from([0, 1, NS // 2]))
        if draw(st.integers(0, 9)) == 0:
            gap = -draw(st.sampled_from([1, NS, 3600 * NS]))  # out of order
        t = max(0, t + gap)
        location = draw(st.sampled_from([None, (30.0, 120.0), (31.2, 121.5), (-33.9, 151.2)]))
        events.append(
            RiskEvent(
                kind=draw(st.sampled_from(list(EventKind))),
                customer_id=draw(st.integers(1, 4)),
                at_ns=t,
                amount=draw(st.sampled_from([0, 1, 2, 3, 5, 100, 150, 999, 10**6, 2**40])),
                currency="CNY",
                counterparty=draw(
                    st.sampled_from(["", "c:1", "c:2", "c:3", "c:9", "m:1", "m:2", "card:7"])
                ),
                device_id=draw(st.sampled_from(["", "d1", "d2", "d3"])),
                ip=draw(st.sampled_from(["", "10.0.0.1", "10.0.0.2"])),
                merchant=draw(st.sampled_from(["", "", "", "m:1", "m:3"])),
                latitude=None if location is None else location[0],
                longitude=None if location is None else location[1],
                tz_offset_s=draw(st.sampled_from([None, 0, 8 * 3600, -5 * 3600, 5 * 3600 + 1800])),
                kyc_level=draw(st.sampled_from([None, 0, 1, 2])),
                account_created_ns=draw(st.sampled_from([None, None, START - 86400 * NS])),
            )
        )
    return events


def reference_features(events: Sequence[RiskEvent]) -> list[dict[str, Any]]:
    reference = Reference()
    return [reference.step(event) for event in events]


def compute_in_batches(
    store: FeatureStore, events: Sequence[RiskEvent], cuts: Sequence[int]
) -> dict[str, np.ndarray[Any, Any]]:
    """Features of ``events`` computed in batches split at ``cuts``, joined back together."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(events)), len(events)]
    parts = [
        store.compute(store.batch_from_events(events[a:b])) for a, b in itertools.pairwise(bounds)
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in FEATURE_SCHEMA}


def assert_same(name: str, got: Any, want: Any, row: int) -> None:
    spec = FEATURE_SCHEMA[name]
    if spec.type == "float64":
        if math.isnan(want):
            assert math.isnan(got), (name, row, got, want)
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (name, row, got, want)
    else:
        assert got == want, (name, row, got, want)


def assert_matches_reference(
    features: dict[str, np.ndarray[Any, Any]], events: Sequence[RiskEvent]
) -> None:
    expected = reference_features(events)
    for row, want in enumerate(expected):
        assert set(want) == set(FEATURE_SCHEMA)
        for name, value in want.items():
            assert_same(name, features[name][row].item(), value, row)


# --- every feature against the reference --------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(events=streams(), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_features_equal_the_reference(events: list[RiskEvent], cuts: list[int]) -> None:
    # Tiny capacities: every run also grows every table past its initial size.
    store = FeatureStore(capacity=1, pair_capacity=2)
    assert_matches_reference(compute_in_batches(store, events, cuts), events)


@settings(max_examples=60, deadline=None)
@given(events=streams())
def test_a_batch_equals_the_same_events_one_by_one(events: list[RiskEvent]) -> None:
    whole = compute_in_batches(FeatureStore(), events, [])
    single = compute_in_batches(FeatureStore(), events, list(range(len(events))))
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(whole[name], single[name], err_msg=name)


def test_schema_names_types_and_columns() -> None:
    store = FeatureStore()
    events = [RiskEvent(EventKind.P2P, 1, START, 100, "CNY", "c:2", "d1", "1.1.1.1")]
    features = store.compute(store.batch_from_events(events))
    assert list(features) == list(FEATURE_SCHEMA)
    for name, spec in FEATURE_SCHEMA.items():
        assert features[name].dtype == np.dtype(spec.type), name
        assert features[name].shape == (1,)
        assert spec.description and spec.name == name
    windows = {name.rsplit("_", 1)[1] for name in FEATURE_SCHEMA if ".count_" in name}
    assert windows == set(WINDOWS)


def test_kernel_bucket_constants_match_the_ring_table() -> None:
    # The kernel divides by literal constants for speed; they must be the ring table's.
    assert K.RING_BUCKET_NS.tolist() == [5 * NS, 180 * NS, 3600 * NS, 86400 * NS, 86400 * NS]
    assert K.RING_BUCKETS.tolist() == [12, 20, 24, 7, 30]
    assert [WINDOWS[w] for w in K.WINDOW_NAMES] == list(
        zip(K.RING_BUCKET_NS.tolist(), K.RING_BUCKETS.tolist(), strict=True)
    )
    assert (K.RING_BUCKET_NS * K.RING_BUCKETS).tolist() == [WINDOW_NS[w] for w in K.WINDOW_NAMES]


# --- windows: boundaries and the error bound -------------------------------------------------


def _count_after(gap_ns: int, window: str, start: int = START) -> int:
    """customer.count_<window> of a payment ``gap_ns`` after a first one."""
    store = FeatureStore()
    events = [
        RiskEvent(EventKind.PAYMENT, 1, start, 10, "CNY", "m:1"),
        RiskEvent(EventKind.PAYMENT, 1, start + gap_ns, 10, "CNY", "m:1"),
    ]
    return int(store.compute(store.batch_from_events(events))[f"customer.count_{window}"][1])


@pytest.mark.parametrize("window", list(WINDOWS))
def test_window_boundaries(window: str) -> None:
    g, n = WINDOWS[window]
    # An event at a bucket's start is counted until the window's end, then dropped at once.
    assert _count_after(0, window) == 1
    assert _count_after(n * g - 1, window) == 1
    assert _count_after(n * g, window) == 0
    # An event at a bucket's last nanosecond leaves a bucket early: after (n - 1) buckets + 1 ns.
    late = START + g - 1
    assert _count_after((n - 1) * g, window, start=late) == 1
    assert _count_after((n - 1) * g + 1, window, start=late) == 0


@settings(max_examples=80, deadline=None)
@given(
    times=st.lists(st.integers(0, 40 * 86400 * NS), min_size=1, max_size=60),
    offset=st.integers(0, 86400 * NS),
)
def test_window_error_is_bounded_by_one_bucket(times: list[int], offset: int) -> None:
    """exact count over [t - W + g, t]  <=  feature  <=  exact count over (t - W, t]."""
    at = sorted(START + offset + t for t in times)
    store = FeatureStore()
    events = [RiskEvent(EventKind.PAYMENT, 1, t, 1, "CNY", "m:1") for t in at]
    features = store.compute(store.batch_from_events(events))
    for name, (g, n) in WINDOWS.items():
        w = g * n
        for j, t in enumerate(at):
            value = int(features[f"customer.count_{name}"][j])
            assert sum(1 for s in at[:j] if s >= t - w + g) <= value
            assert value <= sum(1 for s in at[:j] if s > t - w)


@settings(max_examples=80, deadline=None)
@given(amounts=st.lists(st.integers(0, 10**9), min_size=1, max_size=40))
def test_percentile_error_is_bounded_by_its_bucket(amounts: list[int]) -> None:
    """|estimate - exact mid-rank| <= half the share of past amounts in the same log bucket."""
    store = FeatureStore()
    events = [
        RiskEvent(EventKind.PAYMENT, 1, START + j * NS, a, "CNY", "m:1")
        for j, a in enumerate(amounts)
    ]
    percentile = store.compute(store.batch_from_events(events))["customer.amount_percentile"]
    for j in range(1, len(amounts)):
        past = amounts[:j]
        a = amounts[j]
        exact = (sum(p < a for p in past) + 0.5 * sum(p == a for p in past)) / j
        bucket = K.amount_bucket(a)
        same = sum(1 for p in past if K.amount_bucket(p) == bucket) / j
        assert abs(percentile[j] - exact) <= same / 2 + 1e-12
        # a bucket spans at most a factor 1.5: amounts 1.5 times apart never share one
        assert all(
            K.amount_bucket(p) != bucket for p in past if p >= 2 and (p > 1.5 * a or a > 1.5 * p)
        )


# --- out-of-order events ------------------------------------------------------------------------


def test_out_of_order_event_counts_as_at_the_watermark() -> None:
    first = RiskEvent(EventKind.PAYMENT, 1, START + 3600 * NS, 500, "CNY", "m:1", "d1")
    late = RiskEvent(EventKind.PASSWORD_RESET, 1, START, 0, "", "", "d1")
    then = RiskEvent(EventKind.PAYMENT, 1, START + 3601 * NS, 700, "CNY", "m:1", "d1")
    store = FeatureStore()
    features = store.compute(store.batch_from_events([first, late, then]))
    clamped = FeatureStore()
    expected = clamped.compute(
        clamped.batch_from_events([first, dataclasses.replace(late, at_ns=first.at_ns), then])
    )
    assert features["event.late_ns"].tolist() == [0, 3600 * NS, 0]
    assert expected["event.late_ns"].tolist() == [0, 0, 0]
    for name in FEATURE_SCHEMA:
        if name != "event.late_ns":
            np.testing.assert_array_equal(features[name], expected[name], err_msg=name)
    assert features["customer.since_password_reset_s"][2] == 1.0
    assert store.watermark_ns == then.at_ns


def test_a_very_old_event_does_not_disturb_the_windows() -> None:
    store = FeatureStore()
    now = START + 40 * 86400 * NS
    store.compute(store.batch_from_events([RiskEvent(EventKind.PAYMENT, 1, now, 5, "CNY", "m:1")]))
    ancient = RiskEvent(EventKind.PAYMENT, 1, START, 7, "CNY", "m:1")
    after = RiskEvent(EventKind.PAYMENT, 1, now + NS, 1, "CNY", "m:1")
    features = store.compute(store.batch_from_events([ancient, after]))
    # the ancient payment counts as made at the watermark, in every window
    assert features["customer.count_1m"].tolist() == [1, 2]
    assert features["customer.sum_30d"].tolist() == [5, 12]


# --- recovery -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=streams(), cut=st.integers(0, 40))
def test_restore_then_replay_equals_an_uninterrupted_store(
    events: list[RiskEvent], cut: int
) -> None:
    cut = min(cut, len(events))
    uninterrupted = FeatureStore(capacity=2, pair_capacity=2)
    expected = compute_in_batches(uninterrupted, events, [cut])
    before = FeatureStore(capacity=2, pair_capacity=2)
    if cut:
        compute_in_batches(before, events[:cut], [])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "features.snapshot"
        before.snapshot(path)
        restored = FeatureStore.restore(path)
    assert restored.events_applied == cut
    assert restored.watermark_ns == before.watermark_ns
    assert restored.entity_counts() == before.entity_counts()
    if cut < len(events):
        replayed = compute_in_batches(restored, events[cut:], [])
        for name in FEATURE_SCHEMA:
            np.testing.assert_array_equal(replayed[name], expected[name][cut:], err_msg=name)


def test_snapshot_is_atomic_and_checked(tmp_path: Path) -> None:
    store = FeatureStore()
    events = [RiskEvent(EventKind.P2P, 1, START, 100, "CNY", "c:2", "d1", "1.1.1.1")]
    store.compute(store.batch_from_events(events))
    path = tmp_path / "features.snapshot"
    store.snapshot(path)
    store.snapshot(path)  # replacing an existing snapshot
    assert [p.name for p in tmp_path.iterdir()] == ["features.snapshot"]  # no temp file left
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken = tmp_path / "broken.snapshot"
    broken.write_bytes(bytes(data))
    with pytest.raises(FeatureSnapshotCorruptError):
        FeatureStore.restore(broken)
    truncated = tmp_path / "truncated.snapshot"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FeatureSnapshotCorruptError):
        FeatureStore.restore(truncated)
    with pytest.raises(FeatureSnapshotCorruptError):
        FeatureStore.restore(tmp_path / "missing.snapshot")


# --- growth -------------------------------------------------------------------------------------


def test_growth_past_initial_capacity_keeps_every_entity() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    columns: dict[str, Any] = {
        "kind": rng.integers(0, 4, n),
        "customer_id": rng.integers(0, 1500, n),
        "at_ns": START + np.sort(rng.integers(0, 86400 * NS, n)),
        "amount": rng.integers(1, 1000, n),
        "device": [f"d{x}" for x in rng.integers(0, 2000, n)],
        "counterparty": [f"c:{x}" for x in rng.integers(0, 1500, n)],
        "ip": [f"ip{x}" for x in rng.integers(0, 900, n)],
    }
    small = FeatureStore(capacity=1, pair_capacity=2)
    large = FeatureStore(capacity=4096, pair_capacity=1 << 14)
    grown: dict[str, list[np.ndarray[Any, Any]]] = {k: [] for k in FEATURE_SCHEMA}
    for a in range(0, n, 700):
        part = {k: v[a : a + 700] for k, v in columns.items()}
        features = small.compute(small.batch_from_columns(**part))
        for k in FEATURE_SCHEMA:
            grown[k].append(features[k])
    expected = large.compute(large.batch_from_columns(**columns))
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(np.concatenate(grown[name]), expected[name], err_msg=name)
    assert small.entity_counts() == large.entity_counts()
    customers = set(columns["customer_id"].tolist()) | {
        int(cp[2:]) for cp in columns["counterparty"]
    }
    assert small.entity_counts()["customer"] == len(customers) > 1000


# --- input ------------------------------------------------------------------------------------


def test_bad_columns_are_rejected_before_anything_changes() -> None:
    store = FeatureStore()
    good: dict[str, Any] = {"kind": [0], "customer_id": [1], "at_ns": [START], "device": ["d1"]}
    for change in (
        {"kind": [9]},
        {"at_ns": [-1]},
        {"amount": [-5]},
        {"amount": [10**15 + 1]},
        {"latitude": [91.0], "longitude": [0.0]},
        {"tz_offset_s": [19 * 3600]},
        {"kyc_level": [-2]},
        {"customer_id": [1.5]},
        {"device": [3]},
        {"at_ns": [START, START]},
    ):
        with pytest.raises(InvalidRiskEventError):
            store.batch_from_columns(**{**good, **change})
    assert store.entity_counts() == dict.fromkeys(K.ENTITY_KINDS, 0)


def test_a_batch_from_another_store_is_rejected() -> None:
    other = FeatureStore()
    batch = other.batch_from_columns(
        kind=[0, 0], customer_id=[1, 2], at_ns=[START, START], device=["a", "b"]
    )
    with pytest.raises(InvalidRiskEventError):
        FeatureStore().compute(batch)
    with pytest.raises(InvalidRiskEventError):
        other.compute(dataclasses.replace(batch, at_ns=batch.at_ns.astype(np.int32)))


def test_empty_batch_and_events_without_keys() -> None:
    store = FeatureStore()
    features = store.compute(store.batch_from_events([]))
    assert all(column.size == 0 for column in features.values())
    login = RiskEvent(EventKind.LOGIN, 7, START)
    features = store.compute(store.batch_from_events([login]))
    assert features["device.count_1h"].tolist() == [0]
    assert math.isnan(features["counterparty.account_age_s"][0])
    assert store.events_applied == 1


def test_merchant_is_taken_from_an_m_counterparty() -> None:
    store = FeatureStore()
    events = [
        RiskEvent(EventKind.PAYMENT, 1, START, 100, "CNY", "m:42"),
        RiskEvent(EventKind.PAYMENT, 2, START + NS, 50, "CNY", "", merchant="m:42"),
        RiskEvent(EventKind.PAYMENT, 3, START + 2 * NS, 10, "CNY", "m:42"),
    ]
    features = store.compute(store.batch_from_events(events))
    assert features["merchant.count_1m"].tolist() == [0, 1, 2]
    assert features["merchant.sum_1m"].tolist() == [0, 100, 150]
    assert features["counterparty.count_1m"].tolist() == [0, 0, 1]  # the second names none


def test_mule_pattern_shows_as_fan_in_to_a_young_account_passing_money_on() -> None:
    store = FeatureStore()
    mule = 900
    opened = START - 2 * 86400 * NS
    events = [RiskEvent(EventKind.LOGIN, mule, START, account_created_ns=opened)]
    events += [
        RiskEvent(EventKind.P2P, payer, START + payer * NS, 10_000, "CNY", f"c:{mule}")
        for payer in range(1, 6)
    ]
    events.append(RiskEvent(EventKind.WITHDRAWAL, mule, START + 10 * NS, 45_000, "CNY", "card:1"))
    events.append(RiskEvent(EventKind.P2P, 6, START + 11 * NS, 10_000, "CNY", f"c:{mule}"))
    features = store.compute(store.batch_from_events(events))
    last = -1
    assert features["counterparty.distinct_payers_24h"][last] == 5
    assert features["counterparty.account_age_s"][last] == pytest.approx(2 * 86400 + 11)
    assert features["counterparty.outflow_24h"][last] == 45_000
    assert features["counterparty.passthrough_ratio_24h"][last] == pytest.approx(0.9)
    assert features["counterparty.first_payment"][last]


@pytest.mark.parametrize(
    ("window", "bucket_ns", "buckets"), [("24h", 3600 * NS, 24), ("30d", 86400 * NS, 30)]
)
def test_distinct_counts_at_the_window_edge(window: str, bucket_ns: int, buckets: int) -> None:
    """A pair paid again exactly one window later: its old bucket has left, nothing to undo."""
    store = FeatureStore()
    edge = START + buckets * bucket_ns
    events = [
        RiskEvent(EventKind.P2P, 1, START, 10, "CNY", "c:2"),
        RiskEvent(EventKind.P2P, 1, edge, 10, "CNY", "c:2"),
        RiskEvent(EventKind.P2P, 3, edge + 1, 10, "CNY", "c:2"),
        RiskEvent(EventKind.P2P, 1, edge + 2, 10, "CNY", "c:4"),
    ]
    features = store.compute(store.batch_from_events(events))
    assert features[f"customer.distinct_counterparties_{window}"].tolist() == [0, 0, 0, 1]
    if window == "24h":
        assert features["counterparty.distinct_payers_24h"].tolist() == [0, 0, 1, 0]
    assert_matches_reference(features, events)


def test_a_reserved_store_does_not_grow_and_computes_the_same() -> None:
    events = [
        RiskEvent(
            EventKind.P2P, c, START + c * NS, 100 + c, "CNY", f"c:{c + 1}", f"d{c}", "1.1.1.1"
        )
        for c in range(1, 300)
    ]
    reserved = FeatureStore(capacity=2, pair_capacity=2)
    reserved.reserve(512, pairs=1024)
    arrays = {name: id(array) for name, array in reserved._state.items()}
    got = reserved.compute(reserved.batch_from_events(events))
    # Nothing was reallocated while computing: the arrays are the ones reserved.
    assert {name: id(array) for name, array in reserved._state.items()} == arrays
    plain = FeatureStore(capacity=2, pair_capacity=2)  # grows batch by batch instead
    expected = plain.compute(plain.batch_from_events(events))
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    with pytest.raises(InvalidInputError):
        reserved.reserve(-1)
    with pytest.raises(InvalidInputError):
        reserved.reserve(1, pairs=1 << 40)


def _large_columns(n: int, seed: int, start: int = START) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    customers = rng.integers(1, 3_000, n)
    kinds = rng.integers(0, K.KINDS, n)
    parties = rng.integers(0, 5_000, n)
    choice = rng.integers(0, 3, n)
    return {
        "kind": kinds,
        "customer_id": customers,
        "at_ns": start + np.cumsum(rng.integers(0, 30 * NS, n)),
        "amount": rng.integers(0, 500_000, n),
        "device": [
            f"d{c}" if r else ""
            for c, r in zip(customers.tolist(), rng.integers(0, 20, n).tolist(), strict=True)
        ],
        "merchant": [""] * n,
        "counterparty": [
            ("", f"c:{p}", f"m:{p % 300}")[k]
            for p, k in zip(parties.tolist(), choice.tolist(), strict=True)
        ],
        "ip": [f"10.0.{c % 250}.1" for c in customers.tolist()],
        "latitude": rng.uniform(20, 40, n),
        "longitude": rng.uniform(100, 120, n),
        "tz_offset_s": np.full(n, 8 * 3600),
        "kyc_level": rng.integers(-1, 3, n),
        "account_created_ns": np.where(rng.random(n) < 0.5, 0, start - 86_400 * NS),
    }


def test_a_large_batch_in_overlapped_chunks_equals_one_pass() -> None:
    """compute_columns interns the next chunk while the compiled pass runs on the one before:
    the features and the state after (here: the next batch's features) are those of one
    compute(batch_from_columns(...)), also when the tables grow between two chunks."""
    from puhui.risk._features import PIPELINE_CHUNK_EVENTS, PIPELINE_EVENTS_MIN

    n = 2 * PIPELINE_EVENTS_MIN + PIPELINE_CHUNK_EVENTS // 3
    first = _large_columns(n, seed=1)
    second = _large_columns(500, seed=2, start=int(first["at_ns"][-1]))
    one_pass = FeatureStore(capacity=1, pair_capacity=2)
    chunked = FeatureStore(capacity=1, pair_capacity=2)
    want = one_pass.compute(one_pass.batch_from_columns(**first))
    got = chunked.compute_columns(**first)
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == want[name].dtype
    assert chunked.entity_counts() == one_pass.entity_counts()
    assert chunked.events_applied == one_pass.events_applied == n
    after_want = one_pass.compute(one_pass.batch_from_columns(**second))
    after_got = chunked.compute(chunked.batch_from_columns(**second))
    for name in FEATURE_SCHEMA:
        np.testing.assert_array_equal(after_got[name], after_want[name], err_msg=name)


def test_a_large_batch_with_a_bad_last_event_changes_nothing() -> None:
    from puhui.risk._features import PIPELINE_EVENTS_MIN

    columns = _large_columns(2 * PIPELINE_EVENTS_MIN, seed=3)
    columns["amount"][-1] = -1
    store = FeatureStore()
    with pytest.raises(InvalidRiskEventError, match="amount"):
        store.compute_columns(**columns)
    assert store.entity_counts() == dict.fromkeys(K.ENTITY_KINDS, 0)
    assert store.events_applied == 0
