"""The HTTP protocol ``puhui serve`` runs: uvicorn's httptools protocol, each response sent
in one write.

uvicorn writes a response's head (status line and headers) and its body in two
``transport.write`` calls. On uvloop each is a ``send`` system call made at once, and on
loopback each also runs the receiver's side of TCP: the API benchmark found the two writes
at ~14 % of the server's event-loop time, the head's alone at ~10 %. ``CorkedTransport``
holds what is written during one turn of the event loop and sends it in one call at the
turn's end (or as soon as a second write joins the first: a head and its body), so a
response costs one system call and one segment.

Nothing is reordered or dropped: every write reaches the socket in order, before the
transport is closed or asked about its buffer, and at the latest at the end of the loop's
current turn.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CorkedTransport(asyncio.Transport):
    """A transport that joins the writes of one event-loop turn into one (see the module's
    description); everything else is the wrapped transport's."""

    __slots__ = ("_held", "_inner", "_loop")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if not data:
                return
            self._held = [bytes(data)]
            self._loop.call_soon(self.flush)
            return
        # A second write in the same turn (a response's body after its head; an empty one
        # is the end of a response without a body): both go now.
        if data:
            held.append(bytes(data))
        self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held (nothing if it was sent already)."""
        held = self._held
        if held is None:
            return
        self._held = None
        if self._inner.is_closing():
            return  # as the transport's own write would: the peer is gone
        self._inner.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._held = None
        self._inner.abort()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self._inner.get_write_buffer_size() + (sum(len(b) for b in held) if held else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)


class CorkedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CorkedTransport``: one write per response."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not ``asyncio.Transport`` subclasses: no isinstance check.
        inner = cast(asyncio.Transport, transport)
        super().connection_made(CorkedTransport(inner, self.loop))


class ListeningServer(uvicorn.Server):
    """uvicorn's server on sockets bound (and listening) beforehand, as ``puhui serve`` binds
    them: it names the address it serves on once it has started, as uvicorn does when it
    binds them itself (it says nothing for sockets it was handed)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.config.host, self.config.port
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on %s (Press CTRL+C to quit)", url
            )
