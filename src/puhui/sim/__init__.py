"""``puhui.sim``: a synthetic economy that drives the real services, with labelled fraud.

Honest urban and rural customers shop at merchants (daily and weekly rhythms), pay friends,
buy from the marketplace with escrow, pay their electricity bill, receive a salary and
withdraw; newcomers sign up and collect a new-user bonus. Fraudsters take over accounts
(also by SIM swap), run mule chains, test stolen cards, scam victims into paying them,
collude with a merchant and farm the bonus. Every money movement goes through
``puhui.payments`` with risk control in front (``decide``, the pass-through by default), so
what risk stops does not happen and what it lets through is lost when it leaves.

``simulate(SimConfig(...))`` returns the report and the labelled events; the same config
(seed included) gives the same events. ``docs/sim.md`` describes the economy and each
scenario.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ._economy import Decide, Economy
from ._model import (
    DEFAULT_INCIDENCE,
    Role,
    Scenario,
    ScenarioReport,
    SimConfig,
    SimEvent,
    SimReport,
)

__all__ = [
    "DEFAULT_INCIDENCE",
    "Role",
    "Scenario",
    "ScenarioReport",
    "SimConfig",
    "SimEvent",
    "SimReport",
    "simulate",
    "write_events",
]


def simulate(
    config: SimConfig,
    *,
    decide: Decide | None = None,
    workdir: Path | None = None,
    on_day: Callable[[int], None] | None = None,
) -> tuple[SimReport, list[SimEvent]]:
    """Run the economy for ``config.days`` days and return its report and events.

    The services keep their SQL store and ledger in ``workdir`` (kept afterwards), or in a
    temporary directory (in memory under ``/dev/shm`` where there is one) that is removed.
    ``on_day(day)`` is called as simulated days pass (for progress bars).
    """
    own = workdir is None
    if workdir is None:
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        workdir = Path(tempfile.mkdtemp(prefix="puhui-sim-", dir=base))
    economy = Economy(config, workdir, decide=decide)
    try:
        report = economy.run(on_day)
        return report, economy.events
    finally:
        economy.close()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def write_events(events: Iterable[SimEvent], path: Path) -> int:
    """Write events as JSON lines (one object per event, in order); returns how many."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event.as_json(), separators=(",", ":")))
            out.write("\n")
            count += 1
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    return count
