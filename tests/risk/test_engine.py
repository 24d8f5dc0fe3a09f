"""The risk engine: features, model and rules in one pass, decisions logged with their feature
values, the feature state rebuilt from snapshot + log after a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from puhui.clock import ManualClock
from puhui.risk import Decision, EventKind, RiskEvent, RiskLists, load_ruleset, parse_ruleset
from puhui.risk._engine import (
    DEFAULT_RULES,
    RiskEngine,
    engine_schema,
    event_columns,
)
from puhui.risk._log import DecisionLog
from puhui.risk._trusted import TRUSTED_LONG_AGO_NS

T0 = 1_767_000_000 * 10**9
DAY = 86_400 * 10**9

BLOCKED_RULE = """
[[rule]]
id = "blocked"
description = "blocked"
when = 'event.device in list("blocked_devices")'
action = "reject"
priority = 2
status = "active"
owner = "t"
"""
"""A rule the engine tests' rulesets share: the devices on the block list are rejected."""

RULES = (
    """
name = "t"
version = "1"

[[rule]]
id = "big"
description = "big"
when = 'event.amount >= 100000 and customer.count_24h >= 1'
action = "review"
priority = 1
status = "active"
owner = "t"

"""
    + BLOCKED_RULE
)


def _event(k: int, amount: int, device: str = "d1", kind: EventKind = EventKind.P2P) -> RiskEvent:
    return RiskEvent(
        kind=kind,
        customer_id=7,
        at_ns=T0 + k * 60 * 10**9,
        amount=amount,
        currency="CNY",
        counterparty="c:9",
        device_id=device,
        ip="10.0.0.1",
        kyc_level=2,
        account_created_ns=T0 - 400 * DAY,
    )


def _engine(tmp_path: Path, clock: ManualClock) -> RiskEngine:
    lists = RiskLists(clock)
    lists.add("blocked_devices", "evil", reason="case 1")
    return RiskEngine(
        parse_ruleset(RULES, engine_schema()), lists=lists, log=DecisionLog(tmp_path / "log")
    )


def _close(engine: RiskEngine) -> None:
    if engine.log is not None:
        engine.log.close()


def test_decisions_follow_features_rules_and_lists(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    engine = _engine(tmp_path, clock)
    first = engine([_event(0, 200_000)])  # no history yet: count_24h is 0
    assert first[0].decision is Decision.ACCEPT and first[0].reasons == ()
    second, third = engine([_event(1, 200_000), _event(2, 5_00, device="evil")])
    assert second.decision is Decision.REVIEW
    assert second.reasons[0].startswith("big(") and "event.amount=200000" in second.reasons[0]
    assert third.decision is Decision.REJECT and third.reasons[0].startswith("blocked(")
    assert second.ruleset_version.startswith("1+") and second.model_version == "none"
    assert engine([]) == []
    _close(engine)


def test_every_batch_is_logged_with_its_feature_values(tmp_path: Path) -> None:
    engine = _engine(tmp_path, ManualClock(T0))
    engine([_event(0, 100)])
    engine([_event(1, 200_000), _event(2, 300)])
    assert engine.log is not None
    records = list(engine.log.records())
    assert [r.rows for r in records] == [1, 2]
    last = records[-1]
    assert last.columns["decision"].tolist() == [2, 0]  # review, accept
    assert last.columns["amount"].tolist() == [200_000, 300]
    assert last.columns["features"].shape[0] == 2
    schema = tmp_path / "log" / f"schema-{last.meta['schema']}.json"
    assert schema.exists() and "customer.count_24h" in schema.read_text()
    _close(engine)


def test_a_restarted_engine_rebuilds_its_features_from_snapshot_and_log(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    engine = _engine(tmp_path, clock)
    engine([_event(k, 1_000) for k in range(5)])
    engine.snapshot(tmp_path / "state")
    engine([_event(k, 1_000) for k in range(5, 9)])
    reference = engine([_event(20, 1_000)])
    _close(engine)
    restarted = _engine(tmp_path / "other", clock)
    _close(restarted)
    restarted.log = DecisionLog(tmp_path / "log")
    replayed = restarted.recover(tmp_path / "state")
    assert replayed == 4 + 1  # the batch after the snapshot, and the one just decided
    # Both stores have now seen the same events: the next decision's features agree.
    a = engine.features.compute(engine.features.batch_from_events([_event(30, 5)]))
    b = restarted.features.compute(restarted.features.batch_from_events([_event(30, 5)]))
    assert reference and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    _close(restarted)


def test_trusted_devices_survive_a_restart(tmp_path: Path) -> None:
    """Devices trusted before the snapshot (a step-up, an accepted login) and after it (an
    accepted login in the log) are trusted again after a restart; a rejected one is not,
    nor one that only paid (accepted)."""
    clock = ManualClock(T0)
    engine = _engine(tmp_path, clock)
    engine.trust_device(7, "phone")
    engine([_event(0, 0, device="tablet", kind=EventKind.LOGIN)])
    engine.snapshot(tmp_path / "state")
    saved = json.loads((tmp_path / "state" / "features.json").read_text())
    # least recently used first, each with when it was first trusted (the customer's first
    # device: long ago)
    assert saved["trusted"] == [[7, "phone", TRUSTED_LONG_AGO_NS], [7, "tablet", T0]]
    laptop = _event(1, 0, device="laptop", kind=EventKind.LOGIN)
    paid = engine([laptop, _event(2, 1_000, device="evil"), _event(3, 1_000, device="pad")])
    assert [d.decision for d in paid] == [Decision.ACCEPT, Decision.REJECT, Decision.ACCEPT]
    _close(engine)
    restarted = _engine(tmp_path / "other", clock)
    _close(restarted)
    restarted.log = DecisionLog(tmp_path / "log")
    restarted.recover(tmp_path / "state")
    untrusted = restarted._untrusted(
        [7, 7, 7, 7, 7, 8], ["phone", "tablet", "laptop", "evil", "pad", "phone"]
    )
    assert untrusted.tolist() == [False, False, False, True, True, True]
    trusted = engine.trusted_devices()  # and since when, from snapshot and log
    assert list(restarted.trusted_devices().items()) == list(trusted.items())
    assert trusted[7, "laptop"] == T0 + 60 * 10**9
    _close(restarted)


def test_the_engine_says_for_how_long_a_device_has_been_trusted(tmp_path: Path) -> None:
    """``device.trusted_for_s``: NaN on a device not trusted yet (a challenged login does
    not make it trusted), then the seconds since its first accepted event or passed step-up
    (using it again does not restart the count); the customer's first device counts as
    trusted long ago; logged with the other features."""
    from puhui.risk import find_decisions

    clock = ManualClock(T0)
    login_rule = """
[[rule]]
id = "login.new"
description = "a login from a new device"
when = 'event.type == "login" and device.new_for_customer'
action = "challenge"
priority = 3
status = "active"
owner = "t"
"""
    rules = parse_ruleset(RULES + login_rule, engine_schema())
    engine = RiskEngine(rules, lists=RiskLists(clock), log=DecisionLog(tmp_path / "log"))
    seen: list[float | None] = []
    engine([_event(-1, 1_000, device="home")])  # the phone the customer came with
    for k, kind in enumerate([EventKind.LOGIN, EventKind.LOGIN, EventKind.P2P, EventKind.P2P]):
        engine([_event(k, 1_000 if kind is EventKind.P2P else 0, device="new", kind=kind)])
        if k == 1:
            engine.trust_device(7, "new")  # the step-up of the second login passed
    engine([_event(10, 1_000, device="new")])
    engine.log.flush()  # type: ignore[union-attr]
    for found in find_decisions(tmp_path / "log", customer_id=7):
        seen.append(found.features["device.trusted_for_s"])
    assert seen[0] is None  # the first device: not trusted before its first event
    assert seen[1:] == [None, None, 60.0, 120.0, 540.0]  # None: NaN, not trusted
    _close(engine)


def test_trusted_devices_are_bounded_the_least_recently_used_forgotten(tmp_path: Path) -> None:
    """A flood of accepted events from ever-new devices keeps the trusted pairs within the
    bound (the feature store's ``pairs_max``); a device in use stays trusted through it, one
    not used since the flood began is new again (more checks, never fewer)."""
    from puhui.risk._features import FeatureStore

    clock = ManualClock(T0)
    lists = RiskLists(clock)
    engine = RiskEngine(
        parse_ruleset(RULES, engine_schema()),
        lists=lists,
        features=FeatureStore(pairs_max=64),
        log=DecisionLog(tmp_path / "log"),
    )
    assert engine.trusted_max == 64
    engine([_event(0, 1_000, device="old-phone")])
    engine.trust_device(7, "daily-phone")
    for k in range(1, 301):
        # three new devices a minute (each logging in), and the daily phone once in a while
        batch = [_event(k, 0, device=f"flood-{k}-{i}", kind=EventKind.LOGIN) for i in range(3)]
        if k % 10 == 0:
            batch.append(_event(k, 1_000, device="daily-phone"))
        engine(batch)
        assert engine.trusted_count() <= 64
    untrusted = engine._untrusted([7, 7, 7, 7], ["daily-phone", "old-phone", "flood-300-2", "x"])
    assert untrusted.tolist() == [False, True, False, True]
    _close(engine)


def _bounded_engine(log: Path, pairs_max: int) -> RiskEngine:
    from puhui.risk._features import FeatureStore

    return RiskEngine(
        parse_ruleset(RULES, engine_schema()),
        lists=RiskLists(ManualClock(T0)),
        features=FeatureStore(pairs_max=pairs_max),
        log=DecisionLog(log),
    )


def test_a_trusted_device_in_use_is_never_forgotten(tmp_path: Path) -> None:
    """Each accepted event makes its device the most recently used: one used in every batch
    stays trusted however many new devices come (it was forgotten once ``trusted_max`` new
    ones had been trusted since it was first, however often it was used)."""
    engine = _bounded_engine(tmp_path / "log", 16)
    engine([_event(0, 1_000, device="daily")])
    for k in range(1, 60):
        assert engine._untrusted([7], ["daily"]).tolist() == [False], k
        login = _event(k, 0, device=f"new-{k}", kind=EventKind.LOGIN)
        engine([login, _event(k, 1_000, device="daily")])
        assert engine.trusted_count() <= 16
    _close(engine)


def test_the_replay_trusts_what_the_live_engine_trusted(tmp_path: Path) -> None:
    """Snapshot, then the log replayed: the same trusted devices in the same order of use as
    the engine that decided (so the next flood forgets the same ones)."""
    live = _bounded_engine(tmp_path / "log", 16)
    for k in range(12):
        live([_event(k, 0, device=f"z-{k}", kind=EventKind.LOGIN)])
    live.snapshot(tmp_path / "state")
    for k in range(12, 40):
        login = _event(k, 0, device=f"a-{k}", kind=EventKind.LOGIN)
        live([login, _event(k, 1_000, device="z-3")])
    _close(live)
    again = _bounded_engine(tmp_path / "other", 16)
    _close(again)
    again.log = DecisionLog(tmp_path / "log")
    again.recover(tmp_path / "state")
    assert list(again.trusted_devices()) == list(live.trusted_devices())
    _close(again)


def test_a_snapshot_keeps_the_trusted_devices_order_of_use(tmp_path: Path) -> None:
    """After a restart the next flood forgets the devices the running engine would have: the
    least recently used (the snapshot kept them sorted, so the restarted engine forgot
    "z-10" before "z-2")."""
    live = _bounded_engine(tmp_path / "log", 16)
    for k in range(12):
        live([_event(k, 0, device=f"z-{k}", kind=EventKind.LOGIN)])
    live.snapshot(tmp_path / "state")
    again = _bounded_engine(tmp_path / "other", 16)
    again.recover(tmp_path / "state")
    for engine in (live, again):
        for k in range(12, 17):
            engine([_event(k, 0, device=f"a-{k}", kind=EventKind.LOGIN)])
    old = [f"z-{k}" for k in range(12)]
    assert again._untrusted([7] * 12, old).tolist() == live._untrusted([7] * 12, old).tolist()
    assert list(again.trusted_devices()) == list(live.trusted_devices())
    _close(live)
    _close(again)


def test_a_snapshot_from_before_the_order_of_use_still_gives_its_trusted_devices() -> None:
    from puhui.risk._engine import _trusted_of

    old = {"7": ["phone", "tablet"], "8": ["pc"]}
    assert list(_trusted_of(old)) == [(7, "phone"), (7, "tablet"), (8, "pc")]
    assert list(_trusted_of([[8, "pc"], [7, "phone"]])) == [(8, "pc"), (7, "phone")]


def test_the_default_ruleset_compiles_against_the_engine_schema() -> None:
    ruleset = load_ruleset(DEFAULT_RULES, engine_schema())
    assert len(ruleset.evaluated_rules) >= 15


def test_a_refused_attempt_does_not_make_a_device_familiar(tmp_path: Path) -> None:
    rules = """
name = "t"
version = "1"

[[rule]]
id = "new-device"
description = "a device never accepted for this customer"
when = 'device.new_for_customer and event.type == "login"'
action = "challenge"
priority = 1
status = "active"
owner = "t"
"""
    engine = RiskEngine(parse_ruleset(rules, engine_schema()))
    login = [_event(0, 0, device="own", kind=EventKind.LOGIN)]
    assert engine(login)[0].decision is Decision.CHALLENGE  # first sight
    engine.trust_device(7, "own")  # the customer passed the step-up on it
    assert engine([_event(1, 0, device="own", kind=EventKind.LOGIN)])[0].decision is Decision.ACCEPT
    thief = [_event(2, 0, device="thief", kind=EventKind.LOGIN)]
    assert engine(thief)[0].decision is Decision.CHALLENGE
    again = [_event(3, 0, device="thief", kind=EventKind.LOGIN)]
    assert engine(again)[0].decision is Decision.CHALLENGE  # still a stranger's phone


def test_an_event_of_an_unknown_kind_is_an_input_error() -> None:
    from puhui.risk import InvalidRiskEventError

    engine = RiskEngine(
        parse_ruleset(RULES.replace('list("blocked_devices")', '["x"]'), engine_schema())
    )
    bad = RiskEvent(kind="teleport", customer_id=1, at_ns=T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRiskEventError):
        engine([bad])
    assert engine.features.events_applied == 0


def test_columns_in_decide_as_events_do(tmp_path: Path) -> None:
    events = [_event(0, 100), _event(1, 200_000), _event(2, 500, device="evil")]
    by_events = _engine(tmp_path / "a", ManualClock(T0))
    by_columns = _engine(tmp_path / "b", ManualClock(T0))
    expected = by_events(events)
    columns = event_columns(events)
    decided = by_columns.decide_columns(
        {
            "kind": columns["kind"].astype(np.int64),  # any integer type
            "customer_id": [7, 7, 7],
            "at_ns": columns["at_ns"],
            "amount": columns["amount"],
            "currency": ["CNY"] * 3,
            "counterparty": ["c:9"] * 3,
            "device": ["d1", "d1", "evil"],
            "ip": columns["ip"],  # numpy strings as well as lists
            "kyc_level": columns["kyc_level"],
            "account_created_ns": columns["account_created_ns"],
        }  # latitude, longitude, tz_offset_s, merchant: the events' defaults
    )
    assert decided.decisions() == expected
    assert decided.severity.tolist() == [0, 2, 3]
    assert decided.score.tolist() == [d.score for d in expected]
    assert decided.reasons == [d.reasons for d in expected]
    assert by_events.log is not None and by_columns.log is not None
    [a] = list(by_events.log.records())
    [b] = list(by_columns.log.records())
    for name, column in a.columns.items():
        assert column.dtype == b.columns[name].dtype, name
        assert np.array_equal(column, b.columns[name], equal_nan=column.dtype.kind == "f"), name
    _close(by_events)
    _close(by_columns)


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"kind": [0], "customer_id": [7]}, "at_ns is required"),
        ({"kind": [0], "customer_id": [7], "at_ns": [T0], "colour": ["red"]}, "unknown column"),
        ({"kind": [0, 1], "customer_id": [7], "at_ns": [T0, T0]}, "customer_id must hold 2"),
        ({"kind": [0], "customer_id": [7.5], "at_ns": [T0]}, "customer_id must hold 1 integers"),
        ({"kind": [42], "customer_id": [7], "at_ns": [T0]}, "kind: a value is unknown"),
        ({"kind": [300], "customer_id": [7], "at_ns": [T0]}, "kind: a value is out of range"),
        ({"kind": [0], "customer_id": [7], "at_ns": [T0], "device": [7]}, "device must hold"),
        ({"kind": [0], "customer_id": [7], "at_ns": [T0], "latitude": ["n"]}, "latitude must"),
        ({"kind": [0], "customer_id": [7], "at_ns": [-1]}, "at_ns: a value is negative"),
        ({"kind": 0, "customer_id": 7, "at_ns": T0}, "kind must be one-dimensional"),
        ({"kind": [0], "customer_id": [7], "at_ns": [T0], "ip": "10.0.0.1"}, "ip must hold 1"),
        ({"kind": [0], "customer_id": [[7]], "at_ns": [T0]}, "customer_id must hold 1"),
        ({"kind": [0], "customer_id": [2**70], "at_ns": [T0]}, "customer_id must hold 1"),
    ],
)
def test_bad_columns_are_an_input_error_and_change_nothing(
    tmp_path: Path, columns: dict[str, object], problem: str
) -> None:
    from puhui.risk import InvalidRiskEventError

    engine = _engine(tmp_path, ManualClock(T0))
    with pytest.raises(InvalidRiskEventError, match=problem) as caught:
        engine.decide_columns(columns)
    assert caught.value.code == "risk_event_invalid"
    assert engine.features.events_applied == 0
    assert engine.log is not None and engine.log.next_id == 1
    _close(engine)


def test_a_reason_shows_a_feature_with_nothing_to_measure_as_n_a() -> None:
    """A customer with no history has no amount z-score (NaN inside the kernel); the
    reason an analyst reads says so instead of printing ``nan``."""
    from puhui.risk._engine import _hit_text

    values = [("customer.amount_zscore", float("nan")), ("event.amount", 1234.5), ("n", 3)]
    assert _hit_text("r1", values) == "r1(customer.amount_zscore=n/a, event.amount=1234.5, n=3)"
    assert _hit_text("r2", []) == "r2"


def test_decisions_go_on_while_a_snapshot_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state is copied under the engine's lock and written without it: a decision made
    while the file is being written does not wait for it, and a restart replays it (it came
    after the snapshot's log position)."""
    import threading

    from puhui.risk import _engine as engine_module
    from puhui.risk._features import write_snapshot as write

    clock = ManualClock(T0)
    engine = _engine(tmp_path, clock)
    engine([_event(k, 1_000) for k in range(3)])
    writing, release = threading.Event(), threading.Event()

    def slow_write(arrays: Any, path: Any) -> None:
        writing.set()
        assert release.wait(10)
        write(arrays, path)

    monkeypatch.setattr(engine_module, "write_snapshot", slow_write)
    saver = threading.Thread(target=engine.snapshot, args=(tmp_path / "state",))
    saver.start()
    assert writing.wait(10)
    decided: list[Any] = []
    decider = threading.Thread(target=lambda: decided.append(engine([_event(3, 1_000)])))
    decider.start()
    decider.join(5)
    alive = decider.is_alive()
    release.set()
    saver.join(10)
    decider.join(10)
    assert not alive  # decided while the snapshot was still being written
    assert decided and not saver.is_alive()
    reference = engine([_event(20, 1_000)])
    _close(engine)
    restarted = _engine(tmp_path / "other", clock)
    _close(restarted)
    restarted.log = DecisionLog(tmp_path / "log")
    assert restarted.recover(tmp_path / "state") == 1 + 1  # the one decided meanwhile, and the last
    a = engine.features.compute(engine.features.batch_from_events([_event(30, 5)]))
    b = restarted.features.compute(restarted.features.batch_from_events([_event(30, 5)]))
    assert reference and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    _close(restarted)


def test_a_crash_between_the_state_file_and_its_meta_replays_nothing_twice(
    tmp_path: Path,
) -> None:
    """The log position is saved inside the state's own file: a crash after the new state
    replaced the old but before ``features.json`` did leaves a consistent pair anyway."""
    clock = ManualClock(T0)
    engine = _engine(tmp_path, clock)
    engine([_event(k, 1_000) for k in range(3)])
    engine.snapshot(tmp_path / "state")
    old_meta = (tmp_path / "state" / "features.json").read_text()
    engine([_event(k, 1_000) for k in range(3, 7)])
    engine.snapshot(tmp_path / "state")
    (tmp_path / "state" / "features.json").write_text(old_meta)  # the crash's leftover
    engine([_event(9, 1_000)])
    _close(engine)
    restarted = _engine(tmp_path / "other", clock)
    _close(restarted)
    restarted.log = DecisionLog(tmp_path / "log")
    assert restarted.recover(tmp_path / "state") == 1  # only the batch after the snapshot
    a = engine.features.compute(engine.features.batch_from_events([_event(30, 5)]))
    b = restarted.features.compute(restarted.features.batch_from_events([_event(30, 5)]))
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    _close(restarted)


def _at(
    k: int,
    *,
    place: tuple[float, float],
    device: str = "phone",
    payee: str = "c:9",
    amount: int = 1_000,
    kind: EventKind = EventKind.P2P,
) -> RiskEvent:
    """Customer 7's event ``k`` minutes after T0, at ``place``."""
    return RiskEvent(
        kind=kind, customer_id=7, at_ns=T0 + k * 60 * 10**9, amount=amount, currency="CNY",
        counterparty=payee, device_id=device, ip="10.0.0.1", latitude=place[0],
        longitude=place[1], kyc_level=2, account_created_ns=T0 - 400 * DAY,
    )  # fmt: skip


SHANGHAI, CHENGDU = (31.23, 121.47), (30.57, 104.07)
TRAVEL_RULES = """
name = "t"
version = "1"

[[rule]]
id = "travel"
description = "a trusted device too far too soon"
when = 'device.speed_kmh > 1000 and device.distance_km > 300'
action = "challenge"
priority = 2
status = "active"
owner = "t"

[[rule]]
id = "blocked"
description = "blocked"
when = 'event.device in list("blocked_devices")'
action = "reject"
priority = 3
status = "active"
owner = "t"
"""


def _distance_km(
    engine: RiskEngine, customers: list[int], devices: list[str], columns: dict[str, Any]
) -> npt.NDArray[np.float64]:
    """``device.distance_km`` of events given as columns, as of the engine's state now."""
    slots = engine._trust.slots(customers, devices)
    return engine._trust.travel(slots, columns["latitude"], columns["longitude"], columns["at_ns"])[
        0
    ]


def test_a_trusted_device_is_placed_by_its_owners_accepted_events_only() -> None:
    """``device.distance_km``/``device.speed_kmh``: from where the customer's trusted device
    was last accepted; a refused attempt from a copy of it far away moves nothing (the owner
    at home is not the one who travelled), and neither does another device's event; a
    passed step-up on a challenged event moves the device there (challenged once, not at
    every event)."""
    clock = ManualClock(T0)
    lists = RiskLists(clock)
    lists.add("blocked_devices", "emu", reason="case 1")
    engine = RiskEngine(parse_ruleset(TRAVEL_RULES, engine_schema()), lists=lists)

    [decision] = engine([_at(0, place=SHANGHAI)])  # the first device: trusted
    assert decision.decision is Decision.ACCEPT
    copy = _at(30, place=CHENGDU)  # the same device id, 1,650 km away half an hour later
    [decision] = engine([copy])
    assert decision.decision is Decision.CHALLENGE and decision.reasons[0].startswith("travel(")
    engine([_at(31, place=CHENGDU, device="emu")])  # another device there, refused
    at_home = event_columns([_at(32, place=SHANGHAI)])
    assert _distance_km(engine, [7], ["phone"], at_home).tolist() == [0.0]  # where the owner was
    [decision] = engine([_at(32, place=SHANGHAI)])
    assert decision.decision is Decision.ACCEPT
    # The owner's phone really shows in Chengdu (a VPN, a flight's wrong clock): challenged
    # once; after the passed step-up it is placed there.
    [decision] = engine([_at(40, place=CHENGDU)])
    assert decision.decision is Decision.CHALLENGE
    engine.trust_device(7, "phone")
    [decision] = engine([_at(42, place=CHENGDU)])
    assert decision.decision is Decision.ACCEPT
    unknown = _distance_km(engine, [7, 8], ["tablet", "phone"], event_columns([copy, copy]))
    assert np.isnan(unknown).all()  # not trusted: no travel


def test_payees_found_after_a_new_device_and_what_they_got() -> None:
    """``counterparty.new_device_payee_s``: a payee first paid from a device trusted less
    than a week (not the customer's first device, nor a payee paid before the new device);
    ``customer.new_device_payees_sum_14d``: what such payees got in 14 days;
    ``device.familiar_payees_paid``: the new device's payments to payees paid before it (a
    token 5 CNY on the device's first day does not count: since ruleset 2026.11.28-7)."""
    engine = RiskEngine(parse_ruleset(RULES, engine_schema()), lists=RiskLists(ManualClock(T0)))
    home = SHANGHAI
    engine([_at(0, place=home, payee="c:old")])  # the first device: long trusted
    engine([_at(1, place=home, device="new", amount=0, kind=EventKind.LOGIN)])  # trusted now
    engine([_at(2, place=home, device="new", payee="c:old", amount=500)])  # a token 5 CNY
    assert engine.familiar_payees_paid() == {}
    engine([_at(2, place=home, device="new", payee="c:old", amount=5_000)])  # paid before
    engine([_at(3, place=home, device="new", payee="c:mule", amount=15_000)])
    engine([_at(4, place=home, payee="c:shop", amount=700)])  # from the old phone
    day = 24 * 60
    probe = [_at(k, place=home, payee=p) for k, p in ((5, "c:mule"), (5, "c:old"), (5, "c:shop"))]
    found = engine._new_payees_of([7, 7, 7], [e.counterparty for e in probe], event_columns(probe))
    assert found["counterparty.new_device_payee_s"][0] == 120.0
    assert np.isnan(found["counterparty.new_device_payee_s"][1:]).all()
    assert found["customer.new_device_payees_sum_14d"].tolist() == [15_000] * 3
    assert engine.familiar_payees_paid() == {(7, "new"): 1}  # c:old, paid from the old phone first
    late = [_at(3 + 15 * day, place=home, payee="c:mule")]  # past the 14-day window
    found = engine._new_payees_of([7], ["c:mule"], event_columns(late))
    assert found["customer.new_device_payees_sum_14d"].tolist() == [0]
    assert found["counterparty.new_device_payee_s"].tolist() == [15 * 86_400.0]


def test_a_shop_found_by_a_new_device_is_not_a_familiar_payee() -> None:
    """A merchant first paid from a device trusted less than a week is followed like a p2p
    payee found so (since ruleset 2026.11.28-6): paying it again from that device does not
    make the device familiar (a takeover spending at one shop in parts), paying the
    customer's usual shop does; what it got is not in ``customer.new_device_payees_sum_14d``
    (p2p payees only)."""
    engine = RiskEngine(parse_ruleset(RULES, engine_schema()), lists=RiskLists(ManualClock(T0)))
    home, pay = SHANGHAI, EventKind.PAYMENT
    engine([_at(0, place=home, payee="m:usual", kind=pay)])  # the first device: long trusted
    engine([_at(1, place=home, device="new", amount=0, kind=EventKind.LOGIN)])  # trusted now
    for k in (2, 3, 4):
        engine([_at(k, place=home, device="new", payee="m:gifts", amount=19_000, kind=pay)])
    assert engine.familiar_payees_paid() == {}
    engine([_at(5, place=home, device="new", payee="m:usual", amount=4_000, kind=pay)])
    assert engine.familiar_payees_paid() == {}  # under 50 CNY on its first day (2026.11.28-7)
    engine([_at(5, place=home, device="new", payee="m:usual", amount=6_000, kind=pay)])
    assert engine.familiar_payees_paid() == {(7, "new"): 1}
    later = _at(1 + 24 * 60, place=home, device="new", payee="m:usual", amount=600, kind=pay)
    engine([later])  # 6 CNY, a day after the device was trusted: the owner's breakfast
    assert engine.familiar_payees_paid() == {(7, "new"): 2}
    probe = [_at(6, place=home, payee="m:gifts", kind=pay)]
    found = engine._new_payees_of([7], ["m:gifts"], event_columns(probe))
    assert found["counterparty.new_device_payee_s"].tolist() == [240.0]
    assert found["customer.new_device_payees_sum_14d"].tolist() == [0]


def test_device_places_and_new_payees_survive_a_restart(tmp_path: Path) -> None:
    """Snapshot, then the log replayed: the same device places and payees found after a
    new device as the engine that decided."""
    clock = ManualClock(T0)
    live = _engine(tmp_path, clock)
    live([_at(0, place=SHANGHAI)])
    login = _at(1, place=SHANGHAI, device="new", amount=0, kind=EventKind.LOGIN)
    live([login, _at(2, place=SHANGHAI, device="new")])
    live([_at(3, place=SHANGHAI, device="new", payee="c:mule", amount=9_000)])
    live.snapshot(tmp_path / "state")
    live([_at(60, place=CHENGDU, device="new", payee="c:mule2", amount=8_000)])
    live([_at(61, place=CHENGDU, device="evil", payee="c:mule3", amount=8_000)])
    _close(live)
    again = _engine(tmp_path / "other", clock)
    _close(again)
    again.log = DecisionLog(tmp_path / "log")
    again.recover(tmp_path / "state")
    assert again.device_places() == live.device_places() and len(live.device_places()) == 2
    assert again._new_payees == live._new_payees and len(live._new_payees) == 3
    assert again._new_payees_sent == live._new_payees_sent
    assert again.familiar_payees_paid() == live.familiar_payees_paid()
    assert live._new_payees_sent[7] == [(T0 + 180 * 10**9, 9_000), (T0 + 3600 * 10**9, 8_000)]
    _close(again)


def test_a_customer_whose_devices_were_all_forgotten_gets_no_long_trusted_device(
    tmp_path: Path,
) -> None:
    """The first device the engine trusts for a customer counts as trusted long ago (the one
    they came with); once a flood of others' devices made it forget all of a customer's
    (beyond ``trusted_max``), the next device trusted is newly trusted, not long ago — also
    after a restart from a snapshot."""
    engine = _bounded_engine(tmp_path / "log", 16)
    engine([_event(0, 1_000, device="phone")])
    assert engine._trust_of([7], ["phone"], np.array([T0]))[1][0] > 4e9  # long ago
    for k in range(1, 40):  # others' devices: customer 7's phone is forgotten
        engine([RiskEvent(EventKind.LOGIN, 100 + k, T0 + k * 10**9, 0, "CNY", "", f"p-{k}")])
    assert engine._untrusted([7], ["phone"]).tolist() == [True]
    engine([_event(50, 1_000, device="attacker-phone")])  # a payment: no trust
    assert engine._untrusted([7], ["attacker-phone"]).tolist() == [True]
    engine([_event(50, 0, device="attacker-phone", kind=EventKind.LOGIN)])
    at = np.array([T0 + 51 * 60 * 10**9])
    assert engine._trust_of([7], ["attacker-phone"], at)[1].tolist() == [60.0]
    engine.snapshot(tmp_path / "state")
    again = _bounded_engine(tmp_path / "other", 16)
    again.recover(tmp_path / "state")
    for k in range(40, 80):  # forgotten again, on the restarted engine
        again([RiskEvent(EventKind.LOGIN, 100 + k, T0 + k * 10**9, 0, "CNY", "", f"p-{k}")])
    again([_event(90, 0, device="tablet", kind=EventKind.LOGIN)])
    assert again._trust_of([7], ["tablet"], np.array([T0 + 91 * 60 * 10**9]))[1].tolist() == [60.0]
    assert 8 not in again._trust.ever  # never trusted (with this filter's seeds: no false yes)
    _close(engine)
    _close(again)


CHANGE_RULES = (
    """
name = "t"
version = "1"

[[rule]]
id = "stranger"
description = "a reset or device change from a stranger's phone"
when = 'event.type in ["password_reset", "device_change"] and event.device == "stranger"'
action = "challenge"
priority = 1
status = "active"
owner = "t"

"""
    + BLOCKED_RULE
)


def _since_reset_s(engine: RiskEngine, k: int) -> float:
    """``customer.since_password_reset_s`` of customer 7's payment ``k`` minutes after T0, as
    the engine would give it now."""
    columns = event_columns([_event(k, 100)])
    found = engine._changes.features([7], columns["kind"], columns["at_ns"])
    return float(found["customer.since_password_reset_s"][0])


def test_only_a_reset_that_took_effect_counts_for_since_password_reset(tmp_path: Path) -> None:
    """A refused reset (rejected, or challenged and never passed) leaves
    ``customer.since_password_reset_s`` as it was; an accepted one, or a challenged one once
    its step-up passes, sets it (to the reset's own time); within one batch every earlier
    reset counts, whatever its decision; and the state survives a snapshot and the log."""
    import math

    clock = ManualClock(T0)
    lists = RiskLists(clock)
    lists.add("blocked_devices", "evil", reason="case 1")
    rules = parse_ruleset(CHANGE_RULES, engine_schema())
    engine = RiskEngine(rules, lists=lists, log=DecisionLog(tmp_path / "log"))
    reset = EventKind.PASSWORD_RESET
    engine([_event(0, 0, device="phone")])
    [refused] = engine([_event(1, 0, device="evil", kind=reset)])
    assert refused.decision is Decision.REJECT
    assert math.isnan(_since_reset_s(engine, 2))
    [asked] = engine([_event(2, 0, device="stranger", kind=reset)])
    assert asked.decision is Decision.CHALLENGE
    assert math.isnan(_since_reset_s(engine, 3))  # not passed (yet)
    # In one batch: a refused reset, then a payment that sees it (decided together).
    _, paid = engine([_event(4, 0, device="evil", kind=reset), _event(5, 100)])
    assert engine.log is not None
    logged = list(engine.log.records())[-1]
    names = json.loads((tmp_path / "log" / f"schema-{logged.meta['schema']}.json").read_text())
    since = logged.columns["features"][1, names.index("customer.since_password_reset_s")]
    assert since == 60.0 and paid.decision is Decision.ACCEPT
    assert math.isnan(_since_reset_s(engine, 6))  # after the batch: it did not take effect
    engine.trust_device(7, "stranger")  # the challenged reset at minute 2 was passed
    assert _since_reset_s(engine, 7) == 5 * 60.0
    engine.snapshot(tmp_path / "state")
    [done] = engine([_event(8, 0, device="phone", kind=reset)])
    assert done.decision is Decision.ACCEPT and _since_reset_s(engine, 9) == 60.0
    _close(engine)
    again = RiskEngine(rules, lists=lists)
    again.log = DecisionLog(tmp_path / "log")
    again.recover(tmp_path / "state")
    assert _since_reset_s(again, 9) == 60.0  # the accepted reset, replayed from the log
    _close(again)
    fresh = RiskEngine(rules, lists=lists)
    fresh.recover(tmp_path / "state")
    assert _since_reset_s(fresh, 9) == 7 * 60.0  # the snapshot alone: the passed one


def test_a_passed_step_up_survives_a_crash_and_replays_between_the_same_batches(
    tmp_path: Path,
) -> None:
    """A passed step-up is on disk when ``trust_device`` returns: an engine restarted from an
    older snapshot and the log trusts the device from the same moment (applied between the
    same two batches), places it where its challenged event was, and takes its challenged
    reset as done; after a snapshot that holds it, it is not applied twice; a line cut short
    by a crash while being written is dropped, and the next step-up still lands."""
    from puhui.risk._stepups import STEP_UPS_NAME

    clock = ManualClock(T0)
    rules = parse_ruleset(CHANGE_RULES, engine_schema())
    live = RiskEngine(rules, lists=RiskLists(clock), log=DecisionLog(tmp_path / "log"))
    live([_event(0, 0, device="phone")])
    live.snapshot(tmp_path / "state")
    place = (30.57, 104.07)
    [asked] = live(
        [_at(1, place=place, device="stranger", amount=0, kind=EventKind.PASSWORD_RESET)]
    )
    assert asked.decision is Decision.CHALLENGE
    live.trust_device(7, "stranger")  # passed: no snapshot after it, then a "crash"
    live([_at(3, place=place, device="stranger")])
    _close(live)
    again = RiskEngine(rules, lists=RiskLists(clock), log=DecisionLog(tmp_path / "log"))
    again.recover(tmp_path / "state")
    assert again.trusted_devices() == live.trusted_devices()
    assert again.trusted_devices()[7, "stranger"] == live.trusted_devices()[7, "stranger"]
    assert again.device_places() == live.device_places()
    assert again.device_places()[7, "stranger"][:2] == place
    assert _since_reset_s(again, 4) == _since_reset_s(live, 4) == 3 * 60.0
    again.snapshot(tmp_path / "state")  # holds the step-up now
    with (tmp_path / "log" / STEP_UPS_NAME).open("a") as f:
        f.write('{"seq": 2, "after"')  # a crash in the middle of the next line
    _close(again)
    third = RiskEngine(rules, lists=RiskLists(clock), log=DecisionLog(tmp_path / "log"))
    third.recover(tmp_path / "state")
    assert third.trusted_devices() == live.trusted_devices()
    third.trust_device(7, "tablet")
    _close(third)
    lines = (tmp_path / "log" / STEP_UPS_NAME).read_text().splitlines()
    assert [json.loads(line)["device"] for line in lines] == ["stranger", "tablet"]
    fourth = RiskEngine(rules, lists=RiskLists(clock), log=DecisionLog(tmp_path / "log"))
    fourth.recover(tmp_path / "state")
    assert (7, "tablet") in fourth.trusted_devices()
    _close(fourth)


def test_money_in_from_strangers_and_new_cards_is_learnt_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    """``customer.new_payers_inflow_24h``/``customer.new_payers_24h`` count what customers
    paying a customer for the first time sent it (a second payment, or one rejected, does
    not count); ``customer.new_card_top_ups_24h`` the top-ups from a card used for the first
    time; both over 24 hours, and the same after a snapshot and the log's replay."""
    clock = ManualClock(T0)
    live = _engine(tmp_path, clock)

    def pay(
        k: int,
        payer: int,
        payee: str,
        amount: int,
        *,
        kind: EventKind = EventKind.P2P,
        device: str = "d1",
    ) -> RiskEvent:
        return RiskEvent(kind, payer, T0 + k * 60 * 10**9, amount, "CNY", payee, device)

    live([pay(0, 7, "c:8", 1_000), pay(1, 9, "c:8", 500)])
    live([pay(2, 9, "c:8", 700)])  # paid before: not a stranger's money
    live.snapshot(tmp_path / "state")
    live([pay(3, 10, "c:8", 900, device="evil")])  # rejected: never arrived
    live([pay(4, 8, "card:new", 3_000, kind=EventKind.TOP_UP)])
    live([pay(5, 8, "card:new", 100, kind=EventKind.TOP_UP)])  # the card used before
    live([pay(6, 11, "m:1", 400), pay(7, 12, "c:x", 400)])  # not a customer's account
    at = np.array([T0 + 10 * 60 * 10**9, T0 + 10 * 60 * 10**9 + DAY], dtype=np.int64)
    found = live._inflows_of([8, 8], at)
    assert found["customer.new_payers_inflow_24h"].tolist() == [1_500, 0]
    assert found["customer.new_payers_24h"].tolist() == [2, 0]
    assert found["customer.new_card_top_ups_24h"].tolist() == [3_000, 0]
    assert live._inflows_of([7], at[:1])["customer.new_payers_inflow_24h"].tolist() == [0]
    _close(live)
    again = _engine(tmp_path / "other", clock)
    _close(again)
    again.log = DecisionLog(tmp_path / "log")
    again.recover(tmp_path / "state")
    assert again._inflows == live._inflows and set(live._inflows) == {8}
    _close(again)


def test_payees_new_today_are_learnt_and_survive_a_restart(tmp_path: Path) -> None:
    """``counterparty.first_paid_s``: seconds since the customer first paid a p2p payee, when
    that was in the last 24 hours (NaN for a payee paid before, or never);
    ``customer.new_payees_sent_24h``: what the customer sent such payees in that time, in
    events accepted or challenged (a refused first payment marks the payee, and adds
    nothing); the same after a snapshot and the log's replay."""
    clock = ManualClock(T0)
    live = _engine(tmp_path, clock)

    def pay(k: int, payee: str, amount: int, *, device: str = "d1") -> RiskEvent:
        kind = EventKind.PAYMENT if payee.startswith("m:") else EventKind.P2P
        return RiskEvent(kind, 7, T0 + k * 60 * 10**9, amount, "CNY", payee, device)

    live([pay(0, "c:landlord", 1_900)])
    clock.advance(DAY)
    live([pay(24 * 60 + 1, "c:landlord", 950)])  # first paid yesterday: not new today
    live([pay(24 * 60 + 2, "c:safe", 999), pay(24 * 60 + 3, "c:safe", 999)])
    live.snapshot(tmp_path / "state")
    live([pay(24 * 60 + 4, "c:mule", 990, device="evil")])  # rejected: marked, adds nothing
    live([pay(24 * 60 + 5, "m:1", 400)])  # not p2p
    names = ["c:landlord", "c:safe", "c:mule", "m:1"]
    at = np.full(4, T0 + DAY + 10 * 60 * 10**9, dtype=np.int64)
    found = live._new_today_of([7] * 4, names, at)
    assert np.isnan(found["counterparty.first_paid_s"][[0, 3]]).all()
    assert found["counterparty.first_paid_s"][1:3].tolist() == [8 * 60.0, 6 * 60.0]
    assert found["customer.new_payees_sent_24h"].tolist() == [1_998] * 4
    later = live._new_today_of([7], ["c:safe"], at[:1] + DAY)
    assert np.isnan(later["counterparty.first_paid_s"][0])
    assert later["customer.new_payees_sent_24h"].tolist() == [0]
    _close(live)
    again = _engine(tmp_path / "other", clock)
    _close(again)
    again.log = DecisionLog(tmp_path / "log")
    again.recover(tmp_path / "state")
    assert again._first_paid == live._first_paid and set(live._first_paid) == {
        (7, "c:landlord"),
        (7, "c:safe"),
        (7, "c:mule"),
    }
    assert again._new_today_sent == live._new_today_sent
    _close(again)
