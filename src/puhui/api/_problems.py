"""Errors as ``application/problem+json`` (RFC 9457), carrying Puhui's stable error code.

``STATUS_BY_CODE`` is the one table from error codes to HTTP statuses. A code not in it falls
back by class: bad input (``InvalidInputError``) is 422, any other ``PuhuiError`` (a business
rule refused the request) 409. Anything that is not a ``PuhuiError`` is a bug: it is logged
with its traceback and answered 500 ``internal_error`` without details.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from puhui import limits
from puhui.errors import InvalidInputError, PuhuiError

from ._logging import current_request_id

PROBLEM_JSON: Final = "application/problem+json"
TYPE_BASE: Final = "https://puhui.dev/errors/"
"""A problem's ``type`` is this plus its code (the codes are documented in docs/errors.md)."""

log = logging.getLogger("puhui.api")


class NotFoundError(PuhuiError):
    """No such route (or no such resource for this tenant)."""

    code = "not_found"


class MethodNotAllowedError(PuhuiError):
    code = "method_not_allowed"


class RequestTooLargeError(InvalidInputError):
    """The request body is larger than the API accepts."""

    code = "request_too_large"


class RateLimitedError(PuhuiError):
    """The key has used up its request budget for now; retry after ``Retry-After`` seconds."""

    code = "rate_limited"


class OverloadedError(PuhuiError):
    """The server has as many requests in flight as it takes; retry after ``Retry-After``
    seconds. Nothing was done."""

    code = "overloaded"


class RequestTimeoutError(PuhuiError):
    """The request's body did not arrive within ``ApiOptions.request_body_timeout_s``; the
    connection is closed. Nothing was done."""

    code = "request_timeout"


class BodyTimeoutError(StarletteHTTPException):
    """Raised from a request's ``receive`` when its body is late (``puhui.api._bodies``):
    FastAPI lets an ``HTTPException`` out of its body parsing, so the route's pipeline
    answers it, as 408 ``request_timeout`` with the connection closed."""


class InvalidCursorError(InvalidInputError):
    """A pagination cursor that this API did not hand out (or for another list)."""

    code = "cursor_invalid"


class UnsupportedMediaTypeError(InvalidInputError):
    """A body in a ``Content-Type`` the route does not take (the binary batch routes)."""

    code = "media_type_unsupported"


class RecordsInvalidError(InvalidInputError):
    """A binary batch body that is not a whole number of 128-byte records, or a record that
    sets a field only the ledger may set."""

    code = "records_invalid"


class InternalError(PuhuiError):
    """A fault of the server (a bug); nothing about it is shown to the client."""

    code = "internal_error"


STATUS_BY_CODE: Final[dict[str, int]] = {
    # authentication, authorisation, HTTP
    "api_key_invalid": 401,
    "scope_missing": 403,
    "not_found": 404,
    "tenant_not_found": 404,
    "api_key_not_found": 404,
    "webhook_endpoint_not_found": 404,
    "webhook_event_not_found": 404,
    "method_not_allowed": 405,
    "request_too_large": 413,
    "media_type_unsupported": 415,
    "rate_limited": 429,
    "overloaded": 503,
    "request_timeout": 408,
    # request validation
    "invalid_input": 422,
    "records_invalid": 422,
    "cursor_invalid": 400,
    "idempotency_key_invalid": 400,
    # idempotency
    "idempotency_key_reused": 409,
    "idempotency_request_in_progress": 409,
    # the ledger's own faults: the service is unavailable, the request may be retried
    "ledger_closed": 503,
    "ledger_failed": 503,
    "ledger_locked": 503,
    "journal_unavailable": 503,
    "ledger_unavailable": 503,  # the ledger server (``puhui serve --workers``) is gone
    # the risk engine's server (``puhui serve --workers``) is gone: nothing moved, retry
    "risk_unavailable": 503,
    "internal_error": 500,
    # payments: bad input
    "invalid_payload": 422,
    "amount_out_of_range": 422,
    "invalid_phone": 422,
    "unknown_currency": 422,
    "payments_error": 409,
    # payments: no such object (or another tenant's, which is the same to the caller)
    "customer_not_found": 404,
    "merchant_not_found": 404,
    "card_not_found": 404,
    "operation_not_found": 404,
    "order_not_found": 404,
    "refund_not_found": 404,
    "biller_not_found": 404,
    "bill_binding_not_found": 404,
    "settlement_not_found": 404,
    # risk
    "case_not_found": 404,
    # payments: a rule refused the request in the state things are in
    "phone_taken": 409,
    "identity_taken": 409,
    "account_frozen": 409,
    "same_party": 422,
    "kyc_limit_exceeded": 409,
    "kyc_level_invalid": 409,
    "insufficient_funds": 409,
    "payment_code_invalid": 409,
    "operation_state_invalid": 409,
    "not_order_party": 403,
    "order_closed": 409,
    "order_finished": 409,
    "order_not_paid": 409,
    "order_already_paid": 409,
    "order_not_shipped": 409,
    "order_already_shipped": 409,
    "refund_open": 409,
    "refund_exceeds_escrow": 409,
    "refund_state_invalid": 409,
    "extension_limit_exceeded": 409,
    "nothing_due": 409,
    "bill_already_paid": 409,
    "bill_amount_changed": 409,
    "receipt_not_ready": 409,
    # payments: a partner (bank, biller) did not answer; the operation is finished later
    "bank_timeout": 504,
    "biller_timeout": 504,
    "store_ledger_mismatch": 500,
    "statement_invalid": 422,
}


def status_for(error: PuhuiError) -> int:
    status = STATUS_BY_CODE.get(error.code)
    if status is not None:
        return status
    return 422 if isinstance(error, InvalidInputError) else 409


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _safe_details(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, str | int | bool) or v is None}


def problem_from_error(error: PuhuiError, headers: dict[str, str] | None = None) -> Response:
    extra = _safe_details(error.details)
    return problem(status_for(error), error.code, error.message, extra=extra, headers=headers)


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input (which may be large or personal)."""
    out = []
    for item in error.errors()[:20]:
        out.append(
            {
                "loc": [str(part) for part in item.get("loc", ())],
                "type": str(item.get("type", "")),
                "msg": str(item.get("msg", ""))[:200],
            }
        )
    return out


BATCH_FIELDS = frozenset({"accounts", "transfers", "ids"})


def _batch_too_long(errors: list[dict[str, Any]]) -> str | None:
    """The batch field a JSON batch overfills, as the binary routes' ``batch_too_large`` says.

    A batch body (``accounts``, ``transfers``, ``ids``) longer than a batch may hold is the same
    mistake in JSON as in the binary form; it gets the same code.
    """
    for item in errors:
        loc = item["loc"]
        if (
            item["type"] == "too_long"
            and len(loc) == 2
            and loc[0] == "body"
            and loc[1] in BATCH_FIELDS
        ):
            return str(loc[1])
    return None


def problem_from_exception(exc: BaseException) -> Response:
    """The problem response for anything a route raised."""
    if isinstance(exc, PuhuiError):
        return problem_from_error(exc)
    if isinstance(exc, RequestValidationError):
        errors = _validation_errors(exc)
        too_long = _batch_too_long(errors)
        if too_long is not None:
            return problem(
                422,
                "batch_too_large",
                f"more than {limits.batch_events_max} {too_long} in one batch",
                extra={"errors": errors},
            )
        return problem(
            422,
            "invalid_input",
            "the request does not match the schema",
            extra={"errors": errors},
        )
    if isinstance(exc, BodyTimeoutError):
        return problem_from_error(RequestTimeoutError(str(exc.detail)))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return problem_from_error(NotFoundError("no such resource"))
        if exc.status_code == 405:
            return problem_from_error(MethodNotAllowedError("method not allowed on this route"))
        headers = dict(exc.headers) if exc.headers else None
        code = "invalid_input" if 400 <= exc.status_code < 500 else "internal_error"
        return problem(exc.status_code, code, str(exc.detail)[:200], headers=headers)
    log.error("unhandled error in a route", exc_info=exc)
    return problem_from_error(InternalError("internal error"))
