"""Administration over HTTP: an operator's key creates and lists tenants, creates, lists and
revokes their keys (the token shown once); a tenant's key gets 403 and nothing changes; every
change is audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.platform import AuditLog
from puhui.store.platform import idempotency

from .conftest import Api, make_api

ADMIN = "/v1/platform"


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    for api in make_api(tmp_path_factory.mktemp("admin")):
        operator = api.tenants.create("Puhui Ops", "operator")
        _, token = api.tenants.create_key(operator.id, ["platform:admin"], "ops")
        yield api, token


def _post(api: Api, token: str, path: str, body: Any = None, **headers: str) -> Any:
    return api.client.post(ADMIN + path, json=body, headers=api.auth(token, **headers))


def _get(api: Api, token: str, path: str, **params: Any) -> Any:
    return api.client.get(ADMIN + path, params=params, headers=api.auth(token))


def test_operator_creates_a_tenant_and_a_key_that_works_until_revoked(
    admin: tuple[Api, str],
) -> None:
    api, ops = admin
    made = _post(api, ops, "/tenants", {"name": "Fund One", "kind": "fund_company"})
    assert made.status_code == 201, made.text
    tenant = made.json()
    assert (tenant["name"], tenant["kind"], tenant["status"]) == (
        "Fund One",
        "fund_company",
        "active",
    )
    assert api.tenants.get(tenant["id"]).name == "Fund One"

    created = _post(
        api, ops, f"/tenants/{tenant['id']}/keys", {"scopes": ["ledger:read"], "name": "r"}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["token"].startswith(f"pk_{key['id']}_")
    assert (key["tenant_id"], key["scopes"], key["revoked_at"]) == (
        tenant["id"],
        ["ledger:read"],
        None,
    )
    lookup = {"ids": ["1"]}
    works = api.client.post(
        "/v1/ledger/accounts/lookup", json=lookup, headers=api.auth(key["token"])
    )
    assert works.status_code == 200

    listed = _get(api, ops, f"/tenants/{tenant['id']}/keys").json()
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert "token" not in listed["data"][0] and key["token"] not in str(listed)

    revoked = _post(api, ops, f"/tenants/{tenant['id']}/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = _post(api, ops, f"/tenants/{tenant['id']}/keys/{key['id']}/revoke")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    refused = api.client.post(
        "/v1/ledger/accounts/lookup", json=lookup, headers=api.auth(key["token"])
    )
    assert refused.status_code == 401


def test_a_token_is_not_kept_for_an_idempotent_replay(admin: tuple[Api, str]) -> None:
    api, ops = admin
    path, body = f"/tenants/{api.b.id}/keys", {"scopes": ["payments:read"]}
    first = _post(api, ops, path, body, **{"Idempotency-Key": "key-once"})
    replay = _post(api, ops, path, body, **{"Idempotency-Key": "key-once"})
    assert first.status_code == replay.status_code == 201
    assert first.json()["token"].startswith("pk_")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == {**first.json(), "token": None}
    with api.engine.connect() as conn:  # not at rest either: the stored answer has no token
        where = idempotency.c.key == "key-once"
        [stored] = conn.execute(sa.select(idempotency.c.body).where(where)).scalars()
    assert first.json()["token"].split("_")[-1].encode() not in stored
    assert len([k for k in api.tenants.list_keys(api.b.id) if k.id == first.json()["id"]]) == 1


def test_lists_are_cursor_paginated(admin: tuple[Api, str]) -> None:
    api, ops = admin
    for i in range(3):
        assert _post(api, ops, "/tenants", {"name": f"Paged {i}", "kind": "biller"}).is_success
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = _get(api, ops, "/tenants", **params).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [t.id for t in api.tenants.list_tenants()]
    for _ in range(3):
        assert _post(api, ops, f"/tenants/{api.a.id}/keys", {"scopes": ["ledger:read"]}).is_success
    first = _get(api, ops, f"/tenants/{api.a.id}/keys", limit=2).json()
    rest = _get(api, ops, f"/tenants/{api.a.id}/keys", cursor=first["next_cursor"]).json()
    ids = [k["id"] for k in first["data"] + rest["data"]]
    assert ids == [k.id for k in api.tenants.list_keys(api.a.id)]
    bad = _get(api, ops, "/tenants", cursor=first["next_cursor"])
    assert (bad.status_code, bad.json()["code"]) == (400, "cursor_invalid")


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/tenants", {"name": "Bank A", "kind": "bank"}, 409, "tenant_name_taken"),
        ("/tenants", {"name": "New", "kind": "casino"}, 422, "unknown_tenant_kind"),
        ("/tenants", {"name": "bad/name", "kind": "bank"}, 422, "invalid_name"),
        ("/tenants/999999/keys", {"scopes": ["ledger:read"]}, 404, "tenant_not_found"),
        ("/tenants/{a}/keys", {"scopes": ["ledger:fly"]}, 422, "unknown_scope"),
        ("/tenants/{a}/keys", {"scopes": ["platform:admin"]}, 422, "scope_not_allowed"),
        ("/tenants/{a}/keys/0123456789abcdef/revoke", None, 404, "api_key_not_found"),
    ],
)
def test_refusals_have_specific_codes_and_change_nothing(
    admin: tuple[Api, str], path: str, body: Any, status: int, code: str
) -> None:
    api, ops = admin
    before = (api.tenants.list_tenants(), api.tenants.list_keys())
    response = _post(api, ops, path.format(a=api.a.id), body)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert (api.tenants.list_tenants(), api.tenants.list_keys()) == before


def test_a_key_of_another_tenant_cannot_revoke_through_the_wrong_tenant(
    admin: tuple[Api, str],
) -> None:
    api, ops = admin
    key, _ = api.tenants.create_key(api.a.id, ["ledger:read"])
    wrong = _post(api, ops, f"/tenants/{api.b.id}/keys/{key.id}/revoke")
    assert (wrong.status_code, wrong.json()["code"]) == (404, "api_key_not_found")
    assert api.tenants.list_keys(api.a.id)[-1].revoked_at_ns is None


def test_tenant_keys_are_refused_and_change_nothing(admin: tuple[Api, str]) -> None:
    api, _ = admin
    before = (api.tenants.list_tenants(), api.tenants.list_keys())
    for token in (api.token_a, api.token_b):
        attempts = [
            _post(api, token, "/tenants", {"name": "Mine", "kind": "operator"}),
            _get(api, token, "/tenants"),
            _post(api, token, f"/tenants/{api.a.id}/keys", {"scopes": ["ledger:read"]}),
            _get(api, token, f"/tenants/{api.a.id}/keys"),
        ]
        for response in attempts:
            assert (response.status_code, response.json()["code"]) == (403, "scope_missing")
    assert (api.tenants.list_tenants(), api.tenants.list_keys()) == before


def test_every_change_is_audited(admin: tuple[Api, str]) -> None:
    api, ops = admin
    audit = AuditLog(api.engine)
    seen = audit.verify().entries
    made = _post(api, ops, "/tenants", {"name": "Audited", "kind": "insurer"}).json()
    key = _post(api, ops, f"/tenants/{made['id']}/keys", {"scopes": ["ledger:read"]}).json()
    _post(api, ops, f"/tenants/{made['id']}/keys/{key['id']}/revoke")
    _get(api, ops, "/tenants")  # a read: not audited
    report = audit.verify()
    assert report.ok and report.entries == seen + 3
    entries = audit.entries(after_seq=seen)
    assert [(e.method, e.route, e.status) for e in entries] == [
        ("POST", "/v1/platform/tenants", 201),
        ("POST", "/v1/platform/tenants/{tenant_id}/keys", 201),
        ("POST", "/v1/platform/tenants/{tenant_id}/keys/{key_id}/revoke", 200),
    ]
    operator = api.tenants.find("Puhui Ops")
    assert {e.tenant_id for e in entries} == {operator.id}
    assert key["token"].split("_")[-1] not in str(entries)


def test_the_bearer_scheme_is_documented_but_not_solved_per_request(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routers' ``HTTPBearer`` (``auto_error=False``) only documents the security: the
    pipeline authenticates the key itself, so the handler never runs the scheme, and the
    OpenAPI document still names it for every authenticated route."""
    from fastapi.security import HTTPBearer

    from puhui.api import platform_routes

    async def refuse(*_args: Any) -> None:
        raise AssertionError("the documentation-only bearer scheme ran")

    monkeypatch.setattr(HTTPBearer, "__call__", refuse)
    payments = api.client.post(
        "/v1/payments/customers",
        json={"phone": "+8613700000009", "display_name": "Wang Wu"},
        headers=api.auth(),
    )
    assert payments.status_code == 201
    ledger = api.client.post("/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth())
    assert ledger.status_code == 200
    refused = api.client.get("/v1/payments/customers/1", headers=api.auth("pk_nonsense"))
    assert refused.status_code == 401  # the pipeline's own check still refuses
    document = api.client.get("/openapi.json").json()
    routes = platform_routes(api.client.app)  # type: ignore[arg-type]
    assert routes
    for route in routes:
        for method in route.methods or ():
            operation = document["paths"][route.path][method.lower()]
            assert operation["security"] == [{"HTTPBearer": []}], (route.path, method)
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
