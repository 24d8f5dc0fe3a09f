"""Block and allow lists: add, remove, lookup, expiry, batch membership, persistence."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puhui.clock import ManualClock
from puhui.risk import LIST_NAMES, ListEntry, RiskListError, RiskLists
from puhui.risk._strings import ExpiryTable


def test_the_standard_lists() -> None:
    assert LIST_NAMES == (
        "allowed_cards",
        "allowed_customers",
        "allowed_devices",
        "allowed_ips",
        "allowed_merchants",
        "blocked_cards",
        "blocked_customers",
        "blocked_devices",
        "blocked_ips",
        "blocked_merchants",
    )
    assert RiskLists(ManualClock()).names == LIST_NAMES


def test_add_lookup_remove() -> None:
    clock = ManualClock(100)
    lists = RiskLists(clock)
    entry = lists.add("blocked_devices", "dev-1", reason="account takeover")
    assert entry == ListEntry("dev-1", "account takeover", 100, None)
    assert lists.lookup("blocked_devices", "dev-1") == entry
    assert lists.lookup("blocked_devices", "dev-2") is None
    assert lists.lookup("allowed_devices", "dev-1") is None
    # Adding again replaces the entry (new reason, new expiry).
    clock.set(200)
    again = lists.add("blocked_devices", "dev-1", reason="confirmed", expires_at_ns=500)
    assert lists.lookup("blocked_devices", "dev-1") == again
    assert lists.entries("blocked_devices") == [again]
    assert lists.remove("blocked_devices", "dev-1") is True
    assert lists.remove("blocked_devices", "dev-1") is False
    assert lists.lookup("blocked_devices", "dev-1") is None


def test_expired_entries_do_not_match() -> None:
    clock = ManualClock(1_000)
    lists = RiskLists(clock)
    lists.add("blocked_ips", "10.0.0.1", reason="card testing", expires_at_ns=2_000)
    lists.add("blocked_ips", "10.0.0.2", reason="forever")
    values = np.array(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert lists.contains("blocked_ips", values).tolist() == [True, True, False]
    clock.set(1_999)
    assert lists.lookup("blocked_ips", "10.0.0.1") is not None
    clock.set(2_000)  # expiry is exclusive: at expires_at_ns the entry no longer matches
    assert lists.lookup("blocked_ips", "10.0.0.1") is None
    assert lists.contains("blocked_ips", values).tolist() == [False, True, False]
    assert len(lists.entries("blocked_ips")) == 2  # still stored
    assert lists.purge_expired() == 1
    assert [e.value for e in lists.entries("blocked_ips")] == ["10.0.0.2"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lists: lists.add("blocked_phones", "x", reason="r"), "unknown list"),
        (lambda lists: lists.add("blocked_cards", "", reason="r"), "value must be"),
        (lambda lists: lists.add("blocked_cards", "x" * 201, reason="r"), "value must be"),
        (lambda lists: lists.add("blocked_cards", 5, reason="r"), "value must be"),
        (lambda lists: lists.add("blocked_cards", "x", reason=""), "reason must be"),
        (
            lambda lists: lists.add("blocked_cards", "x", reason="r", expires_at_ns=-1),
            "expires_at_ns",
        ),
        (
            lambda lists: lists.add("blocked_cards", "x", reason="r", expires_at_ns=1.5),
            "expires_at_ns",
        ),
        (lambda lists: lists.lookup("nope", "x"), "unknown list"),
        (lambda lists: lists.remove("nope", "x"), "unknown list"),
        (lambda lists: lists.contains("nope", np.array(["x"])), "unknown list"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(call: object, message: str) -> None:
    lists = RiskLists(ManualClock())
    with pytest.raises(RiskListError, match=message) as caught:
        call(lists)  # type: ignore[operator]
    assert caught.value.code == "risk_list_invalid"
    assert all(lists.entries(name) == [] for name in lists.names)


def test_contains_wants_unicode() -> None:
    lists = RiskLists(ManualClock())
    lists.add("blocked_customers", "7", reason="r")
    with pytest.raises(RiskListError, match="unicode"):
        lists.contains("blocked_customers", np.array([7]))
    assert lists.contains("blocked_customers", np.array(["7", "77", ""])).tolist() == [
        True,
        False,
        False,
    ]
    assert lists.contains("blocked_customers", np.array([], dtype=str)).tolist() == []
    assert lists.contains("blocked_cards", np.array(["7"])).tolist() == [False]


@settings(max_examples=150, deadline=None)
@given(
    stored=st.dictionaries(
        st.text(min_size=1, max_size=12), st.one_of(st.none(), st.integers(0, 20)), max_size=40
    ),
    probes=st.lists(st.text(max_size=12), max_size=40),
    now=st.integers(0, 20),
)
def test_batch_membership_equals_lookup(
    stored: dict[str, int | None], probes: list[str], now: int
) -> None:
    clock = ManualClock(now)
    lists = RiskLists(clock)
    for value, expiry in stored.items():
        if "\x00" in value:
            continue  # numpy unicode arrays cannot hold NUL characters
        lists.add("blocked_devices", value, reason="r", expires_at_ns=expiry)
    probes = [p for p in probes if "\x00" not in p] + [v for v in stored if "\x00" not in v]
    values = np.array(probes, dtype=str) if probes else np.array([], dtype=str)
    found = lists.contains("blocked_devices", values).tolist()
    assert found == [lists.lookup("blocked_devices", p) is not None for p in probes]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    clock = ManualClock(10)
    lists = RiskLists(clock)
    lists.add("blocked_cards", "card-9", reason="stolen", expires_at_ns=99)
    lists.add("allowed_customers", "c-1", reason="known good")
    lists.add("allowed_customers", "c-0", reason="known good, ünïcode")
    path = tmp_path / "lists.json"
    lists.save(path)
    loaded = RiskLists.load(path, clock)
    assert loaded.names == LIST_NAMES
    for name in LIST_NAMES:
        assert loaded.entries(name) == lists.entries(name)
    assert loaded.contains("blocked_cards", np.array(["card-9"])).tolist() == [True]
    assert not (tmp_path / "lists.json.tmp").exists()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"format": 2, "lists": {}}',
        '{"format": 1}',
        '{"format": 1, "lists": {"blocked_cards": 5}}',
        '{"format": 1, "lists": {"blocked_cards": [5]}}',
        '{"format": 1, "lists": {"blocked_cards": [{"value": "x"}]}}',
        '{"format": 1, "lists": {"blocked_cards": [{"value": "", "reason": "r",'
        ' "added_at_ns": 1, "expires_at_ns": null}]}}',
        '{"format": 1, "lists": {"blocked_cards": [{"value": "x", "reason": "r",'
        ' "added_at_ns": "1", "expires_at_ns": null}]}}',
    ],
)
def test_load_rejects_what_is_not_a_list_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "lists.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RiskListError):
        RiskLists.load(path, ManualClock())


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RiskListError, match="cannot read"):
        RiskLists.load(tmp_path / "none.json", ManualClock())


def test_saved_file_is_plain_json(tmp_path: Path) -> None:
    lists = RiskLists(ManualClock(3), names=["blocked_devices"])
    lists.add("blocked_devices", "d", reason="r", expires_at_ns=9)
    lists.save(tmp_path / "l.json")
    document = json.loads((tmp_path / "l.json").read_text(encoding="utf-8"))
    assert document == {
        "format": 1,
        "lists": {
            "blocked_devices": [{"value": "d", "reason": "r", "added_at_ns": 3, "expires_at_ns": 9}]
        },
    }


def test_concurrent_adds_and_lookups() -> None:
    lists = RiskLists(ManualClock())
    probe = np.array([f"v{i}" for i in range(400)])
    errors: list[BaseException] = []

    def writer(start: int) -> None:
        for i in range(start, 400, 4):
            lists.add("blocked_devices", f"v{i}", reason="r")

    def reader() -> None:
        try:
            for _ in range(50):
                found = lists.contains("blocked_devices", probe)
                assert found.dtype == np.bool_ and found.shape == (400,)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert lists.contains("blocked_devices", probe).all()


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 150), st.none() | st.integers(0, 5)),
        max_size=400,
    )
)
def test_the_table_changed_in_place_answers_as_a_dict(ops: list[tuple[int, int | None]]) -> None:
    """``None`` takes the string off; widths grow, rows run out, dead rows pile up."""
    lock = threading.Lock()
    table = ExpiryTable(lock, ["s1", "s2"], np.array([7, 8], dtype=np.int64))
    model = {"s1": 7, "s2": 8}
    strings = [f"s{k}" + "z" * (k % 40) for k in range(151)]
    for k, value in ops:
        with lock:
            if value is None:
                table.discard(strings[k])
                model.pop(strings[k], None)
            else:
                table.set(strings[k], value)
                model[strings[k]] = value
    assert len(table) == len(model)
    probe = np.array([*strings, "s1", "s2", "", "nope"], dtype=str)
    assert table.lookup(probe).tolist() == [model.get(str(s), -1) for s in probe]


def test_lookups_racing_changes_never_miss_a_steady_entry() -> None:
    """A reader on another thread, while entries come and go (and the table is built anew
    many times): the entries never touched are always found, the never-added never."""
    clock = ManualClock(1_000)
    lists = RiskLists(clock)
    steady = [f"steady-{k}" for k in range(200)]
    for value in steady:
        lists.add("blocked_devices", value, reason="kept")
    probe = np.array([*steady, "never-1", "never-2"])
    expected = [True] * len(steady) + [False, False]
    assert lists.contains("blocked_devices", probe).tolist() == expected
    stop = threading.Event()
    wrong: list[list[bool]] = []

    def read() -> None:
        while not stop.is_set():
            found = lists.contains("blocked_devices", probe).tolist()
            if found != expected:
                wrong.append(found)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(5_000):
            lists.add("blocked_devices", f"churn-{k}" + "x" * (k % 90), reason="churn")
            if k % 3:
                lists.remove("blocked_devices", f"churn-{k - 1}" + "x" * ((k - 1) % 90))
    finally:
        stop.set()
        reader.join()
    assert wrong == []
    assert lists._tables["blocked_devices"].rebuilds > 3
