"""An API app on a fresh SQL store (SQLite) and ledger, with two tenants and their keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import puhui.ledger as tb
from puhui.api import ApiOptions, create_app
from puhui.clock import ManualClock
from puhui.platform import Tenant, Tenants
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
ALL_SCOPES = [
    "ledger:read",
    "ledger:write",
    "payments:read",
    "payments:write",
    "webhooks:read",
    "webhooks:write",
]


@dataclass
class Api:
    client: TestClient
    engine: sa.Engine
    ledger: tb.Ledger
    clock: ManualClock
    tenants: Tenants
    a: Tenant
    b: Tenant
    token_a: str
    token_b: str

    def auth(self, token: str | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token_a}", **headers}


def make_api(tmp_path: Path, options: ApiOptions | None = None) -> Iterator[Api]:
    engine = create_engine(f"sqlite:///{tmp_path / 'puhui.sqlite'}")
    migrate(engine)
    clock = ManualClock(START_NS)
    tenants = Tenants(engine, clock=clock)
    a = tenants.create("Bank A", "bank")
    b = tenants.create("Bank B", "bank")
    _, token_a = tenants.create_key(a.id, ALL_SCOPES)
    _, token_b = tenants.create_key(b.id, ALL_SCOPES)
    with tb.open(str(tmp_path / "ledger")) as ledger:
        app = create_app(engine, ledger, clock=clock, options=options)
        with TestClient(app, raise_server_exceptions=True) as client:
            yield Api(client, engine, ledger, clock, tenants, a, b, token_a, token_b)
    engine.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)


def account(id_: int, **fields: object) -> dict[str, object]:
    return {"id": str(id_), "ledger": 1, "code": 1, **fields}


def transfer(id_: int, debit: int, credit: int, amount: int, **fields: object) -> dict[str, object]:
    return {
        "id": str(id_),
        "debit_account_id": str(debit),
        "credit_account_id": str(credit),
        "amount": str(amount),
        "ledger": 1,
        "code": 1,
        **fields,
    }
