"""The example at the top of docs/ledger.md is real code: run as a reader copies it, in a
fresh directory and again on the ledger it made (its accounts then exist, its transfer is
new), it creates what it says and its assertion holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from puhui import ledger as tb

from .._docs import python_blocks


def test_the_example_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = python_blocks("ledger.md")[0]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(code, "docs/ledger.md", "exec"), {})
    with tb.open(tmp_path / "puhui-data" / "ledger") as client:
        wallet, history = client.lookup_accounts([2, 1])
        assert wallet.credits_posted == 2 * 12_50
        assert history.flags == tb.AccountFlags.HISTORY
        assert tb.verify(client).ok
