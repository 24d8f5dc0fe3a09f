"""``serve`` and ``connect``: one ledger shared over a Unix domain socket.

The conformance suite runs over the socket too (the ``remote-sqlite`` harness); these tests
cover what only a server has: many threads pipelining on one connection, errors crossing the
wire, servers and clients going away, bad frames, the socket file, another process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import puhui
from puhui.ledger import (
    ACCOUNT_DTYPE,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AsyncLedger,
    BatchTooLargeError,
    CreateAccountStatus,
    CreateTransferStatus,
    FieldOutOfRangeError,
    Ledger,
    LedgerClosedError,
    LedgerFailedError,
    LedgerServer,
    LedgerSocketInUseError,
    LedgerUnavailableError,
    QueryFilter,
    QueryFilterFlags,
    RemoteLedger,
    TooMuchDataError,
    Transfer,
    UnknownFieldError,
    WrongTypeError,
    _server,
    connect,
    open,
    serve,
)
from puhui.ledger import _wire as W
from puhui.ledger._convert import transfers_to_array
from puhui.ledger._remote import CLOSE_TIMEOUT_S

ACCOUNTS = 64
BOTH = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
PROMPT_S = 5.0
"""What "promptly" means here: far below any hang, far above a slow machine's scheduling."""


def _transfer(transfer_id: int, amount: int = 1) -> Transfer:
    debit = 1 + transfer_id % ACCOUNTS
    credit = 1 + (transfer_id + 1) % ACCOUNTS
    return Transfer(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        ledger=1,
        code=1,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = open(tmp_path / "journal.sqlite", state_dir=tmp_path / "state")
    results = led.create_accounts([Account(id=i, ledger=1, code=1) for i in range(1, ACCOUNTS + 1)])
    assert all(r.status == CreateAccountStatus.CREATED for r in results)
    try:
        yield led
    finally:
        led.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sock"


@pytest.fixture
def server(ledger: Ledger, socket_path: Path) -> Iterator[LedgerServer]:
    with serve(ledger, socket_path) as served:
        yield served


@pytest.fixture
def remote(server: LedgerServer, socket_path: Path) -> Iterator[RemoteLedger]:
    with connect(socket_path) as client:
        yield client


def _raw(path: Path, *, hello: bool = True) -> socket.socket:
    """A raw connection to the server, after the handshake (unless ``hello`` is False)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROMPT_S)
    sock.connect(str(path))
    if hello:
        sock.sendall(W.HELLO.pack(W.MAGIC, W.VERSION, 0))
        _, _, status, size = W.WELCOME.unpack(_receive(sock, W.WELCOME.size))
        assert status == W.WELCOME_OK
        _receive(sock, size)
    return sock


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection (reads end) within ``PROMPT_S``."""
    try:
        while True:
            if not sock.recv(1 << 16):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _blocked_writer(ledger: Ledger) -> tuple[threading.Event, threading.Thread]:
    """Hold the ledger's writer (a read that waits) until the returned event is set."""
    release = threading.Event()
    entered = threading.Event()

    def hold(engine: Any) -> None:
        entered.set()
        release.wait(30)

    holder = threading.Thread(target=ledger.read_state, args=(hold,))
    holder.start()
    assert entered.wait(PROMPT_S)
    return release, holder


# --- the API --------------------------------------------------------------------------------


def test_identity_is_the_journals_on_both_sides(ledger: Ledger, remote: RemoteLedger) -> None:
    assert ledger.identity == ledger.journal.identity
    assert remote.identity == ledger.identity
    assert remote.identity  # a UUID, never empty


def test_answers_equal_the_embedded_ledgers(ledger: Ledger, remote: RemoteLedger) -> None:
    batch = transfers_to_array([_transfer(i) for i in range(1, 101)])
    results = remote.create_transfers_array(batch)
    assert results.dtype == RESULT_DTYPE
    assert (results["status"] == CreateTransferStatus.CREATED).all()
    again = remote.create_transfers([_transfer(i) for i in range(1, 4)])
    assert [r.status for r in again] == [CreateTransferStatus.EXISTS] * 3
    assert remote.create_transfers_array(np.zeros(0, TRANSFER_DTYPE)).dtype == RESULT_DTYPE

    ids = [0, 1, 5, 10**30, 100]
    assert remote.lookup_transfers(ids) == ledger.lookup_transfers(ids)
    assert remote.lookup_accounts(list(range(70))) == ledger.lookup_accounts(list(range(70)))
    found = remote.lookup_transfers_array(ids)
    assert found.dtype == TRANSFER_DTYPE
    assert found.tobytes() == ledger.lookup_transfers_array(ids).tobytes()
    for flags in (BOTH, BOTH | AccountFilterFlags.REVERSED, AccountFilterFlags.CREDITS):
        f = AccountFilter(2, 0, 0, 0, 0, 0, 0, 8189, flags)
        assert remote.get_account_transfers(f) == ledger.get_account_transfers(f)
        assert remote.get_account_balances(f) == ledger.get_account_balances(f)
    q = QueryFilter(0, 0, 0, 1, 1, 0, 0, 50, QueryFilterFlags.REVERSED)
    assert remote.query_transfers(q) == ledger.query_transfers(q)
    assert remote.query_accounts(q) == ledger.query_accounts(q)
    assert len(remote.query_transfers(q)) == 50
    assert remote.tick() == 0


def test_many_threads_pipeline_on_one_connection(ledger: Ledger, remote: RemoteLedger) -> None:
    """32 threads x 20 batches on one connection: each gets its own answers, and the
    requests were in flight together (they shared group commits; one round trip after
    another would give every group one request)."""
    threads, batches, size = 32, 20, 16
    groups_before = ledger.stats.groups

    def work(thread: int) -> list[int]:
        timestamps: list[int] = []
        for b in range(batches):
            first = 1_000_000 + (thread * batches + b) * size
            results = remote.create_transfers([_transfer(first + k) for k in range(size)])
            assert [r.status for r in results] == [CreateTransferStatus.CREATED] * size
            timestamps.extend(r.timestamp for r in results)
            found = remote.lookup_transfers([first, first + size - 1])
            assert [t.id for t in found] == [first, first + size - 1]
            assert [t.timestamp for t in found] == [timestamps[-size], timestamps[-1]]
        return timestamps

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(work, range(threads)))
    stamps = [s for answer in answers for s in answer]
    assert len(set(stamps)) == threads * batches * size  # every event its own timestamp
    groups = ledger.stats.groups - groups_before
    assert groups < threads * batches, "every request waited for the one before it"
    assert ledger.stats.recent()["requests"].max() > 1


def test_async_ledger_over_a_remote_one(ledger: Ledger, remote: RemoteLedger) -> None:
    async def run() -> None:
        client = AsyncLedger(remote)
        batches = [[_transfer(2_000_000 + 8 * b + k) for k in range(8)] for b in range(50)]
        answers = await asyncio.gather(*(client.create_transfers(b) for b in batches))
        assert all(r.status == CreateTransferStatus.CREATED for a in answers for r in a)
        rows = await client.create_transfers_array(transfers_to_array(batches[0]))
        assert (rows["status"] == CreateTransferStatus.EXISTS).all()
        found = await client.lookup_transfers([2_000_000, 2_000_399])
        assert [t.id for t in found] == [2_000_000, 2_000_399]
        f = AccountFilter(1, 0, 0, 0, 0, 0, 0, 10, BOTH)
        assert await client.get_account_transfers(f) == ledger.get_account_transfers(f)

    asyncio.run(run())
    assert len(ledger.lookup_transfers([2_000_000 + i for i in range(400)])) == 400


# --- errors ---------------------------------------------------------------------------------


def _error_of(call: Any) -> BaseException:
    try:
        call()
    except Exception as error:
        return error
    raise AssertionError("no error")


def test_input_errors_are_the_embedded_ledgers(ledger: Ledger, remote: RemoteLedger) -> None:
    calls: list[Callable[[Any], object]] = [
        lambda led: led.create_transfers([_transfer(1)] * 8190),
        lambda led: led.create_transfers([Transfer(id=-1)]),
        lambda led: led.create_transfers([Transfer(id=1, amount=1.5)]),  # type: ignore[arg-type]
        lambda led: led.create_accounts_array(np.zeros(1, TRANSFER_DTYPE)),
        lambda led: led.create_transfers_array(np.zeros(1, RESULT_DTYPE)),
        lambda led: led.lookup_accounts([2**128]),
        lambda led: led.get_account_transfers(AccountFilter(1, 0, 0, 0, 0, 0, 0, 9000, BOTH)),
        lambda led: led.query_transfers("filter"),
    ]
    classes = []
    for call in calls:
        embedded = _error_of(lambda: call(ledger))  # noqa: B023 (called at once)
        remote_error = _error_of(lambda: call(remote))  # noqa: B023
        assert type(remote_error) is type(embedded)
        assert str(remote_error) == str(embedded)
        assert getattr(remote_error, "details", None) == getattr(embedded, "details", None)
        classes.append(type(remote_error))
    assert classes == [
        BatchTooLargeError,
        FieldOutOfRangeError,
        WrongTypeError,
        UnknownFieldError,
        UnknownFieldError,
        FieldOutOfRangeError,
        TooMuchDataError,
        WrongTypeError,
    ]


def test_server_errors_cross_the_wire_as_the_same_class(remote: RemoteLedger) -> None:
    """An error the server raises comes back as its class, code, message and details (here a
    filter the client would have refused, sent as raw bytes)."""
    too_much = AccountFilter(1, 0, 0, 0, 0, 0, 0, 9000, BOTH)
    with pytest.raises(TooMuchDataError) as raised:
        remote._call(W.OP_GET_ACCOUNT_TRANSFERS, W.pack_account_filter(too_much), bytes)
    assert raised.value.code == "too_much_data"
    assert "9000" in raised.value.message
    assert remote.lookup_accounts([1])[0].id == 1  # the connection goes on


def test_a_closed_or_failed_ledger_answers_as_embedded(
    ledger: Ledger, remote: RemoteLedger
) -> None:
    broken = RuntimeError("disk on fire")
    ledger._failure = broken  # what the writer records when it stops on a fault
    try:
        embedded = _error_of(lambda: ledger.create_transfers([_transfer(1)]))
        remote_error = _error_of(lambda: remote.create_transfers([_transfer(1)]))
        assert type(remote_error) is type(embedded) is LedgerFailedError
        assert str(remote_error) == str(embedded)
    finally:
        ledger._failure = None
    ledger.close()
    embedded = _error_of(lambda: ledger.create_transfers([_transfer(1)]))
    for call in (
        lambda: remote.create_transfers([_transfer(1)]),
        lambda: remote.lookup_accounts([1]),
        lambda: remote.query_accounts(QueryFilter(0, 0, 0, 0, 0, 0, 0, 10, QueryFilterFlags(0))),
    ):
        remote_error = _error_of(call)
        assert type(remote_error) is LedgerClosedError
        assert str(remote_error) == str(embedded)


def test_a_closed_client_raises_ledger_closed(remote: RemoteLedger) -> None:
    remote.close()
    remote.close()  # twice is fine
    with pytest.raises(LedgerClosedError, match="the ledger client is closed"):
        remote.lookup_accounts([1])


def test_nothing_served_is_ledger_unavailable(socket_path: Path) -> None:
    with pytest.raises(LedgerUnavailableError) as raised:
        connect(socket_path)
    assert raised.value.code == "ledger_unavailable"


# --- servers and clients going away ---------------------------------------------------------


def test_close_answers_what_is_in_flight(ledger: Ledger, socket_path: Path) -> None:
    server = serve(ledger, socket_path)
    client = connect(socket_path)
    release, holder = _blocked_writer(ledger)
    with ThreadPoolExecutor(8) as pool:
        waiting = [
            pool.submit(client.create_transfers, [_transfer(3_000_000 + i)]) for i in range(8)
        ]
        time.sleep(0.2)  # the requests reach the server and wait for the writer
        closing = pool.submit(server.close)
        time.sleep(0.2)
        release.set()
        closing.result(PROMPT_S)
        for future in waiting:
            assert future.result(PROMPT_S)[0].status == CreateTransferStatus.CREATED
    holder.join()
    assert not socket_path.exists()
    with pytest.raises(LedgerUnavailableError):
        client.lookup_accounts([1])
    client.close()


def test_a_server_closed_while_clients_wait_fails_them_promptly(
    ledger: Ledger, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers that do not come within the close timeout: their connections are dropped, and
    every waiting call fails with ``ledger_unavailable`` (then every later call, at once)."""
    monkeypatch.setattr(_server, "CLOSE_TIMEOUT_S", 0.3)
    server = serve(ledger, socket_path)
    client = connect(socket_path)
    release, holder = _blocked_writer(ledger)
    try:
        with ThreadPoolExecutor(8) as pool:
            waiting = [pool.submit(client.lookup_accounts, [i]) for i in range(1, 9)]
            time.sleep(0.2)
            started = time.monotonic()
            server.close()
            for future in waiting:
                with pytest.raises(LedgerUnavailableError):
                    future.result(PROMPT_S)
            assert time.monotonic() - started < PROMPT_S
    finally:
        release.set()
        holder.join()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailableError, match="closed the connection"):
        client.create_transfers([_transfer(1)])
    assert time.monotonic() - started < 1.0
    client.close()


def test_a_client_that_goes_away_leaves_the_others_served(
    ledger: Ledger, server: LedgerServer, socket_path: Path
) -> None:
    clients = [connect(socket_path) for _ in range(3)]
    clients[0]._sock.shutdown(socket.SHUT_RDWR)  # gone without a word, as a killed process
    for client in clients[1:]:
        assert client.create_transfers([_transfer(4_000_000 + id(client) % 1000)])[0].status == (
            CreateTransferStatus.CREATED
        )
    for client in clients:
        client.close()


# --- the socket file ------------------------------------------------------------------------


def test_the_socket_is_private(server: LedgerServer, socket_path: Path) -> None:
    mode = os.stat(socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert [p.name for p in socket_path.parent.iterdir() if p.name.startswith(".puhui-")] == []


def test_a_stale_socket_is_replaced_a_live_one_refused(ledger: Ledger, socket_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))  # bound, never listening: what a dead server leaves
    stale.close()
    assert socket_path.exists()
    with serve(ledger, socket_path):
        with connect(socket_path) as client:
            assert client.lookup_accounts([1])[0].id == 1
        with pytest.raises(LedgerSocketInUseError, match="already listens"):
            serve(ledger, socket_path)
        with connect(socket_path) as client:  # the refusal left the live server alone
            assert client.lookup_accounts([2])[0].id == 2
    assert not socket_path.exists()


def test_a_file_that_is_not_a_socket_is_left_alone(ledger: Ledger, socket_path: Path) -> None:
    socket_path.write_text("not a socket")
    with pytest.raises(LedgerSocketInUseError) as raised:
        serve(ledger, socket_path)
    assert raised.value.code == "ledger_socket_in_use"
    assert socket_path.read_text() == "not a socket"


# --- bad frames -----------------------------------------------------------------------------


BAD_FRAMES = {
    "oversized": W.HEADER.pack(W.FRAME_PAYLOAD_BYTES_MAX + 1, 1, W.OP_CREATE_TRANSFERS, 0),
    "huge": W.HEADER.pack(0xFFFFFFFF, 1, W.OP_CREATE_TRANSFERS, 0),
    "unknown operation": W.HEADER.pack(0, 1, 999, 0),
    "partial events": W.HEADER.pack(100, 1, W.OP_CREATE_TRANSFERS, 0) + bytes(100),
    "short filter": W.HEADER.pack(64, 1, W.OP_GET_ACCOUNT_TRANSFERS, 0) + bytes(64),
    "too many ids": W.HEADER.pack(16 * 8190, 1, W.OP_LOOKUP_ACCOUNTS, 0) + bytes(16 * 8190),
    "tick with a payload": W.HEADER.pack(8, 1, W.OP_TICK, 0) + bytes(8),
    "a status in a request": W.HEADER.pack(0, 1, W.OP_TICK, 1),
    "cut short": W.HEADER.pack(128, 1, W.OP_CREATE_TRANSFERS, 0)[:10],
}


@pytest.mark.parametrize("frame", sorted(BAD_FRAMES))
def test_a_bad_frame_closes_its_connection_only(
    frame: str, ledger: Ledger, server: LedgerServer, socket_path: Path
) -> None:
    other = connect(socket_path)
    waiting = other.lookup_accounts([1])
    assert waiting[0].id == 1
    bad = _raw(socket_path)
    bad.sendall(BAD_FRAMES[frame])
    if frame == "cut short":
        bad.shutdown(socket.SHUT_WR)
    assert _closed_by_server(bad)
    bad.close()
    assert other.create_transfers([_transfer(5_000_000)])[0].status == CreateTransferStatus.CREATED
    with connect(socket_path) as fresh:
        assert fresh.lookup_transfers([5_000_000])[0].id == 5_000_000
    other.close()


def test_a_bad_handshake_closes_the_connection(server: LedgerServer, socket_path: Path) -> None:
    garbage = _raw(socket_path, hello=False)
    garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert _closed_by_server(garbage)
    garbage.close()

    newer = _raw(socket_path, hello=False)
    newer.sendall(W.HELLO.pack(W.MAGIC, W.VERSION + 1, 0))
    magic, version, status, size = W.WELCOME.unpack(_receive(newer, W.WELCOME.size))
    assert (magic, version, status, size) == (W.MAGIC, W.VERSION, W.WELCOME_VERSION_UNSUPPORTED, 0)
    assert _closed_by_server(newer)
    newer.close()
    with connect(socket_path) as client:
        assert client.tick() == 0


def test_a_good_raw_frame_is_answered(
    ledger: Ledger, server: LedgerServer, socket_path: Path
) -> None:
    """The format as docs/ledger.md describes it, spoken without the client."""
    sock = _raw(socket_path)
    events = transfers_to_array([_transfer(6_000_000), _transfer(6_000_001)]).tobytes()
    sock.sendall(W.HEADER.pack(len(events), 77, W.OP_CREATE_TRANSFERS, 0) + events)
    length, request_id, operation, status = W.HEADER.unpack(_receive(sock, W.HEADER.size))
    assert (length, request_id, operation, status) == (32, 77, W.OP_CREATE_TRANSFERS, W.STATUS_OK)
    results = np.frombuffer(_receive(sock, length), RESULT_DTYPE)
    assert (results["status"] == CreateTransferStatus.CREATED).all()
    # Pipelined: three requests sent before any answer is read, each answered by its id.
    ids = np.array([(6_000_000, 0), (6_000_001, 0), (1, 0)], W.IDS_DTYPE).tobytes()
    sock.sendall(
        W.HEADER.pack(len(ids), 10, W.OP_LOOKUP_TRANSFERS, 0)
        + ids
        + W.HEADER.pack(0, 11, W.OP_TICK, 0)
        + W.HEADER.pack(len(ids), 12, W.OP_LOOKUP_ACCOUNTS, 0)
        + ids
    )
    answers = {}
    for _ in range(3):
        length, request_id, operation, status = W.HEADER.unpack(_receive(sock, W.HEADER.size))
        assert status == W.STATUS_OK
        answers[request_id] = (operation, _receive(sock, length))
    assert answers[10][0] == W.OP_LOOKUP_TRANSFERS
    assert np.frombuffer(answers[10][1], TRANSFER_DTYPE)["id_lo"].tolist() == [6_000_000, 6_000_001]
    assert answers[11] == (W.OP_TICK, bytes(8))
    assert np.frombuffer(answers[12][1], ACCOUNT_DTYPE)["id_lo"].tolist() == [1]
    sock.close()
    assert len(ledger.lookup_transfers([6_000_000, 6_000_001])) == 2


# --- another process ------------------------------------------------------------------------

CHILD = """
import sys
from puhui.ledger import Transfer, connect
with connect(sys.argv[1]) as remote:
    print(remote.identity, flush=True)
    results = remote.create_transfers(
        [Transfer(id=7_000_000 + i, debit_account_id=1, credit_account_id=2, amount=5,
                  ledger=1, code=1) for i in range(100)]
    )
    print(sum(r.status.name == "CREATED" for r in results), flush=True)
"""


def _child_env() -> dict[str, str]:
    source = str(Path(puhui.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": source}


def test_another_process_creates_transfers_this_one_sees(
    ledger: Ledger, server: LedgerServer, socket_path: Path
) -> None:
    before = ledger.lookup_accounts([1, 2])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(socket_path)],
        capture_output=True,
        env=_child_env(),
        timeout=120,
        check=True,
    )
    identity, created = child.stdout.decode().split()
    assert identity == ledger.identity
    assert created == "100"
    assert len(ledger.lookup_transfers([7_000_000 + i for i in range(100)])) == 100
    after = ledger.lookup_accounts([1, 2])
    assert after[0].debits_posted - before[0].debits_posted == 500
    assert after[1].credits_posted - before[1].credits_posted == 500


SERVER_CHILD = """
import sys, threading, time
from puhui.ledger import open, serve
ledger = open(sys.argv[1], state_dir=sys.argv[2])
server = serve(ledger, sys.argv[3])
holding = threading.Event()
def hold(engine):  # hold the writer: requests wait
    holding.set()
    time.sleep(3600)
threading.Thread(target=ledger.read_state, args=(hold,), daemon=True).start()
holding.wait()
print("serving", flush=True)
time.sleep(3600)
"""


def test_a_server_process_killed_fails_waiting_calls_promptly(tmp_path: Path) -> None:
    path = tmp_path / "child.sock"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER_CHILD,
            str(tmp_path / "child.sqlite"),
            str(tmp_path / "child.state"),
            str(path),
        ],
        stdout=subprocess.PIPE,
        env=_child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"serving\n"
        client = connect(path)
        with ThreadPoolExecutor(4) as pool:
            waiting = [
                pool.submit(client.create_accounts, [Account(id=i, ledger=1, code=1)])
                for i in range(1, 5)
            ]
            time.sleep(0.2)
            assert not any(f.done() for f in waiting)
            started = time.monotonic()
            child.send_signal(signal.SIGKILL)
            for future in waiting:
                with pytest.raises(LedgerUnavailableError):
                    future.result(PROMPT_S)
            assert time.monotonic() - started < PROMPT_S
        client.close()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert path.exists()  # what a killed server leaves: the next serve replaces it
    with (
        open(tmp_path / "child.sqlite", state_dir=tmp_path / "child.state") as ledger,
        serve(ledger, path),
        connect(path) as client,
    ):
        assert client.lookup_accounts([1]) == []


# --- review findings: cancelled waits, a server pushing back, a lost connection -------------


def _fill_the_servers_queue(remote: RemoteLedger) -> None:
    """More single-transfer creates in flight than the server takes from one connection
    while its ledger's writer is held (it stops reading: the client's sends then block)."""
    one = transfers_to_array([_transfer(10**6)])
    for _ in range(1100):
        remote._send(W.OP_CREATE_TRANSFERS, one.view(np.uint8).data, lambda body: body)


def test_a_cancelled_async_create_leaves_the_client_working(
    ledger: Ledger, remote: RemoteLedger
) -> None:
    """An asyncio task awaiting a create is cancelled (a request timeout, a client gone):
    its answer arrives later for nobody, and every other call still gets its own. (The
    client's reader died on the cancelled future, and every later call waited for ever.)"""
    release, holder = _blocked_writer(ledger)
    async_ledger = AsyncLedger(remote)

    async def cancel_one() -> None:
        task = asyncio.create_task(async_ledger.create_transfers([_transfer(1)]))
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(cancel_one())
    release.set()
    holder.join()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        later = pool.submit(remote.lookup_transfers, [1])
        assert [t.id for t in later.result(timeout=PROMPT_S)] == [1]  # applied all the same
    assert remote._reader.is_alive()


def test_cancelled_waits_do_not_stop_the_others_failing_when_the_server_goes(
    ledger: Ledger, socket_path: Path
) -> None:
    server = serve(ledger, socket_path)
    remote = connect(socket_path)
    try:
        release, holder = _blocked_writer(ledger)
        one = transfers_to_array([_transfer(1)])
        cancelled = remote._send(W.OP_CREATE_TRANSFERS, one.view(np.uint8).data, bytes)
        assert cancelled.cancel()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(remote.lookup_accounts, [1])
            time.sleep(0.2)
            assert not waiting.done()  # the writer is held: the read waits its turn
            closing = threading.Thread(target=server.close)
            closing.start()
            with pytest.raises(LedgerUnavailableError):
                waiting.result(timeout=PROMPT_S + 15)  # the server's own close waits 10 s
        release.set()
        holder.join()
        closing.join()
    finally:
        remote.close()


def test_async_creates_never_block_the_event_loop(ledger: Ledger, remote: RemoteLedger) -> None:
    """A server pushing back (its writer held, its queue full) blocks the sender: an async
    create sends from a worker thread, so the event loop goes on (it stalled for seconds)."""
    release, holder = _blocked_writer(ledger)
    _fill_the_servers_queue(remote)
    big = [_transfer(2 * 10**6 + i) for i in range(8189)]
    async_ledger = AsyncLedger(remote)

    async def measure() -> float:
        beats: list[float] = []

        async def beat() -> None:
            while True:
                beats.append(time.monotonic())
                await asyncio.sleep(0.05)

        beating = asyncio.create_task(beat())
        create = asyncio.create_task(async_ledger.create_transfers(big))
        await asyncio.sleep(1.0)  # the send is blocked all this time
        release.set()
        await asyncio.wait_for(create, 60)
        beating.cancel()
        return float(np.diff(beats).max())

    try:
        assert asyncio.run(measure()) < 0.5
    finally:
        release.set()
        holder.join()


def test_close_is_bounded_while_a_send_is_blocked(ledger: Ledger, socket_path: Path) -> None:
    """``close`` waits at most ``CLOSE_TIMEOUT_S`` for a sender the server pushes back
    (it waited for the send lock as long as the server's writer was held)."""
    server = serve(ledger, socket_path)
    remote = connect(socket_path)
    release, holder = _blocked_writer(ledger)
    try:
        _fill_the_servers_queue(remote)
        big = transfers_to_array([_transfer(2 * 10**6 + i) for i in range(8189)])
        sender = threading.Thread(
            target=remote._send,
            args=(W.OP_CREATE_TRANSFERS, big.view(np.uint8).data, lambda body: body),
            daemon=True,
        )
        sender.start()
        time.sleep(0.5)
        closing = threading.Thread(target=remote.close, daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT_S + PROMPT_S)
        assert not closing.is_alive()
    finally:
        release.set()
        holder.join()
        server.close()


def test_a_lost_connection_is_told_to_its_listeners(ledger: Ledger, socket_path: Path) -> None:
    server = serve(ledger, socket_path)
    remote = connect(socket_path)
    told: list[str] = []
    remote.on_lost(told.append)
    server.close()
    deadline = time.monotonic() + PROMPT_S
    while not told and time.monotonic() < deadline:
        time.sleep(0.01)
    assert told == ["the ledger server closed the connection"]
    remote.close()
    with connect_and_close(ledger, socket_path) as (_other, heard):
        pass
    assert heard == []  # a client's own close is not a loss


@contextlib.contextmanager
def connect_and_close(
    ledger: Ledger, socket_path: Path
) -> Iterator[tuple[RemoteLedger, list[str]]]:
    with serve(ledger, socket_path):
        client = connect(socket_path)
        heard: list[str] = []
        client.on_lost(heard.append)
        try:
            yield client, heard
        finally:
            client.close()
