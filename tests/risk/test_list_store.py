"""Block and allow lists in SQL: the store is the record, and engines follow it without a
restart (a change is seen within the check interval, and never half-applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.risk import (
    Decision,
    EventKind,
    ListEntry,
    ListStore,
    RiskEvent,
    RiskListError,
    SyncedRiskLists,
    load_ruleset,
)
from puhui.risk._engine import DEFAULT_RULES, RiskEngine, engine_schema
from puhui.store import risk as t

T0 = 1_767_000_000 * 10**9
SECOND = 10**9


def _rows(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.list_entries)).all()]


def test_the_store_keeps_entries_and_counts_changes(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    store = ListStore(engine, clock)
    assert store.version() == 0
    entry = store.add("blocked_devices", "dev-1", reason="takeover, case 7")
    assert entry == ListEntry("dev-1", "takeover, case 7", T0, None)
    assert store.version() == 1
    clock.advance(5)
    again = store.add("blocked_devices", "dev-1", reason="confirmed", expires_at_ns=T0 + 100)
    assert store.entries("blocked_devices") == [again] and store.version() == 2
    assert store.lookup("blocked_devices", "dev-1") == again
    assert store.lookup("allowed_devices", "dev-1") is None
    store.add("allowed_customers", "c:9", reason="VIP, checked by hand")
    version, lists = store.load()
    assert version == 3
    assert lists["blocked_devices"] == [again]
    assert [e.value for e in lists["allowed_customers"]] == ["c:9"]
    assert lists["blocked_ips"] == []
    assert store.remove("blocked_devices", "dev-1") is True
    assert store.remove("blocked_devices", "dev-1") is False  # nothing changed: no new version
    assert store.version() == 4


def test_expiry_and_purge(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    store = ListStore(engine, clock)
    store.add("blocked_ips", "203.0.113.9", reason="card testing", expires_at_ns=T0 + SECOND)
    store.add("blocked_ips", "203.0.113.10", reason="forever")
    assert store.lookup("blocked_ips", "203.0.113.9") is not None
    clock.advance(SECOND)
    assert store.lookup("blocked_ips", "203.0.113.9") is None  # expired: never matches
    assert len(store.entries("blocked_ips")) == 2  # still stored until purged
    assert store.purge_expired() == 1
    assert [e.value for e in store.entries("blocked_ips")] == ["203.0.113.10"]
    assert store.purge_expired() == 0


@pytest.mark.parametrize(
    ("name", "value", "reason", "expires"),
    [
        ("blocked_phones", "x", "why", None),  # no such list
        ("blocked_devices", "", "why", None),
        ("blocked_devices", "d" * 201, "why", None),
        ("blocked_devices", "d", "", None),
        ("blocked_devices", "d", "r" * 501, None),
        ("blocked_devices", "d", "why", -1),
        ("blocked_devices", "d", "why", 1.5),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    engine: sa.Engine, name: str, value: str, reason: str, expires: object
) -> None:
    store = ListStore(engine, ManualClock(T0))
    with pytest.raises(RiskListError) as raised:
        store.add(name, value, reason=reason, expires_at_ns=expires)  # type: ignore[arg-type]
    assert raised.value.code == "risk_list_invalid"
    assert store.version() == 0 and _rows(engine) == []
    with pytest.raises(RiskListError):
        store.entries("blocked_phones")


def test_engines_follow_the_store_within_the_interval(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    writer = ListStore(engine, clock)  # e.g. the CLI, in another process
    writer.add("blocked_devices", "dev-old", reason="case 1")
    lists = SyncedRiskLists(ListStore(engine, clock), check_interval_ms=1_000)
    assert lists.reloads == 1 and lists.version == 1
    values = np.array(["dev-old", "dev-new"])
    assert lists.contains("blocked_devices", values).tolist() == [True, False]
    writer.add("blocked_devices", "dev-new", reason="case 2")
    writer.remove("blocked_devices", "dev-old")
    clock.advance(999_000_000)  # not due yet: no SQL read, the old lists hold
    assert lists.contains("blocked_devices", values).tolist() == [True, False]
    clock.advance(1_000_000)
    assert lists.contains("blocked_devices", values).tolist() == [False, True]
    assert lists.reloads == 2 and lists.version == 3
    clock.advance(2 * SECOND)  # due, but nothing changed: no reload
    assert lists.lookup("blocked_devices", "dev-new") is not None
    assert lists.reloads == 2
    # Written through the synced lists: in the store and effective at once.
    lists.add("blocked_ips", "198.51.100.7", reason="mule ring")
    assert writer.lookup("blocked_ips", "198.51.100.7") is not None
    assert lists.contains("blocked_ips", np.array(["198.51.100.7"])).tolist() == [True]
    with pytest.raises(RiskListError):
        lists.add("blocked_ips", "", reason="empty value")
    assert lists.version == writer.version() == 4


def test_a_block_takes_effect_in_a_running_engine(engine: sa.Engine, tmp_path: Path) -> None:
    clock = ManualClock(T0)
    store = ListStore(engine, clock)
    risk = RiskEngine(
        load_ruleset(DEFAULT_RULES, engine_schema()),
        lists=SyncedRiskLists(ListStore(engine, clock), check_interval_ms=0),
    )

    def login(k: int) -> RiskEvent:
        return RiskEvent(
            kind=EventKind.LOGIN,
            customer_id=7,
            at_ns=T0 + k * 60 * SECOND,
            amount=0,
            currency="CNY",
            device_id="dev-7",
            ip="10.1.2.3",
            kyc_level=2,
            account_created_ns=T0 - 400 * 86_400 * SECOND,
        )

    risk.trust_device(7, "dev-7")  # the customer's own phone: a login from it is accepted
    assert risk([login(0)])[0].decision is Decision.ACCEPT
    store.add("blocked_devices", "dev-7", reason="stolen phone reported")
    [blocked] = risk([login(1)])
    assert blocked.decision is Decision.REJECT
    assert blocked.reasons[0].startswith("list.blocked(")
    store.remove("blocked_devices", "dev-7")
    assert risk([login(2)])[0].decision is Decision.ACCEPT
