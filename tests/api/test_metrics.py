"""Prometheus metrics at /metrics: counts and latencies by route template, batch sizes,
queue depths and the webhook backlog."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import pytest

from puhui.platform import AuditLog

from .conftest import Api, account


def test_metrics_count_requests_by_route_and_measure_batches(api: Api) -> None:
    auth = api.auth()
    body = {"accounts": [account(1), account(2), account(3)]}
    api.client.post("/v1/ledger/accounts", json=body, headers=auth)
    api.client.post("/v1/ledger/accounts", json={"accounts": "no"}, headers=auth)
    api.client.get("/v1/ledger/accounts/1/transfers", headers=auth)
    api.client.get("/v1/ledger/accounts/1/transfers")  # no key
    response = api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    expected = [
        'puhui_api_requests_total{method="POST",route="/v1/ledger/accounts",status="200"} 1.0',
        'puhui_api_requests_total{method="POST",route="/v1/ledger/accounts",status="422"} 1.0',
        'puhui_api_requests_total{method="GET",route="/v1/ledger/accounts/{account_id}/transfers"'
        ',status="200"} 1.0',
        'puhui_api_requests_total{method="GET",route="/v1/ledger/accounts/{account_id}/transfers"'
        ',status="401"} 1.0',
        'puhui_api_ledger_batch_events_sum{operation="create_accounts"} 3.0',
        'puhui_api_ledger_batch_seconds_count{operation="create_accounts"} 1.0',
        'puhui_api_request_seconds_count{method="POST",route="/v1/ledger/accounts"} 2.0',
    ]
    for line in expected:
        assert line in text, line
    assert "pk_" not in text and "/v1/ledger/accounts/1/" not in text  # templates only


def test_metrics_show_queue_depths_while_requests_wait(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def depth(queue: str) -> float:
        text = api.client.get("/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith(f'puhui_api_queue_depth{{queue="{queue}"}}')
        )
        return float(line.rsplit(" ", 1)[1])

    for queue in ("idempotency_claims", "idempotency_finishes", "audit", "payments"):
        assert depth(queue) == 0.0
    # Hold the audit log's writes: state-changing requests wait on its queue meanwhile.
    release = threading.Event()
    entered = threading.Event()
    real_append_many = AuditLog.append_many

    def held(self: AuditLog, records: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real_append_many(self, records)

    monkeypatch.setattr(AuditLog, "append_many", held)
    body = {"accounts": [account(7)]}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        posts = [
            pool.submit(api.client.post, "/v1/ledger/accounts", json=body, headers=api.auth())
            for _ in range(3)
        ]
        assert entered.wait(30)
        for _ in range(300):  # until all three wait (the first is in the held write)
            if depth("audit") == 3.0:
                break
            time.sleep(0.01)
        assert depth("audit") == 3.0
        release.set()
        assert [p.result().status_code for p in posts] == [200] * 3
    assert depth("audit") == 0.0
    text = api.client.get("/metrics").text
    assert 'puhui_api_ledger_batch_events_count{operation="create_accounts"} 3.0' in text
    assert "puhui_webhook_backlog 0.0" in text


def test_metrics_are_rendered_off_the_event_loop(api: Api) -> None:
    """The webhook backlog gauge counts rows in SQL: the page is rendered in a worker
    thread, so a slow count never stops the loop's other requests."""
    app: Any = api.client.app
    webhooks = app.state.puhui.webhooks
    seen: list[str] = []
    count = webhooks.backlog

    def backlog() -> int:
        seen.append(threading.current_thread().name)
        return int(count())

    app.state.puhui.metrics.webhook_backlog.set_function(backlog)
    assert api.client.get("/metrics").status_code == 200
    portal = api.client.portal
    assert portal is not None  # the client runs the app's loop in a thread of its own
    loop_thread = portal.call(lambda: threading.current_thread().name)
    assert seen and loop_thread not in seen
