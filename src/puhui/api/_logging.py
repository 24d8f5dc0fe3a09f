"""Structured JSON logs (structlog) with request ids.

``configure_logging`` is called once by the composition root (``puhui serve``, or
``create_app`` when nothing configured logging before it): every ``puhui.*`` logger, the
stdlib ones of the webhook worker and of error reports included, then writes one JSON object
per line with the same fields (``timestamp``, ``level``, ``logger``, ``event`` and the
request's ``request_id`` when there is one).

``RequestLogMiddleware`` gives each request an id (the caller's ``X-Request-Id`` when it is
safe to echo, else a fresh one), echoes it in the ``X-Request-Id`` response header, makes it
available to problem+json bodies (``current_request_id``), and writes one ``request`` line
when the response is sent: method, route template, status, duration, tenant id and key id.
Never the path (it carries ids), the query, headers, bodies, the key's secret or any
personal data. Strings that look like secrets (API key tokens, webhook signing secrets) or
phone numbers are masked in every line, tracebacks included, as a second guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER: Final = "X-Request-Id"
request_id_chars_max: Final = 128
"""Longest incoming ``X-Request-Id`` echoed (unit: characters); a longer one is replaced."""
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{request_id_chars_max}}}")

ROOT_LOGGER: Final = "puhui"
ACCESS_LOGGER: Final = "puhui.api.access"


@dataclass(slots=True)
class RequestLogContext:
    """What one request's log line says; the route pipeline fills in who called."""

    request_id: str
    tenant_id: int | None = None
    key_id: str | None = None


_current: contextvars.ContextVar[RequestLogContext | None] = contextvars.ContextVar(
    "puhui_request", default=None
)


def current_request_id() -> str | None:
    """The id of the request being handled (None outside a request)."""
    context = _current.get()
    return None if context is None else context.request_id


def note_principal(tenant_id: int, key_id: str) -> None:
    """Record who is calling, for the request's log line (the key's id, never its secret)."""
    context = _current.get()
    if context is not None:
        context.tenant_id = tenant_id
        context.key_id = key_id


def request_id_from(header: str | None) -> str:
    """The caller's request id if it is 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``
    (safe to echo in a header and a log), else a fresh random one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return "req_" + secrets.token_hex(16)


# --- masking ----------------------------------------------------------------------------------

# (a text every match contains, in lower case, checked first as it is cheap; pattern; replacement)
_SECRETS = (
    ("pk_", re.compile(r"\bpk_([0-9a-f]{16})_[0-9a-f]{64}\b"), r"pk_\1_[secret]"),
    ("whsec_", re.compile(r"\bwhsec_[0-9A-Za-z_-]+"), "whsec_[secret]"),
    ("bearer", re.compile(r"(?i)(bearer\s+)\S+"), r"\1[secret]"),
    ("+", re.compile(r"\+\d{6,15}\b"), "[phone]"),
    # To the end of the line: SQLAlchemy writes the parameters' repr on one line (newlines
    # in values escaped), and a value may hold "] " itself.
    ("[parameters: ", re.compile(r"\[parameters: [^\n]*"), "[parameters: hidden]"),
)


def mask(text: str) -> str:
    """``text`` with API key tokens, webhook secrets, bearer credentials, phone numbers and
    SQL statement parameters replaced by placeholders."""
    lowered = text.lower()
    for hint, pattern, replacement in _SECRETS:
        if hint in lowered:
            text = pattern.sub(replacement, text)
    return text


def _mask_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if event_dict.get("logger") == ACCESS_LOGGER:
        return event_dict  # only fields the middleware builds (checked request id, template)
    for name, value in event_dict.items():
        if isinstance(value, str):
            event_dict[name] = mask(value)
    return event_dict


def _add_request_id(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = current_request_id()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


_SHARED: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _add_request_id,
]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (as ``logging.lastResort`` does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_HANDLER_MARK: Final = "_puhui_json_handler"

_installed: tuple[list[Any], logging.Handler, logging.Formatter] | None = None
"""What ``configure_logging`` set up last: structlog's processors, the handler and its
formatter (the access line's direct path runs only while all three are still in place)."""


def configure_logging(stream: TextIO | None = None, *, level: int = logging.INFO) -> None:
    """Send every ``puhui.*`` log record, as one JSON object per line, to ``stream``
    (default: the process's standard error). Calling it again replaces the handler it
    installed before (nothing else is touched: other libraries' loggers keep theirs; records
    still propagate to the root logger, which has no handler unless the host adds one)."""
    global _installed
    processors = [*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=processors,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],  # stdlib ``extra=``
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _mask_values,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger(ROOT_LOGGER)
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_MARK, False):
            logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    _installed = (processors, handler, formatter)


def logging_configured() -> bool:
    return any(getattr(h, _HANDLER_MARK, False) for h in logging.getLogger(ROOT_LOGGER).handlers)


def _route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestLogMiddleware:
    """Request ids and one log line per request (see the module's description)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = structlog.stdlib.get_logger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        context = RequestLogContext(request_id_from(incoming))
        token = _current.set(context)
        started = time.perf_counter()
        status = 500
        header = (REQUEST_ID_HEADER.lower().encode(), context.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = {
                "method": scope.get("method"),
                "route": _route_template(scope),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "tenant_id": context.tenant_id,
                "key_id": context.key_id,
            }
            handler = _sole_handler()
            if handler is None or not _write_access_line(handler, context.request_id, fields):
                self.log.info("request", **fields)
            _current.reset(token)


# --- the access line's direct path -------------------------------------------------------------


def _sole_handler() -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """The handler ``configure_logging`` installed, when it is the only place an INFO record
    of the access logger goes (no other handler on the way to the root, no filter, nothing
    disabled); else None, and the line goes through logging as any other."""
    installed = _installed
    if installed is None or logging.root.manager.disable >= logging.INFO:
        return None
    processors, ours, formatter = installed
    if structlog.get_config()["processors"] is not processors or ours.formatter is not formatter:
        return None
    access = logging.getLogger(ACCESS_LOGGER)
    if not access.isEnabledFor(logging.INFO):
        return None
    found: logging.StreamHandler | None = None  # type: ignore[type-arg]
    logger: logging.Logger | None = access
    while logger is not None:
        if logger.filters or logger.disabled:
            return None
        for handler in logger.handlers:
            if (
                found is not None
                or handler is not ours
                or handler.filters
                or handler.level > logging.INFO
                or not isinstance(handler, logging.StreamHandler)
            ):
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    return found


def _write_access_line(
    handler: logging.StreamHandler,  # type: ignore[type-arg]
    request_id: str,
    fields: dict[str, Any],
) -> bool:
    """Write the request's line straight to ``handler``'s stream: the same JSON object, byte
    for byte, that the structlog and logging chain renders (the processors of
    ``configure_logging`` in order; the access line's fields need no masking) without a
    log record, its caller lookup and the formatter's second pass (~60 % of the line's CPU).
    False if the write failed: the caller then logs the line the ordinary way."""
    rendered = {
        **fields,
        "event": "request",
        "level": "info",
        "logger": ACCESS_LOGGER,
        "timestamp": datetime.now(tz=UTC).isoformat().replace("+00:00", "Z"),
        "request_id": request_id,
    }
    line = json.dumps(rendered, sort_keys=True) + handler.terminator
    try:
        with handler.lock or contextlib.nullcontext():
            handler.stream.write(line)
            handler.flush()
    except Exception:
        return False
    return True
