"""The Python example of docs/sim.md is real code: run as a reader copies it (on a smaller
economy, so that it takes a second), it simulates, prints the loss rate and writes the
events where it says."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

import puhui.sim

from .._docs import python_blocks


def test_the_example_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [code] = python_blocks("sim.md")
    simulate = puhui.sim.simulate

    def smaller(config: puhui.sim.SimConfig, **rest: Any) -> Any:
        return simulate(dataclasses.replace(config, customers=20, days=1), **rest)

    monkeypatch.setattr(puhui.sim, "simulate", smaller)
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []
    namespace: dict[str, Any] = {"print": lambda *args: printed.append(" ".join(map(str, args)))}
    exec(compile(code, "docs/sim.md", "exec"), namespace)
    [loss_rate] = printed
    assert 0.0 <= float(loss_rate) <= 1.0
    [written] = re.findall(r"write_events\(events, Path\(\"([^\"]+)\"\)\)", code)
    lines = (tmp_path / written).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(namespace["events"]) > 0
    assert {"seq", "kind", "label", "decision"} <= json.loads(lines[0]).keys()
