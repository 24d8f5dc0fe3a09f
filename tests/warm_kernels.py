"""Compile every numba kernel once, before the suite: `make test` runs this beside the linters
(on a fresh clone the kernels' cache is empty, and each pytest worker would otherwise compile
the same kernels at once in its first test: more than a minute of both cores).

    python tests/warm_kernels.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests` as a package
    import puhui.ledger
    from puhui.api import warm_up_readers
    from puhui.clock import ManualClock, SystemClock
    from puhui.risk._engine import DEFAULT_RULES, engine_schema
    from puhui.risk._load import load_ruleset
    from puhui.risk._runtime import _warm_up
    from tests.ledger.test_crash import warm_ledger

    started = time.perf_counter()
    _warm_up(load_ruleset(DEFAULT_RULES, engine_schema()), None, SystemClock())
    warm_up_readers()
    with tempfile.TemporaryDirectory() as scratch:
        warm_ledger(Path(scratch) / "warm.sqlite")
        ledger = puhui.ledger.open(Path(scratch) / "journal", clock=ManualClock(10**12))
        ledger.close()
    print(f"kernels ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
