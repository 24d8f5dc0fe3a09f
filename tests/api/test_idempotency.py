"""``Idempotency-Key`` over HTTP, with Stripe's semantics."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from puhui.platform import Claim, IdempotencyRecords, Webhooks
from puhui.platform.model import request_fingerprint

from .conftest import Api, account, transfer

S = 1_000_000_000


def _post(api: Api, path: str, body: dict[str, Any], key: str, token: str | None = None) -> Any:
    return api.client.post(path, json=body, headers=api.auth(token, **{"Idempotency-Key": key}))


def _records(api: Api) -> IdempotencyRecords:
    records: IdempotencyRecords = api.client.app.state.puhui.idempotency  # type: ignore[attr-defined]
    return records


def _balance(api: Api, account_id: str) -> str:
    response = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": [account_id]}, headers=api.auth()
    )
    return str(response.json()["accounts"][0]["credits_posted"])


def test_same_key_same_body_replays_the_stored_response(api: Api) -> None:
    api.client.post(
        "/v1/ledger/accounts", json={"accounts": [account(1), account(2)]}, headers=api.auth()
    )
    body = {"transfers": [transfer(10, 1, 2, 500)]}
    first = _post(api, "/v1/ledger/transfers", body, "pay-1")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    # the same body spelt differently is the same request
    again = api.client.post(
        "/v1/ledger/transfers",
        content=b'{ "transfers" : [' + first.request.content.split(b"[", 1)[1],
        headers=api.auth(**{"Idempotency-Key": "pay-1", "content-type": "application/json"}),
    )
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the stored response: "created", not "exists"
    assert again.json()["results"][0]["status"] == "created"
    assert _balance(api, "2") == "500"


def test_same_key_different_body_is_409_reused(api: Api) -> None:
    api.client.post(
        "/v1/ledger/accounts", json={"accounts": [account(1), account(2)]}, headers=api.auth()
    )
    assert _post(
        api, "/v1/ledger/transfers", {"transfers": [transfer(10, 1, 2, 5)]}, "k"
    ).is_success
    response = _post(api, "/v1/ledger/transfers", {"transfers": [transfer(11, 1, 2, 7)]}, "k")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_reused"
    other_path = _post(api, "/v1/ledger/accounts", {"accounts": [account(3)]}, "k")
    assert other_path.json()["code"] == "idempotency_key_reused"
    assert _balance(api, "2") == "5"
    # keys are per tenant: tenant B may use "k" for its own request
    assert _post(
        api, "/v1/ledger/accounts", {"accounts": [account(3)]}, "k", api.token_b
    ).is_success


def test_a_request_in_flight_is_409_and_a_crashed_one_frees_its_key(api: Api) -> None:
    body = {"accounts": [account(1)]}
    records: IdempotencyRecords = api.client.app.state.puhui.idempotency  # type: ignore[attr-defined]
    fingerprint = request_fingerprint(
        "POST", "/v1/ledger/accounts", b'{"accounts":[{"id":"1","ledger":1,"code":1}]}'
    )
    assert records.begin(api.a.id, "crashy", fingerprint).claim is Claim.STARTED
    response = _post(api, "/v1/ledger/accounts", body, "crashy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_request_in_progress"
    api.clock.advance(int(records.options.lock_timeout_s * S) + 1)
    response = _post(api, "/v1/ledger/accounts", body, "crashy")
    assert response.status_code == 200 and response.json()["results"][0]["status"] == "created"


def _twice_at_once(api: Api, body: dict[str, Any], key: str) -> list[Any]:
    answers: list[Any] = []
    start = threading.Barrier(2)

    def send() -> None:
        start.wait()
        answers.append(_post(api, "/v1/ledger/accounts", body, key))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_duplicates_run_once(api: Api) -> None:
    for round_ in range(8):
        answers = _twice_at_once(api, {"accounts": [account(100 + round_)]}, f"dup-{round_}")
        outcomes = sorted(
            (r.status_code, r.json().get("code") or r.json()["results"][0]["status"])
            for r in answers
        )
        # never "exists": the second request either came after the first and got its stored
        # answer, or was refused while the first was in flight
        assert outcomes in (
            [(200, "created"), (200, "created")],
            [(200, "created"), (409, "idempotency_request_in_progress")],
        ), outcomes
        replayed = [r.headers.get("idempotent-replayed") for r in answers if r.status_code == 200]
        assert replayed.count("true") == len(replayed) - 1


def test_invalid_requests_and_expired_keys_are_not_remembered(api: Api) -> None:
    bad = _post(api, "/v1/ledger/accounts", {"accounts": [{"id": 1}]}, "fix-me")
    assert bad.status_code == 422
    good = _post(api, "/v1/ledger/accounts", {"accounts": [account(1)]}, "fix-me")
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers
    api.clock.advance(24 * 3600 * S)  # the default window is over
    new = _post(api, "/v1/ledger/accounts", {"accounts": [account(2)]}, "fix-me")
    assert new.status_code == 200 and new.json()["results"][0]["status"] == "created"


def test_a_body_that_cannot_be_parsed_is_not_remembered(api: Api) -> None:
    """A body FastAPI cannot even parse (nested too deep, bytes that are not UTF-8 inside
    the JSON) is refused 400 ``invalid_input`` before the handler runs: nothing happened, so
    the key is not remembered and the fixed request runs (it was 409
    ``idempotency_key_reused`` for the key's whole window)."""
    fixed = json.dumps({"accounts": [account(1)]}).encode()
    for n, unparsable in enumerate((b"[" * 100_000, b'{"accounts": [\xff]}')):
        headers = api.auth(**{"Idempotency-Key": f"fix-me-{n}", "Content-Type": "application/json"})
        bad = api.client.post("/v1/ledger/accounts", content=unparsable, headers=headers)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_input"), bad.text
        good = api.client.post("/v1/ledger/accounts", content=fixed, headers=headers)
        assert good.status_code == 200, good.text
        assert "idempotent-replayed" not in good.headers


def test_get_requests_ignore_the_header(api: Api) -> None:
    for _ in range(2):
        response = api.client.get(
            "/v1/ledger/accounts/1/transfers", headers=api.auth(**{"Idempotency-Key": "g"})
        )
        assert response.status_code == 200 and "idempotent-replayed" not in response.headers


def test_a_request_taken_over_cannot_free_the_key_of_the_request_that_took_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request runs past the claim's lock timeout; its retry takes the key over and runs;
    then the first ends with a 500. Before, its release deleted the retry's claim: a third
    request with the key ran too (a second endpoint), while the retry was still running.
    Now the release is the first claim's only: the third request is refused as in
    progress, and the retry's answer is the one kept."""
    webhooks: Webhooks = api.client.app.state.puhui.webhooks  # type: ignore[attr-defined]
    create = webhooks.create_endpoint
    entered = [threading.Event() for _ in range(3)]
    go = [threading.Event() for _ in range(3)]
    go[2].set()  # a third run, if any, goes straight through

    def slow_create(*args: Any) -> Any:
        n = sum(e.is_set() for e in entered)
        entered[n].set()
        assert go[n].wait(10.0)
        if n == 0:
            raise RuntimeError("the first request fails late (a store fault)")
        return create(*args)

    monkeypatch.setattr(webhooks, "create_endpoint", slow_create)
    body = {"url": "https://a.example/hook", "event_types": ["*"]}

    def send() -> Any:
        return _post(api, "/v1/webhooks/endpoints", body, "hook-1")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send)
        assert entered[0].wait(10.0)
        api.clock.advance(int(_records(api).options.lock_timeout_s * S) + 1)
        retry = pool.submit(send)  # the client gave up on the first and retries
        assert entered[1].wait(10.0)
        go[0].set()
        assert first.result(10.0).status_code == 500
        third = send()  # while the retry runs
        go[1].set()
        retried = retry.result(10.0)
    assert third.status_code == 409, third.text
    assert third.json()["code"] == "idempotency_request_in_progress"
    assert retried.status_code == 200
    assert len(webhooks.endpoints(api.a.id)) == 1
    replay = send()
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == retried.json()["id"]
