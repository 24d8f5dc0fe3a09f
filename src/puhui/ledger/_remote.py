"""``connect``: a client of a ledger that another process serves (``serve``).

``RemoteLedger`` has ``Ledger``'s methods and answers. Input is checked here, with the same
code as the embedded ledger's, so bad input raises the same errors without a round trip.
Any number of threads call at once: each sends its frame (under a lock, one frame at a time)
and waits for its own answer, which a reader thread hands over by request id. Requests are
pipelined: none waits for another's answer.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import numpy as np

from . import _wire as W
from ._convert import (
    account_results,
    accounts_to_array,
    array_to_accounts,
    array_to_balances,
    array_to_transfers,
    check_array,
    ids_to_words,
    transfer_results,
    transfers_to_array,
)
from ._engine import KIND_ACCOUNTS
from ._errors import LedgerClosedError, LedgerUnavailableError
from ._ledger import _account_filter, _query_filter
from ._types import (
    ACCOUNT_DTYPE,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
)

T = TypeVar("T")
Array = np.ndarray[Any, Any]

CONNECT_TIMEOUT_S = 10.0
"""How long ``connect`` waits for the server's socket and its handshake."""
CLOSE_TIMEOUT_S = 10.0
"""How long ``close`` waits for the answers in flight before it drops the connection."""
READ_BUFFER_BYTES = 1 << 16

_TICK_ANSWER = struct.Struct("<Q")


def _rows(dtype: np.dtype[Any]) -> Callable[[bytearray], Array]:
    def decode(body: bytearray) -> Array:
        if len(body) % dtype.itemsize:
            raise LedgerUnavailableError("the ledger server sent an answer of the wrong size")
        return np.frombuffer(body, dtype)

    return decode


_RESULTS = _rows(RESULT_DTYPE)
_ACCOUNTS = _rows(ACCOUNT_DTYPE)
_TRANSFERS = _rows(TRANSFER_DTYPE)
_BALANCES = _rows(W.BALANCE_WIRE_DTYPE)


def _tick_answer(body: bytearray) -> int:
    if len(body) != _TICK_ANSWER.size:
        raise LedgerUnavailableError("the ledger server sent an answer of the wrong size")
    expired: int = _TICK_ANSWER.unpack(body)[0]
    return expired


class RemoteLedger:
    """``Ledger``'s API over a connection to ``serve``. Use ``puhui.ledger.connect``."""

    def __init__(self, sock: socket.socket, identity: str, path: str) -> None:
        self._sock = sock
        self._identity = identity
        self.path = path
        self._file = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BUFFER_BYTES))
        self._lock = threading.Lock()
        """Guards ``_pending``, ``_next_id``, ``_closed`` and ``_lost``."""
        self._send_lock = threading.Lock()
        """One frame at a time on the socket."""
        self._pending: dict[int, tuple[Future[Any], Callable[[bytearray], Any]]] = {}
        self._next_id = 1
        self._closed = False
        self._lost: str | None = None
        """Why the connection was lost (None while it works)."""
        self._on_lost: list[Callable[[str], None]] = []
        self._reader = threading.Thread(
            target=self._read_answers, name="puhui-ledger-remote", daemon=True
        )
        self._reader.start()

    def on_lost(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` (on the client's reader thread) when the connection to
        the server is lost, not by ``close``: a server process's worker stops then, rather
        than answer ``ledger_unavailable`` for ever."""
        self._on_lost.append(listener)

    @property
    def identity(self) -> str:
        """The served journal's identity (``Ledger.identity``), from the handshake."""
        return self._identity

    # --- requests ---------------------------------------------------------------------------

    def _send(
        self, operation: int, payload: bytes | memoryview, decode: Callable[[bytearray], T]
    ) -> Future[T]:
        """Send one request; its future is completed by the reader thread."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise LedgerClosedError("the ledger client is closed")
            if self._lost is not None:
                raise LedgerUnavailableError(self._lost)
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = (future, decode)
        header = W.HEADER.pack(len(payload), request_id, operation, 0)
        try:
            with self._send_lock:
                if len(payload) <= 4096:
                    self._sock.sendall(header + payload)
                else:
                    self._sock.sendall(header)
                    self._sock.sendall(payload)
        except OSError as error:
            self._lose(f"the connection to the ledger server was lost ({error})")
        return future

    def _call(
        self, operation: int, payload: bytes | memoryview, decode: Callable[[bytearray], T]
    ) -> T:
        return self._send(operation, payload, decode).result()

    def _read_answers(self) -> None:
        reason = "the ledger server closed the connection"
        try:
            while True:
                header = self._read_exactly(W.HEADER.size)
                if header is None:
                    break
                length, request_id, _, status = W.HEADER.unpack(header)
                if length > W.FRAME_PAYLOAD_BYTES_MAX:
                    reason = f"the ledger server sent a frame of {length} bytes"
                    break
                body = self._read_exactly(length)
                if body is None:
                    break
                with self._lock:
                    entry = self._pending.pop(request_id, None)
                if entry is None:
                    reason = "the ledger server answered a request never sent"
                    break
                future, decode = entry
                if not future.set_running_or_notify_cancel():
                    continue  # its caller stopped waiting (an asyncio task cancelled)
                try:
                    if status == W.STATUS_OK:
                        future.set_result(decode(body))
                    else:
                        future.set_exception(W.decode_error(bytes(body)))
                except LedgerUnavailableError as error:
                    future.set_exception(error)
        except OSError as error:
            reason = f"the connection to the ledger server was lost ({error})"
        except BaseException as error:  # a fault here must still fail every waiting call
            reason = f"the ledger client's reader failed ({error!r})"
            raise
        finally:
            self._lose(reason)

    def _read_exactly(self, size: int) -> bytearray | None:
        """``size`` bytes, or None at the end of the stream."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self._file.readinto(view[got:])
            if not n:
                return None
            got += n
        return buffer

    def _lose(self, reason: str) -> None:
        """The connection is gone: every call waiting fails now, and every later call."""
        with self._lock:
            first = self._lost is None
            if first:
                self._lost = reason
            pending, self._pending = self._pending, {}
            closed = self._closed
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        for future, _ in pending.values():
            if not future.set_running_or_notify_cancel():
                continue  # cancelled: nobody waits for it
            if closed:
                future.set_exception(LedgerClosedError("the ledger client is closed"))
            else:
                future.set_exception(LedgerUnavailableError(reason))
        if first and not closed:
            for listener in self._on_lost:
                listener(reason)

    def _submit_future(self, kind: int, events: Array) -> Future[Array]:
        """A checked, non-empty batch of creates (``kind``: accounts or transfers), sent;
        the future has its results (``AsyncLedger`` awaits it with ``wrap_future``)."""
        operation = W.OP_CREATE_ACCOUNTS if kind == KIND_ACCOUNTS else W.OP_CREATE_TRANSFERS
        return self._send(operation, events.view(np.uint8).data, _RESULTS)

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the answers in flight (at most ``CLOSE_TIMEOUT_S``), then disconnect.
        The server and its ledger go on."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # A sender blocked in ``sendall`` (the server pushing back) holds the send lock: past
        # the timeout the connection is cut, which ends that send with an error too.
        if self._send_lock.acquire(timeout=CLOSE_TIMEOUT_S):
            try:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)  # the server answers what it has
            finally:
                self._send_lock.release()
        else:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(CLOSE_TIMEOUT_S)
        if self._reader.is_alive():
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._reader.join()
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the TigerBeetle API ----------------------------------------------------------------

    def tick(self) -> int:
        """Run due expiries now on the server's ledger; how many this call expired."""
        return self._call(W.OP_TICK, b"", _tick_answer)

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return account_results(self.create_accounts_array(accounts_to_array(accounts)))

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return transfer_results(self.create_transfers_array(transfers_to_array(transfers)))

    def create_accounts_array(self, accounts: Array) -> Array:
        """Columnar ``create_accounts``: ACCOUNT_DTYPE rows in, RESULT_DTYPE rows out."""
        events = check_array(accounts, ACCOUNT_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        return self._call(W.OP_CREATE_ACCOUNTS, events.view(np.uint8).data, _RESULTS)

    def create_transfers_array(self, transfers: Array) -> Array:
        """Columnar ``create_transfers``: TRANSFER_DTYPE rows in, RESULT_DTYPE rows out."""
        events = check_array(transfers, TRANSFER_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        return self._call(W.OP_CREATE_TRANSFERS, events.view(np.uint8).data, _RESULTS)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return array_to_accounts(self.lookup_accounts_array(ids))

    def lookup_accounts_array(self, ids: Sequence[int]) -> Array:
        return self._call(W.OP_LOOKUP_ACCOUNTS, _ids_payload(ids), _ACCOUNTS)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return array_to_transfers(self.lookup_transfers_array(ids))

    def lookup_transfers_array(self, ids: Sequence[int]) -> Array:
        return self._call(W.OP_LOOKUP_TRANSFERS, _ids_payload(ids), _TRANSFERS)

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        if _account_filter(filter) is None:  # the embedded ledger's checks, and its answer
            return []
        found = self._call(W.OP_GET_ACCOUNT_TRANSFERS, W.pack_account_filter(filter), _TRANSFERS)
        return array_to_transfers(found)

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        if _account_filter(filter) is None:
            return []
        found = self._call(W.OP_GET_ACCOUNT_BALANCES, W.pack_account_filter(filter), _BALANCES)
        return array_to_balances(found, found["timestamp"].tolist())

    def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        if _query_filter(query_filter) is None:
            return []
        found = self._call(W.OP_QUERY_ACCOUNTS, W.pack_query_filter(query_filter), _ACCOUNTS)
        return array_to_accounts(found)

    def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        if _query_filter(query_filter) is None:
            return []
        found = self._call(W.OP_QUERY_TRANSFERS, W.pack_query_filter(query_filter), _TRANSFERS)
        return array_to_transfers(found)


def _ids_payload(ids: Sequence[int]) -> bytes:
    lo, hi = ids_to_words(ids)  # the embedded ledger's checks
    wire = np.empty(lo.shape[0], W.IDS_DTYPE)
    wire["lo"] = lo
    wire["hi"] = hi
    return wire.tobytes()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the ledger server closed the connection")
        data += chunk
    return bytes(data)


def connect(path: str | os.PathLike[str], *, timeout_s: float = CONNECT_TIMEOUT_S) -> RemoteLedger:
    """A client of the ledger served at ``path`` (``serve``); ``LedgerUnavailableError`` when
    nothing serves there (or not this format, or not in ``timeout_s``)."""
    where = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(where)
        sock.sendall(W.HELLO.pack(W.MAGIC, W.VERSION, 0))
        magic, version, status, identity_bytes = W.WELCOME.unpack(
            _read_exactly(sock, W.WELCOME.size)
        )
        if magic != W.MAGIC:
            raise LedgerUnavailableError(f"{where} is not a ledger server")
        if status != W.WELCOME_OK:
            raise LedgerUnavailableError(
                f"the ledger server at {where} speaks version {version}, not {W.VERSION}"
            )
        if identity_bytes > W.IDENTITY_BYTES_MAX:
            raise LedgerUnavailableError(f"{where} sent a malformed handshake")
        identity = _read_exactly(sock, identity_bytes).decode()
        sock.settimeout(None)
    except (OSError, UnicodeDecodeError) as error:
        sock.close()
        raise LedgerUnavailableError(f"no ledger server at {where} ({error})") from error
    except BaseException:
        sock.close()
        raise
    return RemoteLedger(sock, identity, where)
