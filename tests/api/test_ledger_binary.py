"""The ledger's binary batch routes: TigerBeetle's 128-byte records in, 16-byte results out,
with the JSON routes' semantics (tenant scrambling, owner stamp, checks) to the byte."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from puhui.ledger import (
    ACCOUNT_DTYPE,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    TransferFlags,
)
from puhui.platform.ledger import scramble_columns
from puhui.platform.model import U128_MAX, scramble_id

from .conftest import Api, account, records, transfer

OCTET = {"Content-Type": "application/octet-stream"}
LINKED = int(TransferFlags.LINKED)
PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING_TRANSFER)
LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


def post_binary(api: Api, path: str, body: bytes, token: str | None = None, **headers: str) -> Any:
    return api.client.post(path, content=body, headers=api.auth(token, **OCTET, **headers))


def statuses(response: Any, table: type[CreateAccountStatus | CreateTransferStatus]) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    results = np.frombuffer(response.content, RESULT_DTYPE)
    assert (results["reserved"] == 0).all()
    return [table(int(s)).name.lower() for s in results["status"]]


ACCOUNTS = [
    account(1),
    account(2, flags=int(AccountFlags.HISTORY)),
    account(3, flags=LIMITED),
    account(1),
    account(4, ledger=0),
]
TRANSFERS = [
    transfer(10, 1, 2, 700),
    transfer(11, 2, 1, 5, flags=PENDING, timeout=60),
    transfer(12, 1, 1, 5),
    transfer(13, 3, 1, 1),  # 3 must not go below zero: exceeds_credits
    transfer(14, 1, 2, 1, flags=LINKED),
    transfer(15, 1, 9999, 1),  # fails the chain
    transfer(16, 2, 1, 0, flags=POST, pending_id="11"),
    transfer(10, 1, 2, 700),
    transfer(17, 9999, 1, 1),
]


def _views(api: Api, token: str) -> Any:
    auth = api.auth(token)
    ids = ["1", "2", "3", "4", "9999", "10", "11", "14", "16"]
    found = (
        api.client.post("/v1/ledger/accounts/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.post("/v1/ledger/transfers/lookup", json={"ids": ids}, headers=auth).json(),
        api.client.get("/v1/ledger/accounts/2/balances", headers=auth).json(),
    )

    def plain(data: Any) -> Any:  # timestamps and the owner's number differ by nature
        if isinstance(data, dict):
            return {k: plain(v) for k, v in data.items() if k not in ("timestamp", "user_data_32")}
        if isinstance(data, list | tuple):
            return [plain(v) for v in data]
        return data

    return plain(found)


def test_binary_batches_answer_and_do_exactly_what_the_json_batches_do(api: Api) -> None:
    # Tenant A sends JSON, tenant B the same events as binary records, each in its own space.
    a_accounts = api.client.post(
        "/v1/ledger/accounts", json={"accounts": ACCOUNTS}, headers=api.auth()
    )
    a_transfers = api.client.post(
        "/v1/ledger/transfers", json={"transfers": TRANSFERS}, headers=api.auth()
    )
    b_accounts = post_binary(
        api, "/v1/ledger/accounts/binary", records(ACCOUNT_DTYPE, ACCOUNTS), api.token_b
    )
    b_transfers = post_binary(
        api, "/v1/ledger/transfers/binary", records(TRANSFER_DTYPE, TRANSFERS), api.token_b
    )
    json_accounts = [r["status"] for r in a_accounts.json()["results"]]
    json_transfers = [r["status"] for r in a_transfers.json()["results"]]
    assert json_accounts == ["created", "created", "created", "exists", "ledger_must_not_be_zero"]
    assert statuses(b_accounts, CreateAccountStatus) == json_accounts
    assert statuses(b_transfers, CreateTransferStatus) == json_transfers
    assert json_transfers == [
        "created",
        "created",
        "accounts_must_be_different",
        "exceeds_credits",
        "linked_event_failed",
        "credit_account_not_found",
        "created",
        "exists",
        "debit_account_not_found",
    ]
    # The same state, seen through each tenant's ids; B's accounts carry B's stamp.
    assert _views(api, api.token_b) == _views(api, api.token_a)
    b_seen = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth(api.token_b)
    ).json()["accounts"]
    assert [a["user_data_32"] for a in b_seen] == [api.b.id]
    # The ledger holds scrambled ids: B's account 1 is not the ledger's account 1.
    assert api.ledger.lookup_accounts([1]) == []


def test_the_results_carry_the_ledger_timestamps(api: Api) -> None:
    made = post_binary(api, "/v1/ledger/accounts/binary", records(ACCOUNT_DTYPE, ACCOUNTS[:2]))
    results = np.frombuffer(made.content, RESULT_DTYPE)
    seen = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["1", "2"]}, headers=api.auth()
    ).json()["accounts"]
    assert [str(t) for t in results["timestamp"].tolist()] == [a["timestamp"] for a in seen]
    empty = post_binary(api, "/v1/ledger/transfers/binary", b"")
    assert empty.status_code == 200 and empty.content == b""


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def test_bad_binary_bodies_are_refused_and_change_nothing(api: Api) -> None:
    post_binary(api, "/v1/ledger/accounts/binary", records(ACCOUNT_DTYPE, ACCOUNTS[:2]))
    before = _views(api, api.token_a)
    good = records(TRANSFER_DTYPE, [transfer(10, 1, 2, 700)])
    path = "/v1/ledger/transfers/binary"
    as_json = api.client.post(path, content=good, headers=api.auth(**{"Content-Type": "a/b"}))
    _problem(as_json, 415, "media_type_unsupported")
    _problem(api.client.post(path, content=good, headers=api.auth()), 415, "media_type_unsupported")
    _problem(post_binary(api, path, good + b"\0"), 422, "records_invalid")
    _problem(post_binary(api, path, good[:-1]), 422, "records_invalid")
    too_many = records(TRANSFER_DTYPE, [transfer(10 + i, 1, 2, 1) for i in range(8190)])
    _problem(post_binary(api, path, too_many), 422, "batch_too_large")
    stamped = np.frombuffer(
        records(TRANSFER_DTYPE, [transfer(10, 1, 2, 1), transfer(11, 1, 2, 1)]), TRANSFER_DTYPE
    ).copy()
    stamped[1]["timestamp"] = 5
    stamped[1]["flags"] = int(TransferFlags.IMPORTED)
    refused = _problem(post_binary(api, path, stamped.tobytes()), 422, "records_invalid")
    assert refused["index"] == 1
    other_owner = records(ACCOUNT_DTYPE, [account(5), account(6, user_data_32=api.b.id)])
    refused = _problem(
        post_binary(api, "/v1/ledger/accounts/binary", other_owner), 422, "reserved_field"
    )
    assert refused["index"] == 1
    own_stamp = records(ACCOUNT_DTYPE, [account(7, user_data_32=api.a.id)])
    assert statuses(
        post_binary(api, "/v1/ledger/accounts/binary", own_stamp), CreateAccountStatus
    ) == ["created"]
    assert _views(api, api.token_a) == before


def test_a_binary_batch_replays_under_its_idempotency_key(api: Api) -> None:
    post_binary(api, "/v1/ledger/accounts/binary", records(ACCOUNT_DTYPE, ACCOUNTS[:2]))
    body = records(TRANSFER_DTYPE, [transfer(10, 1, 2, 700)])
    path = "/v1/ledger/transfers/binary"
    first = post_binary(api, path, body, **{"Idempotency-Key": "k1"})
    again = post_binary(api, path, body, **{"Idempotency-Key": "k1"})
    assert statuses(first, CreateTransferStatus) == ["created"]
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    other = records(TRANSFER_DTYPE, [transfer(11, 1, 2, 700)])
    _problem(
        post_binary(api, path, other, **{"Idempotency-Key": "k1"}), 409, "idempotency_key_reused"
    )
    plain = post_binary(api, path, body)  # without the key, the ledger's own idempotency
    assert statuses(plain, CreateTransferStatus) == ["exists"]


masks = st.integers(min_value=1, max_value=U128_MAX)


@given(st.lists(st.integers(min_value=0, max_value=U128_MAX), max_size=20), masks, st.data())
def test_scrambling_columns_is_scramble_id_of_each(
    values: list[int], mask: int, data: st.DataObject
) -> None:
    # The values the function keeps as they are, mixed in where hypothesis may miss them.
    values = values + data.draw(
        st.lists(st.sampled_from([0, U128_MAX, mask, mask ^ U128_MAX, mask ^ 1]), max_size=6)
    )
    low = np.array([v & ((1 << 64) - 1) for v in values], dtype=np.uint64)
    high = np.array([v >> 64 for v in values], dtype=np.uint64)
    lo, hi = scramble_columns(low, high, mask)
    got = [(int(h) << 64) | int(x) for x, h in zip(lo.tolist(), hi.tolist(), strict=True)]
    assert got == [scramble_id(v, mask) for v in values]


def test_json_batches_refuse_values_past_their_field_and_change_nothing(api: Api) -> None:
    # The JSON routes convert straight to the ledger's arrays; a value past its field's width
    # is still the ledger's own field_out_of_range, and nothing of the batch is created.
    for path, body in (
        ("/v1/ledger/accounts", {"accounts": [account(1), account(2, user_data_64=str(1 << 64))]}),
        ("/v1/ledger/transfers", {"transfers": [transfer(10, 1, 2, 1, pending_id=str(1 << 128))]}),
    ):
        response = api.client.post(path, json=body, headers=api.auth())
        _problem(response, 422, "field_out_of_range")
    assert api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["1", "2"]}, headers=api.auth()
    ).json() == {"accounts": []}
    largest = {"user_data_64": str((1 << 64) - 1), "user_data_128": str((1 << 128) - 1)}
    made = api.client.post(
        "/v1/ledger/accounts", json={"accounts": [account(1, **largest)]}, headers=api.auth()
    )
    assert [r["status"] for r in made.json()["results"]] == ["created"]
    seen = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=api.auth()
    ).json()["accounts"]
    assert [(a["user_data_64"], a["user_data_128"]) for a in seen] == [tuple(largest.values())]


def test_the_binary_example_in_the_docs_works(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's binary batch example, its ``httpx.post`` sent to this app."""
    import re
    import sys
    import types
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    [example] = [b for b in blocks if "/v1/ledger/transfers/binary" in b]
    post_binary(api, "/v1/ledger/accounts/binary", records(ACCOUNT_DTYPE, ACCOUNTS[:2]))

    def post(url: str, **kwargs: Any) -> Any:
        return api.client.post(url.removeprefix("http://127.0.0.1:8000"), **kwargs)

    monkeypatch.setitem(sys.modules, "httpx", types.SimpleNamespace(post=post))
    namespace: dict[str, Any] = {"token": api.token_a}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    assert statuses(namespace["response"], CreateTransferStatus) == ["created"] * 3
    seen = api.client.post(
        "/v1/ledger/accounts/lookup", json={"ids": ["2"]}, headers=api.auth()
    ).json()["accounts"]
    assert seen[0]["credits_posted"] == "1500"


def test_fields_the_json_form_lacks_are_answered_by_the_ledger_per_event(api: Api) -> None:
    accounts = np.frombuffer(records(ACCOUNT_DTYPE, ACCOUNTS[:3]), ACCOUNT_DTYPE).copy()
    accounts[1]["debits_pending_lo"] = 5
    accounts[2]["reserved"] = 7
    made = post_binary(api, "/v1/ledger/accounts/binary", accounts.tobytes())
    assert statuses(made, CreateAccountStatus) == [
        "created",
        "debits_pending_must_be_zero",
        "reserved_field",
    ]


u128_text = st.integers(min_value=0, max_value=U128_MAX).map(str)
transfer_fields = st.fixed_dictionaries(
    {
        "id": u128_text,
        "debit_account_id": u128_text,
        "credit_account_id": u128_text,
        "amount": u128_text,
        "ledger": st.integers(min_value=0, max_value=(1 << 32) - 1),
        "code": st.integers(min_value=0, max_value=(1 << 16) - 1),
    },
    optional={
        "pending_id": u128_text,
        "user_data_128": u128_text,
        "user_data_64": st.integers(min_value=0, max_value=(1 << 64) - 1).map(str),
        "user_data_32": st.integers(min_value=0, max_value=(1 << 32) - 1),
        "timeout": st.integers(min_value=0, max_value=(1 << 32) - 1),
        "flags": st.integers(min_value=0, max_value=(1 << 16) - 1),
    },
)


@given(st.lists(transfer_fields, max_size=8))
def test_json_transfers_become_the_same_records_as_through_the_object_form(
    rows: list[dict[str, Any]],
) -> None:
    from puhui.api._ledger_routes import _TRANSFER_COLUMNS, _columns, _mapping
    from puhui.api._schemas import CreateTransfersIn
    from puhui.ledger import transfer_from_mapping
    from puhui.ledger._convert import transfers_to_array

    body = CreateTransfersIn.model_validate({"transfers": rows})
    fast = _columns(body.transfers, _TRANSFER_COLUMNS, TRANSFER_DTYPE)
    objects = [transfer_from_mapping(_mapping(t)) for t in body.transfers]
    slow = transfers_to_array(objects) if objects else np.zeros(0, TRANSFER_DTYPE)
    assert fast.tobytes() == slow.tobytes()


account_fields = st.fixed_dictionaries(
    {
        "id": u128_text,
        "ledger": st.integers(min_value=0, max_value=(1 << 32) - 1),
        "code": st.integers(min_value=0, max_value=(1 << 16) - 1),
    },
    optional={
        "user_data_128": u128_text,
        "user_data_64": st.integers(min_value=0, max_value=(1 << 64) - 1).map(str),
        "user_data_32": st.integers(min_value=0, max_value=(1 << 32) - 1),
        "flags": st.integers(min_value=0, max_value=(1 << 16) - 1),
    },
)


@given(st.lists(account_fields, max_size=8))
def test_json_accounts_become_the_same_records_as_through_the_object_form(
    rows: list[dict[str, Any]],
) -> None:
    from puhui.api._ledger_routes import _ACCOUNT_COLUMNS, _columns, _mapping
    from puhui.api._schemas import CreateAccountsIn
    from puhui.ledger import account_from_mapping
    from puhui.ledger._convert import accounts_to_array

    body = CreateAccountsIn.model_validate({"accounts": rows})
    fast = _columns(body.accounts, _ACCOUNT_COLUMNS, ACCOUNT_DTYPE)
    objects = [account_from_mapping(_mapping(a)) for a in body.accounts]
    slow = accounts_to_array(objects) if objects else np.zeros(0, ACCOUNT_DTYPE)
    assert fast.tobytes() == slow.tobytes()
