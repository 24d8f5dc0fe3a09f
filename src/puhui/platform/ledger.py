"""``TenantLedger``: one tenant's view of the shared ledger, isolated from every other's.

Two guards, each enough on its own against an honest mistake, together against a probe:

1. **Scrambled ids.** Every id a tenant sends (account, transfer, pending transfer) is XORed
   with the tenant's random 128-bit mask before it reaches the ledger, and every id the
   ledger returns is XORed back (``model.scramble_id``). Tenants keep TigerBeetle's
   semantics on their own ids, but one tenant's id ``x`` is a different ledger id from
   another tenant's ``x``: an account of another tenant (or of a Puhui service) can only be
   named by guessing 128 random bits. So a transfer touching it fails with the ledger's own
   ``debit_account_not_found``/``credit_account_not_found`` and a lookup finds nothing —
   exactly as if the account did not exist, even in the precedence of result codes, and
   creating an account with an id another tenant uses simply works.
2. **Owner stamp.** Every account a tenant creates carries the tenant's number in
   ``user_data_32`` (the API reserves that field of accounts; a request setting it is
   refused). Lookups, listings and balances return only accounts (and transfers of
   accounts) stamped with the caller's number. The stamp also shows operators, in the
   ledger itself, which tenant owns an account.

Why not an ownership table in SQL: the ledger would then need a second store consulted (and
written in step) on every batch — two systems to keep consistent for every account, and a
SQL query per request on the hot path. The stamp is written atomically with the account,
and the checks run in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from puhui.errors import InvalidInputError
from puhui.ledger import (
    ACCOUNT_DTYPE,
    TRANSFER_DTYPE,
    Account,
    AccountBalance,
    AccountFilter,
    AsyncLedger,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
)

from .model import scramble_id
from .tenants import Tenant

Array = np.ndarray[Any, Any]

_U64_MAX = np.uint64((1 << 64) - 1)

query_rounds_max = 8
"""Ledger pages ``query_transfers`` reads for one answer at most (unit: pages of the asked
limit): transfers of other tenants are skipped, so a page may come back short."""


class ReservedFieldError(InvalidInputError):
    """An account sets ``user_data_32``, which the platform reserves for the owner's number."""

    code = "reserved_field"


class TenantLedger:
    """The ledger as one tenant sees it (see the module's description)."""

    def __init__(self, ledger: AsyncLedger, tenant: Tenant) -> None:
        self.ledger = ledger
        self.tenant = tenant
        self._mask = tenant.ledger_id_mask

    def _id(self, value: int) -> int:
        return scramble_id(value, self._mask)

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        for index, account in enumerate(accounts):
            if account.user_data_32 not in (0, self.tenant.id):
                raise ReservedFieldError(
                    f"accounts[{index}].user_data_32 is reserved: the platform sets it to the "
                    "owner's tenant number",
                    index=index,
                )
        events = [
            dataclasses.replace(a, id=self._id(a.id), user_data_32=self.tenant.id) for a in accounts
        ]
        return await self.ledger.create_accounts(events)

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        events = [
            dataclasses.replace(
                t,
                id=self._id(t.id),
                debit_account_id=self._id(t.debit_account_id),
                credit_account_id=self._id(t.credit_account_id),
                pending_id=self._id(t.pending_id),
            )
            for t in transfers
        ]
        return await self.ledger.create_transfers(events)

    # The columnar forms: the same guards over a whole batch at once (numpy), for callers that
    # hold the ledger's binary layout (the API's binary batch routes). Same answers as above.

    async def create_accounts_array(self, accounts: Array) -> Array:
        """``create_accounts`` of an ``ACCOUNT_DTYPE`` array (not changed): the results array."""
        events = _checked(accounts, ACCOUNT_DTYPE)
        stamps = events["user_data_32"]
        bad = np.flatnonzero((stamps != 0) & (stamps != self.tenant.id))
        if bad.size:
            index = int(bad[0])
            raise ReservedFieldError(
                f"accounts[{index}].user_data_32 is reserved: the platform sets it to the "
                "owner's tenant number",
                index=index,
            )
        events = events.copy()
        _scramble_column(events, "id", self._mask)
        events["user_data_32"] = self.tenant.id
        return await self.ledger.create_accounts_array(events)

    async def create_transfers_array(self, transfers: Array) -> Array:
        """``create_transfers`` of a ``TRANSFER_DTYPE`` array (not changed): the results."""
        events = _checked(transfers, TRANSFER_DTYPE).copy()
        for name in ("id", "debit_account_id", "credit_account_id", "pending_id"):
            _scramble_column(events, name, self._mask)
        return await self.ledger.create_transfers_array(events)

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        found = await self.ledger.lookup_accounts([self._id(i) for i in ids])
        return [
            dataclasses.replace(a, id=self._id(a.id))
            for a in found
            if a.user_data_32 == self.tenant.id
        ]

    async def _owned(self, ledger_ids: set[int]) -> set[int]:
        """Which of these (scrambled) account ids are this tenant's."""
        found = await self.ledger.lookup_accounts(sorted(ledger_ids))
        return {a.id for a in found if a.user_data_32 == self.tenant.id}

    def _transfer_out(self, t: Transfer) -> Transfer:
        return dataclasses.replace(
            t,
            id=self._id(t.id),
            debit_account_id=self._id(t.debit_account_id),
            credit_account_id=self._id(t.credit_account_id),
            pending_id=self._id(t.pending_id),
        )

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        found = await self.ledger.lookup_transfers([self._id(i) for i in ids])
        if not found:
            return []
        owned = await self._owned({t.debit_account_id for t in found})
        return [self._transfer_out(t) for t in found if t.debit_account_id in owned]

    async def get_account_transfers(self, account_filter: AccountFilter) -> list[Transfer]:
        scrambled = dataclasses.replace(
            account_filter, account_id=self._id(account_filter.account_id)
        )
        if not await self._owned({scrambled.account_id}):
            return []
        found = await self.ledger.get_account_transfers(scrambled)
        return [self._transfer_out(t) for t in found]

    async def get_account_balances(self, account_filter: AccountFilter) -> list[AccountBalance]:
        scrambled = dataclasses.replace(
            account_filter, account_id=self._id(account_filter.account_id)
        )
        if not await self._owned({scrambled.account_id}):
            return []
        return await self.ledger.get_account_balances(scrambled)

    async def query_accounts(self, query_filter: QueryFilter) -> list[Account]:
        """Accounts matching the filter, of this tenant only: the owner stamp is the
        filter's ``user_data_32`` (a filter naming another number finds nothing)."""
        if query_filter.user_data_32 not in (0, self.tenant.id):
            return []
        scoped = dataclasses.replace(query_filter, user_data_32=self.tenant.id)
        found = await self.ledger.query_accounts(scoped)
        return [dataclasses.replace(a, id=self._id(a.id)) for a in found]

    async def query_transfers(
        self, query_filter: QueryFilter, *, rounds_max: int = query_rounds_max
    ) -> tuple[list[Transfer], int | None]:
        """This tenant's transfers matching the filter (at most its limit), and the ledger
        timestamp to go on from (None: the scan reached the end of the range).

        Transfers carry no owner stamp; one is this tenant's when its debit account is (an
        account of another tenant cannot be named, so both sides are then the tenant's).
        Other tenants' transfers are skipped while scanning at most ``rounds_max`` pages,
        so the answer may hold fewer than ``limit`` transfers with a position to go on from.
        """
        limit = query_filter.limit
        reversed_ = bool(query_filter.flags & QueryFilterFlags.REVERSED)
        low, high = query_filter.timestamp_min, query_filter.timestamp_max
        kept: list[Transfer] = []
        for _ in range(rounds_max):
            page = dataclasses.replace(query_filter, timestamp_min=low, timestamp_max=high)
            found = await self.ledger.query_transfers(page)
            owned = await self._owned({t.debit_account_id for t in found}) if found else set()
            for transfer in found:
                if transfer.debit_account_id in owned:
                    kept.append(self._transfer_out(transfer))
                    if len(kept) == limit:
                        return kept, transfer.timestamp
            if len(found) < limit:
                return kept, None
            last = found[-1].timestamp
            if reversed_:
                if last <= 1 or (low and last - 1 < low):
                    return kept, None
                high = last - 1
            else:
                if high and last + 1 > high:
                    return kept, None
                low = last + 1
        return kept, (found[-1].timestamp if found else None)


def _checked(events: Array, dtype: np.dtype[Any]) -> Array:
    if not isinstance(events, np.ndarray) or events.dtype != dtype or events.ndim != 1:
        raise TypeError(f"expected a 1-dimensional array of dtype {dtype}")
    return events


def scramble_columns(lo: Array, hi: Array, mask: int) -> tuple[Array, Array]:
    """``model.scramble_id`` of every 128-bit id given as its low and high 64-bit words
    (``uint64`` arrays): the same values, a batch at once."""
    mask_lo = np.uint64(mask & int(_U64_MAX))
    mask_hi = np.uint64(mask >> 64)
    kept = (
        ((lo == 0) & (hi == 0))
        | ((lo == _U64_MAX) & (hi == _U64_MAX))
        | ((lo == mask_lo) & (hi == mask_hi))
        | ((lo == (mask_lo ^ _U64_MAX)) & (hi == (mask_hi ^ _U64_MAX)))
    )
    return np.where(kept, lo, lo ^ mask_lo), np.where(kept, hi, hi ^ mask_hi)


def _scramble_column(events: Array, name: str, mask: int) -> None:
    lo, hi = scramble_columns(events[name + "_lo"], events[name + "_hi"], mask)
    events[name + "_lo"] = lo
    events[name + "_hi"] = hi
