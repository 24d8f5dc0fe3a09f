"""Structured JSON logs: one line per request with its id, tenant and key; the request id
echoed in the header and in problem bodies; no secret and no personal data in any line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from puhui.api import _logging, configure_logging
from puhui.api._logging import mask, request_id_from

from .conftest import Api, make_api, post_ok

PHONE = "+8613912345678"
NATIONAL_ID = "ID-LOG-330106"


@pytest.fixture(scope="module")
def app_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, io.StringIO]]:
    buffer = io.StringIO()
    configure_logging(buffer)
    try:
        yield from ((api, buffer) for api in make_api(tmp_path_factory.mktemp("logs")))
    finally:
        configure_logging()  # back to standard error for the tests after these


@pytest.fixture
def logged(app_logs: tuple[Api, io.StringIO]) -> tuple[Api, io.StringIO]:
    """The module's app, its log emptied: each test reads only its own lines."""
    api, buffer = app_logs
    buffer.seek(0)
    buffer.truncate()
    return api, buffer


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def _requests(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in _lines(buffer) if line["event"] == "request"]


def test_one_json_line_per_request_with_who_and_the_route_template(
    logged: tuple[Api, io.StringIO],
) -> None:
    api, buffer = logged
    key, token = api.tenants.create_key(api.a.id, ["payments:write", "payments:read"], "logs")
    customer = post_ok(
        api, "/v1/payments/customers", {"phone": PHONE, "display_name": "Zhang San"}, token
    )
    post_ok(
        api,
        f"/v1/payments/customers/{customer['id']}/identity",
        {"national_id": NATIONAL_ID},
        token,
    )
    response = api.client.get(
        f"/v1/payments/customers/{customer['id']}",
        headers={**api.auth(token), "X-Request-Id": "trace-42.a_b:c"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a_b:c"
    api.client.get("/v1/payments/customers/1", headers=api.auth("pk_nonsense"))

    lines = _requests(buffer)
    assert len(lines) == 4
    register, _, get, refused = lines
    for line in lines:
        assert set(line) >= {
            "timestamp",
            "level",
            "logger",
            "request_id",
            "method",
            "route",
            "status",
            "duration_ms",
            "tenant_id",
            "key_id",
        }
        assert line["logger"] == "puhui.api.access"
        assert line["duration_ms"] >= 0
    assert (register["method"], register["route"], register["status"]) == (
        "POST",
        "/v1/payments/customers",
        201,
    )
    assert (register["tenant_id"], register["key_id"]) == (api.a.id, key.id)
    assert get["route"] == "/v1/payments/customers/{customer_id}"
    assert get["request_id"] == "trace-42.a_b:c"
    assert (refused["status"], refused["tenant_id"], refused["key_id"]) == (401, None, None)
    assert len({line["request_id"] for line in lines}) == 4

    text = buffer.getvalue()
    for secret_or_personal in (token, token.split("_")[-1], PHONE, PHONE[1:], NATIONAL_ID):
        assert secret_or_personal not in text
    assert "Zhang San" not in text


def test_a_problem_body_carries_the_request_id(logged: tuple[Api, io.StringIO]) -> None:
    api, buffer = logged
    response = api.client.get("/v1/nowhere", headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 404
    assert response.json()["request_id"] == "abc-123" == response.headers["x-request-id"]
    generated = api.client.get("/v1/nowhere")
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert generated.headers["x-request-id"].startswith("req_")
    (first, second) = _requests(buffer)
    assert first["request_id"] == "abc-123"
    assert first["route"] is None  # no route matched: the raw path is not logged
    assert second["request_id"] == generated.headers["x-request-id"]


@pytest.mark.parametrize(
    "header",
    ["", "a" * 129, "has space", "new\nline", 'quote"', "<script>", "ünïcode", "a/b"],
)
def test_an_unsafe_incoming_request_id_is_replaced(
    logged: tuple[Api, io.StringIO], header: str
) -> None:
    api, _ = logged
    raw = header.encode("utf-8")
    response = api.client.get("/healthz", headers=[(b"x-request-id", raw)])
    echoed = response.headers["x-request-id"]
    assert echoed != header and echoed.startswith("req_")
    assert request_id_from(header) != header


def test_errors_and_the_webhook_worker_log_through_the_same_setup(
    logged: tuple[Api, io.StringIO],
) -> None:
    _, buffer = logged
    logging.getLogger("puhui.webhooks").warning(
        "webhook delivery attempt failed", extra={"event_id": "evt_1", "status": 500}
    )
    try:
        raise RuntimeError(f"boom for {PHONE} with pk_{'a' * 16}_{'b' * 64}")
    except RuntimeError:
        logging.getLogger("puhui.api").exception("unhandled error in a route")
    worker, error = _lines(buffer)[-2:]
    assert (worker["logger"], worker["level"], worker["event_id"], worker["status"]) == (
        "puhui.webhooks",
        "warning",
        "evt_1",
        500,
    )
    assert error["level"] == "error" and "RuntimeError" in error["exception"]
    assert PHONE not in error["exception"] and "b" * 64 not in error["exception"]
    assert f"pk_{'a' * 16}_[secret]" in error["exception"]


def test_mask_hides_sql_parameters_tokens_and_phones() -> None:
    text = (
        "(sqlite3.IntegrityError) UNIQUE constraint failed: customers.phone\n"
        "[SQL: INSERT INTO customers (phone) VALUES (?)]\n"
        "[parameters: ('+8613800000001', 'Li Si')]\n"
        "Authorization: Bearer pk_0123456789abcdef_" + "c" * 64 + " whsec_abcDEF123\n"
        "authorization: bEaReR opaque-credential"
    )
    masked = mask(text)
    for hidden in ("+8613800000001", "Li Si", "c" * 64, "abcDEF123", "opaque-credential"):
        assert hidden not in masked
    assert "[parameters: hidden]" in masked and "UNIQUE constraint failed" in masked


def test_mask_hides_every_sql_parameter_whatever_the_values_hold() -> None:
    """The parameters were hidden up to the first ``]`` before a space: a value holding one
    (a display name ``Li] x``) ended the mask early and the parameters after it (a national
    id) were written out. Now everything to the end of the parameters' line is hidden."""
    text = (
        "(psycopg.errors.StringDataRightTruncation) value too long\n"
        "[SQL: INSERT INTO customers (display_name, national_id) VALUES (%s, %s)]\n"
        "[parameters: ('Li] x', '110101199001011234')]\n"
        "(Background on this error at: https://sqlalche.me/e/21/9h9h)"
    )
    masked = mask(text)
    assert "110101199001011234" not in masked and "Li]" not in masked
    assert "[parameters: hidden]" in masked and "(Background on this error" in masked


def _drop_other_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave ``configure_logging``'s handler as the only one (pytest's own capture handlers
    sit on the root logger while a test runs)."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_the_access_line_written_directly_is_the_line_logging_renders(
    logged: tuple[Api, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, buffer = logged
    wrote: list[bool] = []
    write = _logging._write_access_line

    def counted(*args: Any) -> bool:
        wrote.append(write(*args))
        return wrote[-1]

    monkeypatch.setattr(_logging, "_write_access_line", counted)
    # With another handler on the way to the root, the line goes through logging...
    slow = api.client.get("/v1/payments/customers/999999999", headers=api.auth())
    assert wrote == []
    # ...and with the installed handler alone, straight to its stream.
    _drop_other_handlers(monkeypatch)
    fast = api.client.get("/v1/payments/customers/999999999", headers=api.auth())
    assert wrote == [True]
    assert slow.status_code == fast.status_code == 404

    raw = [line for line in buffer.getvalue().splitlines() if '"event": "request"' in line]
    assert len(raw) == 2
    direct = json.loads(raw[1])
    assert direct["request_id"] == fast.headers["x-request-id"]
    assert direct["logger"] == "puhui.api.access" and direct["tenant_id"] == api.a.id
    assert direct["status"] == 404 and direct["duration_ms"] >= 0
    # Byte for byte the same text, but for the values that differ per request.
    per_request = re.compile(r'"(timestamp|request_id)": "[^"]*"|"duration_ms": [0-9.e-]+')
    assert per_request.sub("_", raw[0]) == per_request.sub("_", raw[1])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", direct["timestamp"])


@pytest.mark.parametrize("change", ["filter", "level", "structlog", "disable", "second"])
def test_the_access_line_goes_through_logging_when_the_setup_changed(
    logged: tuple[Api, io.StringIO], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    api, buffer = logged
    _drop_other_handlers(monkeypatch)
    access = logging.getLogger("puhui.api.access")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    if change == "filter":  # a filter on the access logger sees (and may drop) every record

        def note(record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

        monkeypatch.setattr(access, "filters", [note])
    elif change == "structlog":  # structlog reconfigured (e.g. a test's capture)
        installed = _logging._installed
        assert installed is not None
        monkeypatch.setattr(_logging, "_installed", (["other"], *installed[1:]))
    elif change == "second":  # a second handler (the host's) also gets every line
        monkeypatch.setattr(logging.getLogger(), "handlers", [Keep()])
    monkeypatch.setattr(_logging, "_write_access_line", _fail_if_called)
    level = access.level
    try:
        if change == "level":  # the access logger quietened
            access.setLevel(logging.WARNING)
        elif change == "disable":
            logging.disable(logging.INFO)
        api.client.get("/healthz")
    finally:
        logging.disable(logging.NOTSET)
        access.setLevel(level)
    lines = _requests(buffer)
    if change in ("level", "disable"):
        assert lines == []
    elif change == "structlog":
        assert len(lines) == 1  # the record still went through logging and its formatter
    else:
        assert len(lines) == 1 and len(seen) == 1


def _fail_if_called(*_args: Any) -> bool:
    raise AssertionError("the access line took the direct path")
