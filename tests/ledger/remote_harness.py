"""``LedgerHarness`` over a ``RemoteLedger``: the engine served on a Unix socket in this
process, every call of the tests through ``connect`` (the clock as ``EngineHarness``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from puhui.ledger import (
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    LedgerOptions,
    LedgerServer,
    QueryFilter,
    RemoteLedger,
    Transfer,
    connect,
    serve,
)
from tests.ledger.engine_harness import EngineHarness


class RemoteHarness:
    def __init__(
        self,
        directory: Path,
        now: int = 0,
        *,
        url: str | None = None,
        options: LedgerOptions | None = None,
    ) -> None:
        self.engine = EngineHarness(directory, now, url=url, options=options)
        self.socket_path = directory / "ledger.sock"
        self.server: LedgerServer = serve(self.engine.ledger, self.socket_path)
        self.remote: RemoteLedger = connect(self.socket_path)

    def close(self) -> None:
        self.remote.close()
        self.server.close()
        self.engine.close()

    @property
    def now(self) -> int:
        return self.engine.now

    def set_now(self, now: int) -> None:
        self.engine.set_now(now)

    def pulse(self) -> int:
        return self.remote.tick()

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self.remote.create_accounts(accounts)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return self.remote.create_transfers(transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return self.remote.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return self.remote.lookup_transfers(ids)

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]:
        return self.remote.get_account_transfers(f)

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]:
        return self.remote.get_account_balances(f)

    def query_accounts(self, f: QueryFilter) -> list[Account]:
        return self.remote.query_accounts(f)

    def query_transfers(self, f: QueryFilter) -> list[Transfer]:
        return self.remote.query_transfers(f)
