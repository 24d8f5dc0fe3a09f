"""Engines follow the lists in SQL change by change: the store logs each changed entry under
the version it made, a follower applies the changes it missed (its hash tables changed in
place), and reloads every list only when the log no longer holds them."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puhui.clock import ManualClock
from puhui.risk import ListStore, RiskLists, SyncedRiskLists
from puhui.store import risk as t

T0 = 1_767_000_000 * 10**9
SECOND = 10**9
DEVICES = "blocked_devices"


def _log(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        query = sa.select(
            t.list_changes.c.version, t.list_changes.c.op, t.list_changes.c.value
        ).order_by(t.list_changes.c.version)
        return [tuple(row) for row in conn.execute(query).all()]


def _same_as_the_store(lists: RiskLists, store: ListStore) -> None:
    """``lists`` hold what a fresh full load gives, and answer ``contains`` alike."""
    _version, stored = store.load()
    fresh = RiskLists(store.clock, names=store.names)
    fresh.replace_all(stored)
    for name in store.names:
        assert lists.entries(name) == stored[name]
        values = np.array([e.value for e in stored[name]] + ["absent", "x" * 150], dtype=str)
        assert lists.contains(name, values).tolist() == fresh.contains(name, values).tolist()


def test_each_change_is_logged_under_the_version_it_made(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    store = ListStore(engine, clock)
    store.add(DEVICES, "dev-1", reason="case 1", expires_at_ns=T0 + SECOND)
    store.add(DEVICES, "dev-2", reason="case 2", expires_at_ns=T0 + SECOND)
    store.add(DEVICES, "dev-3", reason="case 3")
    store.add(DEVICES, "dev-3", reason="case 3, confirmed")  # a replacement: one change
    assert store.remove(DEVICES, "dev-3") is True
    assert store.remove(DEVICES, "dev-3") is False  # nothing changed: nothing logged
    clock.advance(SECOND)
    assert store.purge_expired() == 2  # two entries: two versions, one removal each
    assert store.version() == 7
    assert _log(engine) == [
        (1, "add", "dev-1"),
        (2, "add", "dev-2"),
        (3, "add", "dev-3"),
        (4, "add", "dev-3"),
        (5, "remove", "dev-3"),
        (6, "remove", "dev-1"),
        (7, "remove", "dev-2"),
    ]
    version, changes = store.changes(3)
    assert version == 7 and changes is not None
    assert [(c.version, c.value, c.entry is None) for c in changes] == [
        (4, "dev-3", False),
        (5, "dev-3", True),
        (6, "dev-1", True),
        (7, "dev-2", True),
    ]
    assert changes[0].entry is not None and changes[0].entry.reason == "case 3, confirmed"
    assert store.changes(7) == (7, [])
    assert store.changes(8) == (7, None)  # ahead of the store: not this store's history
    assert store.changes(-1) == (7, None)


def test_a_follower_applies_each_change_without_reloading(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    writer = ListStore(engine, clock)  # e.g. the CLI, in another process
    for k in range(50):
        writer.add(DEVICES, f"dev-{k}", reason="bulk")
    follower = SyncedRiskLists(ListStore(engine, clock), check_interval_ms=0)
    probe = np.array(["dev-0", "dev-99", "dev-7"])  # no wider than the rows: no widening
    assert follower.contains(DEVICES, probe).tolist() == [True, False, True]
    table = follower._tables[DEVICES]
    assert (follower.full_loads, follower.changes_applied) == (1, 0)

    writer.add(DEVICES, "dev-99", reason="case 9")  # add
    assert follower.contains(DEVICES, probe).tolist() == [True, True, True]
    writer.add(DEVICES, "dev-0", reason="case 9", expires_at_ns=T0 + SECOND)  # replace
    writer.remove(DEVICES, "dev-7")  # remove
    assert follower.contains(DEVICES, probe).tolist() == [True, True, False]
    assert follower.lookup(DEVICES, "dev-0") == writer.lookup(DEVICES, "dev-0")
    clock.advance(SECOND)  # dev-0 lapses: no change, it just stops matching
    assert follower.contains(DEVICES, probe).tolist() == [False, True, False]
    assert writer.purge_expired() == 1  # purge
    assert follower.contains(DEVICES, probe).tolist() == [False, True, False]
    assert follower.lookup(DEVICES, "dev-0") is None and len(follower.entries(DEVICES)) == 49

    assert (follower.full_loads, follower.changes_applied) == (1, 4)
    assert follower.version == writer.version() == 54
    assert follower._tables[DEVICES] is table and table.rebuilds == 0  # changed in place
    _same_as_the_store(follower, writer)
    # Written through the follower itself: applied at once, as a change too.
    follower.add("blocked_ips", "198.51.100.7", reason="mule ring")
    assert follower.contains("blocked_ips", np.array(["198.51.100.7"])).tolist() == [True]
    assert (follower.full_loads, follower.changes_applied) == (1, 5)


def test_after_one_change_a_follower_reads_one_row_not_the_lists(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    writer = ListStore(engine, clock)
    with engine.begin() as conn:  # a big list, as if long in use
        conn.execute(
            t.list_entries.insert(),
            [
                {"list_name": DEVICES, "value": f"dev-{k}", "reason": "bulk", "added_at_ns": T0}
                for k in range(5_000)
            ],
        )
    follower = SyncedRiskLists(ListStore(engine, clock), check_interval_ms=0)
    assert follower.contains(DEVICES, np.array(["dev-4999"])).tolist() == [True]
    writer.add(DEVICES, "dev-new", reason="case 1")

    statements: list[str] = []
    fetched = 0

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        _version, changes = follower.store.changes(follower.version)
        assert changes is not None
        fetched = len(changes)
        assert follower.sync(force=True) is True
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert fetched == 1
    assert not [s for s in statements if "risk_list_entries" in s]  # no reload
    assert follower.contains(DEVICES, np.array(["dev-new"])).tolist() == [True]
    assert (follower.full_loads, follower.changes_applied) == (1, 1)


def test_a_follower_behind_the_trimmed_log_reloads_everything(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    writer = ListStore(engine, clock, changes_kept=3)
    follower = SyncedRiskLists(ListStore(engine, clock, changes_kept=3), check_interval_ms=0)
    for k in range(3):  # just what the log keeps: applied
        writer.add(DEVICES, f"dev-{k}", reason="case")
    assert follower.sync(force=True) is True
    assert (follower.full_loads, follower.changes_applied) == (1, 3)
    assert [v for v, _, _ in _log(engine)] == [1, 2, 3]
    for k in range(4):  # one more than the log keeps: the oldest is gone
        writer.add(DEVICES, f"dev-{k + 3}", reason="case", expires_at_ns=T0 + SECOND)
    assert [v for v, _, _ in _log(engine)] == [5, 6, 7]
    assert writer.changes(3) == (7, None)
    assert follower.sync(force=True) is True
    assert (follower.full_loads, follower.changes_applied) == (2, 3)
    _same_as_the_store(follower, writer)
    # A purge of more entries than the log keeps logs only the last of them.
    clock.advance(SECOND)
    assert writer.purge_expired() == 4
    assert [v for v, _, _ in _log(engine)] == [9, 10, 11]
    assert follower.sync(force=True) is True
    assert (follower.full_loads, follower.changes_applied) == (3, 3)
    _same_as_the_store(follower, writer)


def test_a_store_that_went_back_is_reloaded(engine: sa.Engine) -> None:
    clock = ManualClock(T0)
    writer = ListStore(engine, clock)
    writer.add(DEVICES, "dev-1", reason="case")
    writer.add(DEVICES, "dev-2", reason="case")
    follower = SyncedRiskLists(ListStore(engine, clock), check_interval_ms=0)
    with engine.begin() as conn:  # e.g. restored from an older backup
        conn.execute(t.list_entries.delete().where(t.list_entries.c.value == "dev-2"))
        conn.execute(t.list_changes.delete().where(t.list_changes.c.version == 2))
        conn.execute(t.list_state.update().values(version=1))
    assert follower.sync(force=True) is True
    assert follower.full_loads == 2 and follower.version == 1
    assert [e.value for e in follower.entries(DEVICES)] == ["dev-1"]


# A step of a random history: (writer's op, list, value index, expiry in seconds or None),
# after which the follower syncs or not.
_OPS = st.sampled_from(["add", "add", "add", "remove", "purge", "tick"])
_STEP = st.tuples(
    _OPS,
    st.sampled_from([DEVICES, "allowed_customers"]),
    st.integers(0, 11),
    st.none() | st.integers(0, 3),
    st.booleans(),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # each example resets it
)
@given(steps=st.lists(_STEP, max_size=40), kept=st.sampled_from([5, 1_000]))
def test_applied_changes_equal_a_fresh_load(
    engine: sa.Engine, steps: list[tuple[str, str, int, int | None, bool]], kept: int
) -> None:
    with engine.begin() as conn:
        conn.execute(t.list_entries.delete())
        conn.execute(t.list_changes.delete())
        conn.execute(t.list_state.update().values(version=0))
    clock = ManualClock(T0)
    writer = ListStore(engine, clock, changes_kept=kept)
    follower = SyncedRiskLists(ListStore(engine, clock, changes_kept=kept), check_interval_ms=0)
    # Values of all widths: the tables widen, and grow past their first rows.
    values = [f"v{k}" + "w" * (k * k) for k in range(12)]
    for op, name, k, expiry, sync in steps:
        if op == "add":
            expires = None if expiry is None else T0 + expiry * SECOND
            writer.add(name, values[k], reason=f"r{k}", expires_at_ns=expires)
        elif op == "remove":
            writer.remove(name, values[k])
        elif op == "purge":
            writer.purge_expired()
        else:
            clock.advance(SECOND)
        if sync:
            follower.sync(force=True)
            follower.contains(name, np.array(values))  # builds the table: changed from now on
    follower.sync(force=True)
    assert follower.version == writer.version()
    _same_as_the_store(follower, writer)
    if kept > len(steps):  # the log held every change: never reloaded
        assert follower.full_loads == 1
