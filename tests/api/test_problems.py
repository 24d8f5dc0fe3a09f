"""Errors are application/problem+json with a stable code; bad input is 4xx, never 500;
body size and rate limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from puhui.api import STATUS_BY_CODE, ApiOptions, RateLimitedError
from puhui.api._guards import encode_cursor
from puhui.platform import AuditLog

from .conftest import Api, account, make_api, transfer

PROBLEM_KEYS = {"type", "title", "status", "code", "detail"}


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert (body["status"], body["code"]) == (status, code)
    assert body["type"].endswith("/" + code)
    return body


def test_authentication_and_scopes(api: Api) -> None:
    path = "/v1/ledger/accounts/lookup"
    body = {"ids": ["1"]}
    response = api.client.post(path, json=body)
    _problem(response, 401, "api_key_invalid")
    assert response.headers["www-authenticate"] == "Bearer"
    _problem(api.client.post(path, json=body, headers=api.auth("pk_x")), 401, "api_key_invalid")
    _problem(
        api.client.post(path, json=body, headers={"Authorization": "Basic abc"}),
        401,
        "api_key_invalid",
    )
    _, write_only = api.tenants.create_key(api.a.id, ["ledger:write"])
    response = api.client.post(path, json=body, headers=api.auth(write_only))
    assert _problem(response, 403, "scope_missing")["scope"] == "ledger:read"


def test_a_refused_key_is_remembered_and_answered_the_same(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad key repeated within ``auth_cache_s`` is refused from memory (no store read): the
    same status, headers and body to the byte, no audit entry, counted in the metrics."""
    context = api.client.app.state.puhui  # type: ignore[attr-defined]
    reads: list[str] = []
    authenticate = context.tenants.authenticate

    def counted(token: str) -> Any:
        reads.append(token)
        return authenticate(token)

    monkeypatch.setattr(context.tenants, "authenticate", counted)
    revoked_key, revoked = api.tenants.create_key(api.a.id, ["ledger:write"])
    api.tenants.revoke_key(revoked_key.id)
    path, body = "/v1/ledger/accounts", {"accounts": [account(1)]}
    entries = AuditLog(api.engine).verify().entries

    def refused(status: int) -> float:
        value = context.metrics.registry.get_sample_value(
            "puhui_api_requests_total",
            {"route": path, "method": "POST", "status": str(status)},
        )
        return float(value or 0)

    bad_tokens = {
        "unknown": f"pk_{'0' * 16}_{'0' * 64}",
        "wrong secret": api.token_a[:-4] + ("0000" if not api.token_a.endswith("0000") else "1111"),
        "malformed": "pk_x",
        "revoked": revoked,
    }
    for token in bad_tokens.values():
        headers = api.auth(token, **{"X-Request-Id": "req-same"})  # echoed in the body
        answers = [api.client.post(path, json=body, headers=headers) for _ in range(3)]
        assert len(reads) == 1  # looked up once, then remembered
        api.clock.advance(1_000_000_000)  # auth_cache_s later: looked up again
        answers.append(api.client.post(path, json=body, headers=headers))
        assert len(reads) == 2
        reads.clear()
        first = answers[0]
        _problem(first, 401, "api_key_invalid")
        for again in answers[1:]:
            assert again.status_code == first.status_code
            assert again.content == first.content
            assert again.headers.items() == first.headers.items()
    assert refused(401) == 4 * 4  # every answer counted, remembered or not
    assert AuditLog(api.engine).verify().entries == entries  # refusals are not audited


def test_http_level_problems(api: Api) -> None:
    _problem(api.client.get("/v1/nowhere", headers=api.auth()), 404, "not_found")
    _problem(
        api.client.delete("/v1/ledger/accounts", headers=api.auth()), 405, "method_not_allowed"
    )


BAD_BODIES: list[Any] = [
    None,
    [],
    "text",
    {},
    {"accounts": "no"},
    {"accounts": [{}]},
    {"accounts": [account(1, unknown=1)]},  # unknown field
    {"accounts": [account(1) | {"id": 1}]},  # ids are decimal strings
    {"accounts": [account(1) | {"id": "-1"}]},
    {"accounts": [account(1) | {"id": "1.5"}]},
    {"accounts": [account(1) | {"id": "01"}]},
    {"accounts": [account(1) | {"ledger": -1}]},
    {"accounts": [account(1) | {"ledger": 1 << 32}]},
    {"accounts": [account(1) | {"code": 1.5}]},
    {"accounts": [account(1) | {"flags": "1"}]},
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=[f"body{i}" for i in range(len(BAD_BODIES))])
def test_bad_bodies_are_422_invalid_input(api: Api, body: Any) -> None:
    response = api.client.post("/v1/ledger/accounts", json=body, headers=api.auth())
    problem = _problem(response, 422, "invalid_input")
    assert problem["errors"] and all("loc" in e and "msg" in e for e in problem["errors"])


@pytest.mark.parametrize(
    ("path", "field", "item"),
    [
        ("/v1/ledger/accounts", "accounts", account(1)),
        ("/v1/ledger/transfers", "transfers", transfer(1, 1, 2, 1)),
        ("/v1/ledger/accounts/lookup", "ids", "1"),
        ("/v1/ledger/transfers/lookup", "ids", "1"),
    ],
)
def test_an_overfull_json_batch_is_batch_too_large(
    api: Api, path: str, field: str, item: Any
) -> None:
    """The binary routes' code for the same mistake; nothing of the batch is created."""
    response = api.client.post(path, json={field: [item] * 8190}, headers=api.auth())
    problem = _problem(response, 422, "batch_too_large")
    assert "8189" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", field]
    found = api.client.post("/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth())
    assert found.status_code == 200
    assert found.json()["accounts"] == []


def test_malformed_json_and_out_of_range_values(api: Api) -> None:
    response = api.client.post(
        "/v1/ledger/accounts",
        content=b'{"accounts": [',
        headers=api.auth(**{"content-type": "application/json"}),
    )
    _problem(response, 422, "invalid_input")
    too_big = str(1 << 128)  # 39 digits, one past the largest u128
    response = api.client.post(
        "/v1/ledger/transfers",
        json={"transfers": [transfer(1, 1, 2, 1) | {"amount": too_big}]},
        headers=api.auth(),
    )
    _problem(response, 422, "field_out_of_range")
    response = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": [too_big]}, headers=api.auth()
    )
    _problem(response, 422, "field_out_of_range")
    response = api.client.get(f"/v1/ledger/accounts/{too_big}/transfers", headers=api.auth())
    _problem(response, 422, "field_out_of_range")
    response = api.client.get(
        "/v1/ledger/accounts/1/transfers", params={"limit": 100_000}, headers=api.auth()
    )
    _problem(response, 422, "invalid_input")
    response = api.client.get(
        "/v1/ledger/accounts/x/transfers", params={"limit": 0}, headers=api.auth()
    )
    _problem(response, 422, "invalid_input")


def test_bad_idempotency_keys_are_400(api: Api) -> None:
    response = api.client.post(
        "/v1/ledger/accounts",
        json={"accounts": [account(1)]},
        headers=api.auth(**{"Idempotency-Key": "x" * 256}),
    )
    _problem(response, 400, "idempotency_key_invalid")


def test_every_status_in_the_table_is_an_error_status() -> None:
    assert all(400 <= status <= 599 for status in STATUS_BY_CODE.values())


@pytest.fixture
def small_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, SMALL_OPTIONS)


SMALL_OPTIONS = ApiOptions(
    request_body_bytes_max=1024, rate_per_key_per_s=1.0, rate_burst_requests=3
)


@pytest.fixture(params=["per_process", "shared"])
def limited_api(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Api]:
    """``small_api`` with the keys' buckets in the app's ``RateLimiter`` or in a
    ``SharedRateLimiter``'s table."""
    yield from make_api(tmp_path, SMALL_OPTIONS, shared_limits=request.param == "shared")


def test_request_bodies_over_the_limit_are_413(small_api: Api) -> None:
    api = small_api
    body = {"accounts": [account(i) for i in range(1, 40)]}
    response = api.client.post("/v1/ledger/accounts", json=body, headers=api.auth())
    assert _problem(response, 413, "request_too_large")["bytes_max"] == 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"accounts": ['
        for i in range(1, 40):
            yield (b"," if i > 1 else b"") + b'{"id": "%d", "ledger": 1, "code": 1}' % i
        yield b"]}"

    response = api.client.post(
        "/v1/ledger/accounts",
        content=chunks(),
        headers=api.auth(**{"content-type": "application/json"}),
    )
    _problem(response, 413, "request_too_large")
    lookup = api.client.post("/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth())
    assert lookup.json()["accounts"] == []


def test_rate_limit_per_key_with_retry_after(limited_api: Api) -> None:
    api = limited_api
    path, body = "/v1/ledger/accounts/lookup", {"ids": ["1"]}
    for _ in range(3):  # the burst
        assert api.client.post(path, json=body, headers=api.auth()).status_code == 200
    response = api.client.post(path, json=body, headers=api.auth())
    _problem(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "1"
    # another key has its own bucket
    assert api.client.post(path, json=body, headers=api.auth(api.token_b)).status_code == 200
    api.clock.advance(1_000_000_000)  # one token back after a second at 1 request/s
    assert api.client.post(path, json=body, headers=api.auth()).status_code == 200
    assert api.client.post(path, json=body, headers=api.auth()).status_code == 429


def test_a_fault_of_the_store_is_a_logged_500_problem(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    records = api.client.app.state.puhui.idempotency  # type: ignore[attr-defined]

    def broken(*_: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(records, "begin_many", broken)
    response = api.client.post(
        "/v1/ledger/accounts",
        json={"accounts": [account(1)]},
        headers=api.auth(**{"Idempotency-Key": "k"}),
    )
    problem = _problem(response, 500, "internal_error")
    assert "disk" not in problem["detail"]  # nothing about the fault reaches the client
    assert any("unhandled error" in r.message for r in caplog.records)


def test_the_rate_limiter_forgets_full_buckets_beyond_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buckets of keys gone quiet (refilled to the brim: the same as no bucket) are dropped
    once there are more than ``rate_buckets_max``; a key mid-use keeps its own."""
    from puhui.api import _guards
    from puhui.clock import ManualClock

    monkeypatch.setattr(_guards, "rate_buckets_max", 2)
    clock = ManualClock(10**18)
    limiter = _guards.RateLimiter(clock, rate_per_s=1.0, burst=2)
    limiter.take("old-1")
    limiter.take("old-2")
    clock.advance(5 * 10**9)  # both refilled
    limiter.take("busy")
    limiter.take("busy")  # its bucket is empty now
    assert set(limiter._buckets) == {"busy"}  # the third key swept the full ones away
    with pytest.raises(RateLimitedError):
        limiter.take("busy")  # its state was kept: still limited
    limiter.take("old-1")  # a forgotten key starts with its whole burst again
    limiter.take("old-1")


def test_crafted_cursors_are_400_cursor_invalid_never_500(api: Api) -> None:
    """A cursor is opaque, but it is only base64 JSON: one crafted with a number no column
    holds (beyond 64 bits) or a digit string ``int`` does not read (``"²"``) is refused as
    ``cursor_invalid``, on every list (it was a 500 from the store or from ``int``)."""
    operator = api.tenants.create("Ops", "operator")
    _, ops = api.tenants.create_key(operator.id, ["platform:admin"])
    customer = api.client.post(
        "/v1/payments/customers",
        json={"phone": "+8613800000001", "display_name": "Li"},
        headers=api.auth(),
    ).json()["id"]
    api.client.post("/v1/ledger/accounts", json={"accounts": [account(1)]}, headers=api.auth())
    huge, small = 10**30, -(10**30)
    operations = f"/v1/payments/customers/{customer}/operations"
    cases: list[tuple[str, str, dict[str, Any], str | None]] = [
        ("/v1/webhooks/events", "webhook_events", {"seq": huge}, None),
        ("/v1/webhooks/dead-letters", "webhook_dead_letters", {"id": huge}, None),
        ("/v1/webhooks/endpoints", "webhook_endpoints", {"at": huge, "id": "we_"}, None),
        ("/v1/webhooks/endpoints", "webhook_endpoints", {"at": small, "id": "we_"}, None),
        (operations, "customer_operations", {"t": huge, "i": "1"}, None),
        (operations, "customer_operations", {"t": 1, "i": "\u00b2"}, None),
        (operations, "customer_operations", {"t": 1, "i": "9" * 60}, None),
        ("/v1/risk/cases", "risk_cases", {"i": huge}, None),
        ("/v1/ledger/accounts/1/transfers", "account_transfers", {"ts": huge, "r": False}, None),
        ("/v1/platform/tenants", "tenants", {"id": huge}, ops),
        (f"/v1/platform/tenants/{api.a.id}/keys", "keys", {"at": huge, "id": "k"}, ops),
    ]
    for path, kind, position, token in cases:
        cursor = encode_cursor(kind, position)
        response = api.client.get(path, params={"cursor": cursor}, headers=api.auth(token))
        assert (response.status_code, response.json()["code"]) == (400, "cursor_invalid"), (
            path,
            position,
            response.text,
        )


def test_a_body_that_is_not_json_is_422_and_its_key_is_not_remembered(api: Api) -> None:
    """As docs/api.md says under Idempotency: an unparsable body is `422 invalid_input` (the
    schema's answer, `json_invalid`), and the key may be used again once the body is fixed."""
    headers = api.auth(**{"Content-Type": "application/json", "Idempotency-Key": "k-1"})
    response = api.client.post("/v1/ledger/accounts", content=b'{"accounts": [', headers=headers)
    body = _problem(response, 422, "invalid_input")
    assert [error["type"] for error in body["errors"]] == ["json_invalid"]
    fixed = api.client.post("/v1/ledger/accounts", json={"accounts": [account(1)]}, headers=headers)
    assert fixed.status_code == 200, fixed.text
    assert "Idempotent-Replayed" not in fixed.headers
    assert fixed.json()["results"][0]["status"] == "created"
