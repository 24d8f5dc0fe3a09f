"""Tenant isolation, generated from the app's route table: a new route is covered as soon
as it exists (and the test fails until it knows how to fill the route's fields).

For every authenticated route: without a key → 401; with a key lacking the route's scope →
403; with tenant B's key aimed at tenant A's resources → 404/403, or exactly the answer B
gets for resources that exist nowhere (no existence leak); and A's data is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from puhui.api import ROUTERS, PlatformRoute, platform_routes
from puhui.ledger import AccountFlags, TransferFlags
from puhui.platform import EventType, Webhooks

from .conftest import ALL_SCOPES, Api, account, make_api, transfer

# Tenant A's resources, and ids that exist for nobody (the baseline). The webhook ids of A
# are filled in by the ``world`` fixture once A's endpoint and event exist.
A_IDS = {"account": "1", "other_account": "2", "transfer": "10", "pending": "11"}
NOWHERE = {
    "account": "9001",
    "other_account": "9002",
    "transfer": "9010",
    "pending": "9011",
    "webhook_endpoint": "we_" + "0" * 16,
    "webhook_event": "evt_" + "0" * 32,
}

# Which resource each id-like field names (by "Model.field", then by field).
FIELD_RESOURCE = {
    "AccountIn.id": "account",
    "TransferIn.id": "transfer",
    "debit_account_id": "account",
    "credit_account_id": "other_account",
    "account_id": "other_account",
    "endpoint_id": "webhook_endpoint",
    "event_id": "webhook_event",
}
LIST_OF_IDS = {"ids": ["account", "other_account", "transfer", "pending"]}
PLAIN_VALUES: dict[str, Any] = {
    "ledger": 1,
    "code": 1,
    "amount": "1",
    "url": "https://b.example/hook",
    "event_types": ["*"],
}
# Ids and secrets a route generates afresh on each call (they differ between two calls
# whatever the tenant): compared as placeholders.
GENERATED = re.compile(r"(we|evt|whsec)_[0-9a-f]+")


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
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _sample(model: type[BaseModel], ids: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        resource = FIELD_RESOURCE.get(f"{model.__name__}.{name}") or FIELD_RESOURCE.get(name)
        annotation = field.annotation
        if resource is not None:
            out[name] = ids[resource]
        elif name in LIST_OF_IDS:
            out[name] = [ids[r] for r in LIST_OF_IDS[name]]
        elif get_origin(annotation) is list and _is_model(get_args(annotation)[0]):
            out[name] = [_sample(get_args(annotation)[0], ids)]
        elif not field.is_required():
            continue
        elif name in PLAIN_VALUES:
            out[name] = PLAIN_VALUES[name]
        else:
            raise AssertionError(f"teach the isolation test to fill {model.__name__}.{name}")
    return out


def _request(api: Api, route: PlatformRoute, ids: dict[str, str], token: str | None) -> Any:
    path_values = {}
    for param in route.dependant.path_params:
        resource = FIELD_RESOURCE.get(param.name)
        assert resource is not None, f"teach the isolation test about path parameter {param.name}"
        path_values[param.name] = ids[resource]
    path = route.path.format(**path_values)
    method = _method(route)
    body = None
    if route.body_field is not None:
        body = _sample(route.body_field.field_info.annotation, ids)  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return api.client.request(method, path, json=body, headers=headers)


def _normalised(data: Any, ids: dict[str, str]) -> Any:
    names = {value: f"<{resource}>" for resource, value in ids.items()}
    if isinstance(data, dict):
        return {k: _normalised(v, ids) for k, v in data.items() if k != "timestamp"}
    if isinstance(data, list):
        return [_normalised(v, ids) for v in data]
    if isinstance(data, str):
        if data not in names and GENERATED.fullmatch(data):
            return "<generated>"
        return names.get(data, data)
    return data


def _a_state(api: Api) -> Any:
    auth = api.auth(api.token_a)
    ids = list(A_IDS.values())
    return (
        api.client.post("/v1/ledger/accounts/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.post("/v1/ledger/transfers/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.get("/v1/ledger/accounts/2/transfers", headers=auth).json(),
        api.client.get("/v1/ledger/accounts/2/balances", headers=auth).json(),
        api.client.get("/v1/webhooks/endpoints", headers=auth).json(),
        api.client.get("/v1/webhooks/events", headers=auth).json(),
        api.client.get(f"/v1/webhooks/events/{A_IDS['webhook_event']}", headers=auth).json(),
        api.client.get("/v1/webhooks/dead-letters", headers=auth).json(),
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Api]:
    for api in make_api(tmp_path):
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
        hook = api.client.post(
            "/v1/webhooks/endpoints",
            json={"url": "https://a.example/hook", "event_types": ["*"]},
            headers=auth,
        )
        assert hook.status_code == 200, hook.text
        A_IDS["webhook_endpoint"] = hook.json()["id"]
        with api.engine.begin() as conn:
            A_IDS["webhook_event"] = Webhooks(api.engine, clock=api.clock).record(
                conn, api.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"}
            )
        yield api


def test_every_v1_route_goes_through_the_platform_pipeline(world: Api) -> None:
    app: FastAPI = world.client.app  # type: ignore[assignment]
    assert len(ROUTES) == len(platform_routes(app)) >= 13
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, PlatformRoute), getattr(route, "path", route)
    schema = world.client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert {(_method(r), r.path) for r in ROUTES} == documented


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_without_a_key_every_route_is_401(world: Api, route: PlatformRoute) -> None:
    before = _a_state(world)
    response = _request(world, route, A_IDS, None)
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_invalid"
    assert _a_state(world) == before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_without_the_scope_every_route_is_403(world: Api, route: PlatformRoute) -> None:
    others = [s for s in ALL_SCOPES if s != route.puhui.scope.value]
    _, token = world.tenants.create_key(world.b.id, others)
    before = _a_state(world)
    response = _request(world, route, A_IDS, token)
    assert response.status_code == 403
    assert response.json()["code"] == "scope_missing"
    assert _a_state(world) == before


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_another_tenants_data_does_not_exist_for_b(world: Api, route: PlatformRoute) -> None:
    before = _a_state(world)
    baseline = _request(world, route, NOWHERE, world.token_b)
    probe = _request(world, route, A_IDS, world.token_b)
    assert _a_state(world) == before, "tenant B changed tenant A's data"
    if probe.status_code in (403, 404):
        return
    assert probe.status_code == baseline.status_code
    assert _normalised(probe.json(), A_IDS) == _normalised(baseline.json(), NOWHERE), (
        "tenant B can tell tenant A's resources from resources that do not exist"
    )
