"""``LedgerHarness`` over the real engine, with a manual clock (see harness.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from puhui.clock import ManualClock
from puhui.ledger import (
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    LedgerClient,
    LedgerOptions,
    QueryFilter,
    Transfer,
    open,
)


class EngineHarness:
    def __init__(
        self,
        directory: Path,
        now: int = 0,
        *,
        url: str | None = None,
        options: LedgerOptions | None = None,
    ) -> None:
        self.directory = directory
        self.url = url or str(directory / "journal.sqlite")
        self.options = options
        self.clock = ManualClock(now)
        self.ledger: Ledger = open(
            self.url, state_dir=directory / "state", clock=self.clock, options=options
        )

    def reopen(self) -> None:
        """Close and open again: recovery from snapshot + journal."""
        self.ledger.close()
        self.ledger = open(
            self.url, state_dir=self.directory / "state", clock=self.clock, options=self.options
        )

    def close(self) -> None:
        self.ledger.close()

    @property
    def now(self) -> int:
        clock: int = self.ledger.read_state(lambda engine: engine.clock)
        return max(self.clock.now_ns(), clock)

    def set_now(self, now: int) -> None:
        if now > self.clock.now_ns():
            self.clock.set(now)

    @property
    def client(self) -> LedgerClient:
        """What the tests' calls go through: the engine itself (a subclass serves it)."""
        return self.ledger

    def pulse(self) -> int:
        return self.client.tick()

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self.client.create_accounts(accounts)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return self.client.create_transfers(transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return self.client.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return self.client.lookup_transfers(ids)

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]:
        return self.client.get_account_transfers(f)

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]:
        return self.client.get_account_balances(f)

    def query_accounts(self, f: QueryFilter) -> list[Account]:
        return self.client.query_accounts(f)

    def query_transfers(self, f: QueryFilter) -> list[Transfer]:
        return self.client.query_transfers(f)
