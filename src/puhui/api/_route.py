"""What every authenticated route goes through, in order, before and after its handler:

0. a place among the requests in flight (503 ``overloaded`` with ``Retry-After``);
1. the bearer API key → a ``Principal`` (401 ``api_key_invalid``);
2. the key's token bucket (429 ``rate_limited`` with ``Retry-After``);
3. the route's scope (403 ``scope_missing``);
4. on POST, the ``Idempotency-Key`` header: replay, refuse (409) or claim;
5. the handler; any error becomes ``application/problem+json``;
6. the idempotency record is completed (or given back), and a state-changing route's
   request is appended to the audit chain (who, what, when, result).

Routes declare their scope and whether they change state with ``@endpoint(...)``; the app
refuses to build a route without it, and the isolation tests iterate these declarations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from puhui.errors import InvalidInputError, PuhuiError
from puhui.payments import IdempotencyKeyReusedError
from puhui.platform import (
    AuditRecord,
    Claim,
    IdempotencyRequestInProgressError,
    InvalidApiKeyError,
    Principal,
    Scope,
    StoredResponse,
)
from puhui.platform.model import check_idempotency_key, request_fingerprint

from ._context import ApiContext
from ._logging import note_principal
from ._problems import OverloadedError, problem_from_error, problem_from_exception

F = TypeVar("F", bound=Callable[..., Any])

REPLAY_HEADER = "Idempotent-Replayed"

OVERLOADED_RETRY_AFTER_S = 1
"""``Retry-After`` of a request refused as ``overloaded`` (unit: seconds)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    scope: Scope
    """The scope a key needs to call the route."""
    changes_state: bool
    """Whether a call may change state (then it is audited)."""
    shown_once: tuple[str, ...] = ()
    """Fields of the JSON answer that are never stored for an idempotent replay (a secret
    shown once): a replay answers them ``null``."""
    read_body: Callable[[bytes], Any] | None = None
    """A faster reader of the route's plain bodies (``_lean_routes``): the body's value, or
    None to read it the ordinary way (it must never accept what the body's model refuses)."""


def endpoint(
    scope: Scope,
    *,
    changes_state: bool,
    shown_once: tuple[str, ...] = (),
    read_body: Callable[[bytes], Any] | None = None,
) -> Callable[[F], F]:
    """Declare a route handler's scope, whether it changes state, the fields of its answer
    shown once (never kept under the request's idempotency key), and a faster reader of its
    plain bodies (``Endpoint.read_body``)."""

    def mark(handler: F) -> F:
        spec = Endpoint(scope, changes_state, shown_once, read_body)
        handler.__puhui_endpoint__ = spec  # type: ignore[attr-defined]
        return handler

    return mark


def principal_of(request: Request) -> Principal:
    """The principal ``PlatformRoute`` authenticated for this request."""
    principal: Principal = request.state.principal
    return principal


class PlatformRoute(APIRoute):
    """An ``APIRoute`` that runs the platform's pipeline around its handler."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        spec = getattr(endpoint, "__puhui_endpoint__", None)
        if not isinstance(spec, Endpoint):
            raise TypeError(f"route {path} must declare its scope with @endpoint(...)")
        self.puhui: Endpoint = spec
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # The handler runs without the router's documentation-only bearer scheme (the
        # pipeline authenticates the key itself; solving that dependency cost ~12 µs per
        # request for nothing); the route keeps it for the OpenAPI document.
        documented = self.dependant
        self.dependant = _without_documentation_only(documented)
        try:
            inner = super().get_route_handler()
        finally:
            self.dependant = documented
        spec = self.puhui
        route_path = self.path

        async def handler(request: Request) -> Response:
            return await _run(spec, route_path, request, inner)

        return handler


def _documentation_only(dependency: Dependant) -> bool:
    """A router-level security scheme that refuses nothing (``auto_error=False``) and whose
    value nobody takes: it only puts the scheme in the OpenAPI document."""
    call = dependency.call
    return (
        dependency.name is None
        and isinstance(call, HTTPBearer)
        and not call.auto_error
        and not dependency.dependencies
    )


def _without_documentation_only(dependant: Dependant) -> Dependant:
    kept = [d for d in dependant.dependencies if not _documentation_only(d)]
    if len(kept) == len(dependant.dependencies):
        return dependant
    return dataclasses.replace(dependant, dependencies=kept)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidApiKeyError("send the API key as 'Authorization: Bearer <key>'")
    return token.strip()


def _error_headers(error: PuhuiError) -> dict[str, str] | None:
    if isinstance(error, InvalidApiKeyError):
        return {"WWW-Authenticate": "Bearer"}
    retry = error.details.get("retry_after_s")
    return {"Retry-After": str(retry)} if isinstance(retry, int) else None


async def _run(
    spec: Endpoint,
    route_path: str,
    request: Request,
    inner: Callable[[Request], Awaitable[Response]],
    target: str | None = None,
) -> Response:
    """The pipeline around ``inner`` (see the module's description). ``target`` is the
    request's path when the caller knows it is ``request.url.path`` already (else that is
    read). Beyond ``ApiOptions.requests_in_flight_max`` requests in it at once, a request
    is answered 503 ``overloaded`` before anything is done."""
    context: ApiContext = request.app.state.puhui
    admission = context.admission
    if not admission.enter():
        refused = OverloadedError(
            "the server has as many requests in flight as it takes; retry shortly",
            retry_after_s=OVERLOADED_RETRY_AFTER_S,
        )
        response = problem_from_error(refused, headers=_error_headers(refused))
        context.metrics.count_request(route_path, request.method, response.status_code)
        return response
    try:
        return await _admitted(context, spec, route_path, request, inner, target)
    finally:
        admission.leave()


async def _admitted(
    context: ApiContext,
    spec: Endpoint,
    route_path: str,
    request: Request,
    inner: Callable[[Request], Awaitable[Response]],
    target: str | None,
) -> Response:
    principal: Principal | None = None
    started = time.perf_counter()
    try:
        principal = await context.principals.authenticate(_bearer(request))
        note_principal(principal.tenant.id, principal.key_id)
        context.limiter.take(principal.key_id)
        principal.require(spec.scope)
        request.state.principal = principal
        response = await _idempotent(context, spec, principal, request, inner, target)
    except PuhuiError as error:
        response = problem_from_error(error, headers=_error_headers(error))
    except Exception as exc:  # a fault of the store or a bug: logged, answered 500
        response = problem_from_exception(exc)
    method = request.method
    if principal is not None:
        context.metrics.time_request(route_path, method, time.perf_counter() - started)
    context.metrics.count_request(route_path, method, response.status_code)
    if spec.changes_state and principal is not None:
        record = AuditRecord(
            tenant_id=principal.tenant.id,
            key_id=principal.key_id,
            method=method,
            route=route_path,
            target=request.url.path if target is None else target,
            status=response.status_code,
        )
        try:
            await context.audit_batcher.append(record)
        except Exception as exc:  # not audited: 500 (a retry with the same key replays)
            response = problem_from_exception(exc)
    return response


async def _handle(
    request: Request, inner: Callable[[Request], Awaitable[Response]]
) -> tuple[Response, bool]:
    """The handler's response, and whether the request was refused as invalid input
    (nothing happened, so nothing is remembered under its idempotency key): by a validator,
    by the handler, or by the framework before the handler ran (a 4xx ``HTTPException``: a
    body it cannot parse)."""
    try:
        return await inner(request), False
    except Exception as exc:
        invalid = isinstance(exc, RequestValidationError | InvalidInputError) or (
            isinstance(exc, StarletteHTTPException) and 400 <= exc.status_code < 500
        )
        return problem_from_exception(exc), invalid


def _stored_body(spec: Endpoint, body: bytes) -> bytes:
    """What is kept of an answer for replays: without the fields shown once."""
    if not spec.shown_once:
        return body
    data = json.loads(body)
    if isinstance(data, dict):
        for name in spec.shown_once:
            if name in data:
                data[name] = None
    return json.dumps(data, separators=(",", ":")).encode()


async def _idempotent(
    context: ApiContext,
    spec: Endpoint,
    principal: Principal,
    request: Request,
    inner: Callable[[Request], Awaitable[Response]],
    target: str | None,
) -> Response:
    key = request.headers.get("idempotency-key")
    if key is None or request.method != "POST":
        response, _ = await _handle(request, inner)
        return response
    key = check_idempotency_key(key)
    path = request.url.path if target is None else target
    fingerprint = request_fingerprint(request.method, path, await request.body())
    tenant_id = principal.tenant.id
    claimed = await context.claims((tenant_id, key, fingerprint))
    if claimed.claim is Claim.REPLAY and claimed.response is not None:
        stored = claimed.response
        return Response(
            stored.body,
            status_code=stored.status_code,
            media_type=stored.content_type,
            headers={REPLAY_HEADER: "true"},
        )
    if claimed.claim is Claim.REUSED:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was used with a different request (method, path or body)"
        )
    if claimed.claim is Claim.IN_PROGRESS:
        raise IdempotencyRequestInProgressError(
            "a request with this Idempotency-Key is still in progress; retry later"
        )
    token = claimed.token
    if token is None:  # a claim started always names itself
        raise RuntimeError("an idempotency claim started without its token")
    release = context.idempotency.release
    try:
        response, invalid = await _handle(request, inner)
    except BaseException:
        await asyncio.to_thread(release, tenant_id, key, fingerprint, token)
        raise
    if response.status_code >= 500 or invalid:
        await asyncio.to_thread(release, tenant_id, key, fingerprint, token)
    else:
        stored = StoredResponse(
            status_code=response.status_code,
            content_type=response.media_type or "application/json",
            body=_stored_body(spec, bytes(response.body)),
        )
        await context.finishes((tenant_id, key, fingerprint, token, stored))
    return response
