"""The ledger over HTTP: the batch routes, decimal-string ids and amounts, pagination."""

from __future__ import annotations

from typing import Any

from puhui.ledger import AccountFlags, TransferFlags

from .conftest import Api, account, transfer

HISTORY = int(AccountFlags.HISTORY)


def _results(api: Api, path: str, body: dict[str, Any]) -> list[str]:
    response = api.client.post(path, json=body, headers=api.auth())
    assert response.status_code == 200, response.text
    return [r["status"] for r in response.json()["results"]]


def test_accounts_transfers_lookups_and_balances(api: Api) -> None:
    big = (1 << 128) - 2
    statuses = _results(
        api,
        "/v1/ledger/accounts",
        {"accounts": [account(1), account(2, flags=HISTORY), account(big), account(1)]},
    )
    assert statuses == ["created", "created", "created", "exists"]
    huge = (1 << 128) - 3  # amounts keep all 128 bits through JSON
    statuses = _results(
        api,
        "/v1/ledger/transfers",
        {
            "transfers": [
                transfer(10, 1, 2, 700),
                transfer(11, 2, 1, 1, flags=int(TransferFlags.PENDING), timeout=60),
                transfer(12, 1, 1, 5),
                transfer(13, big, 1, huge),
            ]
        },
    )
    assert statuses == ["created", "created", "accounts_must_be_different", "created"]
    response = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["2", "99", str(big)]}, headers=api.auth()
    )
    accounts = response.json()["accounts"]
    assert [a["id"] for a in accounts] == ["2", str(big)]
    assert accounts[0]["credits_posted"] == "700" and accounts[0]["debits_pending"] == "1"
    assert accounts[1]["debits_posted"] == str(huge)
    assert accounts[0]["user_data_32"] == api.a.id  # the owner stamp
    response = api.client.post(
        "/v1/ledger/transfers/lookup", json={"ids": ["11", "12", "10"]}, headers=api.auth()
    )
    found = response.json()["transfers"]
    assert [(t["id"], t["debit_account_id"], t["amount"]) for t in found] == [
        ("11", "2", "1"),
        ("10", "1", "700"),
    ]
    balances = api.client.get("/v1/ledger/accounts/2/balances", headers=api.auth()).json()
    assert [b["credits_posted"] for b in balances["data"]] == ["700", "700"]
    assert balances["next_cursor"] is None


def test_account_transfers_page_by_cursor(api: Api) -> None:
    _results(api, "/v1/ledger/accounts", {"accounts": [account(1), account(2)]})
    _results(
        api,
        "/v1/ledger/transfers",
        {"transfers": [transfer(100 + i, 1, 2, i + 1) for i in range(5)]},
    )
    for reversed_ in (False, True):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2, "reversed": reversed_}
            if cursor:
                params["cursor"] = cursor
            page = api.client.get(
                "/v1/ledger/accounts/1/transfers", params=params, headers=api.auth()
            ).json()
            seen += [t["id"] for t in page["data"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = [str(100 + i) for i in range(5)]
        assert seen == (expected[::-1] if reversed_ else expected)
        assert pages == 3
    only_debits = api.client.get(
        "/v1/ledger/accounts/2/transfers", params={"credits": False}, headers=api.auth()
    ).json()
    assert only_debits["data"] == []


def test_cursors_are_checked(api: Api) -> None:
    _results(api, "/v1/ledger/accounts", {"accounts": [account(1), account(2)]})
    _results(
        api, "/v1/ledger/transfers", {"transfers": [transfer(5, 1, 2, 1), transfer(6, 1, 2, 1)]}
    )
    page = api.client.get(
        "/v1/ledger/accounts/1/transfers", params={"limit": 1}, headers=api.auth()
    ).json()
    cursor = page["next_cursor"]
    for params in [
        {"cursor": "not-a-cursor"},
        {"cursor": cursor, "reversed": True},  # made for the other direction
    ]:
        response = api.client.get(
            "/v1/ledger/accounts/1/transfers", params=params, headers=api.auth()
        )
        assert response.status_code == 400
        assert response.json()["code"] == "cursor_invalid"
    other_list = api.client.get(
        "/v1/ledger/accounts/1/balances", params={"cursor": cursor}, headers=api.auth()
    )
    assert other_list.json()["code"] == "cursor_invalid"


def test_user_data_32_of_accounts_is_reserved(api: Api) -> None:
    response = api.client.post(
        "/v1/ledger/accounts",
        json={"accounts": [account(1), account(2, user_data_32=77)]},
        headers=api.auth(),
    )
    assert response.status_code == 422
    assert response.json()["code"] == "reserved_field"
    lookup = api.client.post("/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth())
    assert lookup.json()["accounts"] == []  # nothing was created
