"""The API against its own OpenAPI document (schemathesis, a bounded number of examples per
route): no 5xx, and every response (status, content type, body) matches the schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from puhui.api import ROUTERS
from puhui.api._app import API_TITLE

from .conftest import Api, make_api

EXAMPLES_PER_ROUTE = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)


def _schema_app() -> FastAPI:
    """The routes without a store or ledger behind them: only for reading the schema, which
    is the served app's (checked below); every case is sent to a real app."""
    app = FastAPI(title=API_TITLE)
    for router in ROUTERS:
        app.include_router(router)
    return app


SCHEMA_APP = _schema_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP)


def test_the_schema_tested_is_the_one_served(world: Api) -> None:
    served = world.client.get("/openapi.json").json()
    assert served["paths"] == SCHEMA_APP.openapi()["paths"]
    assert served["components"] == SCHEMA_APP.openapi()["components"]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_matches_its_schema(case: Any, world: Api) -> None:
    case.call_and_validate(headers=world.auth(), checks=CHECKS, app=world.client.app)
