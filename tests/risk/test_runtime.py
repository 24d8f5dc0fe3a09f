"""``open_engine``: a server's engine with its state on disk — recovered on start, snapshotted on
a clean stop, one process at a time, nothing left open when a file is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from puhui.clock import ManualClock
from puhui.risk import (
    Decision,
    EventKind,
    RiskEvent,
    RiskLists,
    RiskStateLockedError,
    RuleParseError,
    open_engine,
)
from puhui.risk._model import ModelFileError

T0 = 1_767_000_000 * 10**9
DAY = 86_400 * 10**9

RULES = """
name = "t"
version = "{version}"

[[rule]]
id = "busy"
description = "a customer's fourth payment within the hour"
when = 'customer.count_1h >= 3'
action = "{action}"
priority = 1
status = "active"
owner = "t"
"""


def _event(k: int) -> RiskEvent:
    return RiskEvent(
        kind=EventKind.P2P,
        customer_id=7,
        at_ns=T0 + k * 60 * 10**9,
        amount=1_000,
        currency="CNY",
        counterparty="c:9",
        device_id="d1",
        ip="10.0.0.1",
        kyc_level=2,
        account_created_ns=T0 - 400 * DAY,
    )


def test_the_feature_state_survives_a_restart(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(version="1", action="review"))
    clock = ManualClock(T0)
    with open_engine(tmp_path / "risk", clock=clock, rules=rules, snapshot_interval_s=None) as e:
        assert [d.decision for d in e([_event(k) for k in range(3)])] == [Decision.ACCEPT] * 3
    saved = json.loads((tmp_path / "risk" / "state" / "features.json").read_text())
    assert saved["log_next_id"] == 4  # the snapshot covers the three decisions logged
    with open_engine(tmp_path / "risk", clock=clock, rules=rules, snapshot_interval_s=None) as e:
        # The fourth payment of the hour: only a restarted engine that remembers the first
        # three counts it so.
        [fourth] = e([_event(3)])
        assert fourth.decision is Decision.REVIEW, fourth
        assert fourth.reasons[0].startswith("busy(")


def test_a_crash_loses_no_feature_state_the_log_has(tmp_path: Path) -> None:
    """No snapshot at all (the process died before its clean stop): the log is replayed."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(version="1", action="review"))
    clock = ManualClock(T0)
    with open_engine(tmp_path / "risk", clock=clock, rules=rules, snapshot_interval_s=None) as e:
        e([_event(k) for k in range(3)])
        assert e.log is not None
        e.log.flush()
        reference = e.features.compute(e.features.batch_from_events([_event(10)]))
    for name in ("features.json", "features.npz"):
        (tmp_path / "risk" / "state" / name).unlink()
    with open_engine(tmp_path / "risk", clock=clock, rules=rules, snapshot_interval_s=None) as e:
        again = e.features.compute(e.features.batch_from_events([_event(10)]))
        assert all(np.array_equal(reference[k], again[k], equal_nan=True) for k in reference)


def test_entities_bound_the_feature_state_and_survive_a_restart(tmp_path: Path) -> None:
    """``open_engine(entities=…, pairs=…)`` bounds the store (and reserves it whole); after a
    restart the replay evicts with the same bounds."""
    clock = ManualClock(T0)

    def visitor(k: int) -> RiskEvent:  # a new device, IP and payee each time
        return RiskEvent(EventKind.LOGIN, 100 + k, T0 + k * 10**9, 0, "", "", f"d{k}", f"ip{k}")

    directory = tmp_path / "risk"
    with open_engine(directory, clock=clock, snapshot_interval_s=None, entities=16, pairs=32) as e:
        for k in range(40):
            e([visitor(k)])
        assert e.features.entities_max == 16 and e.features.pairs_max == 32
        assert e.features.entity_counts()["device"] <= 16
        reserved = e.features.memory_bytes()
        before = e.features.entity_counts()
    with open_engine(directory, clock=clock, snapshot_interval_s=None, entities=16, pairs=32) as e:
        assert e.features.entities_max == 16
        assert e.features.entity_counts() == before
        e([visitor(k) for k in range(40, 50)])
        assert e.features.memory_bytes() == reserved
    # a crash (no snapshot): the log replayed with the bounds gives the same state
    (directory / "state" / "features.npz").unlink()
    (directory / "state" / "features.json").unlink()
    with open_engine(directory, clock=clock, snapshot_interval_s=None, entities=16, pairs=32) as e:
        assert e.features.entity_counts()["device"] <= 16
        assert e.features.events_applied == 50


def test_one_process_at_a_time(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    with open_engine(tmp_path / "risk", clock=clock, snapshot_interval_s=None):
        with (
            pytest.raises(RiskStateLockedError) as refused,
            open_engine(tmp_path / "risk", clock=clock, snapshot_interval_s=None),
        ):
            pass  # pragma: no cover - never entered
        assert refused.value.code == "risk_state_locked"
    with open_engine(tmp_path / "risk", clock=clock, snapshot_interval_s=None):
        pass  # released on exit: the next one gets it


def test_a_refused_file_leaves_nothing_open(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    bad_rules = tmp_path / "bad.toml"
    bad_rules.write_text('name = "t"\nversion = "1"\n[[rule]]\nid = "x"\nwhen = "event.amount >"\n')
    with (
        pytest.raises(RuleParseError),
        open_engine(tmp_path / "risk", clock=clock, rules=bad_rules),
    ):
        pass  # pragma: no cover - never entered
    missing = tmp_path / "missing.json"
    with pytest.raises(ModelFileError), open_engine(tmp_path / "risk", clock=clock, model=missing):
        pass  # pragma: no cover - never entered
    with open_engine(tmp_path / "risk", clock=clock, snapshot_interval_s=None) as engine:
        assert engine([_event(0)])[0].decision is Decision.ACCEPT


def test_the_ruleset_file_is_reloaded_while_running(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(version="1", action="review"))
    clock = ManualClock(T0)
    with open_engine(tmp_path / "risk", clock=clock, rules=rules, snapshot_interval_s=None) as e:
        e([_event(k) for k in range(3)])
        assert e([_event(3)])[0].decision is Decision.REVIEW
        rules.write_text(RULES.format(version="2", action="reject"))
        clock.advance(2 * 10**9)  # past the watcher's check interval
        decided = e([_event(4)])[0]
        assert decided.decision is Decision.REJECT
        assert decided.ruleset_version.startswith("2+")


def test_a_running_engine_purges_lapsed_list_entries(tmp_path: Path) -> None:
    """Beside the periodic snapshot, lapsed list entries are deleted (they were kept, and
    carried by every reload, for ever)."""
    clock = ManualClock(T0)
    lists = RiskLists(clock)
    lists.add("blocked_devices", "lapsing", reason="a day's block", expires_at_ns=T0 + 10**9)
    lists.add("blocked_devices", "kept", reason="for good")
    with open_engine(tmp_path / "risk", clock=clock, lists=lists, snapshot_interval_s=0.01):
        clock.advance(10**9)
        deadline = time.monotonic() + 10
        while len(lists.entries("blocked_devices")) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.value for e in lists.entries("blocked_devices")] == ["kept"]


def test_start_up_says_it_is_loading_kernels_before_it_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a fresh install the warm-up compiles the kernels for minutes; a server's log says
    so before it starts, not only once it has recovered."""
    caplog.set_level("INFO", logger="puhui.risk")
    with open_engine(tmp_path / "risk", clock=ManualClock(T0), snapshot_interval_s=None):
        pass
    messages = [record.getMessage() for record in caplog.records if record.name == "puhui.risk"]
    warming = [n for n, message in enumerate(messages) if "compiled kernels" in message]
    recovered = [n for n, message in enumerate(messages) if "recovered" in message]
    assert warming and recovered and warming[0] < recovered[0], messages
