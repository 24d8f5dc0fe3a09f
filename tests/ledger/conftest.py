"""Fixtures for the ledger conformance tests.

``harness`` runs each test once per implementation in ``HARNESS_FACTORIES``; every harness starts
with its clock at ``now == 100`` and no accounts. Add an implementation by adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.ledger.harness import LedgerHarness, ReferenceHarness

HARNESS_START = 100

HARNESS_FACTORIES: dict[str, Callable[[], LedgerHarness]] = {
    "reference": lambda: ReferenceHarness(now=HARNESS_START),
}


@pytest.fixture(params=sorted(HARNESS_FACTORIES))
def harness(request: pytest.FixtureRequest) -> LedgerHarness:
    name: str = request.param
    return HARNESS_FACTORIES[name]()
