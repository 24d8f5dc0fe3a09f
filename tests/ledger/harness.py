"""The interface the conformance tests drive, and its implementation on the reference model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from puhui.ledger._types import (
    Account,
    AccountBalance,
    AccountFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    Transfer,
)
from tests.ledger.reference import ReferenceLedger


class LedgerHarness(Protocol):
    """A ledger under test, with a clock the test controls (nanoseconds)."""

    @property
    def now(self) -> int:
        """The clock: the timestamp of the newest event so far (or the clock set since)."""
        ...

    def set_now(self, now: int) -> None:
        """Move the clock forward to ``now`` (never backward)."""
        ...

    def pulse(self) -> int:
        """Expire every pending transfer due at the current ``now``; return how many."""
        ...

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]: ...

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]: ...

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]: ...

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]: ...

    def query_accounts(self, f: QueryFilter) -> list[Account]: ...

    def query_transfers(self, f: QueryFilter) -> list[Transfer]: ...


class ReferenceHarness:
    """``LedgerHarness`` on the pure-Python ``ReferenceLedger``."""

    def __init__(self, now: int = 0) -> None:
        self.ledger = ReferenceLedger(now=now)

    @property
    def now(self) -> int:
        return self.ledger.now

    def set_now(self, now: int) -> None:
        if now < self.ledger.now:
            raise ValueError(f"the clock cannot go back from {self.ledger.now} to {now}")
        self.ledger.advance(now - self.ledger.now)

    def pulse(self) -> int:
        return self.ledger.pulse()

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return self.ledger.create_accounts(accounts)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return self.ledger.create_transfers(transfers)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return self.ledger.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return self.ledger.lookup_transfers(ids)

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]:
        return self.ledger.get_account_transfers(f)

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]:
        return self.ledger.get_account_balances(f)

    def query_accounts(self, f: QueryFilter) -> list[Account]:
        return self.ledger.query_accounts(f)

    def query_transfers(self, f: QueryFilter) -> list[Transfer]:
        return self.ledger.query_transfers(f)


def _conforms(harness: ReferenceHarness) -> LedgerHarness:
    # Checked by mypy: ReferenceHarness implements the protocol.
    return harness
