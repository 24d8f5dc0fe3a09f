"""Risk over HTTP: review cases listed, shown with their reasons and feature values, and
decided (approve posts the held payment, reject voids it and can freeze the account), only
for the tenant owning the customer; block/allow lists managed by platform operators and
seen by a running engine without a restart."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from puhui.risk import Decision, ListStore, RiskDecision, RiskEvent, SyncedRiskLists

from .conftest import Api, make_api, post_ok

P = "/v1/payments"
R = "/v1/risk"
REASON = "ato.drain(event.type=p2p, event.amount=1007, device.new_for_customer=True)"


def _review_odd_sums(events: Sequence[RiskEvent]) -> list[RiskDecision]:
    """Holds every amount ending in 7 for review; accepts the rest."""
    return [
        RiskDecision(Decision.REVIEW, 650, (REASON, "model:amount=+0.412"), "rs-1", "m-1")
        if e.amount % 10 == 7
        else RiskDecision(Decision.ACCEPT, 0, (), "rs-1", "m-1")
        for e in events
    ]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, decide=_review_odd_sums)


def _customer(api: Api, n: int, fund: int = 0, token: str | None = None) -> int:
    c = post_ok(
        api, f"{P}/customers", {"phone": f"+861390000{n:04d}", "display_name": f"C{n}"}, token
    )["id"]
    if fund:
        post_ok(api, f"{P}/customers/{c}/identity", {"national_id": f"ID-{n}"}, token)
        card = post_ok(
            api,
            f"{P}/customers/{c}/cards",
            {"card_token": f"tok-{n}", "bank_name": "ICBC", "last4": "1234"},
            token,
        )
        post_ok(api, f"{P}/customers/{c}/full-verification", {"biometric_passed": True}, token)
        top_up = {"card_id": card["id"], "amount": fund, "currency": "CNY"}
        assert post_ok(api, f"{P}/customers/{c}/top-ups", top_up, token)["status"] == "completed"
    return int(c)


def _pay(api: Api, payer: int, payee: int, amount: int, token: str | None = None) -> Any:
    return post_ok(
        api,
        f"{P}/customers/{payer}/transfers",
        {"payee": {"customer_id": payee}, "amount": amount, "currency": "CNY"},
        token,
    )


def _get(api: Api, path: str, token: str | None = None) -> Any:
    response = api.client.get(path, headers=api.auth(token))
    assert response.status_code == 200, (path, response.text)
    return response.json()


def _refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def _balance(api: Api, customer: int) -> int:
    """What the customer can spend (posted less held)."""
    return int(_get(api, f"{P}/customers/{customer}/wallets/CNY")["available"])


def test_cases_are_listed_and_shown_with_reasons_and_features(api: Api) -> None:
    alice, bob = _customer(api, 1, fund=500_00), _customer(api, 2)
    held = [_pay(api, alice, bob, amount) for amount in (10_07, 20_07, 30_07)]
    assert [op["status"] for op in held] == ["challenged"] * 3
    assert _pay(api, alice, bob, 5_00)["status"] == "completed"  # accepted: no case
    first = _get(api, f"{R}/cases?limit=2")
    assert [c["amount"] for c in first["data"]] == [10_07, 20_07]
    second = _get(api, f"{R}/cases?limit=2&cursor={first['next_cursor']}")
    assert [c["amount"] for c in second["data"]] == [30_07] and second["next_cursor"] is None
    case = first["data"][0]
    assert case["subject_kind"] == "operation" and case["subject_id"] == held[0]["id"]
    assert (case["customer_id"], case["score"], case["status"]) == (alice, 650, "open")
    assert case["reasons"] == [
        {
            "kind": "rule",
            "name": "ato.drain",
            "values": {
                "event.type": "p2p",
                "event.amount": "1007",
                "device.new_for_customer": "True",
            },
            "contribution": None,
        },
        {"kind": "model", "name": "amount", "values": {}, "contribution": 0.412},
    ]
    assert case["features"]["event.amount"] == "1007"
    assert _get(api, f"{R}/cases/{case['id']}") == case
    # Another tenant sees none of them, and a case of theirs is "no such case".
    assert _get(api, f"{R}/cases", api.token_b) == {"data": [], "next_cursor": None}
    theirs = api.client.get(f"{R}/cases/{case['id']}", headers=api.auth(api.token_b))
    nowhere = api.client.get(f"{R}/cases/999999", headers=api.auth(api.token_b))
    _refused(theirs, 404, "case_not_found")
    assert theirs.json()["detail"] == nowhere.json()["detail"]
    _refused(api.client.get(f"{R}/cases?cursor=bogus", headers=api.auth()), 400, "cursor_invalid")
    for position in ("true", "-1", '"7"'):  # crafted: not a case id
        crafted = base64.urlsafe_b64encode(f'{{"k":"risk_cases","i":{position}}}'.encode())
        query = f"{R}/cases?cursor={crafted.decode().rstrip('=')}"
        _refused(api.client.get(query, headers=api.auth()), 400, "cursor_invalid")


def test_a_tenants_page_skips_other_tenants_cases(api: Api) -> None:
    a1, a2 = _customer(api, 1, fund=500_00), _customer(api, 2)
    b1 = _customer(api, 3, fund=500_00, token=api.token_b)
    b2 = _customer(api, 4, token=api.token_b)
    for k in range(3):  # interleaved: A, B, A, B, ...
        _pay(api, a1, a2, 10_07 + k * 10)
        _pay(api, b1, b2, 10_07 + k * 10, api.token_b)
    pages, cursor = [], None
    while True:
        query = f"{R}/cases?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = _get(api, query, api.token_b)
        pages.append([c["customer_id"] for c in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [c for p in pages for c in p] == [b1] * 3 and all(len(p) <= 2 for p in pages)


def test_decisions_post_void_and_freeze_through_payments(api: Api) -> None:
    alice, bob = _customer(api, 1, fund=500_00), _customer(api, 2)
    approve_op = _pay(api, alice, bob, 100_07)
    reject_op = _pay(api, alice, bob, 50_07)
    cases = {c["amount"]: c for c in _get(api, f"{R}/cases?status=open")["data"]}
    approve_case, reject_case = cases[100_07]["id"], cases[50_07]["id"]
    assert _balance(api, alice) == 500_00 - 150_14  # both held
    decided = post_ok(
        api, f"{R}/cases/{approve_case}/decision", {"outcome": "approve", "analyst": "ana"}
    )
    assert (decided["status"], decided["label"], decided["resolved"]) == ("approved", 0, True)
    assert _get(api, f"{P}/operations/{approve_op['id']}")["status"] == "completed"
    assert _balance(api, bob) == 100_07
    again = api.client.post(
        f"{R}/cases/{approve_case}/decision",
        json={"outcome": "reject", "analyst": "ana"},
        headers=api.auth(),
    )
    _refused(again, 409, "case_closed")
    escalated = post_ok(
        api,
        f"{R}/cases/{reject_case}/decision",
        {"outcome": "escalate", "analyst": "ana", "note": "looks like a takeover"},
    )
    assert escalated["status"] == "escalated" and escalated["note"] == "looks like a takeover"
    assert _get(api, f"{P}/operations/{reject_op['id']}")["status"] == "challenged"
    assert [c["id"] for c in _get(api, f"{R}/cases?status=escalated")["data"]] == [reject_case]
    rejected = post_ok(
        api,
        f"{R}/cases/{reject_case}/decision",
        {"outcome": "reject", "analyst": "lead", "account_takeover": True},
    )
    assert (rejected["status"], rejected["label"], rejected["account_takeover"]) == (
        "rejected",
        1,
        True,
    )
    assert _get(api, f"{P}/operations/{reject_op['id']}")["status"] == "failed"
    assert _balance(api, alice) == 500_00 - 100_07  # the rejected payment came back
    assert _get(api, f"{P}/customers/{alice}")["frozen"] is True


def test_bad_decisions_and_missing_scopes_change_nothing(api: Api) -> None:
    alice, bob = _customer(api, 1, fund=500_00), _customer(api, 2)
    op = _pay(api, alice, bob, 100_07)
    [case] = _get(api, f"{R}/cases")["data"]
    path = f"{R}/cases/{case['id']}/decision"
    for body, status, code in [
        ({"outcome": "maybe", "analyst": "ana"}, 422, "invalid_input"),
        ({"outcome": "approve", "analyst": ""}, 422, "invalid_input"),
        ({"outcome": "approve", "analyst": "ana", "note": "x" * 501}, 422, "invalid_input"),
        ({"outcome": "approve", "analyst": " "}, 422, "case_decision_invalid"),
        (
            {"outcome": "approve", "analyst": "ana", "account_takeover": True},
            422,
            "case_decision_invalid",
        ),
    ]:
        _refused(api.client.post(path, json=body, headers=api.auth()), status, code)
    _, reader = api.tenants.create_key(api.a.id, ["risk:read"])
    body = {"outcome": "approve", "analyst": "ana"}
    _refused(api.client.post(path, json=body, headers=api.auth(reader)), 403, "scope_missing")
    _refused(api.client.post(path, json=body, headers=api.auth(api.token_b)), 404, "case_not_found")
    assert _get(api, f"{R}/cases/{case['id']}") == case
    assert _get(api, f"{P}/operations/{op['id']}")["status"] == "challenged"


def test_operators_manage_lists_that_running_engines_follow(api: Api) -> None:
    operator = api.tenants.create("Puhui Ops", "operator")
    _, admin = api.tenants.create_key(operator.id, ["platform:admin"])
    engine_lists = SyncedRiskLists(ListStore(api.engine, api.clock), check_interval_ms=0)
    devices = np.array(["dev-1", "dev-2"])
    assert engine_lists.contains("blocked_devices", devices).tolist() == [False, False]
    entry = {"value": "dev-1", "reason": "stolen phone, case 12"}
    bank = api.client.post(f"{R}/lists/blocked_devices/entries", json=entry, headers=api.auth())
    _refused(bank, 403, "scope_missing")  # a partner cannot block for every tenant
    added = post_ok(api, f"{R}/lists/blocked_devices/entries", entry, admin)
    assert (added["value"], added["live"], added["expires_at_ns"]) == ("dev-1", True, None)
    lapsing = {**entry, "value": "dev-2", "expires_at_ns": api.clock.now_ns() + 10**9}
    post_ok(api, f"{R}/lists/blocked_devices/entries", lapsing, admin)
    assert engine_lists.contains("blocked_devices", devices).tolist() == [True, True]
    api.clock.advance(10**9)
    assert engine_lists.contains("blocked_devices", devices).tolist() == [True, False]
    first = _get(api, f"{R}/lists/blocked_devices?limit=1", admin)
    assert [e["value"] for e in first["data"]] == ["dev-1"]
    rest = _get(api, f"{R}/lists/blocked_devices?limit=1&cursor={first['next_cursor']}", admin)
    assert [(e["value"], e["live"]) for e in rest["data"]] == [("dev-2", False)]
    for bad_path, bad_body in [
        (f"{R}/lists/blocked_phones/entries", entry),
        (f"{R}/lists/blocked_devices/entries", {"value": "", "reason": "r"}),
        (f"{R}/lists/blocked_devices/entries", {"value": "d", "reason": "r", "expires_at_ns": -1}),
    ]:
        _refused(
            api.client.post(bad_path, json=bad_body, headers=api.auth(admin)), 422, "invalid_input"
        )
    removed = api.client.delete(
        f"{R}/lists/blocked_devices/entries?value=dev-1", headers=api.auth(admin)
    )
    assert removed.status_code == 200 and removed.json() == {"removed": True}
    assert engine_lists.contains("blocked_devices", devices).tolist() == [False, False]
    assert len(_get(api, f"{R}/lists/blocked_devices", admin)["data"]) == 1
