"""The set-up example of docs/payments.md is real code: run as a reader copies it, in a fresh
directory, it gives a working payments service on a migrated store and a ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from puhui.payments import Payments

from .._docs import python_blocks


def test_the_set_up_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = python_blocks("payments.md")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/payments.md", "exec"), namespace)
    payments, books, engine = namespace["payments"], namespace["books"], namespace["engine"]
    try:
        assert isinstance(payments, Payments)
        customer = payments.register_customer("+8613800138000", "Li Wei")
        assert payments.customer(customer.id).display_name == "Li Wei"
    finally:
        books.close()
        engine.dispose()
    assert (tmp_path / "puhui-data" / "puhui.sqlite").is_file()
