"""The payments routes over HTTP: each route's happy path, its refusals (validation 422 with
its code, business errors with theirs, 404 for another tenant's objects), idempotent replay
of a payment, scopes, and money that adds up."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from puhui import risk

from .conftest import Api, make_api, payments_world, post_ok

P = "/v1/payments"


@pytest.fixture
def world(api: Api) -> dict[str, str]:
    return payments_world(api)


def _get(api: Api, path: str, token: str | None = None) -> Any:
    response = api.client.get(path, headers=api.auth(token))
    assert response.status_code == 200, (path, response.text)
    return response.json()


def _refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def _wallet(api: Api, customer: str | int, token: str | None = None) -> int:
    available: int = _get(api, f"{P}/customers/{customer}/wallets/CNY", token)["available"]
    return available


# --- customers and KYC -----------------------------------------------------------------------


def test_a_customer_is_registered_verified_and_given_a_card(api: Api) -> None:
    created = api.client.post(
        f"{P}/customers", json={"phone": "+8613811112222", "display_name": "Li"}, headers=api.auth()
    )
    assert created.status_code == 201
    customer = created.json()
    assert customer["kyc_level"] == 0 and customer["frozen"] is False
    c = customer["id"]
    assert _get(api, f"{P}/customers/{c}") == customer
    full_early = api.client.post(
        f"{P}/customers/{c}/full-verification", json={"biometric_passed": True}, headers=api.auth()
    )
    _refused(full_early, 409, "kyc_level_invalid")
    level1 = post_ok(api, f"{P}/customers/{c}/identity", {"national_id": "110101199001011234"})
    assert level1["kyc_level"] == 1
    card = post_ok(
        api, f"{P}/customers/{c}/cards", {"card_token": "t1", "bank_name": "ICBC", "last4": "0042"}
    )
    assert _get(api, f"{P}/customers/{c}/cards") == {"data": [card]}
    level2 = post_ok(api, f"{P}/customers/{c}/full-verification", {"biometric_passed": True})
    assert level2["kyc_level"] == 2


def test_customer_input_is_checked(api: Api) -> None:
    post_ok(api, f"{P}/customers", {"phone": "+8613811112222", "display_name": "Li"})
    cases = [
        ({"phone": "+8613811112222", "display_name": "Li", "extra": 1}, 422, "invalid_input"),
        ({"phone": "+86 abc", "display_name": "Li"}, 422, "invalid_phone"),
        ({"phone": 8613811112222, "display_name": "Li"}, 422, "invalid_input"),
        ({"phone": "+8613811112222", "display_name": "Wang"}, 409, "phone_taken"),
    ]
    for body, status, code in cases:
        response = api.client.post(f"{P}/customers", json=body, headers=api.auth())
        _refused(response, status, code)
    missing = api.client.get(f"{P}/customers/9999", headers=api.auth())
    _refused(missing, 404, "customer_not_found")
    bad_card = api.client.post(
        f"{P}/customers/1/cards",
        json={"card_token": "t", "bank_name": "B", "last4": "12345"},
        headers=api.auth(),
    )
    _refused(bad_card, 422, "invalid_input")


# --- money in and out ------------------------------------------------------------------------


def test_top_up_withdraw_and_their_refusals(api: Api, world: dict[str, str]) -> None:
    c, card = world["customer"], world["card"]
    before = _wallet(api, c)
    out = post_ok(
        api,
        f"{P}/customers/{c}/withdrawals",
        {"card_id": int(card), "amount": 1_000_00, "currency": "CNY"},
    )
    assert out["kind"] == "withdrawal" and out["status"] == "completed"
    assert _wallet(api, c) == before - 1_000_00
    too_much = api.client.post(
        f"{P}/customers/{c}/withdrawals",
        json={"card_id": int(card), "amount": 40_000_00, "currency": "CNY"},
        headers=api.auth(),
    )
    _refused(too_much, 409, "insufficient_funds")
    no_card = api.client.post(
        f"{P}/customers/{c}/top-ups",
        json={"card_id": 999, "amount": 1_00, "currency": "CNY"},
        headers=api.auth(),
    )
    _refused(no_card, 404, "card_not_found")
    for amount, code in [(0, "invalid_input"), (1 << 63, "invalid_input"), ("1", "invalid_input")]:
        response = api.client.post(
            f"{P}/customers/{c}/top-ups",
            json={"card_id": int(card), "amount": amount, "currency": "CNY"},
            headers=api.auth(),
        )
        _refused(response, 422, code)
    unknown = api.client.post(
        f"{P}/customers/{c}/top-ups",
        json={"card_id": int(card), "amount": 1_00, "currency": "XXX"},
        headers=api.auth(),
    )
    _refused(unknown, 422, "unknown_currency")
    assert _wallet(api, c) == before - 1_000_00


# --- P2P and merchant payments ---------------------------------------------------------------


def test_p2p_by_id_phone_and_qr(api: Api, world: dict[str, str]) -> None:
    c, other = world["customer"], world["other_customer"]
    phone = _get(api, f"{P}/customers/{other}")["phone"]
    payer_before, payee_before = _wallet(api, c), _wallet(api, other)
    for payee in ({"customer_id": int(other)}, {"phone": phone}, {"qr": f"puhui://c/{other}"}):
        op = post_ok(
            api,
            f"{P}/customers/{c}/transfers",
            {"payee": payee, "amount": 1_00, "currency": "CNY", "note": "tea"},
        )
        assert (op["kind"], op["status"], op["payee_customer_id"]) == (
            "p2p",
            "completed",
            int(other),
        )
        assert op["note"] == "tea" and int(op["id"]) > 0
        assert _get(api, f"{P}/operations/{op['id']}") == op
    assert _wallet(api, c) == payer_before - 3_00
    assert _wallet(api, other) == payee_before + 3_00


def test_p2p_refusals(api: Api, world: dict[str, str]) -> None:
    c, other = world["customer"], world["other_customer"]

    def pay(payer: str, payee: dict[str, Any], amount: int = 1_00) -> Any:
        return api.client.post(
            f"{P}/customers/{payer}/transfers",
            json={"payee": payee, "amount": amount, "currency": "CNY"},
            headers=api.auth(),
        )

    _refused(pay(c, {"customer_id": int(c)}), 422, "same_party")
    _refused(pay(c, {"customer_id": int(other), "phone": "+8613800000002"}), 422, "invalid_payload")
    _refused(pay(c, {"customer_id": int(other)}, 50_001_00), 409, "kyc_limit_exceeded")
    _refused(pay(other, {"customer_id": int(c)}, 300_00), 409, "kyc_limit_exceeded")
    _refused(pay(c, {"phone": "+8613999999999"}), 404, "customer_not_found")
    _refused(pay(c, {"qr": "puhui://m/1"}), 404, "customer_not_found")


def test_merchant_payment_by_qr_and_collection_by_payment_code(
    api: Api, world: dict[str, str]
) -> None:
    c, m = world["customer"], world["merchant"]
    paid = post_ok(
        api,
        f"{P}/customers/{c}/merchant-payments",
        {"merchant_qr": world["merchant_qr"], "amount": 12_00, "currency": "CNY"},
    )
    assert (paid["kind"], paid["status"], paid["merchant_id"]) == (
        "merchant_payment",
        "completed",
        int(m),
    )
    collected = post_ok(
        api,
        f"{P}/merchants/{m}/collections",
        {"payment_code": world["payment_code"], "amount": 3_00, "currency": "CNY"},
    )
    assert collected["payer_customer_id"] == int(c) and collected["status"] == "completed"
    assert _get(api, f"{P}/merchants/{m}/balances/CNY")["posted"] == 15_00
    again = api.client.post(
        f"{P}/merchants/{m}/collections",
        json={"payment_code": world["payment_code"], "amount": 3_00, "currency": "CNY"},
        headers=api.auth(),
    )
    _refused(again, 409, "payment_code_invalid")
    wrong_qr = api.client.post(
        f"{P}/customers/{c}/merchant-payments",
        json={"merchant_qr": "puhui://m/999", "amount": 1_00, "currency": "CNY"},
        headers=api.auth(),
    )
    _refused(wrong_qr, 404, "merchant_not_found")
    merchant = _get(api, f"{P}/merchants/{m}")
    assert merchant["qr"] == world["merchant_qr"] and merchant["fee_bps"] == 60


def test_operations_are_listed_a_page_at_a_time(api: Api, world: dict[str, str]) -> None:
    c, other = world["customer"], world["other_customer"]
    for _ in range(4):
        post_ok(
            api,
            f"{P}/customers/{c}/transfers",
            {"payee": {"customer_id": int(other)}, "amount": 1_00, "currency": "CNY"},
        )
    everything = _get(api, f"{P}/customers/{c}/operations?limit=1000")["data"]
    seen: list[Any] = []
    cursor = None
    while True:
        query = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = _get(api, f"{P}/customers/{c}/operations{query}")
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert len({op["id"] for op in seen}) == len(seen) == 7  # top-up, 5 p2p, order
    kinds = {op["kind"] for op in seen}
    assert {"top_up", "p2p", "order_payment"} <= kinds
    bad = api.client.get(f"{P}/customers/{c}/operations?cursor=abc", headers=api.auth())
    _refused(bad, 400, "cursor_invalid")
    too_big = api.client.get(f"{P}/customers/{c}/operations?limit=5000", headers=api.auth())
    _refused(too_big, 422, "invalid_input")


# --- idempotency and scopes ------------------------------------------------------------------


def test_a_payment_post_replays_under_its_idempotency_key(api: Api, world: dict[str, str]) -> None:
    c, other = world["customer"], world["other_customer"]
    body = {"payee": {"customer_id": int(other)}, "amount": 7_00, "currency": "CNY"}
    headers = api.auth(**{"Idempotency-Key": "pay-1"})
    before = _wallet(api, c)
    first = api.client.post(f"{P}/customers/{c}/transfers", json=body, headers=headers)
    second = api.client.post(f"{P}/customers/{c}/transfers", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert _wallet(api, c) == before - 7_00
    changed = api.client.post(
        f"{P}/customers/{c}/transfers", json={**body, "amount": 8_00}, headers=headers
    )
    _refused(changed, 409, "idempotency_key_reused")
    assert _wallet(api, c) == before - 7_00


def test_a_read_only_key_reads_but_cannot_pay(api: Api, world: dict[str, str]) -> None:
    _, reader = api.tenants.create_key(api.a.id, ["payments:read"])
    c = world["customer"]
    assert _get(api, f"{P}/customers/{c}", reader)["id"] == int(c)
    refused = api.client.post(
        f"{P}/customers/{c}/transfers",
        json={
            "payee": {"customer_id": int(world["other_customer"])},
            "amount": 1,
            "currency": "CNY",
        },
        headers=api.auth(reader),
    )
    body = _refused(refused, 403, "scope_missing")
    assert body["scope"] == "payments:write"


# --- tenants ---------------------------------------------------------------------------------


def _without_request_id(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem body without its request id (which differs for every request)."""
    return {k: v for k, v in problem.items() if k != "request_id"}


def test_another_tenants_objects_answer_as_missing_ones(api: Api, world: dict[str, str]) -> None:
    """B names A's objects: the answer is the one for an object that exists nowhere."""
    b = api.token_b
    mine = payments_world(api, b, phone_prefix="1390000")
    pairs = [
        ("GET", f"/customers/{world['customer']}", "/customers/9999", None),
        ("GET", f"/merchants/{world['merchant']}", "/merchants/9999", None),
        ("GET", f"/operations/{world['operation']}", "/operations/12345", None),
        ("GET", f"/orders/{world['order']}", "/orders/12345", None),
        ("GET", f"/refunds/{world['refund']}", "/refunds/12345", None),
    ]
    for method, theirs, nowhere, body in pairs:
        probe = api.client.request(method, P + theirs, json=body, headers=api.auth(b))
        baseline = api.client.request(method, P + nowhere, json=body, headers=api.auth(b))
        assert probe.status_code == baseline.status_code == 404
        assert _without_request_id(probe.json()) == _without_request_id(baseline.json())
    c = mine["customer"]
    # B's customer pays A's customer (by id, phone or QR) or A's merchant: no such payee.
    a_phone = _get(api, f"{P}/customers/{world['other_customer']}")["phone"]
    for payee in ({"customer_id": int(world["other_customer"])}, {"phone": a_phone}):
        probe = api.client.post(
            f"{P}/customers/{c}/transfers",
            json={"payee": payee, "amount": 1_00, "currency": "CNY"},
            headers=api.auth(b),
        )
        assert _refused(probe, 404, "customer_not_found")["detail"] == "no such customer"
    to_a_merchant = api.client.post(
        f"{P}/customers/{c}/merchant-payments",
        json={"merchant_qr": world["merchant_qr"], "amount": 1_00, "currency": "CNY"},
        headers=api.auth(b),
    )
    _refused(to_a_merchant, 404, "merchant_not_found")
    # B's merchant scans A's customer's payment code: as if the code were invalid.
    a_code = post_ok(api, f"{P}/customers/{world['customer']}/payment-codes")["payment_code"]
    collect = api.client.post(
        f"{P}/merchants/{mine['merchant']}/collections",
        json={"payment_code": a_code, "amount": 1_00, "currency": "CNY"},
        headers=api.auth(b),
    )
    _refused(collect, 409, "payment_code_invalid")
    # An order between B's buyer and A's merchant cannot be made.
    order = api.client.post(
        f"{P}/orders",
        json={
            "buyer_customer_id": int(c),
            "merchant_id": int(world["merchant"]),
            "amount": 1_00,
            "currency": "CNY",
            "fulfilment": "express",
            "title": "x",
        },
        headers=api.auth(b),
    )
    _refused(order, 404, "merchant_not_found")


# --- escrow orders ---------------------------------------------------------------------------


def _order(api: Api, world: dict[str, str], amount: int = 50_00) -> str:
    order = post_ok(
        api,
        f"{P}/orders",
        {
            "buyer_customer_id": int(world["customer"]),
            "merchant_id": int(world["merchant"]),
            "amount": amount,
            "currency": "CNY",
            "fulfilment": "express",
            "title": "a kettle",
        },
    )
    assert order["status"] == "created" and order["in_escrow"] == 0
    return str(order["id"])


def test_an_escrow_order_from_payment_to_release(api: Api, world: dict[str, str]) -> None:
    o = _order(api, world)
    paid = post_ok(api, f"{P}/orders/{o}/pay")
    assert (paid["kind"], paid["status"], paid["order_id"]) == ("order_payment", "completed", o)
    assert _get(api, f"{P}/orders/{o}")["in_escrow"] == 50_00
    pay_again = api.client.post(f"{P}/orders/{o}/pay", headers=api.auth())
    _refused(pay_again, 409, "order_already_paid")
    early = api.client.post(f"{P}/orders/{o}/confirm", headers=api.auth())
    _refused(early, 409, "order_not_shipped")
    shipped = post_ok(api, f"{P}/orders/{o}/ship")
    assert shipped["status"] == "shipped" and shipped["confirm_by_ns"] is not None
    extended = post_ok(api, f"{P}/orders/{o}/extend", {"extra_s": 86_400})
    assert extended["confirm_by_ns"] == shipped["confirm_by_ns"] + 86_400 * 10**9
    done = post_ok(api, f"{P}/orders/{o}/confirm")
    assert done["status"] == "finished" and done["release_operation_id"] is not None
    released = _get(api, f"{P}/operations/{done['release_operation_id']}")
    assert released["kind"] == "escrow_release" and released["fee"] == 50_00 * 60 // 10_000
    _refused(api.client.post(f"{P}/orders/{o}/ship", headers=api.auth()), 409, "order_finished")


def test_an_unpaid_order_is_cancelled(api: Api, world: dict[str, str]) -> None:
    o = _order(api, world)
    assert post_ok(api, f"{P}/orders/{o}/cancel")["status"] == "closed"
    _refused(api.client.post(f"{P}/orders/{o}/pay", headers=api.auth()), 409, "order_closed")
    bad = api.client.post(
        f"{P}/orders",
        json={
            "buyer_customer_id": int(world["customer"]),
            "merchant_id": int(world["merchant"]),
            "amount": 1_00,
            "currency": "CNY",
            "fulfilment": "by pigeon",
            "title": "x",
        },
        headers=api.auth(),
    )
    _refused(bad, 422, "invalid_payload")


def test_a_refund_rejected_escalated_and_arbitrated(api: Api, world: dict[str, str]) -> None:
    o = _order(api, world)
    post_ok(api, f"{P}/orders/{o}/pay")
    refund = post_ok(api, f"{P}/orders/{o}/refunds", {"amount": 20_00, "reason": "late"})
    assert refund["status"] == "requested" and refund["order_id"] == o
    r = refund["id"]
    too_much = api.client.post(
        f"{P}/orders/{o}/refunds", json={"amount": 20_00, "reason": "x"}, headers=api.auth()
    )
    _refused(too_much, 409, "refund_open")
    assert post_ok(api, f"{P}/refunds/{r}/answer", {"approve": False})["status"] == "rejected"
    assert post_ok(api, f"{P}/refunds/{r}/escalate")["status"] == "escalated"
    bank_key = api.client.post(
        f"{P}/refunds/{r}/arbitration", json={"decision": "refund"}, headers=api.auth()
    )
    _refused(bank_key, 403, "scope_missing")
    operator = api.tenants.create("Puhui Ops", "operator")
    _, admin = api.tenants.create_key(operator.id, ["platform:admin"])
    before = _wallet(api, world["customer"])
    decided = post_ok(api, f"{P}/refunds/{r}/arbitration", {"decision": "refund"}, admin)
    assert decided["status"] == "refunded" and decided["outcome"] == "arbitrated_refund"
    assert _wallet(api, world["customer"]) == before + 20_00
    assert _get(api, f"{P}/orders/{o}")["in_escrow"] == 30_00
    again = api.client.post(
        f"{P}/refunds/{r}/arbitration", json={"decision": "refund"}, headers=api.auth(admin)
    )
    _refused(again, 409, "refund_state_invalid")


# --- bills -----------------------------------------------------------------------------------


def test_a_bill_is_queried_paid_and_receipted(api: Api, world: dict[str, str]) -> None:
    c, binding = world["customer"], world["binding"]
    bill = _get(api, f"{P}/customers/{c}/bill-bindings/{binding}/bill")["bill"]
    assert bill is not None and bill["amount"] > 0
    before = _wallet(api, c)
    changed = api.client.post(  # the amount shown is not the bill's: refused, nothing moves
        f"{P}/customers/{c}/bill-bindings/{binding}/payments",
        json={"bill_id": bill["bill_id"], "amount": bill["amount"] - 1},
        headers=api.auth(),
    )
    _refused(changed, 409, "bill_amount_changed")
    assert _wallet(api, c) == before
    op = post_ok(
        api,
        f"{P}/customers/{c}/bill-bindings/{binding}/payments",
        {"bill_id": bill["bill_id"], "amount": bill["amount"]},
    )
    assert (op["kind"], op["status"]) == ("bill_payment", "completed")
    assert _wallet(api, c) == before - bill["amount"]
    receipt = _get(api, f"{P}/operations/{op['id']}/receipt")
    assert receipt["bill_id"] == bill["bill_id"] and receipt["amount"] == bill["amount"]
    assert _get(api, f"{P}/customers/{c}/bill-bindings/{binding}/bill") == {"bill": None}
    twice = api.client.post(
        f"{P}/customers/{c}/bill-bindings/{binding}/payments",
        json={"bill_id": bill["bill_id"]},
        headers=api.auth(),
    )
    _refused(twice, 409, "nothing_due")
    no_receipt = api.client.get(f"{P}/operations/{world['operation']}/receipt", headers=api.auth())
    _refused(no_receipt, 409, "receipt_not_ready")
    unknown = api.client.post(
        f"{P}/customers/{c}/bill-bindings",
        json={"biller_code": "gas-co", "household_account": "1"},
        headers=api.auth(),
    )
    _refused(unknown, 404, "biller_not_found")
    missing = api.client.get(f"{P}/customers/{c}/bill-bindings/999/bill", headers=api.auth())
    _refused(missing, 404, "bill_binding_not_found")


# --- challenges ------------------------------------------------------------------------------

CHALLENGED_AMOUNT = 777


def _challenging(events: Sequence[risk.RiskEvent]) -> list[risk.RiskDecision]:
    """Risk that asks for step-up verification of every payment of 7.77."""
    return [
        risk.RiskDecision(
            risk.Decision.CHALLENGE if e.amount == CHALLENGED_AMOUNT else risk.Decision.ACCEPT,
            50 if e.amount == CHALLENGED_AMOUNT else 0,
        )
        for e in events
    ]


@pytest.fixture
def challenging_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, decide=_challenging)


def test_a_challenged_payment_waits_for_verification(challenging_api: Api) -> None:
    api = challenging_api
    world = payments_world(api)
    c, other = world["customer"], world["other_customer"]
    before = _wallet(api, c)
    held = []
    for _ in range(2):
        op = post_ok(
            api,
            f"{P}/customers/{c}/transfers",
            {"payee": {"customer_id": int(other)}, "amount": CHALLENGED_AMOUNT, "currency": "CNY"},
        )
        assert (op["status"], op["decision"]) == ("challenged", "challenge")
        held.append(op["id"])
    assert _wallet(api, c) == before - 2 * CHALLENGED_AMOUNT  # held, not available
    passed = post_ok(api, f"{P}/operations/{held[0]}/verification", {"passed": True})
    failed = post_ok(api, f"{P}/operations/{held[1]}/verification", {"passed": False})
    assert passed["status"] == "completed"
    assert failed["status"] == "failed" and failed["error_code"] == "challenge_failed"
    assert _wallet(api, c) == before - CHALLENGED_AMOUNT
    twice = api.client.post(
        f"{P}/operations/{held[0]}/verification", json={"passed": True}, headers=api.auth()
    )
    _refused(twice, 409, "operation_state_invalid")
