"""Prometheus metrics at /metrics: counts and latencies by route template, batch sizes."""

from __future__ import annotations

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
