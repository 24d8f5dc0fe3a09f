"""Tenant isolation, generated from the app's route table: a new route is covered as soon
as it exists (and the test fails until it knows how to fill the route's fields).

For every authenticated route: without a key → 401; with a key lacking the route's scope →
403; with tenant B's key aimed at tenant A's resources → 404/403, or exactly the answer B
gets for resources that exist nowhere (no existence leak); and A's data is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import numpy as np
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter
from typing_extensions import get_type_hints, is_typeddict

from puhui.api import ROUTERS, ApiOptions, PlatformRoute, platform_routes
from puhui.api._schemas import AccountIn, TransferIn
from puhui.ledger import ACCOUNT_DTYPE, RESULT_DTYPE, TRANSFER_DTYPE, AccountFlags, TransferFlags
from puhui.platform import EventType, Webhooks
from puhui.risk import Decision, RiskDecision, RiskEvent

from .conftest import ALL_SCOPES, Api, account, make_api, payments_world, records, transfer

# Tenant A's resources, and ids that exist for nobody (the baseline). The payments objects
# of A are made by ``payments_world`` (their ids are the server's), and A's webhook endpoint
# and event by ``_world``: a world's ``ids`` are these and those.
A_IDS = {"account": "1", "other_account": "2", "transfer": "10", "pending": "11"}
NOWHERE = {
    "account": "9001",
    "other_account": "9002",
    "transfer": "9010",
    "pending": "9011",
    "customer": "9001",
    "other_customer": "9002",
    "card": "9003",
    "merchant": "9001",
    "merchant_qr": "puhui://m/9001",
    "operation": "9010",
    "order": "9011",
    "refund": "9012",
    "binding": "9013",
    "payment_code": "280000000000009001",
    "new_phone": "+8613900009001",
    "webhook_endpoint": "we_" + "0" * 16,
    "webhook_event": "evt_" + "0" * 32,
    "case": "9001",
    "tenant": "9001",
    "api_key": "0" * 16,
}
A_FRESH = {"new_phone": "+8613900000001"}
"""Values that name nothing of A's yet differ from the baseline's (a phone to register)."""

# Which resource each id-like field names (by "Model.field", then by field).
FIELD_RESOURCE = {
    "AccountIn.id": "account",
    "TransferIn.id": "transfer",
    "debit_account_id": "account",
    "credit_account_id": "other_account",
    "account_id": "other_account",
    "customer_id": "customer",
    "buyer_customer_id": "customer",
    "PayeeIn.customer_id": "other_customer",
    "merchant_id": "merchant",
    "merchant_qr": "merchant_qr",
    "card_id": "card",
    "operation_id": "operation",
    "order_id": "order",
    "refund_id": "refund",
    "binding_id": "binding",
    "payment_code": "payment_code",
    "phone": "new_phone",
    "endpoint_id": "webhook_endpoint",
    "event_id": "webhook_event",
    "case_id": "case",
    "tenant_id": "tenant",
    "key_id": "api_key",
}
LIST_OF_IDS = {"ids": ["account", "other_account", "transfer", "pending"]}
PLAIN_VALUES: dict[str, Any] = {
    "ledger": 1,
    "code": 1,
    "amount": "1",
    "currency": "CNY",
    "url": "https://b.example/hook",
    "event_types": ["*"],
    "display_name": "Zhao",
    "national_id": "ID-isolation",
    "biometric_passed": True,
    "card_token": "tok-isolation",
    "bank_name": "ICBC",
    "last4": "4321",
    "name": "Shop",
    "category": "food",
    "fee_bps": 100,
    "settlement_card_token": "m-isolation",
    "passed": True,
    "fulfilment": "express",
    "title": "a cup",
    "extra_s": 3600,
    "reason": "broken",
    "approve": True,
    "decision": "refund",
    "biller_code": "water",
    "household_account": "H-9",
    "bill_id": "water-H-9",
    "outcome": "approve",
    "analyst": "ana",
    "list_name": "blocked_devices",
    "value": "dev-isolation",
    "kind": "bank",
    "scopes": ["ledger:read"],
}
OMITTED = {"PayeeIn.phone"}
"""Optional fields left out (a payee is named one way only)."""
SERVER_ASSIGNED = {"id", "qr", "timestamp", "created_at_ns", "updated_at_ns", "request_id"}
"""Fields the server fills in for a new object: two creations differ in them by nature."""
# Ids and secrets a route generates afresh on each call (they differ between two calls
# whatever the tenant): compared as placeholders.
GENERATED = re.compile(r"(we|evt|whsec)_[0-9a-f]+")


BINARY_BODIES: dict[str, tuple[Any, np.dtype[Any]]] = {
    "/v1/ledger/accounts/binary": (AccountIn, ACCOUNT_DTYPE),
    "/v1/ledger/transfers/binary": (TransferIn, TRANSFER_DTYPE),
}
"""Routes whose body is binary records: filled as one event of the JSON form's model."""


def _method(route: PlatformRoute) -> str:
    return sorted(route.methods or ())[0]


def _routes() -> list[PlatformRoute]:
    app = FastAPI()
    for router in ROUTERS:
        app.include_router(router)
    return platform_routes(app)


ROUTES = _routes()
ROUTE_IDS = [f"{_method(r)} {r.path}" for r in ROUTES]


def _is_model(annotation: Any) -> bool:
    """A body shape: a pydantic model or a TypedDict (a batch's events)."""
    return is_typeddict(annotation) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


def _fields(model: Any) -> Iterator[tuple[str, Any, bool]]:
    """(name, annotation, required) of a body shape's fields."""
    if is_typeddict(model):
        # Which keys are required as pydantic reads them (``__required_keys__`` cannot see
        # ``NotRequired`` through postponed annotations).
        required = set(TypeAdapter(model).json_schema().get("required", ()))
        for name, annotation in get_type_hints(model).items():
            yield name, annotation, name in required
        return
    for name, field in model.model_fields.items():
        yield name, field.annotation, field.is_required()


def _sample(model: Any, ids: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, annotation, required in _fields(model):
        resource = FIELD_RESOURCE.get(f"{model.__name__}.{name}") or FIELD_RESOURCE.get(name)
        if f"{model.__name__}.{name}" in OMITTED:
            continue
        wants_int = annotation is int or int in get_args(annotation)
        if resource is not None:
            out[name] = int(ids[resource]) if wants_int else ids[resource]
        elif name in LIST_OF_IDS:
            out[name] = [ids[r] for r in LIST_OF_IDS[name]]
        elif get_origin(annotation) is list and _is_model(get_args(annotation)[0]):
            out[name] = [_sample(get_args(annotation)[0], ids)]
        elif _is_model(annotation):
            out[name] = _sample(annotation, ids)
        elif not required:
            continue
        elif name in PLAIN_VALUES:
            value = PLAIN_VALUES[name]
            out[name] = int(value) if wants_int and isinstance(value, str) else value
        else:
            raise AssertionError(f"teach the isolation test to fill {model.__name__}.{name}")
    return out


def _request(api: Api, route: PlatformRoute, ids: dict[str, str], token: str | None) -> Any:
    path_values = {}
    for param in route.dependant.path_params:
        resource = FIELD_RESOURCE.get(param.name)
        if resource is None and param.name in PLAIN_VALUES:
            path_values[param.name] = PLAIN_VALUES[param.name]
            continue
        assert resource is not None, f"teach the isolation test about path parameter {param.name}"
        path_values[param.name] = ids[resource]
    path = route.path.format(**path_values)
    method = _method(route)
    body = None
    if route.body_field is not None:
        annotation = route.body_field.field_info.annotation
        # An optional body (``Model | None``) is sent in full, as a required one.
        if get_origin(annotation) in (Union, UnionType):
            [annotation] = [a for a in get_args(annotation) if a is not type(None)]
        body = _sample(annotation, ids)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request_body = (route.openapi_extra or {}).get("requestBody")
    if request_body is not None:
        assert route.path in BINARY_BODIES, f"teach the isolation test the body of {route.path}"
        model, dtype = BINARY_BODIES[route.path]
        content = records(dtype, [_sample(model, ids)])
        headers["Content-Type"] = "application/octet-stream"
        return api.client.request(method, path, content=content, headers=headers)
    return api.client.request(method, path, json=body, headers=headers)


def _answer(response: Any) -> Any:
    """A response's body: JSON, or a binary batch's result statuses (timestamps differ)."""
    if response.headers.get("content-type") == "application/octet-stream":
        return np.frombuffer(response.content, RESULT_DTYPE)["status"].tolist()
    return response.json()


def _normalised(data: Any, ids: dict[str, str]) -> Any:
    # One placeholder for every id: A's ids and the baseline's overlap differently (A's
    # account 1 and binding 1 are two resources, the baseline's 9001 two others).
    names = {value: "<id>" for value in ids.values()}
    if isinstance(data, dict):
        return {
            k: _normalised(v, ids)
            for k, v in data.items()
            if k not in SERVER_ASSIGNED or (isinstance(v, str) and v in names)
        }
    if isinstance(data, list):
        return [_normalised(v, ids) for v in data]
    if isinstance(data, str):
        if data not in names and GENERATED.fullmatch(data):
            return "<generated>"
        return names.get(data, data)
    return data


# What tenant A can see of its payments objects (each must stay exactly the same).
A_PAYMENTS_VIEWS = [
    "/v1/payments/customers/{customer}",
    "/v1/payments/customers/{other_customer}",
    "/v1/payments/customers/{customer}/cards",
    "/v1/payments/customers/{customer}/wallets/CNY",
    "/v1/payments/customers/{other_customer}/wallets/CNY",
    "/v1/payments/customers/{customer}/operations",
    "/v1/payments/merchants/{merchant}",
    "/v1/payments/merchants/{merchant}/balances/CNY",
    "/v1/payments/operations/{operation}",
    "/v1/payments/orders/{order}",
    "/v1/payments/refunds/{refund}",
    "/v1/risk/cases/{case}",
    "/v1/risk/cases",
]


def _a_state(world: World) -> Any:
    api = world.api
    auth = api.auth(api.token_a)
    ids = [world.ids[k] for k in ("account", "other_account", "transfer", "pending")]
    ledger = (
        api.client.post("/v1/ledger/accounts/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.post("/v1/ledger/transfers/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.get("/v1/ledger/accounts/2/transfers", headers=auth).json(),
        api.client.get("/v1/ledger/accounts/2/balances", headers=auth).json(),
    )
    payments = []
    for view in A_PAYMENTS_VIEWS:
        response = api.client.get(view.format(**world.ids), headers=auth)
        assert response.status_code == 200, (view, response.text)
        payments.append(response.json())
    hooks = (
        api.client.get("/v1/webhooks/endpoints", headers=auth).json(),
        api.client.get("/v1/webhooks/events", headers=auth).json(),
        api.client.get(f"/v1/webhooks/events/{world.ids['webhook_event']}", headers=auth).json(),
        api.client.get("/v1/webhooks/dead-letters", headers=auth).json(),
    )
    platform = (api.tenants.list_tenants(), api.tenants.list_keys())
    return ledger, payments, hooks, platform


HELD_AMOUNT = 7_77
"""The one payment risk holds for review in these worlds (so that tenant A has a case)."""


def _review_one_sum(events: Sequence[RiskEvent]) -> list[RiskDecision]:
    return [
        RiskDecision(Decision.REVIEW, 700, (f"held(amount={e.amount})",), "t", "none")
        if e.amount == HELD_AMOUNT
        else RiskDecision(Decision.ACCEPT, 0, (), "t", "none")
        for e in events
    ]


@dataclass
class World:
    api: Api
    ids: dict[str, str]
    """Tenant A's resources: ``A_IDS``, and what ``_world`` made."""


def _world(tmp_path: Path, options: ApiOptions | None = None) -> Iterator[World]:
    for api in make_api(tmp_path, options, decide=_review_one_sum):
        auth = api.auth(api.token_a)
        history = int(AccountFlags.HISTORY)
        created = api.client.post(
            "/v1/ledger/accounts",
            json={"accounts": [account(1), account(2, flags=history)]},
            headers=auth,
        )
        assert [r["status"] for r in created.json()["results"]] == ["created"] * 2
        moved = api.client.post(
            "/v1/ledger/transfers",
            json={
                "transfers": [
                    transfer(10, 1, 2, 100),
                    transfer(11, 1, 2, 7, flags=int(TransferFlags.PENDING), timeout=3600),
                ]
            },
            headers=auth,
        )
        assert [r["status"] for r in moved.json()["results"]] == ["created"] * 2
        made = payments_world(api, api.token_a)
        held = api.client.post(
            f"/v1/payments/customers/{made['customer']}/transfers",
            json={
                "payee": {"customer_id": int(made["other_customer"])},
                "amount": HELD_AMOUNT,
                "currency": "CNY",
            },
            headers=auth,
        )
        assert held.json()["status"] == "challenged", held.text
        cases = api.client.get("/v1/risk/cases", headers=auth).json()["data"]
        [made["case"]] = [str(c["id"]) for c in cases]
        hook = api.client.post(
            "/v1/webhooks/endpoints",
            json={"url": "https://a.example/hook", "event_types": ["*"]},
            headers=auth,
        )
        assert hook.status_code == 200, hook.text
        made["webhook_endpoint"] = hook.json()["id"]
        with api.engine.begin() as conn:
            made["webhook_event"] = Webhooks(api.engine, clock=api.clock).record(
                conn, api.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"}
            )
        made["tenant"] = str(api.a.id)
        made["api_key"] = api.tenants.list_keys(api.a.id)[0].id
        assert not set(made) & set(A_IDS)
        yield World(api, {**A_IDS, **made, **A_FRESH})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A world of its own: tenant B's requests may make things (in B's name)."""
    yield from _world(tmp_path)


@pytest.fixture(scope="module")
def refused_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the tests whose requests are refused before they reach anything (no
    key, a key without the scope): each still checks that A's data is as it was. (A world
    costs about a second to make; these tests are two for every route.) Tenant A's key reads
    A's data about 40 times a test, on a clock that stands still: its rate limit's bucket is
    made large enough for all of them (a 429 is not what these tests look at)."""
    options = ApiOptions(rate_burst_requests=1_000_000)
    yield from _world(tmp_path_factory.mktemp("refused"), options)


def test_every_v1_route_goes_through_the_platform_pipeline(refused_world: World) -> None:
    app: FastAPI = refused_world.api.client.app  # type: ignore[assignment]
    assert len(ROUTES) == len(platform_routes(app)) >= 44
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, PlatformRoute), getattr(route, "path", route)
    schema = refused_world.api.client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert {(_method(r), r.path) for r in ROUTES} == documented


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_without_a_key_every_route_is_401(refused_world: World, route: PlatformRoute) -> None:
    world = refused_world
    before = _a_state(world)
    response = _request(world.api, route, world.ids, None)
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_invalid"
    assert _a_state(world) == before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_without_the_scope_every_route_is_403(refused_world: World, route: PlatformRoute) -> None:
    world = refused_world
    others = [s for s in ALL_SCOPES if s != route.puhui.scope.value]
    _, token = world.api.tenants.create_key(world.api.b.id, others)
    before = _a_state(world)
    response = _request(world.api, route, world.ids, token)
    assert response.status_code == 403
    assert response.json()["code"] == "scope_missing"
    assert _a_state(world) == before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_another_tenants_data_does_not_exist_for_b(world: World, route: PlatformRoute) -> None:
    before = _a_state(world)
    baseline = _request(world.api, route, NOWHERE, world.api.token_b)
    probe = _request(world.api, route, world.ids, world.api.token_b)
    assert _a_state(world) == before, "tenant B changed tenant A's data"
    if probe.status_code in (403, 404):
        return
    assert probe.status_code == baseline.status_code
    assert _normalised(_answer(probe), world.ids) == _normalised(_answer(baseline), NOWHERE), (
        "tenant B can tell tenant A's resources from resources that do not exist"
    )
