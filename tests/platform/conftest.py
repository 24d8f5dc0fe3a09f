"""A manual clock (the migrated SQL store, ``engine``, is the suite's: tests/conftest.py)."""

from __future__ import annotations

import pytest

from puhui.clock import ManualClock

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START_NS)
