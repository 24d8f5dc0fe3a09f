"""``verify``: check the ledger's invariants against its own journal.

1. Per ledger, total debits equal total credits (posted and pending separately).
2. Every account's four balances equal what its stored transfers add up to, recomputed by a
   different route than the kernel (a plain sum over transfer rows and two-phase states).
3. The live state (snapshot + journal replay) equals a from-scratch replay of the whole
   journal: accounts, transfers, two-phase states, burned ids and counters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _kernel as K
from ._engine import Engine
from ._ledger import Ledger, apply_record
from ._types import BALANCE_DTYPE

BALANCE_NAMES = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(slots=True)
class VerifyReport:
    ok: bool
    accounts: int
    transfers: int
    journal_ops: int
    ledgers: dict[int, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ledgers"] = {
            str(k): {name: str(v) for name, v in sums.items()} for k, sums in self.ledgers.items()
        }
        return data


def _ledger_sums(engine: Engine) -> dict[int, dict[str, int]]:
    n = engine.n_accounts
    accounts = engine.accounts[:n]
    ledgers = np.unique(accounts["ledger"]) if n else np.zeros(0, np.uint32)
    sums = np.zeros((ledgers.shape[0], 4, 4), np.uint64)
    if n:
        K.sum_by_ledger(accounts, n, ledgers, sums)
    out: dict[int, dict[str, int]] = {}
    for k, ledger in enumerate(ledgers.tolist()):
        out[int(ledger)] = {
            name: sum(int(sums[k, b, limb]) << (32 * limb) for limb in range(4))
            for b, name in enumerate(BALANCE_NAMES)
        }
    return out


def _check(engine: Engine, journal_ops: int, replay: Engine) -> VerifyReport:
    report = VerifyReport(
        ok=True,
        accounts=engine.n_accounts,
        transfers=engine.n_transfers,
        journal_ops=journal_ops,
        ledgers=_ledger_sums(engine),
    )
    for ledger, sums in report.ledgers.items():
        if sums["debits_posted"] != sums["credits_posted"]:
            report.problems.append(f"ledger {ledger}: posted debits != posted credits")
        if sums["debits_pending"] != sums["credits_pending"]:
            report.problems.append(f"ledger {ledger}: pending debits != pending credits")

    n = engine.n_accounts
    recomputed = np.zeros(n, BALANCE_DTYPE)
    bad_row = K.recompute_balances(
        engine.accounts,
        engine.acct_slots,
        n,
        engine.transfers,
        engine.xfer_state,
        engine.n_transfers,
        recomputed,
    )
    if bad_row >= 0:
        report.problems.append(f"transfer row {bad_row} is inconsistent with its two-phase state")
    else:
        for name in BALANCE_NAMES:
            for word in ("_lo", "_hi"):
                column = name + word
                differs = np.nonzero(recomputed[column] != engine.accounts[column][:n])[0]
                if differs.shape[0]:
                    row = int(differs[0])
                    report.problems.append(
                        f"{differs.shape[0]} account(s) have {name} different from the sum of "
                        f"their transfers (first: row {row})"
                    )
                    break

    if replay.n_accounts != n or not np.array_equal(replay.accounts[:n], engine.accounts[:n]):
        report.problems.append("accounts differ from a full replay of the journal")
    m = engine.n_transfers
    if replay.n_transfers != m or not np.array_equal(replay.transfers[:m], engine.transfers[:m]):
        report.problems.append("transfers differ from a full replay of the journal")
    elif not np.array_equal(replay.xfer_state[:m], engine.xfer_state[:m]):
        report.problems.append("two-phase states differ from a full replay of the journal")
    if sorted(replay.retired_ids()) != sorted(engine.retired_ids()):
        report.problems.append("burned ids differ from a full replay of the journal")
    for index, name in ((K.C_WATERMARK, "watermark"), (K.C_CLOCK, "clock")):
        if replay.counters[index] != engine.counters[index]:
            report.problems.append(f"{name} differs from a full replay of the journal")
    report.ok = not report.problems
    return report


def verify(ledger: Ledger) -> VerifyReport:
    """Check every invariant of an open ledger; the writer pauses while it runs."""

    def run(engine: Engine) -> VerifyReport:
        replay = Engine(None)
        try:
            for _op, payload in ledger.journal.read(0):
                apply_record(replay, payload)
            return _check(engine, ledger.last_op, replay)
        finally:
            replay.close()

    report: VerifyReport = ledger.read_state(run)
    return report
