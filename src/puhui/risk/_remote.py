"""One risk engine's decisions for several processes: ``serve_decisions`` / ``connect_decisions``.

A risk engine holds every customer's recent history (velocity, new payees, devices) in the
memory of the process that opened it, and its state directory is locked to that process.
Several server processes deciding one customer's payments must therefore ask the same
engine: one that each process opened on its own would see a customer's payments split
between them, and a fan-out spread over the processes would pass every velocity rule.

``serve_decisions(engine, path, authkey)`` answers decisions on a Unix socket at ``path``
(``multiprocessing.connection``: length-prefixed messages, and an HMAC challenge with the
shared ``authkey`` before the first one); ``connect_decisions(path, authkey)`` returns a
``RemoteDecide``, the callable ``Payments(decide=…)`` takes, with ``trust_device`` as the
engine has it. Messages are JSON (events and decisions as arrays of their fields): nothing
read from the socket is unpickled. A call whose connection breaks raises
``RiskUnavailableError`` (the decision may or may not have been counted by the engine; the
operation moves no money either way), and the next call opens a new connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Mapping, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self

from puhui.errors import InvalidInputError, PuhuiError

from ._decide import EventKind, RiskDecision, RiskEvent
from ._engine import _KIND_CODES, DECISIONS, DecidedBatch
from ._errors import RiskFeaturesError, RiskListError, RuleParseError
from ._features import InvalidRiskEventError

MESSAGE_BYTES_MAX: Final = 16 * 1024 * 1024
"""Largest request a server reads (unit: bytes; a batch of 8,189 events is ~2 MiB of JSON)."""
_log = logging.getLogger(__name__)
_NAN: Final = float("nan")
CONNECTIONS_KEPT: Final = 16
"""Idle connections a ``RemoteDecide`` keeps for its next calls (unit: connections)."""


class RiskUnavailableError(PuhuiError):
    """The risk engine's server cannot be reached, or went away during a call."""

    code = "risk_unavailable"


class _Decider(Protocol):
    def decide_columns(self, columns: Mapping[str, Any]) -> DecidedBatch: ...

    def trust_device(self, customer_id: int, device_id: str) -> None: ...


_ERRORS: Final[dict[str, type[PuhuiError]]] = {
    cls.code: cls
    for cls in (
        InvalidInputError,
        InvalidRiskEventError,
        RiskFeaturesError,
        RiskListError,
        RuleParseError,
    )
}
"""Errors of the engine a client raises as themselves (any other as ``RiskUnavailableError``)."""


def _columns(events: Sequence[RiskEvent]) -> dict[str, list[Any]]:
    """The events as ``RiskEngine.decide_columns`` reads them, in lists (JSON's arrays)."""
    codes = _KIND_CODES
    return {
        "kind": [codes[EventKind(e.kind)] for e in events],
        "customer_id": [e.customer_id for e in events],
        "at_ns": [e.at_ns for e in events],
        "amount": [e.amount for e in events],
        "currency": [e.currency for e in events],
        "device": [e.device_id for e in events],
        "merchant": [e.merchant for e in events],
        "counterparty": [e.counterparty for e in events],
        "ip": [e.ip for e in events],
        # None as NaN, as the engine's own columns (Python's JSON writes and reads NaN)
        "latitude": [_NAN if e.latitude is None else e.latitude for e in events],
        "longitude": [_NAN if e.longitude is None else e.longitude for e in events],
        "tz_offset_s": [e.tz_offset_s or 0 for e in events],
        "kyc_level": [-1 if e.kyc_level is None else e.kyc_level for e in events],
        "account_created_ns": [e.account_created_ns or 0 for e in events],
    }


def _decided(batch: DecidedBatch) -> dict[str, Any]:
    return {
        "severity": batch.severity.tolist(),
        "score": batch.score.tolist(),
        "reasons": [list(found) for found in batch.reasons],
        "ruleset_version": batch.ruleset_version,
        "model_version": batch.model_version,
    }


def _decisions(answer: Mapping[str, Any]) -> list[RiskDecision]:
    """A server's answer as ``RiskEngine`` gives it (``DecidedBatch.decisions``)."""
    ruleset, model = answer["ruleset_version"], answer["model_version"]
    shared: dict[tuple[int, int], RiskDecision] = {}
    out: list[RiskDecision] = []
    for level, score, found in zip(
        answer["severity"], answer["score"], answer["reasons"], strict=True
    ):
        if found:
            out.append(RiskDecision(DECISIONS[level], score, tuple(found), ruleset, model))
            continue
        decision = shared.get((level, score))
        if decision is None:
            decision = shared[level, score] = RiskDecision(
                DECISIONS[level], score, (), ruleset, model
            )
        out.append(decision)
    return out


def _int(value: Any) -> int:
    if type(value) is not int:
        raise ValueError("not an integer")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ValueError("not a string")
    return value


class DecisionServer:
    """Answers ``RemoteDecide`` calls with ``decider`` (see the module's docstring), each
    connection in a thread of its own; ``close()`` stops it (the engine stays open)."""

    def __init__(self, decider: _Decider, path: str | os.PathLike[str], authkey: bytes) -> None:
        self.decider = decider
        self.path = Path(path)
        self._authkey = authkey
        # The challenge runs in each connection's thread (``Listener(authkey=…)`` would run it
        # in ``accept``, where one client that never answers stops every other).
        self._listener = Listener(str(self.path), family="AF_UNIX")
        os.chmod(self.path, 0o600)
        self._connections: set[Connection[Any, Any]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="risk-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            with self._lock:
                if self._closed:
                    connection.close()
                    return
                self._connections.add(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name="risk-connection", daemon=True
            ).start()

    def _serve(self, connection: Connection[Any, Any]) -> None:
        try:
            try:
                deliver_challenge(connection, self._authkey)
                answer_challenge(connection, self._authkey)
            except (OSError, EOFError, AuthenticationError):
                return  # a wrong key, or a client gone during the challenge
            while True:
                try:
                    request = connection.recv_bytes(MESSAGE_BYTES_MAX)
                except (OSError, EOFError):
                    return  # the client went away, sent too much, or the server closes
                connection.send_bytes(self._answer(request))
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _answer(self, request: bytes) -> bytes:
        try:
            message = json.loads(request)
            op = message["op"]
            if op == "decide":
                columns = message["columns"]
                if not isinstance(columns, dict):
                    raise ValueError("columns must be an object")
                answer: Any = _decided(self.decider.decide_columns(columns))
            elif op == "trust_device":
                self.decider.trust_device(_int(message["customer_id"]), _str(message["device_id"]))
                answer = None
            else:
                raise ValueError(f"unknown operation {op!r}")
        except PuhuiError as error:
            return _encode({"error": [error.code, error.message]})
        except (ValueError, KeyError, TypeError) as error:
            return _encode({"error": ["invalid_input", f"a malformed request: {error}"]})
        except Exception:  # a fault of the engine: the client's call fails, the server goes on
            _log.exception("the risk engine failed a remote call")
            return _encode({"error": ["risk_unavailable", "the risk engine failed"]})
        return _encode({"ok": answer})

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections)
        # A thread blocked in accept() or recv() is not woken by another thread's close() of
        # its socket: wake the acceptor with a connection of our own, and shut the clients'
        # sockets down (their threads read the end and close them).
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(str(self.path))
        for connection in connections:
            _shut(connection)
        self._thread.join(timeout=5)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _shut(connection: Connection[Any, Any]) -> None:
    """End ``connection`` for both sides, waking a thread blocked reading it."""
    with contextlib.suppress(OSError):
        fd = os.dup(connection.fileno())
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class RemoteDecide:
    """The decisions of a ``DecisionServer``'s engine, as ``RiskEngine`` gives them: call it
    with events, or ``trust_device``. Thread-safe: each call takes a connection of its own."""

    def __init__(self, path: str | os.PathLike[str], authkey: bytes) -> None:
        self.path = str(path)
        self._authkey = authkey
        self._idle: queue.LifoQueue[Connection[Any, Any]] = queue.LifoQueue()
        self._closed = False
        self._give_back(self._connect())  # fails now, not at the first payment

    def _connect(self) -> Connection[Any, Any]:
        try:
            return Client(self.path, family="AF_UNIX", authkey=self._authkey)
        except (OSError, EOFError) as error:
            raise RiskUnavailableError(
                f"the risk engine's server cannot be reached: {error}"
            ) from error
        except AuthenticationError as error:
            raise RiskUnavailableError(f"the risk engine's server refused us: {error}") from error

    def _give_back(self, connection: Connection[Any, Any]) -> None:
        if self._closed or self._idle.qsize() >= CONNECTIONS_KEPT:
            connection.close()
        else:
            self._idle.put(connection)

    def _call(self, message: Any) -> Any:
        if self._closed:
            raise RiskUnavailableError("the risk client is closed")
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = self._connect()
        try:
            connection.send_bytes(_encode(message))
            answer = json.loads(connection.recv_bytes())
        except (OSError, EOFError) as error:
            connection.close()
            raise RiskUnavailableError(f"the risk engine's server went away: {error}") from error
        self._give_back(connection)
        if "error" in answer:
            code, text = answer["error"]
            raise _ERRORS.get(code, RiskUnavailableError)(text)
        return answer["ok"]

    def __call__(self, events: Sequence[RiskEvent]) -> list[RiskDecision]:
        if not events:
            return []
        return _decisions(self._call({"op": "decide", "columns": _columns(events)}))

    def trust_device(self, customer_id: int, device_id: str) -> None:
        self._call({"op": "trust_device", "customer_id": customer_id, "device_id": device_id})

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_decisions(
    decider: _Decider, path: str | os.PathLike[str], authkey: bytes
) -> DecisionServer:
    """Answer ``connect_decisions`` clients with ``decider`` (a ``RiskEngine``) on a Unix
    socket at ``path`` (made 0600), in background threads, until ``close()``."""
    return DecisionServer(decider, path, authkey)


def connect_decisions(path: str | os.PathLike[str], authkey: bytes) -> RemoteDecide:
    """A client of ``serve_decisions``' engine; ``RiskUnavailableError`` if it is not there."""
    return RemoteDecide(path, authkey)
