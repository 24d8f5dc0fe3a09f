"""``AsyncLedger``: the asyncio face of a ledger, as ``tigerbeetle.ClientAsync``.

Requests from many coroutines go to the same writer as the threaded API, so they share group
commits; a whole group's answers reach an event loop in one wake-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np

from ._convert import (
    account_results,
    accounts_to_array,
    check_array,
    transfer_results,
    transfers_to_array,
)
from ._engine import KIND_ACCOUNTS, KIND_TRANSFERS
from ._ledger import Ledger
from ._remote import RemoteLedger
from ._types import (
    ACCOUNT_DTYPE,
    RESULT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
)


class AsyncLedger:
    """Async methods over an open ``Ledger``, or a ``RemoteLedger`` (``connect``); it closes
    it on ``close()``. A remote ledger's creates are sent from a worker thread (a server
    pushing back never blocks the event loop); the client's reader thread completes them."""

    def __init__(self, ledger: Ledger | RemoteLedger) -> None:
        self.ledger = ledger

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return account_results(await self.create_accounts_array(accounts_to_array(accounts)))

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return transfer_results(await self.create_transfers_array(transfers_to_array(transfers)))

    async def create_accounts_array(self, accounts: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        events = check_array(accounts, ACCOUNT_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        result: np.ndarray[Any, Any]
        if isinstance(self.ledger, RemoteLedger):
            result = await self._remote_create(self.ledger, KIND_ACCOUNTS, events)
        else:
            result = await self.ledger._submit_async(KIND_ACCOUNTS, events)
        return result

    async def create_transfers_array(self, transfers: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        events = check_array(transfers, TRANSFER_DTYPE)
        if events.shape[0] == 0:
            return np.zeros(0, RESULT_DTYPE)
        result: np.ndarray[Any, Any]
        if isinstance(self.ledger, RemoteLedger):
            result = await self._remote_create(self.ledger, KIND_TRANSFERS, events)
        else:
            result = await self.ledger._submit_async(KIND_TRANSFERS, events)
        return result

    @staticmethod
    async def _remote_create(
        ledger: RemoteLedger, kind: int, events: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        # Sent from a worker thread: a server pushing back (its queue full) blocks the send,
        # which must not stop the event loop; the client's reader completes the future.
        future = await asyncio.to_thread(ledger._submit_future, kind, events)
        result: np.ndarray[Any, Any] = await asyncio.wrap_future(future)
        return result

    # Reads are short and run on the writer between groups; a worker thread waits for them.

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await asyncio.to_thread(self.ledger.lookup_accounts, ids)

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await asyncio.to_thread(self.ledger.lookup_transfers, ids)

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return await asyncio.to_thread(self.ledger.get_account_transfers, filter)

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        return await asyncio.to_thread(self.ledger.get_account_balances, filter)

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        return await asyncio.to_thread(self.ledger.query_accounts, query_filter)

    async def query_transfers(self, query_filter: QueryFilter) -> list[Transfer]:
        return await asyncio.to_thread(self.ledger.query_transfers, query_filter)

    async def close(self) -> None:
        await asyncio.to_thread(self.ledger.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
