"""What the server holds of request bodies, all requests together, and for how long.

``BodyGuard`` (ASGI middleware, outside every route's handling, the lean way's included):

- **Bytes held at once.** Each request body is at most ``ApiOptions.request_body_bytes_max``
  (the body limit), but nothing bounded how many bodies were held at once: the server reads
  a body before it knows who sent it, so many connections sending large bodies could fill
  the memory. A request reserves its ``Content-Length`` (a streamed body: each chunk as it
  arrives) from ``ApiOptions.request_bodies_bytes_max``, shared by every request, and gives
  it back when its handling ends. A body that does not fit is answered 503 ``overloaded``
  with ``Retry-After`` before it is read; nothing is done.
- **Time to send a body.** A client that sends a request's head and then its body slowly,
  or never, held its connection and reservation without end. The body must have arrived
  within ``ApiOptions.request_body_timeout_s`` of the request's start: else reading it
  raises ``BodyTimeoutError`` (an HTTP 408 exception, which FastAPI lets out of its body
  parsing), the route's pipeline answers (and audits) 408 ``request_timeout``, and the
  connection is closed. No handler acts before its body is whole: nothing was done.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import (
    BodyTimeoutError,
    OverloadedError,
    problem_from_error,
    problem_from_exception,
)

_CLOSE: Final = (b"connection", b"close")
BODY_RETRY_AFTER_S: Final = 1
"""``Retry-After`` of a body refused for want of room (unit: seconds)."""


class BodyBudget:
    """Bytes of request bodies the server holds, within ``bytes_max``. Taken and given back
    on the event loop only (``puhui serve`` runs one): no lock."""

    __slots__ = ("bytes_max", "held")

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.held = 0

    def take(self, count: int) -> bool:
        if self.held + count > self.bytes_max:
            return False
        self.held += count
        return True

    def give(self, count: int) -> None:
        self.held -= count


class BodyGuard:
    """Bounds on the request bodies held (see the module's description)."""

    def __init__(
        self, app: ASGIApp, budget: BodyBudget, timeout_s: float, body_bytes_max: int
    ) -> None:
        self.app = app
        self.budget = budget
        self.timeout_s = timeout_s
        self.body_bytes_max = body_bytes_max
        self.check_interval_s = min(1.0, timeout_s / 4)
        # Requests whose body has not all arrived, by event loop: a check every
        # ``check_interval_s`` times them out (one timer per loop, not one per request: a
        # timer per request cost ~4 µs of the event loop).
        self._waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waiting] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = max(declared, int(value) if value.isdigit() else 0)
        # The body limit refuses a declared length over its bound without reading it (413):
        # that request is let through to it, nothing reserved.
        budget = self.budget
        if declared > self.body_bytes_max:
            declared = 0
        elif declared and not budget.take(declared):
            await self._refuse(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        body = _Body(self, receive, send, declared, loop.time() + self.timeout_s)
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = _Waiting()
        if not waiting.checking:
            waiting.checking = True
            loop.call_later(self.check_interval_s, self._check, loop, waiting)
        waiting.bodies.add(body)
        try:
            await self.app(scope, body.receive, body.send)
        except _NoRoomError:
            if body.started:
                raise
            await self._refuse(scope, receive, send)
        except BodyTimeoutError as error:
            # Out past the app's own answers: a middleware before the routes read the body
            # (the body limit reads a streamed body first).
            if body.started:
                raise
            await problem_from_exception(error)(scope, receive, body.send)
        finally:
            waiting.bodies.discard(body)
            budget.give(body.reserved)

    def _check(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting) -> None:
        """Time out the bodies past their deadline; again later while requests run."""
        now = loop.time()
        bodies = waiting.bodies
        for body in [b for b in bodies if b.deadline <= now]:
            bodies.discard(body)
            body.time_out()
        if bodies:
            loop.call_later(self.check_interval_s, self._check, loop, waiting)
        else:
            waiting.checking = False

    def timeout_error(self) -> BodyTimeoutError:
        return BodyTimeoutError(408, f"the request body did not arrive within {self.timeout_s:g} s")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        error = OverloadedError(
            "the server holds as many request bodies as it takes; retry shortly",
            retry_after_s=BODY_RETRY_AFTER_S,
        )
        headers = {"Retry-After": str(BODY_RETRY_AFTER_S), "Connection": "close"}
        await problem_from_error(error, headers=headers)(scope, receive, send)


class _Waiting:
    """The requests of one event loop the guard watches, and whether a check is due."""

    __slots__ = ("bodies", "checking")

    def __init__(self) -> None:
        self.bodies: set[_Body] = set()
        self.checking = False


class _Body:
    """One request's ``receive`` and ``send`` as the guard hands them to the app."""

    __slots__ = (
        "body_done",
        "deadline",
        "guard",
        "inner_receive",
        "inner_send",
        "receiving",
        "reserved",
        "started",
        "streamed",
        "task",
        "timed_out",
    )

    def __init__(
        self, guard: BodyGuard, receive: Receive, send: Send, declared: int, deadline: float
    ) -> None:
        self.guard = guard
        self.inner_receive = receive
        self.inner_send = send
        self.reserved = declared
        self.streamed = declared == 0  # chunks reserved as they arrive
        self.deadline = deadline
        self.task = asyncio.current_task()
        self.body_done = False
        self.timed_out = False
        self.receiving = False
        self.started = False

    def time_out(self) -> None:
        if self.body_done:
            return
        self.timed_out = True
        if self.receiving and self.task is not None:
            self.task.cancel()  # out of its wait for the body (see ``receive``)

    async def receive(self) -> Message:
        if self.body_done:
            return await self.inner_receive()
        if self.timed_out:
            raise self.guard.timeout_error()
        self.receiving = True
        try:
            message = await self.inner_receive()
        except asyncio.CancelledError:
            if not self.timed_out or self.task is None:
                raise
            if self.task.uncancel() > 0:  # cancelled by someone else too (a shutdown): go
                raise
            raise self.guard.timeout_error() from None  # ours alone: the body is late
        finally:
            self.receiving = False
        if message["type"] != "http.request":
            self.body_done = True
            return message
        if self.streamed:
            size = len(message.get("body", b""))
            if size and not self.guard.budget.take(size):
                raise _NoRoomError
            self.reserved += size
        if not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.timed_out:  # the rest of the body may still come: no next request
                message = {**message, "headers": [*message["headers"], _CLOSE]}
        await self.inner_send(message)


class _NoRoomError(Exception):
    """A streamed body's chunk did not fit in the budget (raised out of the handler)."""
