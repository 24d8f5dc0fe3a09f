"""The HTTP protocol ``puhui serve`` runs (``puhui.api._server``): a response's head and body
leave in one write, nothing written is reordered or lost — checked on a recording transport,
and over a real socket with uvicorn for the answers whose writes differ (a body, none, a
streamed one, HEAD, a request the parser refuses, keep-alive)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from puhui.api._server import CorkedTransport

from .conftest import on_loopback


class Recording(asyncio.Transport):
    """What reaches the socket: each ``write`` as one entry."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7


def _corked() -> tuple[asyncio.AbstractEventLoop, Recording, CorkedTransport]:
    loop = asyncio.new_event_loop()
    inner = Recording()
    return loop, inner, CorkedTransport(inner, loop)


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop run what is scheduled now (one turn and then some)."""
    loop.run_until_complete(asyncio.sleep(0))


def test_a_head_and_its_body_leave_in_one_write() -> None:
    loop, inner, corked = _corked()
    try:
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert inner.writes == []  # held for the body
        corked.write(b"body")
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # at once, not at the turn's end
        _turn(loop)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # and only once
    finally:
        loop.close()


def test_a_lone_write_leaves_at_the_end_of_the_turn() -> None:
    loop, inner, corked = _corked()
    try:
        corked.write(memoryview(b"HTTP/1.1 204 No Content\r\n\r\n"))
        assert corked.get_write_buffer_size() == 7 + 27  # the transport's and what is held
        _turn(loop)
        assert inner.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
        assert corked.get_write_buffer_size() == 7
    finally:
        loop.close()


def test_writes_keep_their_order() -> None:
    loop, inner, corked = _corked()
    try:
        corked.writelines([b"a", b"b", b"c"])  # a+b together, c held
        corked.write(b"")  # an empty body after a head: the head goes at once
        corked.write(b"")  # nothing held: nothing to send
        corked.write(b"d")  # held
        corked.write(b"e")  # joins d
        corked.write(b"f")  # held again
        _turn(loop)
        assert inner.writes == [b"ab", b"c", b"de", b"f"]
        assert b"".join(inner.writes) == b"abcdef"
    finally:
        loop.close()


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    loop, inner, corked = _corked()
    try:
        corked.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        corked.close()
        assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and inner.closed
        _turn(loop)  # the scheduled flush finds nothing left
        assert len(inner.writes) == 1

        loop2, inner2, corked2 = _corked()
        try:
            corked2.write(b"partial")
            corked2.abort()
            _turn(loop2)
            assert inner2.writes == [] and inner2.aborted
        finally:
            loop2.close()
    finally:
        loop.close()


def test_nothing_is_written_to_a_transport_closed_under_it() -> None:
    """The peer went away during the turn: the held bytes are dropped, as the transport's
    own ``write`` after closing would drop them, and nothing raises."""
    loop, inner, corked = _corked()
    try:
        corked.write(b"head")
        inner.closed = True
        _turn(loop)
        assert inner.writes == [] and corked.is_closing()
    finally:
        loop.close()


# --- over a real socket ------------------------------------------------------------------------


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """A small ASGI app with the kinds of answer uvicorn writes differently."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)  # later turns of the loop
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    message = await receive()
    body = b"echo:" + message.get("body", b"")
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def port() -> Iterator[int]:
    with on_loopback(_app) as port:
        yield port


def _read_answer(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One answer (head, body, what follows it) read from ``sock``, by its Content-Length or
    its chunks."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = {
        k.lower(): v for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n")[1:])
    }
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        return head, rest[:length], rest[length:]
    if headers.get(b"transfer-encoding") == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        body = b""
        while True:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                return head, body, rest[2:]
            body, rest = body + rest[:size], rest[size + 2 :]
    return head, b"", rest


def test_answers_over_a_real_socket_arrive_whole_and_in_order(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # keep-alive: three requests on one connection, two sent at once (pipelined)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"
        )
        head, body, rest = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"echo:abc"
        head, body, rest = _read_answer(sock, rest)
        assert head.startswith(b"HTTP/1.1 200") and body == b"echo:de" and rest == b""

        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"one,two,three" and rest == b""

        sock.sendall(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 204") and body == b"" and rest == b""

        # HEAD: uvicorn writes the head only; it must still leave (at the turn's end)
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
        assert b"content-length: 5" in data.lower()  # "echo:", not sent


def test_a_request_the_parser_refuses_gets_its_answer_before_the_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
