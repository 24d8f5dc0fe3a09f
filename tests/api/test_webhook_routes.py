"""The webhook routes: endpoints, events (cursor pagination), dead letters and replay; and the
delivery worker the app runs on its lifespan, against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from puhui.api import ApiOptions
from puhui.api._guards import encode_cursor
from puhui.platform import (
    DeliveryWorker,
    EventType,
    RetrySchedule,
    WebhookOptions,
    Webhooks,
    verify_signature,
)
from puhui.store.platform import idempotency, webhook_events

from .conftest import START_NS, Api, make_api, public_dns

HOOKS = "/v1/webhooks"


def _webhooks(api: Api) -> Webhooks:
    webhooks: Webhooks = api.client.app.state.puhui.webhooks  # type: ignore[attr-defined]
    return webhooks


def _record(api: Api, tenant_id: int, event_type: EventType = EventType.ORDER_PAID) -> str:
    with api.engine.begin() as conn:
        return _webhooks(api).record(conn, tenant_id, event_type, {"order_id": "ab"})


def _endpoint(api: Api, url: str = "https://a.example/hook", **body: Any) -> dict[str, Any]:
    response = api.client.post(
        f"{HOOKS}/endpoints",
        json={"url": url, "event_types": ["*"], **body},
        headers=api.auth(),
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def test_an_endpoint_is_created_with_its_secret_shown_once(api: Api) -> None:
    created = _endpoint(api, event_types=["order.paid", "payment.succeeded"])
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["order.paid", "payment.succeeded"]
    assert (created["enabled"], created["created_at"]) == (True, "2026-01-01T00:00:00.000000Z")
    listed = api.client.get(f"{HOOKS}/endpoints", headers=api.auth()).json()
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0] and created["secret"] not in json.dumps(listed)
    disabled = api.client.post(f"{HOOKS}/endpoints/{created['id']}/disable", headers=api.auth())
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    assert disabled.json()["disabled_at"] == "2026-01-01T00:00:00.000000Z"


def _stored_answers(api: Api) -> list[bytes]:
    """Every answer kept under an ``Idempotency-Key`` (the idempotency records, at rest)."""
    with api.engine.connect() as conn:
        return [bytes(b) for b in conn.execute(sa.select(idempotency.c.body)).scalars() if b]


def test_an_endpoint_s_secret_is_not_kept_for_an_idempotent_replay(api: Api) -> None:
    """Created under an ``Idempotency-Key``, the endpoint's answer is kept for replays
    without its secret: a replay is the same endpoint with ``"secret": null`` (the secret
    is shown once). Before, the whole answer was kept, the secret in plain text beside the
    endpoint's own row for the key's 24 hours, and every replay showed it again."""
    body = {"url": "https://a.example/hook", "event_types": ["*"]}
    headers = api.auth(**{"Idempotency-Key": "hook-once"})
    first = api.client.post(f"{HOOKS}/endpoints", json=body, headers=headers)
    replay = api.client.post(f"{HOOKS}/endpoints", json=body, headers=headers)
    assert first.status_code == replay.status_code == 200
    secret = first.json()["secret"]
    assert secret.startswith("whsec_")
    stored = _stored_answers(api)
    assert len(stored) == 1 and secret.encode() not in stored[0]
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == {**first.json(), "secret": None}
    listed = api.client.get(f"{HOOKS}/endpoints", headers=api.auth()).json()["data"]
    assert [e["id"] for e in listed] == [first.json()["id"]]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://a.example/", "event_types": ["*"]}, "webhook_url_invalid"),
        ({"url": "file:///etc/passwd", "event_types": ["*"]}, "webhook_url_invalid"),
        (
            {"url": "https://a.example/", "event_types": ["money.printed"]},
            "webhook_event_type_unknown",
        ),
        ({"url": "https://a.example/", "event_types": []}, "invalid_input"),
        ({"url": "https://a.example/"}, "invalid_input"),
        ({"url": "http://a.example/", "event_types": ["*"]}, "webhook_url_insecure"),
        ({"url": "https://169.254.169.254/", "event_types": ["*"]}, "webhook_url_forbidden"),
        ({"url": "https://127.0.0.1:8000/", "event_types": ["*"]}, "webhook_url_forbidden"),
    ],
)
def test_a_bad_endpoint_is_refused_and_nothing_is_created(
    api: Api, body: dict[str, Any], code: str
) -> None:
    response = api.client.post(f"{HOOKS}/endpoints", json=body, headers=api.auth())
    assert response.status_code == 422
    assert response.json()["code"] == code
    assert api.client.get(f"{HOOKS}/endpoints", headers=api.auth()).json()["data"] == []


def test_unknown_ids_are_404_with_a_specific_code(api: Api) -> None:
    missing = api.client.post(f"{HOOKS}/endpoints/we_{'0' * 16}/disable", headers=api.auth())
    assert (missing.status_code, missing.json()["code"]) == (404, "webhook_endpoint_not_found")
    event = api.client.get(f"{HOOKS}/events/evt_{'0' * 32}", headers=api.auth())
    assert (event.status_code, event.json()["code"]) == (404, "webhook_event_not_found")
    replay = api.client.post(f"{HOOKS}/events/evt_{'0' * 32}/replay", headers=api.auth())
    assert (replay.status_code, replay.json()["code"]) == (404, "webhook_event_not_found")
    malformed = api.client.get(f"{HOOKS}/events/not-an-id", headers=api.auth())
    assert malformed.status_code == 422


def test_events_are_listed_a_page_at_a_time(api: Api) -> None:
    ids = [_record(api, api.a.id) for _ in range(5)]
    paid = _record(api, api.a.id, EventType.PAYMENT_SUCCEEDED)
    _record(api, api.b.id)
    seen: list[str] = []
    cursor: str | None = None
    pages: list[tuple[int, bool]] = []
    for _ in range(10):
        page = _events_page(api, cursor, limit=2, type="order.paid")
        seen += [e["id"] for e in page["data"]]
        pages.append((len(page["data"]), page["has_more"]))
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids
    assert pages == [(2, True), (2, True), (1, False)]
    # The last page, not full, still says where to go on from: a poller keeps it and asks
    # again later (before, it was null and the poller had to start over).
    assert cursor is not None
    empty = _events_page(api, cursor, type="order.paid")
    assert empty == {"data": [], "next_cursor": None, "has_more": False}
    later = _record(api, api.a.id)
    assert [e["id"] for e in _events_page(api, cursor, type="order.paid")["data"]] == [later]
    everything = api.client.get(f"{HOOKS}/events", headers=api.auth()).json()
    assert [e["id"] for e in everything["data"]] == [*ids, paid, later]
    assert everything["data"][0] == {
        "id": ids[0],
        "type": "order.paid",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "data": {"order_id": "ab"},
    }
    bad_type = api.client.get(f"{HOOKS}/events", params={"type": "x.y"}, headers=api.auth())
    assert bad_type.json()["code"] == "webhook_event_type_unknown"
    bad_cursor = api.client.get(f"{HOOKS}/events", params={"cursor": "xyz"}, headers=api.auth())
    assert (bad_cursor.status_code, bad_cursor.json()["code"]) == (400, "cursor_invalid")
    other_list = api.client.get(
        f"{HOOKS}/dead-letters", params={"cursor": cursor or page_cursor(api)}, headers=api.auth()
    )
    assert other_list.json()["code"] == "cursor_invalid"


def _events_page(api: Api, cursor: str | None, **params: Any) -> dict[str, Any]:
    if cursor is not None:
        params["cursor"] = cursor
    response = api.client.get(f"{HOOKS}/events", params=params, headers=api.auth())
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def test_a_cursor_from_before_events_kept_their_transaction_goes_on_from_its_seq(
    api: Api,
) -> None:
    """A cursor handed out before the listing ordered by ``(txid, seq)`` holds ``seq``
    only: it still works, as ``(0, seq)``. Events written before then have txid 0 and were
    listed by seq, so it goes on right after its event among them, then to every later
    event (a larger txid): nothing is skipped."""
    ids = [_record(api, api.a.id) for _ in range(3)]
    with api.engine.begin() as conn:  # as the migration left the events written before it
        conn.execute(
            sa.update(webhook_events).where(webhook_events.c.id.in_(ids[:2])).values(txid=0)
        )
    newer = _record(api, api.a.id)
    first = _webhooks(api).event(api.a.id, ids[0])
    old_cursor = encode_cursor("webhook_events", {"seq": first.seq})
    page = _events_page(api, old_cursor)
    assert [e["id"] for e in page["data"]] == [ids[1], ids[2], newer]
    assert [e["id"] for e in _events_page(api, None)["data"]] == [*ids, newer]
    for bad in ({"seq": -1}, {"seq": True}, {"txid": "1", "seq": 1}, {"txid": 1}):
        answer = api.client.get(
            f"{HOOKS}/events",
            params={"cursor": encode_cursor("webhook_events", bad)},
            headers=api.auth(),
        )
        assert (answer.status_code, answer.json()["code"]) == (400, "cursor_invalid"), bad


def page_cursor(api: Api) -> str:
    page = api.client.get(f"{HOOKS}/events", params={"limit": 1}, headers=api.auth()).json()
    cursor: str = page["next_cursor"]
    return cursor


def test_dead_letters_are_listed_and_replay_delivers_again(api: Api) -> None:
    created = _endpoint(api)
    event_id = _record(api, api.a.id)
    webhooks = Webhooks(
        api.engine,
        clock=api.clock,
        options=WebhookOptions(
            retry=RetrySchedule(base_s=1, cap_s=1, attempts_max=2), resolve=public_dns
        ),
    )
    status = {"code": 500}
    got: list[str] = []

    def receiver(request: httpx2.Request) -> httpx2.Response:
        got.append(request.headers["Puhui-Event-Id"])
        return httpx2.Response(status["code"])

    async def rounds(count: int) -> None:
        transport = httpx2.MockTransport(receiver)
        async with DeliveryWorker(webhooks, transport=transport) as worker:
            for _ in range(count):
                await worker.run_once()
                api.clock.advance(2 * 10**9)

    asyncio.run(rounds(3))
    assert got == [event_id, event_id]
    dead = api.client.get(f"{HOOKS}/dead-letters", headers=api.auth()).json()
    [letter] = dead["data"]
    assert (letter["event_id"], letter["endpoint_id"], letter["state"]) == (
        event_id,
        created["id"],
        "dead",
    )
    assert (letter["attempts"], letter["last_status"], letter["next_attempt_at"]) == (2, 500, None)
    # Tenant B sees no dead letter and cannot replay A's event.
    b = {"Authorization": f"Bearer {api.token_b}"}
    assert api.client.get(f"{HOOKS}/dead-letters", headers=b).json()["data"] == []
    assert api.client.post(f"{HOOKS}/events/{event_id}/replay", headers=b).status_code == 404
    replay = api.client.post(f"{HOOKS}/events/{event_id}/replay", headers=api.auth())
    assert replay.json() == {"event_id": event_id, "deliveries_queued": 1}
    status["code"] = 204
    asyncio.run(rounds(1))
    assert got == [event_id] * 3
    detail = api.client.get(f"{HOOKS}/events/{event_id}", headers=api.auth()).json()
    [delivery] = detail["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
        "delivered",
        1,
        204,
    )
    assert api.client.get(f"{HOOKS}/dead-letters", headers=api.auth()).json()["data"] == []


def test_the_webhook_routes_need_their_scopes(api: Api) -> None:
    _, read_only = api.tenants.create_key(api.a.id, ["webhooks:read"])
    auth = {"Authorization": f"Bearer {read_only}"}
    assert api.client.get(f"{HOOKS}/events", headers=auth).status_code == 200
    refused = api.client.post(
        f"{HOOKS}/endpoints", json={"url": "https://a.example/", "event_types": ["*"]}, headers=auth
    )
    assert (refused.status_code, refused.json()["scope"]) == (403, "webhooks:write")


def test_the_backlog_is_a_metric(api: Api) -> None:
    _endpoint(api)
    _record(api, api.a.id)
    _record(api, api.a.id)
    assert "puhui_webhook_backlog 2.0" in api.client.get("/metrics").text


# --- the worker on the app's lifespan ---------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []  # noqa: RUF012 (one list per server below)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    handler: type[_Receiver] = type("Receiver", (_Receiver,), {"got": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler.got
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_app_delivers_on_its_lifespan_and_stops_cleanly(
    tmp_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, got = receiver
    options = ApiOptions(
        webhook_delivery_interval_s=0.02, webhooks=WebhookOptions(loopback_allowed=True)
    )
    app = None
    for api in make_api(tmp_path, options):
        app = api.client.app
        secret = _endpoint(api, url)["secret"]
        event_id = _record(api, api.a.id)
        for _ in range(1500):  # a bounded wait for the worker (~30 s at most)
            if got:
                break
            time.sleep(0.02)
        assert len(got) == 1
        headers, body = got[0]
        assert headers["Puhui-Event-Id"] == event_id
        assert verify_signature(secret, headers["Puhui-Signature"], body, now_s=START_NS // 10**9)
        assert json.loads(body)["id"] == event_id
    # The TestClient's exit ran the lifespan's shutdown: the worker returned by itself.
    task = app.state.webhook_delivery  # type: ignore[union-attr]
    assert task.done() and not task.cancelled() and task.exception() is None
