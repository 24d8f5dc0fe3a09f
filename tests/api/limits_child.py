"""A worker of the shared rate limit's tests (``test_shared_limits.py``), run as a script.

``limits_child.py shared|per_process TABLE SECONDS``: says ``ready``, waits for a line on
stdin, then takes from the one key ``k`` as fast as it can for ``SECONDS`` — from the
``SharedRateLimiter`` at ``TABLE``, or from a ``RateLimiter`` of its own with the table's
rate and burst — and prints, as JSON, the takes granted and when the first and last take
were made (``time.time_ns``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from puhui.api import RateLimitedError, SharedRateLimiter
from puhui.api._guards import RateLimiter
from puhui.clock import SystemClock


def main() -> None:
    mode, table, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    clock = SystemClock()
    shared = SharedRateLimiter.open(table, clock)
    limiter: RateLimiter | SharedRateLimiter = shared
    if mode == "per_process":
        limiter = RateLimiter(clock, shared.rate_per_s, shared.burst)
    print("ready", flush=True)
    sys.stdin.readline()
    granted = 0
    first_ns = time.time_ns()
    deadline = first_ns + int(seconds * 1e9)
    last_ns = first_ns
    while last_ns < deadline:
        try:
            limiter.take("k")
        except RateLimitedError:
            pass
        else:
            granted += 1
        last_ns = time.time_ns()
    print(json.dumps({"granted": granted, "first_ns": first_ns, "last_ns": last_ns}), flush=True)


if __name__ == "__main__":
    main()
