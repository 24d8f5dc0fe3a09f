"""Puhui's open API (FastAPI): ``create_app(engine, ledger)`` builds it; ``puhui serve`` runs it.

Every route under ``/v1`` authenticates a tenant's API key, checks its scope and rate limit,
honours ``Idempotency-Key`` on POST, answers errors as ``application/problem+json`` with the
stable error code, and audits state changes (``puhui.api._route``). Routers, one per domain,
are listed in ``ROUTERS``. See docs/api.md.
"""

from ._app import ROUTERS, create_app, platform_routes
from ._guards import ApiOptions
from ._ledger_routes import warm_up_readers
from ._logging import REQUEST_ID_HEADER, configure_logging
from ._problems import (
    STATUS_BY_CODE,
    InternalError,
    InvalidCursorError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    RecordsInvalidError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from ._route import Endpoint, PlatformRoute, endpoint
from ._server import CorkedHttpProtocol
from ._shared_limits import SharedRateLimiter

__all__ = [
    "REQUEST_ID_HEADER",
    "ROUTERS",
    "STATUS_BY_CODE",
    "ApiOptions",
    "CorkedHttpProtocol",
    "Endpoint",
    "InternalError",
    "InvalidCursorError",
    "MethodNotAllowedError",
    "NotFoundError",
    "OverloadedError",
    "PlatformRoute",
    "RateLimitedError",
    "RecordsInvalidError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "SharedRateLimiter",
    "UnsupportedMediaTypeError",
    "configure_logging",
    "create_app",
    "endpoint",
    "platform_routes",
    "warm_up_readers",
]
