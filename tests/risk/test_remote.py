"""One risk engine deciding for several processes: ``serve_decisions`` / ``connect_decisions``."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from puhui.clock import ManualClock
from puhui.errors import InvalidInputError
from puhui.risk import EventKind, RiskEngine, RiskEvent, RiskLists, load_ruleset
from puhui.risk._engine import DEFAULT_RULES, engine_schema
from puhui.risk._remote import (
    RiskUnavailableError,
    connect_decisions,
    serve_decisions,
)

T0 = 1_767_000_000 * 10**9
MINUTE = 60 * 10**9
KEY = b"k" * 32


def _events(customer: int, count: int, *, start: int = 0, device: str = "d1") -> list[RiskEvent]:
    """A new customer on a new device paying ``count`` new payees a minute apart (the kind of
    fan-out the default rules hold once it goes on)."""
    return [
        RiskEvent(
            kind=EventKind.P2P,
            customer_id=customer,
            at_ns=T0 + (start + k) * MINUTE,
            amount=900_00,
            currency="CNY",
            counterparty=f"c:{customer * 1000 + start + k}",
            device_id=device,
            ip="10.0.0.1",
            latitude=31.2 if k % 2 else None,
            longitude=121.4 if k % 2 else None,
            tz_offset_s=8 * 3600,
            kyc_level=1,
            account_created_ns=T0 - 86_400 * 10**9,
        )
        for k in range(count)
    ]


def _engine() -> RiskEngine:
    return RiskEngine(
        load_ruleset(DEFAULT_RULES, engine_schema()), lists=RiskLists(ManualClock(T0))
    )


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    # A Unix socket's path is at most 107 bytes: pytest's tmp_path may be longer.
    short = Path(f"/tmp/puhui-risk-test-{os.getpid()}-{threading.get_ident() % 10_000}.sock")
    yield short
    short.unlink(missing_ok=True)


def test_remote_decisions_are_the_engines_own(socket_path: Path) -> None:
    here, there = _engine(), _engine()
    batches = [_events(7, 12), _events(7, 12, start=12), _events(8, 3, device="")]
    with serve_decisions(there, socket_path, KEY), connect_decisions(socket_path, KEY) as remote:
        for batch in batches:
            assert remote(batch) == here(batch)
        assert remote([]) == []
    held = [d for d in here(_events(7, 5, start=24)) if d.decision != "accept"]
    assert held, "the batches must reach rules that hold, or the comparison proves little"


def test_trust_device_reaches_the_engine(socket_path: Path) -> None:
    engine = _engine()
    trusted: list[tuple[int, str]] = []
    real = engine.trust_device

    def spy(customer_id: int, device_id: str) -> None:
        trusted.append((customer_id, device_id))
        real(customer_id, device_id)

    engine.trust_device = spy  # type: ignore[method-assign]
    with serve_decisions(engine, socket_path, KEY), connect_decisions(socket_path, KEY) as remote:
        remote.trust_device(7, "phone")
    assert trusted == [(7, "phone")]


def test_many_threads_share_one_client(socket_path: Path) -> None:
    here, there = _engine(), _engine()
    expected = {c: here(_events(c, 4, device=f"d{c}")) for c in range(100, 132)}
    answers: dict[int, object] = {}
    with serve_decisions(there, socket_path, KEY), connect_decisions(socket_path, KEY) as remote:

        def ask(customer: int) -> None:
            answers[customer] = remote(_events(customer, 4, device=f"d{customer}"))

        threads = [threading.Thread(target=ask, args=(c,)) for c in expected]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answers == expected


def test_socket_is_private_and_removed(socket_path: Path) -> None:
    with serve_decisions(_engine(), socket_path, KEY):
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert not socket_path.exists()


def test_a_wrong_key_is_refused(socket_path: Path) -> None:
    with serve_decisions(_engine(), socket_path, KEY):
        with pytest.raises(RiskUnavailableError, match="refused"):
            connect_decisions(socket_path, b"x" * 32)
        with connect_decisions(socket_path, KEY) as remote:  # the server still serves others
            assert len(remote(_events(7, 1))) == 1


def test_no_server_and_a_server_gone(socket_path: Path) -> None:
    with pytest.raises(RiskUnavailableError, match="cannot be reached"):
        connect_decisions(socket_path, KEY)
    server = serve_decisions(_engine(), socket_path, KEY)
    remote = connect_decisions(socket_path, KEY)
    server.close()
    with pytest.raises(RiskUnavailableError):
        remote(_events(7, 1))
    remote.close()
    with pytest.raises(RiskUnavailableError, match="closed"):
        remote(_events(7, 1))


def test_bad_requests_get_an_error_and_the_server_goes_on(socket_path: Path) -> None:
    from multiprocessing.connection import Client

    with serve_decisions(_engine(), socket_path, KEY):
        with Client(str(socket_path), family="AF_UNIX", authkey=KEY) as raw:
            for request in (
                b"not json",
                b'{"op": "format_disk"}',
                b'{"op": "decide", "columns": []}',
                b'{"op": "decide", "columns": {"kind": [0]}}',
                b'{"op": "trust_device", "customer_id": "7", "device_id": "d"}',
            ):
                raw.send_bytes(request)
                answer = json.loads(raw.recv_bytes())
                assert answer["error"][0] in {"invalid_input", "risk_event_invalid"}, answer
        with connect_decisions(socket_path, KEY) as remote:
            with pytest.raises(InvalidInputError):
                remote([RiskEvent(kind=EventKind.P2P, customer_id=7, at_ns=T0, amount=-1)])
            assert len(remote(_events(7, 1))) == 1


def test_a_client_that_never_answers_the_challenge_stops_no_one(socket_path: Path) -> None:
    with serve_decisions(_engine(), socket_path, KEY):
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(str(socket_path))  # and says nothing
        try:
            with connect_decisions(socket_path, KEY) as remote:
                assert len(remote(_events(7, 1))) == 1
        finally:
            silent.close()


def test_another_process_decides_on_this_engine(socket_path: Path) -> None:
    engine = _engine()
    code = (
        "import sys; from puhui.risk._remote import connect_decisions;"
        "from puhui.risk import RiskEvent, EventKind;"
        f"r = connect_decisions({str(socket_path)!r}, {KEY!r});"
        f"d = r([RiskEvent(kind=EventKind.P2P, customer_id=5, at_ns={T0}, amount=100,"
        " counterparty='c:6')]);"
        "print(d[0].decision.value)"
    )
    with serve_decisions(engine, socket_path, KEY):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
    assert out.stdout.strip() == "accept"
    # The engine counted the other process's event: customer 5 is known to it now.
    assert engine.features.watermark_ns >= T0
