"""A lean way to the hottest routes — the single-payment POSTs and the ledger's JSON create
batches — without the framework's per-request machinery, and with every answer the ordinary
route would give.

Under load a payment POST spent about half of the event loop's time in FastAPI and Starlette
rather than in Puhui: matching the path against the route patterns one after another,
building and unwinding the exit stacks and exception wrappers of each request, solving the
route's dependencies, validating the answer model again and serialising it. ``LeanRoutes``
sits in front of the router, inside the body limits (``_bodies.BodyGuard``) and the request
log (so a request id and its log line are the same), and takes a request for one of a few declared
``PlatformRoute`` s itself when the request is plainly well-formed:

* the method is POST and the path splits into the route template's segments exactly (each
  parameter a non-empty segment), with no ``root_path``;
* the body has a ``Content-Length`` within the body limit, as ``BodyGuard`` read it (a
  streamed body goes its ordinary way);
* the body is one non-empty ``application/json`` document that ``json.loads`` reads (as
  Starlette's ``Request.json``);
* each path parameter and the body pass the route's *own* FastAPI fields (``ModelField``),
  the very validators the ordinary route runs — or the route's own faster reader
  (``Endpoint.read_body``: the ledger's JSON create batches, ``_json_events``) reads the body,
  which it does only for bodies those validators accept, to the same value.

Then the request runs the platform's pipeline (``_route._run``: key, rate limit, scope,
``Idempotency-Key``, metrics, audit chain — the same function the ordinary route calls)
around the route's own handler, and the answer is serialised by the route's own response
field. Anything else — another method or path, a missing or other content type, malformed
JSON, a value a validator refuses, a client gone mid-body — is handed, untouched (the body
messages replayed as received), to the ordinary app: the validation failures' 422 answers,
the 401 that a bad key gets before its body is looked at, all come from the one place that
gives them. Nothing with an effect (a token of the rate limit, an idempotency claim) happens
before the choice, so the fall-back is exact.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi._compat import ModelField
from fastapi.datastructures import DefaultPlaceholder
from starlette.convertors import StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._bodies import BODY_LENGTH, replayed
from ._problems import BodyTimeoutError
from ._route import PlatformRoute, _documentation_only, _run

_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~-]+")

JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
"""``Content-Type`` values taken on the lean way; FastAPI reads others (``+json``
subtypes, other parameters) as JSON too, on the ordinary way."""


@dataclass(frozen=True, slots=True)
class _Segment:
    text: str
    """The segment's text, or the parameter's name."""
    field: ModelField | None
    """The path parameter's field (None: a literal segment)."""


class LeanRoute:
    """One ``PlatformRoute`` taken on the lean way: its template as segments, its fields."""

    def __init__(self, route: PlatformRoute) -> None:
        dependant = route.dependant
        body = route.body_field
        if (
            route.methods != {"POST"}
            or body is None
            or dependant.request_param_name is None
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or len(dependant.body_params) != 1
            or not all(_documentation_only(d) for d in dependant.dependencies)
            or not inspect.iscoroutinefunction(route.endpoint)
            or route.response_field is None
            or route.status_code is None
            or not isinstance(route.response_class, DefaultPlaceholder)
            or not all(isinstance(c, StringConvertor) for c in route.param_convertors.values())
        ):
            raise TypeError(f"route {route.path} does not have the shape the lean way serves")
        fields = {f.name: f for f in dependant.path_params}
        segments: list[_Segment] = []
        for part in route.path.split("/"):
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                segments.append(_Segment(name, fields.pop(name)))
            else:
                segments.append(_Segment(part, None))
        if fields:
            raise TypeError(f"route {route.path}: path parameters not in its template")
        self.route = route
        self.segments = tuple(segments)
        self.body = body
        self.response = route.response_field
        self.status_code = route.status_code
        self.request_name = dependant.request_param_name
        endpoint: Callable[..., Coroutine[Any, Any, Any]] = route.endpoint
        self.endpoint = endpoint

    def path_values(self, parts: list[str]) -> dict[str, Any] | None:
        """The validated path parameters of a path split at ``/``, or None when the path is
        not this route's or a parameter does not validate."""
        values: dict[str, Any] = {}
        for segment, part in zip(self.segments, parts, strict=True):
            field = segment.field
            if field is None:
                if part != segment.text:
                    return None
                continue
            if not part:
                return None
            value, errors = field.validate(part, {}, loc=("path", field.alias))
            if errors:
                return None
            values[segment.text] = value
        return values

    def body_value(self, body: bytes) -> Any | None:
        """The validated body, or None when the ordinary route should answer it: the route's
        own faster reader first (``Endpoint.read_body``), when it has one."""
        if not body:
            return None
        read = self.route.puhui.read_body
        if read is not None:
            value = read(body)
            if value is not None:
                return value
        try:
            data = json.loads(body)
            if data is None:
                return None
            value, errors = self.body.validate(data, {}, loc=("body",))
        except Exception:  # e.g. RecursionError on deep nesting (FastAPI answers 400)
            return None
        return None if errors else value

    async def answer(self, request: Request, values: dict[str, Any]) -> Response:
        """The handler's answer, serialised as the ordinary route serialises it."""
        result = await self.endpoint(**values)
        if isinstance(result, Response):
            return result
        content, errors = self.response.validate(result, {}, loc=("response",))
        if errors:  # as FastAPI: a handler that breaks its own answer model is a bug
            raise TypeError(f"route {self.route.path}: the answer does not match its model")
        return Response(
            self.response.serialize_json(content),
            status_code=self.status_code,
            media_type="application/json",
        )


class LeanRoutes:
    """ASGI middleware: the declared routes' well-formed requests on the lean way, everything
    else to ``app`` (see the module's description)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[PlatformRoute],
        table: Sequence[BaseRoute],
        bytes_max: int,
    ) -> None:
        """``routes`` are taken on the lean way; ``table`` is the app's route table, in which
        each of them must be the route the router picks for its paths; ``app`` is the
        ordinary app; ``bytes_max`` is the body limit (``BodyGuard`` enforces it before this:
        the lean way checks again only as a guard against being mounted without it)."""
        self.app = app
        self.bytes_max = bytes_max
        self.routes: dict[int, list[LeanRoute]] = {}
        for route in routes:
            if _first_match(table, route) is not route:
                raise ValueError(f"route {route.path} is shadowed by an earlier route")
            lean = LeanRoute(route)
            self.routes.setdefault(len(lean.segments), []).append(lean)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        parts = path.split("/")
        found: tuple[LeanRoute, dict[str, Any]] | None = None
        for lean in self.routes.get(len(parts), ()):
            values = lean.path_values(parts)
            if values is not None:
                found = lean, values
                break
        if found is None or not _plain_json(scope, self.bytes_max):
            await self.app(scope, receive, send)
            return
        lean, values = found
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except BodyTimeoutError:
                # A late body (``puhui.api._bodies``): the ordinary way answers it, as it
                # would have — the key checked first, then the 408, audited and counted.
                await self.app(scope, replayed(messages, receive), send)
                return
            messages.append(message)
            if message["type"] != "http.request":
                await self.app(scope, replayed(messages, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        value = lean.body_value(body)
        if value is None:
            await self.app(scope, replayed(messages, receive), send)
            return
        route = lean.route
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {
            s.text: part for s, part in zip(lean.segments, parts, strict=True) if s.field
        }
        request = Request(scope, replayed([{"type": "http.request", "body": body}], receive), send)
        values[lean.body.name] = value
        values[lean.request_name] = request

        async def handler(request: Request) -> Response:
            return await lean.answer(request, values)

        # A path of unreserved characters is its own ``request.url.path`` (which would
        # build and split a URL from the scope to say so).
        target = path if _PLAIN_PATH.fullmatch(path) else None
        response = await _run(route.puhui, route.path, request, handler, target)
        await response(scope, receive, send)


def _plain_json(scope: Scope, bytes_max: int) -> bool:
    """Whether the request's (first) ``Content-Type`` is one the lean way reads, and its
    body has a ``Content-Length`` of at most ``bytes_max`` as the body guard read it
    (``_bodies.BODY_LENGTH``): the guard let it pass untouched. A streamed body (which the
    guard read first) or a request the guard did not see goes the ordinary way."""
    length = scope.get(BODY_LENGTH)
    if length is None or length > bytes_max:
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value in JSON_TYPES
    return False


def _first_match(table: Sequence[BaseRoute], route: PlatformRoute) -> BaseRoute | None:
    """The route the router picks for a POST to ``route``'s template with each parameter
    ``1``."""
    path = "/".join(
        "1" if part.startswith("{") and part.endswith("}") else part
        for part in route.path.split("/")
    )
    scope: Scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    for candidate in table:
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return candidate
    return None
