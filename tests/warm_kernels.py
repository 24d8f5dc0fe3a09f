"""Compile every numba kernel once, before the suite: `make test` runs this beside the linters
(on a fresh clone the kernels' cache is empty, and each pytest worker would otherwise compile
the same kernels at once in its first test: more than a minute of both cores).

    python tests/warm_kernels.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def main() -> None:
    import puhui.ledger
    from puhui.clock import ManualClock, SystemClock
    from puhui.risk._engine import DEFAULT_RULES, engine_schema
    from puhui.risk._load import load_ruleset
    from puhui.risk._runtime import _warm_up

    started = time.perf_counter()
    _warm_up(load_ruleset(DEFAULT_RULES, engine_schema()), None, SystemClock())
    with tempfile.TemporaryDirectory() as scratch:
        for where in (Path(scratch) / "warm.sqlite", Path(scratch) / "journal"):
            ledger = puhui.ledger.open(where, clock=ManualClock(1_000_000_000_000))
            ledger.close()
    print(f"kernels ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
