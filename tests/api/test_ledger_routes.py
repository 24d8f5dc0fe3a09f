"""The ledger over HTTP: the batch routes, decimal-string ids and amounts, pagination."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from puhui.api._ledger_routes import (
    _TRANSFER_COLUMNS,
    _TRANSFER_STATUS_NAMES,
    _columns,
    _results_json,
)
from puhui.api._schemas import CreateTransfersIn
from puhui.ledger import TRANSFER_DTYPE, AccountFlags, TransferFlags

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
    # A crafted cursor whose position is a boolean (JSON true is not a timestamp).
    crafted = base64.urlsafe_b64encode(b'{"k":"account_transfers","ts":true,"r":false}')
    response = api.client.get(
        "/v1/ledger/accounts/1/transfers",
        params={"cursor": crafted.decode().rstrip("=")},
        headers=api.auth(),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "cursor_invalid"


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


def _pages(api: Api, path: str, token: str, **params: Any) -> tuple[list[str], int]:
    """Every id a paginated list gives, following cursors; and how many pages it took."""
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = params | ({"cursor": cursor} if cursor else {})
        response = api.client.get(path, params=query, headers=api.auth(token))
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        ids += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages


def test_query_accounts_and_transfers_see_only_the_tenants_own(api: Api) -> None:
    # Interleaved: tenant B's accounts and transfers sit between A's in the shared ledger.
    for n in range(1, 7):
        for token, base in ((api.token_a, 100), (api.token_b, 100)):
            code = 7 if n % 2 else 8
            body = {"accounts": [account(base + n, code=code)]}
            assert api.client.post("/v1/ledger/accounts", json=body, headers=api.auth(token))
    for n in range(1, 6):
        for token in (api.token_a, api.token_b):
            body = {"transfers": [transfer(200 + n, 101, 100 + n + 1, n, code=3 + n % 2)]}
            moved = api.client.post("/v1/ledger/transfers", json=body, headers=api.auth(token))
            assert moved.json()["results"][0]["status"] == "created"

    mine = [str(100 + n) for n in range(1, 7)]
    assert _pages(api, "/v1/ledger/accounts", api.token_a)[0] == mine
    assert _pages(api, "/v1/ledger/accounts", api.token_a, limit=4)[0] == mine
    newest_first = _pages(api, "/v1/ledger/accounts", api.token_a, limit=4, reversed=True)[0]
    assert newest_first == mine[::-1]
    assert _pages(api, "/v1/ledger/accounts", api.token_a, code=7)[0] == ["101", "103", "105"]
    accounts = api.client.get("/v1/ledger/accounts", headers=api.auth()).json()["data"]
    assert {a["user_data_32"] for a in accounts} == {api.a.id}

    transfers = [str(200 + n) for n in range(1, 6)]
    ids, pages = _pages(api, "/v1/ledger/transfers", api.token_a, limit=2)
    assert ids == transfers and pages >= 3
    assert (
        _pages(api, "/v1/ledger/transfers", api.token_b, limit=2, reversed=True)[0]
        == (transfers[::-1])
    )
    assert _pages(api, "/v1/ledger/transfers", api.token_a, code=4)[0] == ["201", "203", "205"]
    only_a = api.client.get("/v1/ledger/transfers", headers=api.auth()).json()["data"]
    assert [t["debit_account_id"] for t in only_a] == ["101"] * 5  # A's ids, unscrambled


def test_query_transfers_skips_other_tenants_within_a_bounded_scan(api: Api) -> None:
    assert api.client.post(
        "/v1/ledger/accounts", json={"accounts": [account(1), account(2)]}, headers=api.auth()
    )
    assert api.client.post(
        "/v1/ledger/accounts",
        json={"accounts": [account(1), account(2)]},
        headers=api.auth(api.token_b),
    )
    b_moves = {"transfers": [transfer(300 + n, 1, 2, 1) for n in range(30)]}
    api.client.post("/v1/ledger/transfers", json=b_moves, headers=api.auth(api.token_b))
    api.client.post(
        "/v1/ledger/transfers", json={"transfers": [transfer(9, 1, 2, 5)]}, headers=api.auth()
    )
    # Limit 2 with 30 of B's transfers first: a page scans at most 8 ledger pages (16
    # transfers), so A's one transfer comes after a short (empty) page with a cursor.
    first = api.client.get("/v1/ledger/transfers", params={"limit": 2}, headers=api.auth())
    assert first.json()["data"] == [] and first.json()["next_cursor"] is not None
    ids, _ = _pages(api, "/v1/ledger/transfers", api.token_a, limit=2)
    assert ids == ["9"]
    assert (
        api.client.get("/v1/ledger/accounts", params={"limit": 1001}, headers=api.auth()).json()[
            "code"
        ]
        == "invalid_input"
    )


@given(
    st.lists(
        st.tuples(
            st.integers(0, (1 << 128) - 1),
            st.sampled_from(sorted(_TRANSFER_STATUS_NAMES)),
            st.integers(0, (1 << 64) - 1),
        ),
        max_size=20,
    )
)
def test_the_results_text_is_what_json_dumps_writes(
    rows: list[tuple[int, int, int]],
) -> None:
    """The create routes format their results directly; the text is ``json.dumps``'s."""
    results = np.zeros(len(rows), [("status", np.uint32), ("timestamp", np.uint64)])
    results["status"] = [status for _, status, _ in rows]
    results["timestamp"] = [stamp for _, _, stamp in rows]
    ids = [str(id_) for id_, _, _ in rows]
    expected = {
        "results": [
            {
                "index": i,
                "id": ids[i],
                "status": _TRANSFER_STATUS_NAMES[status],
                "timestamp": str(stamp),
            }
            for i, (_, status, stamp) in enumerate(rows)
        ]
    }
    response = _results_json(ids, results, _TRANSFER_STATUS_NAMES)
    assert bytes(response.body) == json.dumps(expected, separators=(",", ":")).encode()
    assert response.media_type == "application/json"


def _columns_one_by_one(events: list[Any]) -> np.ndarray[Any, Any]:
    """The transfers' array built a value at a time (the reference for ``_columns``)."""
    out = np.zeros(len(events), TRANSFER_DTYPE)
    for row, event in enumerate(events):
        for name, bits in _TRANSFER_COLUMNS:
            value = int(event.get(name, 0))
            if bits == 128:
                out[name + "_lo"][row] = value & ((1 << 64) - 1)
                out[name + "_hi"][row] = value >> 64
            else:
                out[name][row] = value
    return out


_u128 = st.one_of(st.integers(0, 10**19 - 1), st.integers(0, (1 << 128) - 1))


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": _u128.map(str),
                "debit_account_id": _u128.map(str),
                "credit_account_id": _u128.map(str),
                "amount": _u128.map(str),
                "user_data_64": st.integers(0, (1 << 64) - 1).map(str),
                "user_data_32": st.integers(0, (1 << 32) - 1),
                "ledger": st.integers(0, (1 << 32) - 1),
                "code": st.integers(0, (1 << 16) - 1),
            }
        ),
        max_size=12,
    )
)
def test_the_columns_of_validated_transfers_are_their_values(rows: list[dict[str, Any]]) -> None:
    """Small and full 128-bit ids (a column of short ones takes a quicker path) land in the
    ledger's array exactly as the values one by one."""
    events = CreateTransfersIn.model_validate({"transfers": rows}).transfers
    built = _columns(events, _TRANSFER_COLUMNS, TRANSFER_DTYPE)
    assert built.tobytes() == _columns_one_by_one(events).tobytes()
