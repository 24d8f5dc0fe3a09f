"""``serve``: one open ``Ledger`` shared with other processes over a Unix domain socket.

The server runs an asyncio loop on a thread of its own. Each connection's frames are read in
order; each request runs as a task of its own, so a connection has many in flight, answered
as they finish (by request id, possibly out of order). Creates go to the ledger's writer with
``_submit_async``, as ``AsyncLedger``'s do: the creates of every connection share its group
commits. Reads wait on a small pool of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from puhui.errors import PuhuiError

from . import _wire as W
from ._convert import BATCH_EVENTS_MAX
from ._engine import KIND_ACCOUNTS, KIND_TRANSFERS
from ._errors import LedgerSocketInUseError
from ._ledger import Ledger
from ._types import ACCOUNT_DTYPE, RESULT_DTYPE, TRANSFER_DTYPE, AccountFilter

log = logging.getLogger("puhui.ledger.server")

CONNECTIONS_MAX = 1024
"""Most client connections at once; one more is closed at once."""
CONNECTION_REQUESTS_MAX = 1024
"""Most requests in flight on one connection; its next frames wait to be read (back-pressure)."""
READ_THREADS_MAX = 8
"""Threads waiting for reads (the ledger's writer serves them one at a time between groups)."""
HANDSHAKE_TIMEOUT_S = 10.0
"""How long a new connection may take to send its hello."""
CLOSE_TIMEOUT_S = 10.0
"""How long ``close`` waits for the answers in flight before it drops their connections."""
START_TIMEOUT_S = 30.0
"""How long ``serve`` waits for its thread to listen."""
LISTEN_BACKLOG = 128

_TICK_ANSWER = struct.Struct("<Q")


class _MalformedFrameError(Exception):
    """A frame no client of this format sends: the connection is closed."""


class LedgerServer:
    """Serves one open ``Ledger`` on a Unix domain socket. Use ``puhui.ledger.serve``."""

    def __init__(self, ledger: Ledger, path: Path, sock: socket.socket) -> None:
        self.ledger = ledger
        self.path = path
        self._socket_id = _file_id(path)
        self._identity = ledger.identity.encode()
        if len(self._identity) > W.IDENTITY_BYTES_MAX:
            raise ValueError("the journal's identity is too long for the handshake")
        self._reads = ThreadPoolExecutor(READ_THREADS_MAX, thread_name_prefix="puhui-ledger-serve")
        self._loop = asyncio.new_event_loop()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        started: list[BaseException | None] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_unix_server(self._connection, sock=sock, limit=1 << 16)
                )
            except BaseException as error:  # handed to ``serve``'s caller
                started.append(error)
                ready.set()
                return
            started.append(None)
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="puhui-ledger-server", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S) or started[0] is not None:
            sock.close()
            self._remove_socket()
            self._thread.join(START_TIMEOUT_S)
            self._loop.close()
            self._reads.shutdown()
            if started and started[0] is not None:
                raise started[0]
            raise TimeoutError("the ledger server did not start")

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, answer what is in flight (or drop its connection after
        ``CLOSE_TIMEOUT_S``), remove the socket file. The ledger stays open."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            stopping = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            stopping.result(2 * CLOSE_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            # Reads still waiting for the ledger were given up with their connections.
            self._reads.shutdown(wait=False, cancel_futures=True)
            self._remove_socket()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    def _remove_socket(self) -> None:
        """Remove the socket file, if it is still this server's (not a newer server's)."""
        if _file_id(self.path) == self._socket_id:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # --- connections ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        if len(self._handlers) >= CONNECTIONS_MAX or self._closed:
            log.warning("ledger server: a connection over the limit of %d closed", CONNECTIONS_MAX)
            writer.close()
            return
        self._handlers.add(handler)
        requests: set[asyncio.Task[None]] = set()
        drop = False  # close without waiting for the answers in flight
        try:
            if await self._handshake(reader, writer):
                await self._read_requests(reader, writer, requests)
        except asyncio.CancelledError:  # the server is closing: answer what is in flight
            pass
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away (or never said hello)
        except _MalformedFrameError as error:
            log.warning("ledger server: a malformed frame (%s); its connection is closed", error)
            drop = True
        finally:
            if requests and not drop:
                await asyncio.wait(requests, timeout=CLOSE_TIMEOUT_S)
            for request in requests:
                request.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(handler)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        hello = await asyncio.wait_for(reader.readexactly(W.HELLO.size), HANDSHAKE_TIMEOUT_S)
        magic, version, _ = W.HELLO.unpack(hello)
        if magic != W.MAGIC:
            raise _MalformedFrameError("not a ledger client's hello")
        if version != W.VERSION:
            writer.write(W.WELCOME.pack(W.MAGIC, W.VERSION, W.WELCOME_VERSION_UNSUPPORTED, 0))
            await writer.drain()
            return False
        welcome = W.WELCOME.pack(W.MAGIC, W.VERSION, W.WELCOME_OK, len(self._identity))
        writer.write(welcome + self._identity)
        await writer.drain()
        return True

    async def _read_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        requests: set[asyncio.Task[None]],
    ) -> None:
        room = asyncio.Semaphore(CONNECTION_REQUESTS_MAX)
        loop = asyncio.get_running_loop()
        while True:
            try:
                header = await reader.readexactly(W.HEADER.size)
            except asyncio.IncompleteReadError as end:
                if end.partial:
                    raise _MalformedFrameError("a frame cut short") from None
                return  # the client closed its side: the answers in flight still go out
            length, request_id, operation, status = W.HEADER.unpack(header)
            _check_frame(length, operation, status)
            payload = await reader.readexactly(length) if length else b""
            await room.acquire()
            request = loop.create_task(self._answer(writer, request_id, operation, payload))
            requests.add(request)
            request.add_done_callback(requests.discard)
            request.add_done_callback(lambda _: room.release())

    async def _answer(
        self, writer: asyncio.StreamWriter, request_id: int, operation: int, payload: bytes
    ) -> None:
        try:
            body = await self._execute(operation, payload)
            status = W.STATUS_OK
        except PuhuiError as error:
            body = W.encode_error(error)
            status = W.STATUS_ERROR
        except Exception:
            # A fault of the server itself: loud, and the connection is dropped so that its
            # client fails its calls (``ledger_unavailable``) instead of waiting for ever.
            log.exception("ledger server: operation %d failed", operation)
            writer.close()
            return
        if writer.is_closing():
            return
        writer.write(W.HEADER.pack(len(body), request_id, operation, status))
        writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _execute(self, operation: int, payload: bytes) -> bytes:
        ledger = self.ledger
        if operation in (W.OP_CREATE_ACCOUNTS, W.OP_CREATE_TRANSFERS):
            accounts = operation == W.OP_CREATE_ACCOUNTS
            dtype = ACCOUNT_DTYPE if accounts else TRANSFER_DTYPE
            events = np.frombuffer(bytearray(payload), dtype)
            if events.shape[0] == 0:
                return b""
            kind = KIND_ACCOUNTS if accounts else KIND_TRANSFERS
            results: np.ndarray[Any, Any] = await ledger._submit_async(kind, events)
            assert results.dtype == RESULT_DTYPE
            return results.tobytes()
        if operation in (W.OP_LOOKUP_ACCOUNTS, W.OP_LOOKUP_TRANSFERS):
            ids = np.frombuffer(payload, W.IDS_DTYPE)
            lo, hi = ids["lo"].copy(), ids["hi"].copy()
            lookup = (
                ledger._lookup_accounts_words
                if operation == W.OP_LOOKUP_ACCOUNTS
                else ledger._lookup_transfers_words
            )
            return await self._read(lambda: lookup(lo, hi).tobytes())
        if operation == W.OP_GET_ACCOUNT_TRANSFERS:
            account_filter = W.unpack_account_filter(payload)
            return await self._read(
                lambda: ledger._account_transfers_array(account_filter).tobytes()
            )
        if operation == W.OP_GET_ACCOUNT_BALANCES:
            account_filter = W.unpack_account_filter(payload)
            return await self._read(lambda: _balances(ledger, account_filter))
        if operation == W.OP_QUERY_ACCOUNTS:
            query_filter = W.unpack_query_filter(payload)
            return await self._read(lambda: ledger._query_accounts_array(query_filter).tobytes())
        if operation == W.OP_QUERY_TRANSFERS:
            query_filter = W.unpack_query_filter(payload)
            return await self._read(lambda: ledger._query_transfers_array(query_filter).tobytes())
        assert operation == W.OP_TICK, operation  # _check_frame let no other through
        return await self._read(lambda: _TICK_ANSWER.pack(ledger.tick()))

    async def _read(self, fn: Callable[[], bytes]) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn)


def _balances(ledger: Ledger, account_filter: AccountFilter) -> bytes:
    found = ledger._account_balances_arrays(account_filter)
    if found is None:
        return b""
    balances, timestamps = found
    rows = np.zeros(balances.shape[0], W.BALANCE_WIRE_DTYPE)
    for name in balances.dtype.names or ():
        rows[name] = balances[name]
    rows["timestamp"] = timestamps
    return rows.tobytes()


_PAYLOAD_BYTES: dict[int, Callable[[int], bool]] = {
    W.OP_CREATE_ACCOUNTS: lambda n: n % W.EVENT_BYTES == 0,
    W.OP_CREATE_TRANSFERS: lambda n: n % W.EVENT_BYTES == 0,
    W.OP_LOOKUP_ACCOUNTS: lambda n: n % W.ID_BYTES == 0 and n // W.ID_BYTES <= BATCH_EVENTS_MAX,
    W.OP_LOOKUP_TRANSFERS: lambda n: n % W.ID_BYTES == 0 and n // W.ID_BYTES <= BATCH_EVENTS_MAX,
    W.OP_GET_ACCOUNT_TRANSFERS: lambda n: n == W.ACCOUNT_FILTER_BYTES,
    W.OP_GET_ACCOUNT_BALANCES: lambda n: n == W.ACCOUNT_FILTER_BYTES,
    W.OP_QUERY_ACCOUNTS: lambda n: n == W.QUERY_FILTER_BYTES,
    W.OP_QUERY_TRANSFERS: lambda n: n == W.QUERY_FILTER_BYTES,
    W.OP_TICK: lambda n: n == 0,
}
"""Each operation's legal payload lengths (bytes)."""


def _check_frame(length: int, operation: int, status: int) -> None:
    if length > W.FRAME_PAYLOAD_BYTES_MAX:
        raise _MalformedFrameError(f"a frame of {length} bytes")
    legal = _PAYLOAD_BYTES.get(operation)
    if legal is None:
        raise _MalformedFrameError(f"unknown operation {operation}")
    if status != 0 or not legal(length):
        raise _MalformedFrameError(f"operation {operation} with {length} bytes")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _listen(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from its first moment (bound in a private
    directory, then moved into place). A stale socket file is replaced; a live one, or a
    file that is not a socket, is refused."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if not stat.S_ISSOCK(found.st_mode):
            raise LedgerSocketInUseError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: left by a server that died
        else:
            raise LedgerSocketInUseError(f"a server already listens on {path}")
        finally:
            probe.close()
    directory = tempfile.mkdtemp(prefix=".puhui-", dir=path.parent)
    bound = os.path.join(directory, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(bound)
        os.chmod(bound, 0o600)
        os.rename(bound, path)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bound)
        os.rmdir(directory)
    return sock


def serve(ledger: Ledger, path: str | os.PathLike[str]) -> LedgerServer:
    """Serve the open ``ledger`` on a Unix domain socket at ``path`` (mode 0600), on a thread
    of this process, until ``close()``; ``puhui.ledger.connect(path)`` is its client.

    A stale socket file at ``path`` (its server died) is replaced; a live one, or another
    kind of file, raises ``LedgerSocketInUseError``. Closing the server leaves the ledger
    open."""
    where = Path(path)
    sock = _listen(where)
    sock.setblocking(False)
    return LedgerServer(ledger, where, sock)
