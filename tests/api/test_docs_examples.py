"""The worked examples of docs/api.md are real: run against an app as a reader runs them
against `puhui serve`, with the keys the page's own `puhui tenant create` and `puhui key
create` lines make, each `print` shows what its comment says."""

from __future__ import annotations

import re
import shlex
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from puhui.api import ApiOptions
from puhui.cli import app as cli
from puhui.platform import WebhookOptions

from .conftest import Api, make_api

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ELLIPSIS = "…"


def worked_examples() -> list[str]:
    """The page's Python blocks that talk to a running server with the reader's key."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    return [block for block in blocks if "PUHUI_API_KEY" in block]


KEY_CREATE = re.compile(r"puhui key create [^`\n]*(?:\n--[^`\n]*)*")
TENANT_CREATE = re.compile(r"puhui tenant create [^`\n#]*")
TOKEN = re.compile(r"^token \(shown once\): (pk_[0-9a-f]{16}_[0-9a-f]{64})$", re.MULTILINE)


def setup_commands() -> list[list[str]]:
    """For each worked example, the command lines the page gives the reader before it: the
    tenant (`puhui tenant create`), then the key (the last `puhui key create` above the
    example, in a shell block or in the text)."""
    text = DOC.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for match in re.finditer(r"```python\n(.*?)```", text, re.DOTALL):
        if "PUHUI_API_KEY" in match.group(1):
            before = text[: match.start()]
            tenant = TENANT_CREATE.findall(before)[-1]
            key = KEY_CREATE.findall(before)[-1]
            found.append([" ".join(line.split()) for line in (tenant, key)])
    return found


def run_setup(lines: list[str], database_url: str) -> str:
    """Run the page's command lines on the app's store, as the reader runs them; the token
    the key creation printed (a tenant the reader made already is fine)."""
    runner = CliRunner()
    printed = ""
    for line in lines:
        args = [*shlex.split(line)[1:], "--database-url", database_url]
        result = runner.invoke(cli, args)
        taken = "tenant_name_taken" in result.output
        assert result.exit_code == 0 or taken, (line, result.output)
        printed = result.output
    [token] = TOKEN.findall(printed)
    return str(token)


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
    assert len(setup_commands()) == 2
    assert all(lines[1].startswith('puhui key create "Bank of Hope"') for lines in setup_commands())
    assert all(len(promised(code)) >= 5 for code in examples)
    assert all(promise for code in examples for promise in promised(code))


def test_the_worked_examples_print_what_the_page_says(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpx = types.ModuleType("httpx")
    setattr(httpx, "Client", lambda base_url, headers: _Client(api, base_url, headers))  # noqa: B010
    monkeypatch.setitem(sys.modules, "httpx", httpx)
    database_url = api.engine.url.render_as_string(hide_password=False)
    for code, lines in zip(worked_examples(), setup_commands(), strict=True):
        monkeypatch.setenv("PUHUI_API_KEY", run_setup(lines, database_url))
        printed: list[str] = []
        namespace = {"print": _printing_to(printed)}
        exec(compile(code, str(DOC), "exec"), namespace)
        promises = promised(code)
        assert len(printed) == len(promises)
        wrong = [(p, s) for p, s in zip(promises, printed, strict=True) if not shows(s, p)]
        assert not wrong, f"promised, printed: {wrong}"
