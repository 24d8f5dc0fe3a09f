"""``TenantLedger``: each tenant's ids live in their own space of the shared ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

import puhui.ledger as tb
from puhui.clock import ManualClock
from puhui.ledger import (
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)
from puhui.platform import TenantLedger, Tenants
from puhui.platform.model import scramble_id

BOTH = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS


def _filter(account_id: int) -> AccountFilter:
    return AccountFilter(account_id, 0, 0, 0, 0, 0, 0, 100, BOTH)


def test_tenants_share_ids_but_never_accounts(
    engine: sa.Engine, clock: ManualClock, tmp_path: Path
) -> None:
    tenants = Tenants(engine, clock=clock)
    a_tenant, b_tenant = tenants.create("A", "bank"), tenants.create("B", "insurer")

    async def scenario(ledger: tb.Ledger) -> None:
        shared = tb.AsyncLedger(ledger)
        a, b = TenantLedger(shared, a_tenant), TenantLedger(shared, b_tenant)
        history = AccountFlags.HISTORY
        for tenant in (a, b):  # the same ids, two tenants: both are created
            results = await tenant.create_accounts(
                [Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1, flags=history)]
            )
            assert [r.status for r in results] == [CreateAccountStatus.CREATED] * 2
        pending = Transfer(
            id=11,
            debit_account_id=1,
            credit_account_id=2,
            amount=7,
            ledger=1,
            code=1,
            flags=TransferFlags.PENDING,
            timeout=3600,
        )
        moved = await a.create_transfers(
            [
                Transfer(
                    id=10, debit_account_id=1, credit_account_id=2, amount=100, ledger=1, code=1
                ),
                pending,
            ]
        )
        assert [r.status for r in moved] == [CreateTransferStatus.CREATED] * 2
        # B cannot post A's pending transfer: for B it does not exist
        post = Transfer(
            id=12,
            pending_id=11,
            amount=7,
            ledger=1,
            code=1,
            flags=TransferFlags.POST_PENDING_TRANSFER,
        )
        (result,) = await b.create_transfers([post])
        assert result.status is CreateTransferStatus.PENDING_TRANSFER_NOT_FOUND
        (result,) = await a.create_transfers([post])
        assert result.status is CreateTransferStatus.CREATED
        # each sees its own accounts under the ids it chose, stamped with its number
        a_accounts = await a.lookup_accounts([1, 2])
        b_accounts = await b.lookup_accounts([1, 2])
        assert [x.id for x in a_accounts] == [1, 2] == [x.id for x in b_accounts]
        assert a_accounts[1].credits_posted == 107 and b_accounts[1].credits_posted == 0
        assert {x.user_data_32 for x in a_accounts} == {a_tenant.id}
        assert {x.user_data_32 for x in b_accounts} == {b_tenant.id}
        assert [t.id for t in await a.lookup_transfers([10, 11, 12])] == [10, 11, 12]
        assert await b.lookup_transfers([10, 11, 12]) == []
        a_history = await a.get_account_transfers(_filter(2))
        assert [(t.id, t.debit_account_id, t.pending_id) for t in a_history] == [
            (10, 1, 0),
            (11, 1, 0),
            (12, 1, 11),
        ]
        assert await b.get_account_transfers(_filter(2)) == []
        assert len(await a.get_account_balances(_filter(2))) == 3
        assert await b.get_account_balances(_filter(2)) == []
        # in the ledger itself, the two tenants' accounts are different rows
        raw = await shared.lookup_accounts(
            [scramble_id(1, a_tenant.ledger_id_mask), scramble_id(1, b_tenant.ledger_id_mask)]
        )
        assert [x.user_data_32 for x in raw] == [a_tenant.id, b_tenant.id]
        # an account made outside the API (no stamp, raw id) is invisible to tenants
        await shared.create_accounts([Account(id=777, ledger=1, code=1)])
        assert await a.lookup_accounts([scramble_id(777, a_tenant.ledger_id_mask)]) == []

    with tb.open(str(tmp_path / "ledger")) as ledger:
        asyncio.run(scenario(ledger))
