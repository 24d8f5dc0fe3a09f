"""An API app on a fresh SQL store (SQLite) and ledger, with two tenants and their keys."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

import puhui.ledger as tb
from puhui.api import ApiOptions, CorkedHttpProtocol, SharedRateLimiter, create_app
from puhui.clock import ManualClock
from puhui.errors import PuhuiError
from puhui.payments import Payments, SimulatedBank
from puhui.payments.service import Decide
from puhui.platform import Tenant, Tenants
from puhui.risk import Cases
from puhui.store import create_engine, migrate

START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
ALL_SCOPES = [
    "ledger:read",
    "ledger:write",
    "payments:read",
    "payments:write",
    "webhooks:read",
    "webhooks:write",
    "risk:read",
    "risk:write",
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


def public_dns(host: str) -> list[str]:
    """The tests' DNS: every webhook host name is one public address (no lookup leaves the
    machine; receivers are MockTransports)."""
    return ["93.184.215.14"]


def make_api(
    tmp_path: Path,
    options: ApiOptions | None = None,
    decide: Decide | None = None,
    database_url: str | None = None,
    shared_limits: bool = False,
) -> Iterator[Api]:
    """An app and its world; the SQL store is SQLite unless ``database_url`` names another.
    ``shared_limits``: the keys' buckets in a ``SharedRateLimiter``'s table (as each worker
    of a multi-process server has them), not the app's own ``RateLimiter``."""
    options = options or ApiOptions()
    if options.webhooks.resolve is None:
        webhooks = dataclasses.replace(options.webhooks, resolve=public_dns)
        options = dataclasses.replace(options, webhooks=webhooks)
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'puhui.sqlite'}")
    migrate(engine)
    clock = ManualClock(START_NS)
    tenants = Tenants(engine, clock=clock)
    a = tenants.create("Bank A", "bank")
    b = tenants.create("Bank B", "bank")
    _, token_a = tenants.create_key(a.id, ALL_SCOPES)
    _, token_b = tenants.create_key(b.id, ALL_SCOPES)
    with tb.open(str(tmp_path / "ledger")) as ledger:
        payments = None
        if decide is not None:
            bank = SimulatedBank(clock)
            payments = Payments(
                engine, ledger, clock=clock, bank=bank, decide=decide, cases=Cases(engine, clock)
            )
        limiter = None
        if shared_limits:
            table = tmp_path / "rate-limits"
            SharedRateLimiter.create(table, options.rate_per_key_per_s, options.rate_burst_requests)
            limiter = SharedRateLimiter.open(table, clock)
        app = create_app(
            engine, ledger, clock=clock, options=options, payments=payments, limiter=limiter
        )
        with TestClient(app, raise_server_exceptions=True) as client:
            yield Api(client, engine, ledger, clock, tenants, a, b, token_a, token_b)
    engine.dispose()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)


@pytest.fixture
def postgres_api(tmp_path: Path, postgres_schema_url: str) -> Iterator[Api]:
    """``api`` with its SQL store on PostgreSQL (skipped without one)."""
    yield from make_api(tmp_path, database_url=postgres_schema_url)


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


def records(dtype: np.dtype[Any], rows: list[dict[str, Any]]) -> bytes:
    """JSON-form events (decimal strings and numbers) as binary records of ``dtype``."""
    out = np.zeros(len(rows), dtype)
    for i, row in enumerate(rows):
        for name, value in row.items():
            number = int(value)
            if name + "_lo" in dtype.names:  # type: ignore[operator]
                out[i][name + "_lo"] = number & ((1 << 64) - 1)
                out[i][name + "_hi"] = number >> 64
            else:
                out[i][name] = number
    return out.tobytes()


def post_ok(api: Api, path: str, body: object = None, token: str | None = None) -> Any:
    response = api.client.post(path, json=body, headers=api.auth(token))
    assert response.status_code in (200, 201), (path, response.status_code, response.text)
    return response.json()


def payments_world(
    api: Api, token: str | None = None, phone_prefix: str = "1380000"
) -> dict[str, str]:
    """A tenant's payments objects, made through the API: a fully verified customer with a
    card and money, a second customer, a merchant, a P2P payment, a paid order with a
    refund asked for, a bill binding and a payment code. Returns their ids (as text)."""
    p = "/v1/payments"
    first = post_ok(
        api, f"{p}/customers", {"phone": f"+86{phone_prefix}0001", "display_name": "Li"}, token
    )
    second = post_ok(
        api, f"{p}/customers", {"phone": f"+86{phone_prefix}0002", "display_name": "Wang"}, token
    )
    c = first["id"]
    post_ok(api, f"{p}/customers/{c}/identity", {"national_id": f"ID{phone_prefix}1"}, token)
    card = post_ok(
        api,
        f"{p}/customers/{c}/cards",
        {"card_token": "tok-1", "bank_name": "ICBC", "last4": "1234"},
        token,
    )
    post_ok(api, f"{p}/customers/{c}/full-verification", {"biometric_passed": True}, token)
    top_up = {"card_id": card["id"], "amount": 30_000_00, "currency": "CNY"}
    assert post_ok(api, f"{p}/customers/{c}/top-ups", top_up, token)["status"] == "completed"
    merchant = post_ok(
        api,
        f"{p}/merchants",
        {"name": "Tea", "category": "food", "fee_bps": 60, "settlement_card_token": "m-1"},
        token,
    )
    p2p = post_ok(
        api,
        f"{p}/customers/{c}/transfers",
        {"payee": {"customer_id": second["id"]}, "amount": 5_00, "currency": "CNY"},
        token,
    )
    assert p2p["status"] == "completed", p2p
    order = post_ok(
        api,
        f"{p}/orders",
        {
            "buyer_customer_id": c,
            "merchant_id": merchant["id"],
            "amount": 30_00,
            "currency": "CNY",
            "fulfilment": "express",
            "title": "a teapot",
        },
        token,
    )
    post_ok(api, f"{p}/orders/{order['id']}/pay", None, token)
    refund = post_ok(
        api, f"{p}/orders/{order['id']}/refunds", {"amount": 10_00, "reason": "chipped"}, token
    )
    context = api.client.app.state.puhui  # type: ignore[attr-defined]
    try:
        context.payments.bills.biller("water")
    except PuhuiError:
        context.payments.bills.register_biller("water", "City Water", "water")
    binding = post_ok(
        api,
        f"{p}/customers/{c}/bill-bindings",
        {"biller_code": "water", "household_account": "H-1"},
        token,
    )
    code = post_ok(api, f"{p}/customers/{c}/payment-codes", None, token)["payment_code"]
    return {
        "customer": str(c),
        "other_customer": str(second["id"]),
        "card": str(card["id"]),
        "merchant": str(merchant["id"]),
        "merchant_qr": merchant["qr"],
        "operation": p2p["id"],
        "order": order["id"],
        "refund": refund["id"],
        "binding": str(binding["id"]),
        "payment_code": code,
    }


@contextlib.contextmanager
def on_loopback(app: Any) -> Iterator[int]:
    """``app`` served over a real socket as ``puhui serve`` serves it (uvicorn on uvloop, the
    corked httptools protocol), on a free loopback port, in a thread; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, http=CorkedHttpProtocol, loop="uvloop", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
