"""``LedgerClient``: what code that only calls the ledger's API may take, embedded or remote."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from ._types import (
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
)


class LedgerClient(Protocol):
    """The TigerBeetle API that both ``Ledger`` (embedded) and ``RemoteLedger`` (``connect``)
    offer, with the same answers and errors."""

    @property
    def identity(self) -> str:
        """The journal's identity: the same for every client of one ledger."""
        ...

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]: ...

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]: ...

    def create_accounts_array(self, accounts: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...

    def create_transfers_array(self, transfers: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...

    def lookup_accounts_array(self, ids: Sequence[int]) -> np.ndarray[Any, Any]: ...

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...

    def lookup_transfers_array(self, ids: Sequence[int]) -> np.ndarray[Any, Any]: ...

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]: ...

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]: ...

    def query_accounts(self, query_filter: QueryFilter) -> list[Account]: ...

    def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]: ...

    def tick(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
