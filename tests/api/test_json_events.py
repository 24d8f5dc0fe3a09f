"""The JSON batch routes' compiled reader (``puhui.api._json_events``) against the ordinary way
(``json.loads``, the route's pydantic model, the columns read from its dicts): it never takes a
body the ordinary way refuses, what it takes it reads to the same array, it takes every plain
batch, and its answer is byte for byte the ordinary answer. Over HTTP, an app with the reader
and one without answer the same batches alike."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from puhui.api import ApiOptions
from puhui.api._json_events import EventsDecoder
from puhui.api._ledger_routes import (
    _ACCOUNT_COLUMNS,
    _ACCOUNT_STATUS_NAMES,
    _ACCOUNTS,
    _TRANSFER_COLUMNS,
    _TRANSFER_STATUS_NAMES,
    _TRANSFERS,
    _columns,
    _results_json,
)
from puhui.api._schemas import CreateAccountsIn, CreateTransfersIn, TransferIn
from puhui.ledger import RESULT_DTYPE, TRANSFER_DTYPE

from .conftest import Api, make_api

ROUTES: dict[
    str, tuple[EventsDecoder, type[BaseModel], tuple[tuple[str, int], ...], dict[int, str]]
] = {
    "transfers": (_TRANSFERS, CreateTransfersIn, _TRANSFER_COLUMNS, _TRANSFER_STATUS_NAMES),
    "accounts": (_ACCOUNTS, CreateAccountsIn, _ACCOUNT_COLUMNS, _ACCOUNT_STATUS_NAMES),
}
REQUIRED = {
    "transfers": ("id", "debit_account_id", "credit_account_id", "amount", "ledger", "code"),
    "accounts": ("id", "ledger", "code"),
}
SPACE = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  "])
WIDEST = {128: (1 << 128) - 1, 64: (1 << 64) - 1, 32: (1 << 32) - 1, 16: (1 << 16) - 1}


def ordinary(root: str, body: bytes) -> np.ndarray[Any, Any] | None:
    """What the ordinary way reads from ``body``: the ledger's array, or None where it
    answers an error (malformed JSON, a value the model refuses, a number too large)."""
    reader, model, columns, _ = ROUTES[root]
    try:
        data = json.loads(body)
        validated: BaseModel = model.model_validate(data)
        return _columns(getattr(validated, root), columns, reader.dtype)
    except Exception:  # any refusal: malformed JSON, ValidationError, OverflowError
        return None


def _value(bits: int, number: int) -> str:
    """A field's JSON text: decimal text in quotes for 64/128 bits, a number below."""
    return f'"{number}"' if bits >= 64 else str(number)


@st.composite
def plain_values(draw: st.DrawFn, bits: int) -> int:
    """A value the reader takes: at most 38 (128-bit) or 19 (64-bit) digits."""
    top = {128: 10**38 - 1, 64: 10**19 - 1}.get(bits, WIDEST[bits])
    return draw(st.one_of(st.integers(0, 1000), st.integers(0, top), st.just(top)))


@st.composite
def plain_bodies(draw: st.DrawFn, root: str) -> tuple[bytes, list[dict[str, int]]]:
    """A plain batch (valid, any key order, any JSON whitespace between tokens) and its
    events as numbers."""
    _, _, columns, _ = ROUTES[root]
    events: list[dict[str, int]] = []
    texts: list[str] = []
    for _ in range(draw(st.integers(0, 12))):
        names = [n for n, _ in columns if n in REQUIRED[root] or draw(st.booleans())]
        names = draw(st.permutations(names))
        bits_of = dict(columns)
        event = {n: draw(plain_values(bits_of[n])) for n in names}
        events.append(event)
        members = [
            f'{draw(SPACE)}"{n}"{draw(SPACE)}:{draw(SPACE)}{_value(bits_of[n], v)}{draw(SPACE)}'
            for n, v in event.items()
        ]
        texts.append(f"{draw(SPACE)}{{{','.join(members)}}}{draw(SPACE)}")
    gaps = [draw(SPACE) for _ in range(7)]
    events_text = ",".join(texts)
    head = f'{gaps[0]}{{{gaps[1]}"{root}"{gaps[2]}:{gaps[3]}['
    body = f"{head}{events_text}{gaps[4]}]{gaps[5]}}}{gaps[6]}"
    return body.encode(), events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=st.sampled_from(sorted(ROUTES)), data=st.data())
def test_a_plain_batch_is_read_as_the_ordinary_way_reads_it(root: str, data: st.DataObject) -> None:
    body, events = data.draw(plain_bodies(root))
    reader = ROUTES[root][0]
    decoded = reader.decode(body)
    expected = ordinary(root, body)
    assert expected is not None  # the generator makes valid batches only
    assert decoded is not None, body
    assert decoded.events.dtype == expected.dtype
    assert (decoded.events == expected).all()
    ids = [bytes(decoded.body[a:b]).decode() for a, b in decoded.spans.tolist()]
    assert ids == [str(e["id"]) for e in events]


MUTATIONS: dict[str, Callable[[str], str]] = {
    "a key spelled with an escape": lambda t: t.replace('"id"', '"\\u0069d"', 1),
    "a repeated key": lambda t: t.replace('"ledger":', '"ledger":7,"ledger":', 1),
    "an unknown key": lambda t: t.replace('"code":', '"colour":1,"code":', 1),
    "a required key missing": lambda t: t.replace('"ledger":1,', "", 1),
    "an id with a leading zero": lambda t: t.replace('"id":"', '"id":"0', 1),
    "an empty id": lambda t: t.replace('"id":"1"', '"id":""', 1),
    "a number for decimal text": lambda t: t.replace('"amount":"5"', '"amount":5', 1),
    "decimal text for a number": lambda t: t.replace('"ledger":1', '"ledger":"1"', 1),
    "a fraction": lambda t: t.replace('"ledger":1', '"ledger":1.0', 1),
    "an exponent": lambda t: t.replace('"ledger":1', '"ledger":1e0', 1),
    "a negative number": lambda t: t.replace('"code":1', '"code":-1', 1),
    "a minus zero": lambda t: t.replace('"code":1', '"code":-0', 1),
    "a leading zero number": lambda t: t.replace('"code":1', '"code":01', 1),
    "true for a number": lambda t: t.replace('"code":1', '"code":true', 1),
    "null for a number": lambda t: t.replace('"code":1', '"code":null', 1),
    "a u16 out of range": lambda t: t.replace('"code":1', '"code":65536', 1),
    "a u32 out of range": lambda t: t.replace('"ledger":1', '"ledger":4294967296', 1),
    "a huge number": lambda t: t.replace('"ledger":1', '"ledger":' + "9" * 30, 1),
    "a 39-digit id": lambda t: t.replace('"id":"', '"id":"' + "1" * 38, 1),
    "an id over 2**128 - 1": lambda t: t.replace('"id":"1"', f'"id":"{1 << 128}"', 1),
    "a 20-digit user_data_64": lambda t: t.replace(
        '"code":1', '"code":1,"user_data_64":"' + "1" * 20 + '"', 1
    ),
    "user_data_64 over 2**64 - 1": lambda t: t.replace(
        '"code":1', f'"code":1,"user_data_64":"{1 << 64}"', 1
    ),
    "a fullwidth digit": lambda t: t.replace('"id":"1"', '"id":"\uff11"', 1),
    "a space inside text": lambda t: t.replace('"id":"1"', '"id":" 1"', 1),
    "an extra top-level key": lambda t: t[:-1] + ',"more":1}',
    "garbage after the body": lambda t: t + "x",
    "a second document": lambda t: t + "{}",
    "a trailing comma in the list": lambda t: t.replace("}]", "},]", 1),
    "a trailing comma in an event": lambda t: t.replace("1}", "1,}", 1),
    "a byte-order mark": lambda t: "\ufeff" + t,
    "the body cut short": lambda t: t[: len(t) // 2],
    "an empty event": lambda t: t.replace("[", "[{},", 1),
    "a list for the events' object": lambda t: t.replace("[{", "[[{", 1).replace("}]", "}]]", 1),
    "a string for the events": lambda t: '{"transfers":"x"}',
    "no events key": lambda t: "{}",
    "an array body": lambda t: "[" + t + "]",
    "a control character in a key": lambda t: t.replace('"id"', '"i\nd"', 1),
    "uppercase key": lambda t: t.replace('"id"', '"ID"', 1),
    "single quotes": lambda t: t.replace('"code"', "'code'", 1),
    "NaN": lambda t: t.replace('"code":1', '"code":NaN', 1),
}


def _sample_body() -> str:
    events = [
        {"id": "1", "debit_account_id": "2", "credit_account_id": "3", "amount": "5"},
        {"id": "12", "debit_account_id": "3", "credit_account_id": "2", "amount": "5"},
    ]
    texts = [json.dumps(e, separators=(",", ":"))[:-1] + ',"ledger":1,"code":1}' for e in events]
    return '{"transfers":[' + ",".join(texts) + "]}"


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_body_not_in_the_plain_form_is_left_to_the_ordinary_way(mutation: str) -> None:
    """Every mutation of a plain batch: the reader gives up (None) unless the ordinary way
    accepts it, and then reads the same array."""
    plain = _sample_body()
    assert _TRANSFERS.decode(plain.encode()) is not None
    body = MUTATIONS[mutation](plain)
    assert body != plain, "the mutation must change the body"
    raw = body.encode()
    decoded = _TRANSFERS.decode(raw)
    expected = ordinary("transfers", raw)
    if decoded is not None:
        assert expected is not None and (decoded.events == expected).all()
    else:  # nearly all are refusals; the few the ordinary way accepts it reads itself
        assert mutation in TAKEN_ORDINARILY or expected is None, mutation


TAKEN_ORDINARILY = {
    "a key spelled with an escape",
    "a repeated key",
    "a 39-digit id",
    "a 20-digit user_data_64",
    "a byte-order mark",
    "a minus zero",
}
"""Mutations the ordinary way accepts but the reader leaves to it (rare, and the ordinary
way reads them right)."""


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet='{}[]",:0123456789 \n-.eEtrasfnulidgobc\\', max_size=120),
)
def test_random_text_is_never_read_unless_the_ordinary_way_reads_it(text: str) -> None:
    for root in ROUTES:
        raw = text.encode()
        decoded = ROUTES[root][0].decode(raw)
        if decoded is not None:
            expected = ordinary(root, raw)
            assert expected is not None and (decoded.events == expected).all()


@settings(max_examples=100, deadline=None)
@given(
    root=st.sampled_from(sorted(ROUTES)),
    data=st.data(),
    cut=st.integers(0, 10_000),
    byte=st.integers(0, 255),
)
def test_a_damaged_plain_batch_is_never_misread(
    root: str, data: st.DataObject, cut: int, byte: int
) -> None:
    """One byte of a plain batch replaced: read as the ordinary way reads it, or left."""
    body, _ = data.draw(plain_bodies(root))
    at = cut % max(len(body), 1)
    damaged = body[:at] + bytes([byte]) + body[at + 1 :]
    decoded = ROUTES[root][0].decode(damaged)
    if decoded is not None:
        expected = ordinary(root, damaged)
        assert expected is not None and (decoded.events == expected).all()


def test_no_more_events_than_the_limit() -> None:
    small = EventsDecoder(
        "transfers", TransferIn, _TRANSFER_COLUMNS, TRANSFER_DTYPE, 2, _TRANSFER_STATUS_NAMES
    )
    event = (
        '{"id":"1","debit_account_id":"2","credit_account_id":"3","amount":"1","ledger":1,"code":1}'
    )
    decoded = small.decode(f'{{"transfers":[{event},{event}]}}'.encode())
    assert decoded is not None and len(decoded.events) == 2
    assert small.decode(f'{{"transfers":[{event},{event},{event}]}}'.encode()) is None


@settings(max_examples=60, deadline=None)
@given(root=st.sampled_from(sorted(ROUTES)), data=st.data())
def test_the_answer_is_the_ordinary_answer_byte_for_byte(root: str, data: st.DataObject) -> None:
    body, events = data.draw(plain_bodies(root))
    reader, _, _, names = ROUTES[root]
    decoded = reader.decode(body)
    assert decoded is not None
    results = np.zeros(len(events), RESULT_DTYPE)
    codes = data.draw(
        st.lists(st.sampled_from(sorted(names)), min_size=len(events), max_size=len(events))
    )
    stamps = data.draw(
        st.lists(st.integers(0, (1 << 63) - 1), min_size=len(events), max_size=len(events))
    )
    results["status"] = codes
    results["timestamp"] = stamps
    ids = [str(e["id"]) for e in events]
    assert reader.results_json(decoded, results) == _results_json(ids, results, names).body


def test_a_status_without_a_name_is_an_error_not_a_wrong_answer() -> None:
    decoded = _ACCOUNTS.decode(b'{"accounts":[{"id":"1","ledger":1,"code":1}]}')
    assert decoded is not None
    results = np.zeros(1, RESULT_DTYPE)
    results["status"] = 999
    with pytest.raises(ValueError, match="without a name"):
        _ACCOUNTS.results_json(decoded, results)


# --- over HTTP: an app with the reader and one without ------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Api]]:
    fast_gen = make_api(tmp_path_factory.mktemp("fast"))
    plain_gen = make_api(tmp_path_factory.mktemp("plain"), ApiOptions(lean_routes=False))
    yield next(fast_gen), next(plain_gen)
    for gen in (fast_gen, plain_gen):
        next(gen, None)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The roots of the batches the compiled reader took, in order."""
    taken: list[str] = []
    for root, reader in (("accounts", _ACCOUNTS), ("transfers", _TRANSFERS)):
        decode = reader.decode

        def counted(body: bytes, decode: Any = decode, root: str = root) -> Any:
            decoded = decode(body)
            if decoded is not None:
                taken.append(root)
            return decoded

        monkeypatch.setattr(reader, "decode", counted)
    return taken


def _t(id_: int, debit: int = 1, credit: int = 2, **fields: Any) -> dict[str, Any]:
    event = {"id": str(id_), "debit_account_id": str(debit), "credit_account_id": str(credit)}
    return {**event, "amount": "3", "ledger": 1, "code": 1, **fields}


def _batch(root: str, *events: dict[str, Any]) -> bytes:
    return json.dumps({root: list(events)}).encode()


A = {"ledger": 1, "code": 1}
BATCHES: list[tuple[str, str, bytes, bool]] = [
    (
        "accounts",
        "new accounts",
        _batch("accounts", {"id": "1", **A}, {"id": "2", **A, "flags": 0})[:-2]
        + b',\n {"id":"3", "ledger":1, "code":1, "user_data_64":"9"}]}',
        True,
    ),
    ("accounts", "the same again (exists)", _batch("accounts", {"id": "1", **A}), True),
    (
        "accounts",
        "the tenant's field",
        _batch("accounts", {"id": "4", **A, "user_data_32": 5}),
        True,
    ),
    ("accounts", "a 39-digit id", _batch("accounts", {"id": "1" * 39, **A}), False),
    ("transfers", "some failing", _batch("transfers", _t(10), _t(11, 1, 1), _t(12, 1, 9)), True),
    (
        "transfers",
        "a linked chain broken",
        _batch("transfers", _t(20, flags=1), _t(21, ledger=2)),
        True,
    ),
    (
        "transfers",
        "two-phase",
        _batch("transfers", _t(30, flags=2, timeout=60), _t(31, 0, 0, pending_id="30", flags=4)),
        True,
    ),
    ("transfers", "no events", b'{"transfers":[]}', True),
    ("transfers", "a value out of range", _batch("transfers", _t(40, ledger=1 << 32)), False),
    ("transfers", "an unknown key", _batch("transfers", _t(41, memo="x")), False),
    ("transfers", "malformed JSON", b'{"transfers":[{"id":"42",', False),
    ("transfers", "an id over 2**128 - 1", _batch("transfers", _t(1 << 128)), False),
]
"""(route, case, body, whether the compiled reader takes it)."""


def _answer(response: Any) -> dict[str, Any]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "x-request-id")}
    # the ledgers' clocks are the machine's, request ids are random
    body = re.sub(rb'"timestamp":"[0-9]+"', b'"timestamp":"<t>"', response.content)
    body = re.sub(rb'"request_id":"req_[0-9a-f]+"', b'"request_id":"<r>"', body)
    return {"status": response.status_code, "headers": headers, "body": body}


def test_both_apps_answer_every_batch_alike(pair: tuple[Api, Api], reads: list[str]) -> None:
    fast, plain = pair
    for root, case, body, taken in BATCHES:
        answers = []
        reads.clear()
        for api in (fast, plain):
            response = api.client.post(
                f"/v1/ledger/{root}",
                content=body,
                headers={**api.auth(), "Content-Type": "application/json"},
            )
            answers.append(_answer(response))
        assert answers[0] == answers[1], case
        assert answers[0]["status"] != 500, case
        assert reads == ([root] if taken else []), case
    # and both ledgers hold the same transfers
    found = [
        api.client.post(
            "/v1/ledger/transfers/lookup",
            json={"ids": [str(i) for i in range(10, 42)]},
            headers=api.auth(),
        ).json()["transfers"]
        for api in (fast, plain)
    ]
    for transfers in found:  # the ledgers' clocks are the machine's
        for transfer in transfers:
            transfer.pop("timestamp")
    assert found[0] == found[1]
    assert {t["id"] for t in found[0]} >= {"10", "30"}
