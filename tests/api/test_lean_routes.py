"""The lean way to the single-payment routes (``puhui.api._lean_routes``) answers exactly as
the ordinary route does: the same requests, good and bad, sent in the same order to an app
with the lean way and to one without it (each over its own store, built the same way) get
the same status, headers and body — and leave the same audit entries, metrics and access
log lines behind."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from puhui.api import ApiOptions, configure_logging
from puhui.api._lean_routes import LeanRoute, LeanRoutes
from puhui.api._route import PlatformRoute
from puhui.platform import AuditLog

from .conftest import Api, make_api, payments_world

P = "/v1/payments"
JSON = "application/json"
BYTES_MAX = 4096
"""The body limit of both apps."""

Request = tuple[str, dict[str, str], bytes]
"""(path, headers, body) of a POST."""


def _pay(world: dict[str, str], payee: Any = None, **fields: Any) -> dict[str, Any]:
    return {
        "payee": {"customer_id": int(world["other_customer"])} if payee is None else payee,
        "amount": 1_00,
        "currency": "CNY",
        **fields,
    }


def _json(
    path: str, body: Any, content_type: str | None = JSON, **headers: str
) -> Callable[[Api, dict[str, str]], Request]:
    """A POST of ``body`` as JSON to ``path`` (``{c}``: the customer, ``{o}``: the other)."""

    def build(api: Api, world: dict[str, str]) -> Request:
        content = body(world) if callable(body) else body
        raw = content if isinstance(content, bytes) else json.dumps(content).encode()
        sent = {**api.auth(), **headers}
        if content_type is not None:
            sent["Content-Type"] = content_type
        return path.format(c=world["customer"], o=world["other_customer"]), sent, raw

    return build


TRANSFERS = P + "/customers/{c}/transfers"
MERCHANT = P + "/customers/{c}/merchant-payments"

CASES: dict[str, Callable[[Api, dict[str, str]], Request]] = {
    # taken on the lean way
    "p2p by id": _json(TRANSFERS, _pay),
    "p2p by phone": _json(TRANSFERS, lambda w: _pay(w, {"phone": "+8613800000002"}, note="tea")),
    "p2p by qr": _json(TRANSFERS, lambda w: _pay(w, {"qr": f"puhui://c/{w['other_customer']}"})),
    "p2p, charset": _json(TRANSFERS, _pay, content_type="application/json; charset=utf-8"),
    "merchant payment": _json(
        MERCHANT, lambda w: {"merchant_qr": w["merchant_qr"], "amount": 3_00, "currency": "CNY"}
    ),
    "same party": _json(TRANSFERS, lambda w: _pay(w, {"customer_id": int(w["customer"])})),
    "two payees": _json(
        TRANSFERS,
        lambda w: _pay(w, {"customer_id": int(w["other_customer"]), "phone": "+8613800000002"}),
    ),
    "over the KYC limit": _json(TRANSFERS, lambda w: _pay(w, amount=50_001_00)),
    "the payee's payer has no money": _json(
        P + "/customers/{o}/transfers", lambda w: _pay(w, {"customer_id": int(w["customer"])})
    ),
    "unknown phone": _json(TRANSFERS, lambda w: _pay(w, {"phone": "+8613999999999"})),
    "a merchant's qr as payee": _json(TRANSFERS, lambda w: _pay(w, {"qr": "puhui://m/1"})),
    "unknown payer": _json(P + "/customers/999999/transfers", _pay),
    "unknown merchant qr": _json(
        MERCHANT, {"merchant_qr": "puhui://m/999999", "amount": 1_00, "currency": "CNY"}
    ),
    "malformed merchant qr": _json(
        MERCHANT, {"merchant_qr": "nonsense", "amount": 1_00, "currency": "CNY"}
    ),
    "unknown currency": _json(TRANSFERS, lambda w: _pay(w, currency="XYZ")),
    "bad key": _json(TRANSFERS, _pay, Authorization="Bearer pk_0000000000000000_" + "0" * 64),
    "no key": _json(TRANSFERS, _pay, Authorization=""),
    "idempotency key": _json(TRANSFERS, _pay, **{"Idempotency-Key": "lean-first"}),
    "idempotency key, replay": _json(TRANSFERS, _pay, **{"Idempotency-Key": "lean-replay"}),
    "idempotency key, reused": _json(
        TRANSFERS, lambda w: _pay(w, amount=2_00), **{"Idempotency-Key": "lean-reused"}
    ),
    "idempotency key, invalid": _json(TRANSFERS, _pay, **{"Idempotency-Key": "x" * 300}),
    "request id echoed": _json(TRANSFERS, _pay, **{"X-Request-Id": "abc-123"}),
    "a body just within the limit": _json(
        TRANSFERS, lambda w: json.dumps(_pay(w)).encode().ljust(BYTES_MAX)
    ),
    # handed to the ordinary route
    "malformed JSON": _json(TRANSFERS, b'{"payee": '),
    "deeply nested JSON": _json(TRANSFERS, b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    "not UTF-8": _json(TRANSFERS, b'{"note": "\xff"}'),
    "empty body": _json(TRANSFERS, b""),
    "null body": _json(TRANSFERS, b"null"),
    "a list": _json(TRANSFERS, b"[1, 2]"),
    "no content type": _json(TRANSFERS, _pay, content_type=None),
    "text content type": _json(TRANSFERS, _pay, content_type="text/plain"),
    "problem+json content type": _json(TRANSFERS, _pay, content_type="application/problem+json"),
    "missing amount": _json(TRANSFERS, lambda w: {"payee": _pay(w)["payee"], "currency": "CNY"}),
    "amount as text": _json(TRANSFERS, lambda w: _pay(w, amount="100")),
    "zero amount": _json(TRANSFERS, lambda w: _pay(w, amount=0)),
    "lower-case currency": _json(TRANSFERS, lambda w: _pay(w, currency="cny")),
    "an extra field": _json(TRANSFERS, lambda w: _pay(w, tip=1)),
    "a long note": _json(TRANSFERS, lambda w: _pay(w, note="x" * 141)),
    "payer id not a number": _json(P + "/customers/abc/transfers", _pay),
    "payer id zero": _json(P + "/customers/0/transfers", _pay),
    "payer id too large": _json(P + "/customers/9223372036854775808/transfers", _pay),
    "payer id negative": _json(P + "/customers/-1/transfers", _pay),
    "a trailing slash": _json(TRANSFERS + "/", _pay),
    "bad key and bad body": _json(TRANSFERS, b"{", Authorization="Bearer nope"),
    "merchant payment without qr": _json(MERCHANT, {"amount": 1_00, "currency": "CNY"}),
    "a body over the limit": _json(
        TRANSFERS, lambda w: json.dumps(_pay(w)).encode().ljust(BYTES_MAX + 1)
    ),
    "a streamed body": _json(TRANSFERS, _pay),
    "a streamed body over the limit": _json(
        TRANSFERS, lambda w: json.dumps(_pay(w)).encode().ljust(BYTES_MAX + 1)
    ),
}
PRIMED = {
    "idempotency key, replay": _json(TRANSFERS, _pay, **{"Idempotency-Key": "lean-replay"}),
    "idempotency key, reused": _json(TRANSFERS, _pay, **{"Idempotency-Key": "lean-reused"}),
}
"""A request sent (to both apps) before the case's own, so that each case stands alone."""

EXPECTED = {
    "p2p by id": 201,
    "merchant payment": 201,
    "same party": 422,
    "unknown payer": 404,
    "bad key": 401,
    "idempotency key, replay": 201,
    "idempotency key, reused": 409,
    "idempotency key, invalid": 400,
    "a body just within the limit": 201,
    "malformed JSON": 422,
    "deeply nested JSON": 400,
    "no content type": 422,
    "a body over the limit": 413,
    "a streamed body": 201,
    "a streamed body over the limit": 413,
}
"""The status some cases must get (both ways agreeing on a wrong answer is no pass)."""
STREAMED = {"a streamed body", "a streamed body over the limit"}
"""Cases sent without ``Content-Length`` (chunked)."""

VOLATILE = ("id", "created_at_ns", "updated_at_ns", "request_id")
"""Answer fields that differ between two stores by construction (random operation ids,
fresh request ids)."""


Side = tuple[Api, dict[str, str]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side]]:
    """An app with the lean way and one without, each with the same payments world."""
    lean_gen = make_api(
        tmp_path_factory.mktemp("lean"), ApiOptions(request_body_bytes_max=BYTES_MAX)
    )
    plain_options = ApiOptions(request_body_bytes_max=BYTES_MAX, lean_routes=False)
    plain_gen = make_api(tmp_path_factory.mktemp("plain"), plain_options)
    lean, plain = next(lean_gen), next(plain_gen)
    yield (lean, payments_world(lean)), (plain, payments_world(plain))
    for gen in (lean_gen, plain_gen):
        next(gen, None)


def _normalised(world: dict[str, str], response: Any) -> dict[str, Any]:
    """Status, headers and body, with what differs between two stores by construction
    named instead (the world's ids, operation ids and times, request ids)."""
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in ("date", "x-request-id", "content-length")
    }
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json"):
        body = json.loads(body)
        if isinstance(body, dict):
            for name in VOLATILE:
                if name in body:
                    body[name] = type(body[name]).__name__
    text = body.decode() if isinstance(body, bytes) else json.dumps(body, sort_keys=True)
    for name, value in sorted(world.items(), key=lambda item: -len(item[1])):
        text = re.sub(rf"(?<![0-9]){re.escape(value)}(?![0-9])", f"<{name}>", text)
    return {"status": response.status_code, "headers": headers, "body": text}


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The routes whose requests the lean way answered (by template), in order."""
    calls: list[str] = []
    answer = LeanRoute.answer

    async def counted(self: LeanRoute, request: Any, values: dict[str, Any]) -> Any:
        calls.append(self.route.path)
        return await answer(self, request, values)

    monkeypatch.setattr(LeanRoute, "answer", counted)
    return calls


LEAN_CASES = list(CASES)[: list(CASES).index("malformed JSON")]
"""The cases the lean way answers itself (their handler runs: not refused before it)."""
REFUSED_FIRST = {
    "bad key",
    "no key",
    "idempotency key, replay",
    "idempotency key, reused",
    "idempotency key, invalid",
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lean_way_answers_as_the_ordinary_route(
    pair: tuple[Side, Side], lean_calls: list[str], case: str
) -> None:
    (lean, lean_world), (plain, plain_world) = pair
    answers = []
    sides = ((lean, lean_world), (plain, plain_world))
    for api, world in sides if case in PRIMED else ():
        path, headers, body = PRIMED[case](api, world)
        assert api.client.post(path, content=body, headers=headers).status_code == 201
    lean_calls.clear()
    for api, world in sides:
        path, headers, body = CASES[case](api, world)
        content: Any = iter([body]) if case in STREAMED else body
        response = api.client.post(path, content=content, headers=headers, follow_redirects=False)
        answers.append(_normalised(world, response))
    assert answers[0] == answers[1]
    assert answers[0]["status"] == EXPECTED.get(case, answers[0]["status"]) != 500
    if case == "idempotency key, replay":
        assert answers[0]["headers"]["idempotent-replayed"] == "true"
    taken = case in LEAN_CASES and case not in REFUSED_FIRST
    assert len(lean_calls) == (1 if taken else 0), lean_calls


def test_audit_entries_metrics_and_log_lines_match(pair: tuple[Side, Side]) -> None:
    """After the same requests, both apps' audit chains hold the same entries (who, what,
    the route template and concrete path, status), their request counters by route and
    status agree, and a request's access line names the same route template."""
    (lean, lean_world), (plain, plain_world) = pair
    entries = []
    metrics = []
    lines = []
    for api, world in ((lean, lean_world), (plain, plain_world)):
        stream = io.StringIO()
        configure_logging(stream)
        try:
            path, headers, body = CASES["p2p by id"](api, world)
            assert api.client.post(path, content=body, headers=headers).status_code == 201
        finally:
            configure_logging()
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert line["key_id"] == api.token_a.split("_")[1]  # the key's id, not its secret
        volatile = ("timestamp", "request_id", "duration_ms", "key_id")
        lines.append({k: v for k, v in line.items() if k not in volatile})
        audit = AuditLog(api.engine)
        rows = [(e.method, e.route, e.target, e.status) for e in audit.entries(limit=10_000)]
        text = "\n".join(repr(row) for row in rows)
        for name, value in sorted(world.items(), key=lambda item: -len(item[1])):
            text = re.sub(rf"(?<![0-9]){re.escape(value)}(?![0-9])", f"<{name}>", text)
        entries.append(text)
        scraped = api.client.get("/metrics").text
        metrics.append(
            sorted(
                line
                for line in scraped.splitlines()
                if line.startswith("puhui_api_requests_total{")
                or line.startswith("puhui_api_request_seconds_count{")
            )
        )
    assert entries[0] == entries[1]
    assert metrics[0] == metrics[1]
    assert lines[0] == lines[1]
    assert lines[0]["route"] == "/v1/payments/customers/{customer_id}/transfers"


def test_only_routes_of_the_lean_shape_are_taken(api: Api) -> None:
    """A route with query parameters (or another method, or a shadowed template) is refused
    when the lean way is built, never served differently."""
    routes = {r.path: r for r in api.client.app.routes if isinstance(r, PlatformRoute)}  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="shape"):
        LeanRoute(routes["/v1/payments/customers/{customer_id}/operations"])
    transfers = routes["/v1/payments/customers/{customer_id}/transfers"]
    shadow = PlatformRoute(
        "/v1/payments/customers/{anything}/transfers",
        transfers.endpoint,
        methods=["POST"],
    )
    with pytest.raises(ValueError, match="shadowed"):
        LeanRoutes(api.client.app, [transfers], [shadow, transfers], 1024)
