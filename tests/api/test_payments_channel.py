"""Where a customer made a request (device, IP address, location) reaches risk control over
HTTP: each money route's optional ``channel``, checked like the rest of the body."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from puhui import risk

from .conftest import Api, make_api, payments_world, post_ok

P = "/v1/payments"
CHANNEL = {"device_id": "app-7f3a", "ip": "2001:db8::1", "latitude": 31.23, "longitude": 121.47}
CHALLENGED_AMOUNT = 777


class Recording:
    """Accepts everything (challenges ``CHALLENGED_AMOUNT``) and keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[risk.RiskEvent] = []
        self.trusted: list[tuple[int, str]] = []

    def __call__(self, events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
        self.events.extend(events)
        return [
            risk.RiskDecision(risk.Decision.CHALLENGE, 50)
            if e.amount == CHALLENGED_AMOUNT
            else risk.RiskDecision(risk.Decision.ACCEPT, 0)
            for e in events
        ]

    def trust_device(self, customer_id: int, device_id: str) -> None:
        self.trusted.append((customer_id, device_id))


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Api, Recording, dict[str, str]]]:
    recording = Recording()
    for api in make_api(tmp_path, decide=recording):
        world = payments_world(api)
        recording.events.clear()
        yield api, recording, world


def _seen(event: risk.RiskEvent) -> dict[str, Any]:
    return {
        "device_id": event.device_id,
        "ip": event.ip,
        "latitude": event.latitude,
        "longitude": event.longitude,
    }


def _money_posts(api: Api, world: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    c, m = world["customer"], world["merchant"]
    bill = api.client.get(
        f"{P}/customers/{c}/bill-bindings/{world['binding']}/bill", headers=api.auth()
    ).json()["bill"]
    order = post_ok(
        api,
        f"{P}/orders",
        {
            "buyer_customer_id": int(c),
            "merchant_id": int(m),
            "amount": 20_00,
            "currency": "CNY",
            "fulfilment": "express",
            "title": "tea",
        },
    )
    card = {"card_id": int(world["card"]), "amount": 10_00, "currency": "CNY"}
    return [
        (f"{P}/customers/{c}/top-ups", card),
        (f"{P}/customers/{c}/withdrawals", card),
        (
            f"{P}/customers/{c}/transfers",
            {"payee": {"customer_id": int(world["other_customer"])}, "amount": 1_00},
        ),
        (f"{P}/customers/{c}/merchant-payments", {"merchant_qr": world["merchant_qr"]}),
        (f"{P}/merchants/{m}/collections", {"payment_code": world["payment_code"]}),
        (f"{P}/orders/{order['id']}/pay", {}),
        (
            f"{P}/customers/{c}/bill-bindings/{world['binding']}/payments",
            {"bill_id": bill["bill_id"]},
        ),
    ]


def _with_defaults(body: dict[str, Any]) -> dict[str, Any]:
    if "merchant_qr" in body or "payment_code" in body or "payee" in body:
        return {"amount": 2_00, "currency": "CNY"} | body
    return body


def test_each_money_route_hands_its_channel_to_risk_control(
    recorded: tuple[Api, Recording, dict[str, str]],
) -> None:
    api, recording, world = recorded
    for path, body in _money_posts(api, world):
        recording.events.clear()
        answer = post_ok(api, path, _with_defaults(body) | {"channel": CHANNEL})
        assert answer["status"] in ("completed", "pending"), (path, answer)
        assert [_seen(e) for e in recording.events] == [CHANNEL], path


def test_without_a_channel_risk_control_knows_nothing_of_the_device(
    recorded: tuple[Api, Recording, dict[str, str]],
) -> None:
    api, recording, world = recorded
    nothing = {"device_id": "", "ip": "", "latitude": None, "longitude": None}
    for path, body in _money_posts(api, world):
        recording.events.clear()
        post_ok(api, path, _with_defaults(body) or None)  # the order payment: no body at all
        assert [_seen(e) for e in recording.events] == [nothing], path


def test_a_passed_step_up_on_a_device_makes_it_trusted(
    recorded: tuple[Api, Recording, dict[str, str]],
) -> None:
    api, recording, world = recorded
    c, other = world["customer"], world["other_customer"]
    held = [
        post_ok(
            api,
            f"{P}/customers/{c}/transfers",
            {"payee": {"customer_id": int(other)}, "amount": CHALLENGED_AMOUNT, "currency": "CNY"},
        )["id"]
        for _ in range(2)
    ]
    failed = post_ok(
        api, f"{P}/operations/{held[0]}/verification", {"passed": False, "channel": CHANNEL}
    )
    assert failed["status"] == "failed"
    assert recording.trusted == []  # a failed answer teaches nothing
    passed = post_ok(
        api, f"{P}/operations/{held[1]}/verification", {"passed": True, "channel": CHANNEL}
    )
    assert passed["status"] == "completed"
    assert recording.trusted == [(int(c), CHANNEL["device_id"])]


BAD_CHANNELS: list[Any] = [
    {"ip": "999.1.1.1"},
    {"ip": "not an address"},
    {"ip": "10.0.0.1/24"},
    {"latitude": 91.0, "longitude": 0.0},
    {"latitude": 0.0, "longitude": -180.5},
    {"latitude": 31.2},  # without its longitude
    {"longitude": 121.4},
    {"latitude": "31.2", "longitude": "121.4"},  # text, not numbers
    {"device_id": "d" * 129},
    {"device_id": 42},
    {"imei": "490154203237518"},  # not a field
    "app-7f3a",
    [],
]


@pytest.mark.parametrize("channel", BAD_CHANNELS, ids=[f"c{i}" for i in range(len(BAD_CHANNELS))])
def test_a_bad_channel_is_invalid_input_and_moves_nothing(
    recorded: tuple[Api, Recording, dict[str, str]], channel: Any
) -> None:
    api, recording, world = recorded
    c, other = world["customer"], world["other_customer"]
    before = api.client.get(f"{P}/customers/{c}/wallets/CNY", headers=api.auth()).json()
    assert before["available"] > 0
    response = api.client.post(
        f"{P}/customers/{c}/transfers",
        json={
            "payee": {"customer_id": int(other)},
            "amount": 1_00,
            "currency": "CNY",
            "channel": channel,
        },
        headers=api.auth(),
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert all(e["loc"][:2] == ["body", "channel"] for e in problem["errors"]), problem
    assert recording.events == []
    after = api.client.get(f"{P}/customers/{c}/wallets/CNY", headers=api.auth()).json()
    assert after == before


def test_a_location_that_is_not_a_number_is_refused(
    recorded: tuple[Api, Recording, dict[str, str]],
) -> None:
    """JSON has no NaN or Infinity, but Python's reader takes them: refused all the same."""
    api, recording, world = recorded
    c, other = world["customer"], world["other_customer"]
    for value in ("NaN", "Infinity"):
        body = (
            f'{{"payee": {{"customer_id": {other}}}, "amount": 100, "currency": "CNY",'
            f' "channel": {{"latitude": {value}, "longitude": 0}}}}'
        )
        response = api.client.post(
            f"{P}/customers/{c}/transfers",
            content=body.encode(),
            headers=api.auth(**{"content-type": "application/json"}),
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_input"
    assert recording.events == []


@pytest.mark.parametrize(
    ("given", "seen"),
    [
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),  # the canonical form
        ("::ffff:203.0.113.9", "203.0.113.9"),  # an IPv4 customer behind a dual-stack socket
        ("::FFFF:CB00:7109", "203.0.113.9"),
        ("2001:db8::1%eth0", "2001:db8::1"),  # a zone names the receiving host's interface
        ("fe80::1%3", "fe80::1"),
        ("::ffff:203.0.113.9%eth0", "203.0.113.9"),
    ],
)
def test_an_address_is_the_customers_whatever_way_the_socket_spelled_it(
    recorded: tuple[Api, Recording, dict[str, str]], given: str, seen: str
) -> None:
    """Risk control matches addresses as text (``blocked_ips``, the per-address features):
    an IPv4 address written as IPv4-mapped IPv6, or an address with a zone id, reached it as
    another address (``::ffff:cb00:7109``, ``2001:db8::1%eth0``), out of a block list's reach."""
    api, recording, world = recorded
    c, other = world["customer"], world["other_customer"]
    post_ok(
        api,
        f"{P}/customers/{c}/transfers",
        {
            "payee": {"customer_id": int(other)},
            "amount": 1_00,
            "currency": "CNY",
            "channel": {"ip": given},
        },
    )
    assert [e.ip for e in recording.events] == [seen]
