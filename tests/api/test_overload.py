"""Requests in flight are bounded: one more is answered 503 ``overloaded`` with
``Retry-After``, before anything is done, and the places are given back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from puhui.api import ApiOptions
from puhui.store import payments as payments_tables
from puhui.store.platform import audit_log

from .conftest import Api, make_api

CUSTOMERS = "/v1/payments/customers"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, ApiOptions(requests_in_flight_max=2))


def _count(api: Api, table: sa.Table) -> int:
    with api.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _customer(n: int) -> dict[str, str]:
    return {"phone": f"+86139000000{n:02d}", "display_name": f"C{n}"}


def test_a_request_beyond_the_limit_is_refused_and_changes_nothing(api: Api) -> None:
    app: Any = api.client.app
    context = app.state.puhui
    audited = _count(api, audit_log)
    context.admission.in_flight = 2  # both places taken
    try:
        refused = api.client.post(CUSTOMERS, json=_customer(1), headers=api.auth())
    finally:
        context.admission.in_flight = 0
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "overloaded"
    assert _count(api, payments_tables.customers) == 0  # nothing was done
    assert _count(api, audit_log) == audited  # nor audited: nothing changed
    ok = api.client.post(CUSTOMERS, json=_customer(1), headers=api.auth())
    assert ok.status_code == 201  # a place is free again
    assert context.admission.in_flight == 0


def test_places_are_taken_while_requests_run_and_given_back_after(api: Api) -> None:
    """Two requests held inside the pipeline take both places: a third is refused at once;
    once they finish (one of them with an error), every place is free again."""
    app: Any = api.client.app
    context = app.state.puhui
    original = context.principals.authenticate
    release = asyncio.Event()
    inside = 0

    async def held(token: str) -> Any:
        nonlocal inside
        inside += 1
        await release.wait()
        return await original(token)

    context.principals.authenticate = held

    async def scenario() -> list[int]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://api") as client:
            first = asyncio.create_task(
                client.post(CUSTOMERS, json=_customer(2), headers=api.auth())
            )
            second = asyncio.create_task(  # a bad key: refused with 401 once let through
                client.post(CUSTOMERS, json=_customer(3), headers=api.auth("pk_bad_x"))
            )
            while inside < 2:
                await asyncio.sleep(0.001)
            third = await client.post(CUSTOMERS, json=_customer(4), headers=api.auth())
            assert context.admission.in_flight == 2
            release.set()
            answers = [(await first).status_code, (await second).status_code]
            return [*answers, third.status_code]

    try:
        statuses = asyncio.run(scenario())
    finally:
        context.principals.authenticate = original
    assert statuses == [201, 401, 503]
    assert context.admission.in_flight == 0
    assert _count(api, payments_tables.customers) == 1


@pytest.mark.parametrize("limit", [0, -1])
def test_the_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="limits must be positive"):
        ApiOptions(requests_in_flight_max=limit)
