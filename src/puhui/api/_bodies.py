"""The API's limits on request bodies, all in one place, before any route is known.

``BodyGuard`` (ASGI middleware, just inside the request log, outside every route's handling,
the lean way's included) reads a request's ``Content-Length`` once and enforces:

- **The size of one body.** A body is at most ``ApiOptions.request_body_bytes_max``: a
  ``Content-Length`` over it is answered 413 ``request_too_large`` before the body is read;
  a streamed body (no ``Content-Length``) is read here first, before the app sees it, and
  answered 413 as soon as it passes the limit (then handed on whole: the app never holds more
  than the limit of it).
- **Bytes held at once.** Nothing else bounded how many bodies were held at once: the server
  reads a body before it knows who sent it, so many connections sending large bodies could
  fill the memory. A request reserves its ``Content-Length`` (a streamed body: each chunk as
  it arrives) from ``ApiOptions.request_bodies_bytes_max``, shared by every request, and
  gives it back when its handling ends. A body that does not fit is answered 503
  ``overloaded`` with ``Retry-After`` before it is read (a streamed one: as soon as a chunk
  does not fit, which comes before its size is checked); nothing is done.
- **Time to send a body.** A client that sends a request's head and then its body slowly,
  or never, held its connection and reservation without end. The body must have arrived
  within ``ApiOptions.request_body_timeout_s`` of the request's start: else reading it
  raises ``BodyTimeoutError`` (an HTTP 408 exception, which FastAPI lets out of its body
  parsing), the route's pipeline answers (and audits) 408 ``request_timeout``, and the
  connection is closed; a streamed body, read here, is answered 408 here. No handler acts
  before its body is whole: nothing was done. A request is watched until its body has
  arrived, not until its answer: the periodic check looks only at requests still receiving.

The guard's own answers (413, 503, and the 408 of a streamed body) are given before any
route is known: they are counted in the request metrics under the route ``unrouted``
(``_metrics.UNROUTED``), not audited. What the guard read of ``Content-Length`` is left in
the scope (``BODY_LENGTH``): the lean way reads it there rather than parsing it again.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._metrics import ApiMetrics
from ._problems import (
    BodyTimeoutError,
    OverloadedError,
    RequestTooLargeError,
    problem_from_error,
    problem_from_exception,
)

_CLOSE: Final = (b"connection", b"close")
BODY_RETRY_AFTER_S: Final = 1
"""``Retry-After`` of a body refused for want of room (unit: seconds)."""
BODY_LENGTH: Final = "puhui.body_length"
"""The scope's key for the request's ``Content-Length`` as the guard read it (the largest
one given, within the body limit), or None: the body was streamed, read and counted by the
guard before the app saw it."""


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
    """The limits on request bodies (see the module's description)."""

    def __init__(
        self,
        app: ASGIApp,
        budget: BodyBudget,
        timeout_s: float,
        body_bytes_max: int,
        metrics: ApiMetrics | None = None,
    ) -> None:
        """``metrics`` counts the guard's own answers (None: not counted)."""
        self.app = app
        self.budget = budget
        self.timeout_s = timeout_s
        self.body_bytes_max = body_bytes_max
        self.metrics = metrics
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
        # The largest Content-Length given; one that is not digits makes the body streamed
        # (the server refuses such heads itself: this is only the safe reading of one).
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    length = None
                    break
                given = int(value)
                if length is None or given > length:
                    length = given
        budget = self.budget
        if length is not None:
            if length > self.body_bytes_max:
                await self._answer(scope, receive, send, self._too_large())
                return
            if length and not budget.take(length):
                await self._answer(scope, receive, send, _no_room(), _REFUSED_HEADERS)
                return
        scope[BODY_LENGTH] = length
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = _Waiting()
        body = _Body(self, receive, send, length, loop.time() + self.timeout_s, waiting.bodies)
        if not waiting.checking:
            waiting.checking = True
            loop.call_later(self.check_interval_s, self._check, loop, waiting)
        waiting.bodies.add(body)
        try:
            app_receive: Receive = body.receive
            if length is None:
                try:
                    app_receive = await body.read_whole()
                except _NoRoomError:
                    await self._answer(scope, receive, send, _no_room(), _REFUSED_HEADERS)
                    return
                except _TooLargeError:
                    await self._answer(scope, receive, send, self._too_large())
                    return
            await self.app(scope, app_receive, body.send)
        except BodyTimeoutError as error:
            # Out past the app's own answers: the guard's own reading of a streamed body
            # (or a middleware before the routes that read the body).
            if body.started:
                raise
            response = problem_from_exception(error)
            if self.metrics is not None:
                self.metrics.count_unrouted(scope["method"], response.status_code)
            await response(scope, receive, body.send)
        finally:
            if not body.body_done:
                waiting.bodies.discard(body)
            budget.give(body.reserved)

    def _check(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting) -> None:
        """Time out the bodies past their deadline; again later while bodies are awaited."""
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

    def _too_large(self) -> RequestTooLargeError:
        # Built only for a refusal: an error per request (with its details) was a cost of
        # every request that fits.
        limit = self.body_bytes_max
        return RequestTooLargeError(f"request body over {limit} bytes", bytes_max=limit)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        error: RequestTooLargeError | OverloadedError,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``error`` before any route is known, and count it."""
        response = problem_from_error(error, headers=headers)
        if self.metrics is not None:
            self.metrics.count_unrouted(scope["method"], response.status_code)
        await response(scope, receive, send)


_REFUSED_HEADERS: Final = {"Retry-After": str(BODY_RETRY_AFTER_S), "Connection": "close"}


def _no_room() -> OverloadedError:
    return OverloadedError(
        "the server holds as many request bodies as it takes; retry shortly",
        retry_after_s=BODY_RETRY_AFTER_S,
    )


class _Waiting:
    """The requests of one event loop whose bodies the guard awaits, and whether a check
    is due."""

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
        "received",
        "receiving",
        "reserved",
        "started",
        "streamed",
        "task",
        "timed_out",
        "watched",
    )

    def __init__(
        self,
        guard: BodyGuard,
        receive: Receive,
        send: Send,
        length: int | None,
        deadline: float,
        watched: set[_Body],
    ) -> None:
        self.guard = guard
        self.inner_receive = receive
        self.inner_send = send
        self.streamed = length is None  # chunks reserved and counted as they arrive
        self.reserved = length or 0
        self.received = 0
        self.deadline = deadline
        self.watched = watched
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
            self._done()
            return message
        if self.streamed:
            size = len(message.get("body", b""))
            if size:
                guard = self.guard
                if not guard.budget.take(size):  # the room first, then the size (as before)
                    raise _NoRoomError
                self.reserved += size
                self.received += size
                if self.received > guard.body_bytes_max:
                    raise _TooLargeError
        if not message.get("more_body", False):
            self._done()
        return message

    def _done(self) -> None:
        """The body has all arrived (or the client left): no longer watched for time."""
        self.body_done = True
        self.watched.discard(self)

    async def read_whole(self) -> Receive:
        """Read a streamed body to its end (raising as ``receive`` does), and return the
        ``receive`` that hands it to the app: the whole body in one message, then the
        server's own messages. A client that left mid-body: what came, then its leaving."""
        chunks: list[bytes] = []
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                partial = {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                return replayed([partial, message], self.receive)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        whole = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = {"type": "http.request", "body": whole, "more_body": False}
        return replayed([message], self.receive)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.timed_out:  # the rest of the body may still come: no next request
                message = {**message, "headers": [*message["headers"], _CLOSE]}
        await self.inner_send(message)


def replayed(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` first (taking them from the list), then
    ``receive``'s own: a body read ahead, handed on as the server would have."""

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


class _NoRoomError(Exception):
    """A streamed body's chunk did not fit in the budget (raised out of its reading)."""


class _TooLargeError(Exception):
    """A streamed body passed the body limit (raised out of its reading)."""
