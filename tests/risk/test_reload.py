"""Hot reload: the live ruleset follows its file; a bad file never replaces a good one."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from puhui.clock import ManualClock
from puhui.risk import Decision, FeatureType, RuleParseError, RulesetWatcher

from .reference import rule, ruleset_text

SCHEMA = {"x": FeatureType.NUMBER}
MS = 1_000_000


def _write(path: Path, text: str, *, bump_ns: int = 0) -> None:
    """Write ``text`` and give the file a fresh mtime (filesystems may round mtimes)."""
    path.write_text(text, encoding="utf-8")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump_ns))


def _version(n: int, threshold: float = 1) -> str:
    return ruleset_text([rule(f"r{n}", f"x > {threshold}", action="reject")]).replace(
        'version = "1"', f'version = "v{n}"'
    )


def _decision(watcher: RulesetWatcher, x: float) -> Decision:
    (outcome,) = watcher.current().evaluate({"x": np.array([x])})
    return outcome.decision


def test_good_bad_good(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, _version(1))
    clock = ManualClock(0)
    watcher = RulesetWatcher(path, SCHEMA, clock=clock, check_interval_ms=100)
    first = watcher.current()
    assert first.declared_version == "v1" and watcher.error is None and watcher.reloads == 0

    # A new good version goes live at the next check, not before.
    _write(path, _version(2, threshold=5), bump_ns=1 * MS)
    clock.advance(99 * MS)
    assert watcher.current() is first
    clock.advance(1 * MS)
    second = watcher.current()
    assert second.declared_version == "v2" and watcher.reloads == 1
    assert _decision(watcher, 3) == Decision.ACCEPT

    # A bad version: the good one stays live, the error is exposed.
    _write(path, _version(3).replace("x > 1", "x > > 1"), bump_ns=2 * MS)
    clock.advance(100 * MS)
    assert watcher.current() is second
    assert isinstance(watcher.error, RuleParseError)
    assert watcher.error.rule_id == "r3" and watcher.error.line == 8
    assert watcher.reloads == 1
    # ... and is not re-read while the file stays the same.
    clock.advance(100 * MS)
    assert watcher.current() is second and watcher.error is not None

    # Fixed: the new version goes live and the error clears.
    _write(path, _version(4, threshold=2), bump_ns=3 * MS)
    clock.advance(100 * MS)
    fourth = watcher.current()
    assert fourth.declared_version == "v4" and watcher.error is None and watcher.reloads == 2
    assert _decision(watcher, 3) == Decision.REJECT


def test_a_file_touched_but_unchanged_is_not_recompiled(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, _version(1))
    clock = ManualClock(0)
    watcher = RulesetWatcher(path, SCHEMA, clock=clock, check_interval_ms=10)
    live = watcher.current()
    _write(path, _version(1), bump_ns=5 * MS)
    clock.advance(10 * MS)
    assert watcher.current() is live and watcher.reloads == 0


def test_a_deleted_file_keeps_the_live_ruleset(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, _version(1))
    clock = ManualClock(0)
    watcher = RulesetWatcher(path, SCHEMA, clock=clock, check_interval_ms=10)
    live = watcher.current()
    path.unlink()
    clock.advance(10 * MS)
    assert watcher.current() is live
    assert watcher.error is not None and "cannot read" in watcher.error.reason
    _write(path, _version(2))
    clock.advance(10 * MS)
    assert watcher.current().declared_version == "v2" and watcher.error is None


def test_reload_now_ignores_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, _version(1))
    watcher = RulesetWatcher(path, SCHEMA, clock=ManualClock(0), check_interval_ms=60_000)
    _write(path, _version(2), bump_ns=1 * MS)
    assert watcher.current().declared_version == "v1"
    assert watcher.reload().declared_version == "v2"


def test_a_bad_first_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    _write(path, "not toml at all =")
    with pytest.raises(RuleParseError):
        RulesetWatcher(path, SCHEMA, clock=ManualClock(0))


def test_swaps_are_atomic_under_concurrent_readers(tmp_path: Path) -> None:
    """Readers see whole rulesets only: each version's rule and version agree, always."""
    path = tmp_path / "rules.toml"
    _write(path, _version(0, threshold=0))
    clock = ManualClock(0)
    watcher = RulesetWatcher(path, SCHEMA, clock=clock, check_interval_ms=0)
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            ruleset = watcher.current()
            n = int(ruleset.declared_version[1:])
            seen.add(ruleset.declared_version)
            if [r.id for r in ruleset.rules] != [f"r{n}"]:
                problems.append(f"{ruleset.declared_version} has {ruleset.rules}")
            (outcome,) = ruleset.evaluate({"x": np.array([n + 0.5])})
            if outcome.decision != Decision.REJECT or outcome.ruleset_version != ruleset.version:
                problems.append(f"{ruleset.declared_version} decided {outcome}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for n in range(1, 15):
            text = _version(n, threshold=n)
            if n % 3 == 0:
                text = text.replace(f"x > {n}", f"x >> {n}")  # bad: must never go live
            _write(path, text, bump_ns=n * MS)
            watcher.reload()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not problems, problems[:3]
    assert watcher.current().declared_version == "v14"
    assert not any(v in seen for v in ("v3", "v6", "v9", "v12"))
