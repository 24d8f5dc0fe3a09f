"""Administration over HTTP, for the platform's operators: tenants and their API keys.

Every route needs ``platform:admin``, a scope only keys of an ``operator`` tenant can hold
(``model.parse_scopes``): any other tenant's key is refused 403 ``scope_missing`` and
nothing changes. The routes call the same ``Tenants`` service functions as ``puhui tenant``
and ``puhui key``; each change is audited by the route pipeline (the operator's tenant and
key, the route, the target path, the status).

A new key's token is in the create answer only: it is not kept under the request's
``Idempotency-Key`` (a replay answers ``"token": null``; revoke that key and make another
if the token was lost).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from puhui.platform import ApiKey, Scope, Tenant, Tenants
from puhui.platform.model import key_id_chars, key_name_chars_max, tenant_name_chars_max
from puhui.platform.webhooks import rfc3339

from ._context import ApiContext
from ._guards import decode_cursor, encode_cursor, page_size
from ._ledger_routes import PROBLEM_RESPONSES, Cursor, Limit, _problem, bearer
from ._problems import InvalidCursorError
from ._route import PlatformRoute, endpoint

router = APIRouter(
    prefix="/v1/platform",
    tags=["platform administration"],
    route_class=PlatformRoute,
    responses={
        **PROBLEM_RESPONSES,
        404: {**_problem, "description": "No such tenant or key"},
    },
    dependencies=[Depends(bearer)],  # documents the scheme; PlatformRoute authenticates
)

TenantId = Annotated[int, Path(ge=1, le=(1 << 63) - 1, description="The tenant's number.")]
KeyId = Annotated[
    str,
    Path(pattern=rf"^[0-9a-f]{{{key_id_chars}}}$", description="A key id: 16 hex characters."),
]
scopes_per_key_max = len(Scope)


class CreateTenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=tenant_name_chars_max, examples=["Bank of Dali"])
    kind: str = Field(
        max_length=32,
        description="bank, fund_company, insurer, merchant_acquirer, biller or operator.",
        examples=["bank"],
    )


class TenantOut(BaseModel):
    id: int
    name: str
    kind: str
    status: str
    created_at: str


class TenantPage(BaseModel):
    data: list[TenantOut]
    next_cursor: str | None


class CreateKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scopes: list[Annotated[str, Field(max_length=32)]] = Field(
        min_length=1,
        max_length=scopes_per_key_max,
        description="Scopes to grant (platform:admin for operator tenants only).",
        examples=[["ledger:read", "payments:write"]],
    )
    name: str = Field(default="", max_length=key_name_chars_max, examples=["settlement batch"])


class KeyOut(BaseModel):
    id: str
    tenant_id: int
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None


class CreatedKeyOut(KeyOut):
    token: str | None = Field(
        description="`pk_<key id>_<secret>`: send as `Authorization: Bearer <token>`. Shown "
        "now only; null when the answer is an idempotent replay."
    )


class KeyPage(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None


def _tenants(request: Request) -> Tenants:
    context: ApiContext = request.app.state.puhui
    return context.tenants


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        kind=tenant.kind.value,
        status=tenant.status.value,
        created_at=rfc3339(tenant.created_at_ns),
    )


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        scopes=sorted(scope.value for scope in key.scopes),
        created_at=rfc3339(key.created_at_ns),
        revoked_at=None if key.revoked_at_ns is None else rfc3339(key.revoked_at_ns),
    )


@router.post("/tenants", response_model=TenantOut, status_code=201, summary="create a tenant")
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True)
async def create_tenant(body: CreateTenantIn, request: Request) -> TenantOut:
    """A new, active tenant (as ``puhui tenant create``)."""
    tenant = await asyncio.to_thread(_tenants(request).create, body.name, body.kind)
    return tenant_out(tenant)


@router.get("/tenants", response_model=TenantPage, summary="list tenants")
@endpoint(Scope.PLATFORM_ADMIN, changes_state=False)
async def list_tenants(request: Request, limit: Limit = None, cursor: Cursor = None) -> TenantPage:
    """Tenants by number, a page at a time."""
    page = page_size(request.app.state.puhui.options, limit)
    after = 0
    if cursor is not None:
        value = decode_cursor("tenants", cursor).get("id")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidCursorError("malformed cursor")
        after = value
    found = await asyncio.to_thread(_tenants(request).list_tenants, after_id=after, limit=page)
    next_cursor = encode_cursor("tenants", {"id": found[-1].id}) if len(found) == page else None
    return TenantPage(data=[tenant_out(t) for t in found], next_cursor=next_cursor)


@router.post(
    "/tenants/{tenant_id}/keys",
    response_model=CreatedKeyOut,
    status_code=201,
    summary="create an API key",
)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True, shown_once=("token",))
async def create_key(tenant_id: TenantId, body: CreateKeyIn, request: Request) -> CreatedKeyOut:
    """A new key of the tenant (as ``puhui key create``). The answer carries its token, the
    only time it is shown; only its hash is stored."""
    key, token = await asyncio.to_thread(
        _tenants(request).create_key, tenant_id, body.scopes, body.name
    )
    return CreatedKeyOut(**key_out(key).model_dump(), token=token)


@router.get("/tenants/{tenant_id}/keys", response_model=KeyPage, summary="list API keys")
@endpoint(Scope.PLATFORM_ADMIN, changes_state=False)
async def list_keys(
    tenant_id: TenantId, request: Request, limit: Limit = None, cursor: Cursor = None
) -> KeyPage:
    """The tenant's keys, oldest first, never their secrets (as ``puhui key list``)."""
    page = page_size(request.app.state.puhui.options, limit)
    tenants = _tenants(request)
    await asyncio.to_thread(tenants.get, tenant_id)  # tenant_not_found rather than a void
    after: tuple[int, str] | None = None
    if cursor is not None:
        position = decode_cursor("keys", cursor)
        at_ns, key_id = position.get("at"), position.get("id")
        if (
            not isinstance(at_ns, int)
            or isinstance(at_ns, bool)
            or not isinstance(key_id, str)
            or len(key_id) > key_id_chars
        ):
            raise InvalidCursorError("malformed cursor")
        after = (at_ns, key_id)
    found = await asyncio.to_thread(tenants.list_keys, tenant_id, after=after, limit=page)
    next_cursor = None
    if len(found) == page:
        next_cursor = encode_cursor("keys", {"at": found[-1].created_at_ns, "id": found[-1].id})
    return KeyPage(data=[key_out(k) for k in found], next_cursor=next_cursor)


@router.post(
    "/tenants/{tenant_id}/keys/{key_id}/revoke",
    response_model=KeyOut,
    summary="revoke an API key",
)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True)
async def revoke_key(tenant_id: TenantId, key_id: KeyId, request: Request) -> KeyOut:
    """Revoke one of the tenant's keys (as ``puhui key revoke``); again is fine. It stops
    authenticating at once on this server, within ``ApiOptions.auth_cache_s`` on others."""
    context: ApiContext = request.app.state.puhui
    key = await asyncio.to_thread(context.tenants.revoke_key, key_id, tenant_id=tenant_id)
    context.principals.forget()  # at once in this server; others within auth_cache_s
    return key_out(key)
