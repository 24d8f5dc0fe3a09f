"""The worked examples of docs/api.md are real: run against an app as a reader runs them
against `puhui serve`, each `print` shows what its comment says."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from puhui.api import ApiOptions
from puhui.platform import WebhookOptions

from .conftest import Api, make_api

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ELLIPSIS = "…"


def worked_examples() -> list[str]:
    """The page's Python blocks that talk to a running server with the reader's key."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return [block for block in blocks if "PUHUI_API_KEY" in block]


def promised(code: str) -> list[str]:
    """What each `print(...)` line promises: its trailing comment, or the comment line below."""
    lines = code.splitlines()
    found = []
    for number, line in enumerate(lines):
        if not line.startswith("print("):
            continue
        trailing = re.search(r"\)\s+#(.*)$", line)
        comment = trailing.group(1) if trailing else ""
        if not comment.strip() and number + 1 < len(lines) and lines[number + 1].startswith("# "):
            comment = lines[number + 1][2:]
        found.append(comment.strip())
    return found


def shows(printed: str, promise: str) -> bool:
    """`…` in a promise stands for the rest (ids, secrets)."""
    if ELLIPSIS in promise:
        return printed.startswith(promise.partition(ELLIPSIS)[0])
    return printed == promise


class _Client:
    """httpx.Client as the examples use it, on the app's TestClient."""

    def __init__(self, api: Api, base_url: str, headers: dict[str, str]) -> None:
        self._api, self._prefix, self._headers = api, urlsplit(base_url).path, headers

    def _send(self, method: str, path: str, headers: dict[str, str] | None, **rest: Any) -> Any:
        merged = {**self._headers, **(headers or {})}
        return self._api.client.request(method, self._prefix + path, headers=merged, **rest)

    def get(self, path: str, *, params: Any = None, headers: Any = None) -> Any:
        return self._send("GET", path, headers, params=params)

    def post(self, path: str, *, json: Any = None, headers: Any = None) -> Any:
        return self._send("POST", path, headers, json=json)


def _printing_to(printed: list[str]) -> Any:
    return lambda *args: printed.append(" ".join(map(str, args)))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # The example's webhook endpoint is a receiver on the reader's machine: `--webhook-loopback`.
    options = ApiOptions(webhooks=WebhookOptions(loopback_allowed=True))
    yield from make_api(tmp_path, options=options)


def test_the_page_has_its_examples() -> None:
    examples = worked_examples()
    assert len(examples) == 2
    assert all(len(promised(code)) >= 5 for code in examples)
    assert all(promise for code in examples for promise in promised(code))


def test_the_worked_examples_print_what_the_page_says(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUHUI_API_KEY", api.token_a)
    httpx = types.ModuleType("httpx")
    setattr(httpx, "Client", lambda base_url, headers: _Client(api, base_url, headers))  # noqa: B010
    monkeypatch.setitem(sys.modules, "httpx", httpx)
    for code in worked_examples():
        printed: list[str] = []
        namespace = {"print": _printing_to(printed)}
        exec(compile(code, str(DOC), "exec"), namespace)
        promises = promised(code)
        assert len(printed) == len(promises)
        wrong = [(p, s) for p, s in zip(promises, printed, strict=True) if not shows(s, p)]
        assert not wrong, f"promised, printed: {wrong}"
