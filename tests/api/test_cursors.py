"""Cursors handed back altered: another list's, another tenant's, crafted ones. Each is
``400 cursor_invalid`` or pages on within the caller's own rows; never a 500, never another
tenant's rows."""

from __future__ import annotations

import base64
import json

import pytest

from puhui.api._guards import encode_cursor

from .conftest import Api


def _crafted(position: dict[str, object]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CRAFTED_TEXT_POSITIONS = [
    ("/v1/webhooks/endpoints", {"k": "webhook_endpoints", "at": 0, "id": "we_\u0000"}),
    ("/v1/webhooks/endpoints", {"k": "webhook_endpoints", "at": 0, "id": "\ud800"}),
]


def _assert_cursor_invalid(api: Api, path: str, cursor: str) -> None:
    response = api.client.get(path, params={"cursor": cursor}, headers=api.auth())
    assert response.status_code == 400, (path, cursor, response.status_code, response.text)
    assert response.json()["code"] == "cursor_invalid"


@pytest.mark.parametrize(("path", "position"), CRAFTED_TEXT_POSITIONS)
def test_a_cursor_with_text_the_store_cannot_hold_is_invalid(
    api: Api, path: str, position: dict[str, object]
) -> None:
    _assert_cursor_invalid(api, path, _crafted(position))


@pytest.mark.postgres
@pytest.mark.parametrize(("path", "position"), CRAFTED_TEXT_POSITIONS)
def test_a_cursor_with_text_the_store_cannot_hold_is_invalid_on_postgresql(
    postgres_api: Api, path: str, position: dict[str, object]
) -> None:
    """A NUL (PostgreSQL's text cannot hold one) or a lone surrogate (not UTF-8) in a
    cursor's text position reached the store's comparison: a 500."""
    _assert_cursor_invalid(postgres_api, path, _crafted(position))


def test_encode_cursor_is_what_the_crafted_ones_imitate() -> None:
    assert _crafted({"k": "tenants", "id": 3}) == encode_cursor("tenants", {"id": 3})


@pytest.mark.parametrize("text", ["a\u0000b", "\ud800", "x\udfff"])
def test_decode_cursor_refuses_text_the_store_cannot_compare(text: str) -> None:
    from puhui.api._guards import decode_cursor
    from puhui.api._problems import InvalidCursorError

    with pytest.raises(InvalidCursorError):
        decode_cursor("keys", _crafted({"k": "keys", "at": 0, "id": text}))
    assert decode_cursor("keys", _crafted({"k": "keys", "at": 0, "id": "é"})) == {
        "at": 0,
        "id": "é",
    }
