"""The limits on request bodies (``puhui.api._bodies``), over a real socket (uvicorn): a body
over the limit is refused 413 ``request_too_large`` — a declared length before the body is
read, a streamed body as soon as it passes the limit; request bodies held at once are
bounded, all requests together, and a body must arrive in time: a client that sends its head
and then its body slowly or never gets 408 ``request_timeout`` and its connection closed; a
body that does not fit in what the others hold is refused 503 ``overloaded`` before it is
read. Nothing is done in any case, and the room is given back. The guard's own answers are
counted in the request metrics (route ``unrouted``), and a request is watched for time only
until its body has arrived."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from starlette.types import Message

import puhui.ledger as tb
from puhui.api import ApiOptions, create_app
from puhui.api._bodies import BodyBudget, BodyGuard
from puhui.clock import ManualClock
from puhui.platform import Tenants
from puhui.store import create_engine, migrate
from puhui.store import payments as payments_tables
from puhui.store.platform import audit_log

from .conftest import ALL_SCOPES, START_NS, on_loopback

CUSTOMERS = "/v1/payments/customers"
TIMEOUT_S = 0.5
BODY_MAX = 4096


@dataclass
class Served:
    port: int
    token: str
    engine: sa.Engine
    app: Any

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def head(self, length: int, path: str = CUSTOMERS) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()

    def chunked_head(self) -> bytes:
        return (
            f"POST {CUSTOMERS} HTTP/1.1\r\nHost: api\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def wait_for_room(self) -> None:
        """Until every request's reservation is given back (they end after their answer)."""
        deadline = time.monotonic() + TIMEOUT_S + 5
        while self.app.state.body_budget.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.app.state.body_budget.held == 0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    options = ApiOptions(
        request_body_bytes_max=BODY_MAX,
        request_bodies_bytes_max=2 * BODY_MAX,
        request_body_timeout_s=TIMEOUT_S,
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'puhui.sqlite'}")
    migrate(engine)
    clock = ManualClock(START_NS)
    tenants = Tenants(engine, clock=clock)
    tenant = tenants.create("Bank A", "bank")
    _, token = tenants.create_key(tenant.id, ALL_SCOPES)
    with tb.open(str(tmp_path / "ledger")) as ledger:
        app = create_app(engine, ledger, clock=clock, options=options)
        with on_loopback(app) as port:
            yield Served(port, token, engine, app)
    engine.dispose()


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one answer, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _one_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the next answer (the connection may stay open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed mid-answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _customer(n: int) -> bytes:
    return b'{"phone": "+861390000%04d", "display_name": "C%d"}' % (n, n)


def test_a_body_that_never_arrives_is_answered_408_and_the_connection_closed(
    served: Served,
) -> None:
    audited = served.count(audit_log)
    body = _customer(1)
    for sent in (b"", body[:10]):  # nothing of the body, then part of it
        with served.connect() as sock:
            started = time.monotonic()
            sock.sendall(served.head(len(body)) + sent)
            status, headers, answer = _answer(sock)  # returns once the server closes
            waited = time.monotonic() - started
        assert status == 408, answer
        assert headers["content-type"].startswith("application/problem+json")
        assert headers["connection"] == "close"
        assert b'"code":"request_timeout"' in answer
        assert TIMEOUT_S * 0.9 <= waited < TIMEOUT_S + 5
    assert served.count(payments_tables.customers) == 0  # nothing done
    with served.engine.connect() as conn:  # the attempts are audited with what they got
        statuses = conn.execute(sa.select(audit_log.c.status).order_by(audit_log.c.seq)).all()
    assert [s for (s,) in statuses[audited:]] == [408, 408]
    assert served.app.state.body_budget.held == 0  # the room is given back


def test_a_late_body_on_the_lean_way_is_answered_as_the_ordinary_way_answers_it(
    served: Served,
) -> None:
    """The single-payment routes read their bodies themselves (``_lean_routes``): a late
    body there goes the ordinary way, which checks the key first (a bad key: 401), then
    answers 408 and audits it under the route."""
    path = "/v1/payments/customers/1/transfers"
    body = b'{"amount": "100", "currency": "CNY", "payee": {"customer_id": 2}}'
    audited = served.count(audit_log)
    with served.connect() as sock:
        sock.sendall(served.head(len(body), path) + body[:5])
        status, headers, answer = _answer(sock)
    assert status == 408, answer
    assert headers["connection"] == "close"
    assert b'"code":"request_timeout"' in answer
    with served.engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_log.c.route, audit_log.c.status).order_by(audit_log.c.seq)
        ).all()
    assert [tuple(r) for r in rows[audited:]] == [
        ("/v1/payments/customers/{customer_id}/transfers", 408)
    ]
    bad_key = served.head(len(body), path).replace(served.token.encode(), b"pk_0_nope")
    with served.connect() as sock:
        sock.sendall(bad_key + body[:5])
        status, _, answer = _answer(sock)
    assert status == 401, answer


def test_a_body_that_does_not_fit_is_refused_before_it_is_read(served: Served) -> None:
    body = _customer(2)
    with served.connect() as holder:
        holder.sendall(served.head(BODY_MAX + 0) + b"{")  # holds a whole body's room...
        with served.connect() as other:
            other.sendall(served.head(BODY_MAX))  # ...and this one takes the rest
            time.sleep(0.1)
            with served.connect() as refused:
                refused.sendall(served.head(len(body)))  # no room: refused unread
                status, headers, answer = _answer(refused)
            assert status == 503, answer
            assert headers["retry-after"] == "1"
            assert b'"code":"overloaded"' in answer
            assert served.count(payments_tables.customers) == 0
    # The holders timed out (or left): the room is back, and a body is taken again.
    deadline = time.monotonic() + TIMEOUT_S + 5
    while served.app.state.body_budget.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.app.state.body_budget.held == 0
    with httpx2.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        created = client.post(
            CUSTOMERS,
            content=body,
            headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
        )
    assert created.status_code == 201, created.text
    assert served.count(payments_tables.customers) == 1


def test_a_streamed_body_is_counted_as_it_arrives(served: Served) -> None:
    """Without ``Content-Length`` the chunks are reserved as they come: one that would pass
    the room left is refused 503 (the body limit alone would have taken it)."""
    with served.connect() as holder:
        holder.sendall(served.head(BODY_MAX + 0) + b"{")  # half the room, held
        time.sleep(0.1)
        with served.connect() as streamed:
            streamed.sendall(
                (
                    f"POST {CUSTOMERS} HTTP/1.1\r\nHost: api\r\n"
                    f"Authorization: Bearer {served.token}\r\n"
                    "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                ).encode()
            )
            chunk = b" " * (BODY_MAX - 10)
            for _ in range(2):  # the second passes the room left
                streamed.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            status, _, answer = _answer(streamed)
        assert status == 503, answer
        assert b'"code":"overloaded"' in answer
    assert served.count(payments_tables.customers) == 0


def test_options_hold_one_largest_body_at_least() -> None:
    with pytest.raises(ValueError, match="one largest body"):
        ApiOptions(request_body_bytes_max=1024, request_bodies_bytes_max=1023)
    with pytest.raises(ValueError, match="timeout"):
        ApiOptions(request_body_timeout_s=0)


def test_a_declared_length_over_the_limit_is_refused_413_before_the_body_is_read(
    served: Served,
) -> None:
    audited = served.count(audit_log)
    with served.connect() as sock:
        sock.sendall(served.head(BODY_MAX + 1))  # the head alone: no byte of the body
        status, headers, answer = _one_answer(sock)
    assert status == 413, answer
    assert headers["content-type"].startswith("application/problem+json")
    assert "retry-after" not in headers and "connection" not in headers
    problem = json.loads(answer)
    assert problem["code"] == "request_too_large"
    assert problem["bytes_max"] == BODY_MAX
    assert problem["detail"] == f"request body over {BODY_MAX} bytes"
    assert problem["request_id"] == headers["x-request-id"]
    assert served.count(audit_log) == audited  # answered before any route: not audited
    served.wait_for_room()
    # Just within the limit is taken (and read).
    body = _customer(3).ljust(BODY_MAX)
    with served.connect() as sock:
        sock.sendall(served.head(len(body)) + body)
        status, _, answer = _one_answer(sock)
    assert status == 201, answer


def test_a_streamed_body_is_refused_413_as_soon_as_it_passes_the_limit(served: Served) -> None:
    """Without ``Content-Length`` the guard reads the body first and counts it: the chunk
    that passes the limit is answered at once, while the rest of the body is still to come
    (the end of the body is never sent here)."""
    audited = served.count(audit_log)
    with served.connect() as sock:
        sock.sendall(served.chunked_head())
        sock.sendall(_chunk(b" " * (BODY_MAX - 10)))  # within the limit: read, nothing said
        sock.sendall(_chunk(b" " * 20))  # passes it
        status, headers, answer = _one_answer(sock)
    assert status == 413, answer
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(answer)
    assert problem["code"] == "request_too_large"
    assert problem["bytes_max"] == BODY_MAX
    assert served.count(payments_tables.customers) == 0
    assert served.count(audit_log) == audited
    served.wait_for_room()
    # A streamed body within the limit is handed to the route whole.
    with served.connect() as sock:
        body = _customer(4)
        sock.sendall(served.chunked_head() + _chunk(body[:7]) + _chunk(body[7:]) + _chunk(b""))
        status, _, answer = _one_answer(sock)
    assert status == 201, answer
    assert served.count(payments_tables.customers) == 1


def _requests_total(served: Served) -> dict[tuple[str, str, str], float]:
    """``puhui_api_requests_total`` by (route, method, status), as scraped."""
    with httpx2.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        text = client.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith("puhui_api_requests_total{"):
            labels, value = line[len("puhui_api_requests_total{") :].rsplit("} ", 1)
            pairs = dict(pair.split("=", 1) for pair in labels.split(","))
            key = (pairs["route"].strip('"'), pairs["method"].strip('"'))
            counts[(*key, pairs["status"].strip('"'))] = float(value)
    return counts


def test_the_guards_answers_are_counted_in_the_request_metrics(served: Served) -> None:
    """413, 503 and a streamed body's 408 are answered before any route is known: counted
    under the route ``unrouted`` (a method outside the usual ones as ``other``). A late body
    of a declared length is answered by its route's pipeline, and counted there only."""
    for method in ("POST", "PROPFIND"):
        with served.connect() as sock:
            sock.sendall(served.head(BODY_MAX + 1).replace(b"POST", method.encode(), 1))
            assert _one_answer(sock)[0] == 413
    with served.connect() as sock:
        sock.sendall(served.chunked_head() + _chunk(b" " * (BODY_MAX + 1)))
        assert _one_answer(sock)[0] == 413
    served.wait_for_room()
    with served.connect() as holder, served.connect() as other:
        holder.sendall(served.head(BODY_MAX) + b"{")  # the two hold all the room
        other.sendall(served.head(BODY_MAX))
        time.sleep(0.1)
        with served.connect() as refused:
            refused.sendall(served.head(10))
            assert _answer(refused)[0] == 503
        assert _answer(holder)[0] == _answer(other)[0] == 408  # late: their routes answer
    served.wait_for_room()
    with served.connect() as streamed:
        streamed.sendall(served.chunked_head() + _chunk(b"{"))  # and never the rest
        status, headers, _ = _answer(streamed)
    assert status == 408 and headers["connection"] == "close"
    counts = _requests_total(served)
    assert {key: n for key, n in counts.items() if key[0] == "unrouted"} == {
        ("unrouted", "POST", "413"): 2.0,
        ("unrouted", "other", "413"): 1.0,
        ("unrouted", "POST", "503"): 1.0,
        ("unrouted", "POST", "408"): 1.0,
    }
    assert counts[(CUSTOMERS, "POST", "408")] == 2.0


def test_a_streamed_body_cut_short_by_its_client_is_not_taken_as_whole(served: Served) -> None:
    """A client that leaves mid-way through a streamed body: the route sees it leave (400,
    nothing done), even when what it sent so far is a whole JSON document."""
    audited = served.count(audit_log)
    with served.connect() as sock:
        sock.sendall(served.chunked_head() + _chunk(_customer(5)))  # the end never sent
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while served.count(audit_log) == audited and time.monotonic() < deadline:
        time.sleep(0.01)
    with served.engine.connect() as conn:
        statuses = conn.execute(sa.select(audit_log.c.status).order_by(audit_log.c.seq)).all()
    assert [s for (s,) in statuses[audited:]] == [400]
    assert served.count(payments_tables.customers) == 0
    served.wait_for_room()


def test_a_request_is_watched_only_until_its_body_has_arrived() -> None:
    """The periodic check looks at the requests still receiving their bodies: one whose body
    has all arrived leaves the watch set at once (its handler may run past the body's
    deadline, untouched), and the check stops when no body is awaited."""
    events: list[tuple[str, int]] = []
    sent: dict[str, list[Message]] = {"whole": [], "late": []}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler_done = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            watched = guard._waiting[loop].bodies
            while True:
                message = await receive()  # the late body raises out of here (408)
                events.append((scope["path"], len(watched)))
                if not message.get("more_body", False):
                    break
            await asyncio.sleep(3 * TIMEOUT_S)  # past the deadline, the body long arrived
            events.append(("checking", int(guard._waiting[loop].checking)))
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            handler_done.set()

        guard = BodyGuard(app, BodyBudget(1024), timeout_s=TIMEOUT_S, body_bytes_max=1024)
        whole: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def scope(path: str) -> dict[str, Any]:
            headers = [(b"content-length", b"10")]
            return {"type": "http", "method": "POST", "path": path, "headers": headers}

        async def collect(into: list[Message], message: Message) -> None:
            into.append(message)

        async def never() -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError

        first = asyncio.create_task(
            guard(scope("whole"), whole.get, lambda m: collect(sent["whole"], m))
        )
        late = asyncio.create_task(guard(scope("late"), never, lambda m: collect(sent["late"], m)))
        await asyncio.sleep(0.01)  # both requests wait for their bodies
        await whole.put({"type": "http.request", "body": b"12345", "more_body": True})
        await asyncio.sleep(0.01)
        await whole.put({"type": "http.request", "body": b"67890", "more_body": False})
        await asyncio.wait_for(asyncio.gather(first, late), 10 * TIMEOUT_S)
        assert handler_done.is_set()
        assert not guard._waiting[loop].bodies

    asyncio.run(main())
    # While the first chunk was awaited both requests were watched; once its body was whole,
    # only the late one was, and after it timed out none: the check stopped.
    assert events == [("whole", 2), ("whole", 1), ("checking", 0)]
    assert [m.get("status") for m in sent["whole"]] == [201, None]  # its handler ran on
    assert [m.get("status") for m in sent["late"]] == [408, None]  # the late body timed out
    assert (b"connection", b"close") in sent["late"][0]["headers"]
