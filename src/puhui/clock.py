"""Time for Puhui: nothing calls ``time.time()`` or ``datetime.now()`` directly.

Services and the ledger take a ``Clock``; the simulator and tests pass a ``ManualClock`` to run
months in minutes, deterministically.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    """The machine's real-time clock."""

    def now_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that moves only when told to (never backwards)."""

    def __init__(self, now_ns: int = 0) -> None:
        self._now_ns = now_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def set(self, now_ns: int) -> None:
        with self._lock:
            if now_ns < self._now_ns:
                raise ValueError("a ManualClock never moves backwards")
            self._now_ns = now_ns

    def advance(self, delta_ns: int) -> None:
        if delta_ns < 0:
            raise ValueError("a ManualClock never moves backwards")
        with self._lock:
            self._now_ns += delta_ns
