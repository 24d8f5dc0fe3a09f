"""Property tests: the engine against the reference model, on random operation sequences.

Hypothesis draws sequences of batches over a small id space (accounts 1..8 on two ledgers,
transfers 1..40, so ids collide and resends happen), clock advances and restarts. Each
sequence runs on the reference model (``ReferenceHarness``) and on the real engine
(``EngineHarness``); both stamp a batch ``now + 1 .. now + len``, so every result, lookup and
query must be identical. The engine expires due pending transfers by itself at the start of
every request while the model only does so on ``pulse()``: every clock advance is therefore
followed at once by a ``pulse()`` on both, at the same ``now``.

A sequence is drawn as abstract specs and materialised into concrete ``Account``/``Transfer``
batches before it runs (imported timestamps relative to the batch's ``now`` or to the newest
event, post/void ``pending_id`` naming pending transfers that exist, resends of earlier
events), so a falsifying example prints as the exact batches to replay. The engine journals
to SQLite or to the file journal (drawn per example) and snapshots every 5 events, so that
``Reopen`` steps recover from a snapshot plus the journal after it (or from the journal
alone when the step drops the snapshots).

Properties: the engine matches the model (results, lookups, per-account history, queries,
``verify``, recovery); money is conserved per ledger and balance limits hold; two engines fed
the same sequence end byte-identical.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from puhui.ledger import (
    AMOUNT_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    LedgerOptions,
    QueryFilter,
    QueryFilterFlags,
    Transfer,
    TransferFlags,
    verify,
)
from tests.ledger.engine_harness import EngineHarness
from tests.ledger.harness import ReferenceHarness
from tests.ledger.reference import PendingState
from tests.ledger.remote_harness import RemoteHarness

START = 1_000_000_000_000
"""The clock of every harness at the start (ns): far from 0 so imported timestamps fit."""
NS_PER_S = 1_000_000_000
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
TIMESTAMP_MAX = U64_MAX - 1
LIMIT_MAX = 8189

ACCOUNT_IDS = list(range(0, 10))  # 1..8 may exist; 0 and 9 never do.
TRANSFER_IDS = list(range(0, 42))  # 1..40 may exist; 0 and 41 never do.

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- concrete operations ----------------------------------------------------------------------


def _short(obj: Account | Transfer) -> str:
    """A dataclass repr without its zero fields (falsifying examples stay readable)."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value == 0:
            continue
        if f.name == "flags":
            kind = AccountFlags if isinstance(obj, Account) else TransferFlags
            known = int(value) & sum(int(m) for m in kind)
            names = [m.name for m in kind if m.value and int(value) & int(m) and m.name]
            if int(value) & ~known:
                names.append(hex(int(value) & ~known))
            parts.append(f"flags={'|'.join(names)}")
        elif value == AMOUNT_MAX:
            parts.append(f"{f.name}=MAX")
        elif value > AMOUNT_MAX - (1 << 70):
            parts.append(f"{f.name}=MAX-{AMOUNT_MAX - value}")
        else:
            parts.append(f"{f.name}={value}")
    return f"{type(obj).__name__}({', '.join(parts)})"


# Plain classes (not dataclasses) so that Hypothesis prints falsifying examples with these
# compact reprs.


class CreateAccounts:
    __slots__ = ("events",)

    def __init__(self, events: tuple[Account, ...]) -> None:
        self.events = events

    def __repr__(self) -> str:
        return f"CreateAccounts([{', '.join(_short(e) for e in self.events)}])"


class CreateTransfers:
    __slots__ = ("events",)

    def __init__(self, events: tuple[Transfer, ...]) -> None:
        self.events = events

    def __repr__(self) -> str:
        return f"CreateTransfers([{', '.join(_short(e) for e in self.events)}])"


class Advance:
    """Set the clock to ``now`` on both harnesses, then pulse both."""

    __slots__ = ("now",)

    def __init__(self, now: int) -> None:
        self.now = now

    def __repr__(self) -> str:
        return f"Advance(now=START+{self.now - START})"


class Reopen:
    """Engine only: close, drop the ``drop`` newest snapshots, open (snapshot + replay)."""

    __slots__ = ("drop",)

    def __init__(self, drop: int) -> None:
        self.drop = drop

    def __repr__(self) -> str:
        return f"Reopen(drop={self.drop})"


Op = CreateAccounts | CreateTransfers | Advance | Reopen


# --- strategies -------------------------------------------------------------------------------
#
# Every event starts well formed (so that chains commit and balances move) and then, often,
# gets one "fault" that TigerBeetle must reject or treat specially. Accounts 1..4 are on
# ledger 1 and 5..8 on ledger 2 unless a fault says otherwise.

DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


def _weighted(*pairs: tuple[int, Any]) -> st.SearchStrategy[Any]:
    """``sampled_from`` with integer weights (shrinks towards the first value)."""
    return st.sampled_from([value for weight, value in pairs for _ in range(weight)])


linked_bit = _weighted((4, 0), (1, 1))
small_user_data = _weighted((3, 0), (1, 1), (1, 2))
small_amounts = st.integers(0, 30)
huge_amounts = st.one_of(
    st.just(AMOUNT_MAX),
    st.integers(AMOUNT_MAX - 40, AMOUNT_MAX - 1),
    st.sampled_from([(1 << 64) - 1, 1 << 64, 1 << 127]),
)
amounts = st.one_of(small_amounts, small_amounts, small_amounts, st.just(0), huge_amounts)
bad_account_ids = st.sampled_from([0, 9, AMOUNT_MAX])
transfer_ids = st.integers(1, 40)


@dataclass(frozen=True)
class TsSpec:
    """A timestamp: ``anchor + index + offset`` (``index``: the event's place in its batch).

    Anchors: ``zero`` (absolute: offset only, no index), ``now`` (the batch's ``now``),
    ``watermark`` (the newest transfer or expiry), ``transfers`` (the newest transfer: an import
    may fall between it and a later expiry), ``accounts`` (the newest account).
    """

    anchor: str
    offset: int = 0

    def resolve(self, anchors: dict[str, int], index: int) -> int:
        if self.anchor == "zero":
            return self.offset
        return anchors[self.anchor] + index + self.offset


ZERO_TS = TsSpec("zero")
# Imported timestamps that are mostly valid: at most the batch's import cutoff
# (now + len - 1), and usually (not always) after what they must follow.
imported_timestamps = st.one_of(
    st.builds(TsSpec, st.just("now"), st.integers(-6, 0)),
    st.builds(TsSpec, st.sampled_from(["watermark", "transfers", "accounts"]), st.integers(1, 3)),
)
odd_timestamps = st.one_of(
    st.sampled_from(
        # 2**63: just above TigerBeetle's TimestampRange (maxInt(u63)), so out of range.
        [ZERO_TS, TsSpec("zero", 1), TsSpec("zero", 2**63), TsSpec("zero", TIMESTAMP_MAX)]
    ),
    st.just(TsSpec("zero", U64_MAX)),
    st.builds(TsSpec, st.just("now"), st.integers(1, 8)),  # beyond the cutoff: must not advance
)


def _anchors(guide: ReferenceHarness) -> dict[str, int]:
    accounts = guide.ledger.accounts
    return {
        "now": guide.now,
        "watermark": guide.ledger.watermark(),
        "transfers": guide.ledger.newest_transfer_timestamp(),
        "accounts": max((a.timestamp for a in accounts), default=0),
    }


ACCOUNT_FAULTS = [
    "id_zero",
    "id_max",
    "ledger_zero",
    "ledger_other",
    "code_zero",
    "balance",
    "reserved_flag",
    "exclusive_flags",
    "timestamp",
    "imported_mismatch",
    "user_data",
]


@st.composite
def account_specs(
    draw: st.DrawFn, batch_imported: bool, faults: bool = True
) -> tuple[Account, TsSpec]:
    account_id = draw(st.integers(1, 8))
    flags = (
        draw(st.sampled_from([0, 0, DMNEC, CMNED]))
        | draw(_weighted((2, 0), (1, int(AccountFlags.HISTORY))))
        | draw(_weighted((8, 0), (1, int(AccountFlags.CLOSED))))
        | (draw(linked_bit) if faults else 0)
    )
    account = Account(
        id=account_id,
        user_data_128=draw(_weighted((3, 0), (1, 1), (1, AMOUNT_MAX))),
        user_data_64=draw(small_user_data),
        user_data_32=draw(small_user_data),
        ledger=1 if account_id <= 4 else 2,
        code=draw(st.sampled_from([1, 1, 2])),
    )
    imported = batch_imported
    ts = draw(imported_timestamps) if imported else ZERO_TS
    fault = (
        draw(st.one_of(st.none(), st.none(), st.sampled_from(ACCOUNT_FAULTS))) if faults else None
    )
    if fault == "id_zero":
        account.id = 0
    elif fault == "id_max":
        account.id = AMOUNT_MAX
    elif fault == "ledger_zero":
        account.ledger = 0
    elif fault == "ledger_other":
        account.ledger = 3 - account.ledger
    elif fault == "code_zero":
        account.code = 0
    elif fault == "balance":
        name = draw(
            st.sampled_from(
                ["debits_pending", "debits_posted", "credits_pending", "credits_posted"]
            )
        )
        setattr(account, name, draw(st.sampled_from([1, AMOUNT_MAX])))
    elif fault == "reserved_flag":
        flags |= draw(st.sampled_from([1 << 6, 1 << 15]))
    elif fault == "exclusive_flags":
        flags |= DMNEC | CMNED
    elif fault == "timestamp":
        ts = draw(odd_timestamps)
    elif fault == "imported_mismatch":
        imported = not imported
        ts = draw(st.one_of(imported_timestamps, st.just(ZERO_TS)))
    elif fault == "user_data":
        account.user_data_32 = draw(st.integers(3, 5))
    if imported:
        flags |= int(AccountFlags.IMPORTED)
    account.flags = AccountFlags(flags)
    return account, ts


@dataclass(frozen=True)
class TransferSpec:
    transfer: Transfer
    ts: TsSpec
    pending_ref: tuple[str, int] | None = None
    """Which pending transfer a post/void names (see ``_pending_for``)."""
    inherit: tuple[str, ...] = ()
    """Fields copied from that pending transfer (those not named here stay as drawn)."""
    post_amount: str = "drawn"
    """``same`` (the pending amount), ``over`` (one more than it), or ``drawn``."""
    resend: tuple[int, str] | None = None
    """Resend the ``resend[0]``-th most recently submitted transfer, with ``resend[1]`` changed."""


TRANSFER_FAULTS = [
    "id_zero",
    "id_max",
    "reserved_flag",
    "chaos_flags",
    "ledger_zero",
    "ledger_other",
    "ledger_unknown",
    "code_zero",
    "debit_bad",
    "credit_bad",
    "cross_ledger",
    "same_accounts",
    "timeout",
    "pending_id",
    "huge_amount",
    "timestamp",
    "imported_mismatch",
    "closing_not_pending",
    "user_data",
]
RESEND_CHANGES = [
    *["none"] * 6,
    "linked",
    "amount",
    "ledger",
    "code",
    "timeout",
    "pending_id",
    "debit_account_id",
    "credit_account_id",
    "user_data_128",
    "user_data_64",
    "user_data_32",
]
INHERITABLE = ("debit_account_id", "credit_account_id", "ledger", "code")


@st.composite
def transfer_specs(draw: st.DrawFn, batch_imported: bool) -> TransferSpec:
    kind = draw(
        _weighted(
            (3, "plain"),
            (4, "pending"),
            (2, "post"),
            (2, "void"),
            (1, "balancing"),
            (1, "closing"),
            (1, "resend"),
        )
    )
    if kind == "resend":
        change = draw(st.sampled_from(RESEND_CHANGES))
        return TransferSpec(Transfer(), ZERO_TS, resend=(draw(st.integers(0, 5)), change))
    ledger = draw(st.sampled_from([1, 2]))
    offset = 4 * (ledger - 1)
    debit, credit = (
        offset + i for i in draw(st.lists(st.integers(1, 4), min_size=2, max_size=2, unique=True))
    )
    flags = {
        "plain": 0,
        "pending": int(TransferFlags.PENDING),
        "post": int(TransferFlags.POST_PENDING_TRANSFER),
        "void": int(TransferFlags.VOID_PENDING_TRANSFER),
        "balancing": draw(st.sampled_from([0, int(TransferFlags.PENDING)]))
        | draw(
            st.sampled_from(
                [
                    int(TransferFlags.BALANCING_DEBIT),
                    int(TransferFlags.BALANCING_CREDIT),
                    int(TransferFlags.BALANCING_DEBIT | TransferFlags.BALANCING_CREDIT),
                ]
            )
        ),
        "closing": int(TransferFlags.PENDING)
        | draw(
            st.sampled_from(
                [
                    int(TransferFlags.CLOSING_DEBIT),
                    int(TransferFlags.CLOSING_CREDIT),
                    int(TransferFlags.CLOSING_DEBIT | TransferFlags.CLOSING_CREDIT),
                ]
            )
        ),
    }[kind]
    flags |= draw(linked_bit)
    pending = bool(flags & TransferFlags.PENDING)
    transfer = Transfer(
        id=draw(transfer_ids),
        debit_account_id=debit,
        credit_account_id=credit,
        amount=draw(amounts),
        user_data_128=draw(_weighted((3, 0), (1, 1), (1, AMOUNT_MAX))),
        user_data_64=draw(small_user_data),
        user_data_32=draw(small_user_data),
        timeout=draw(_weighted((3, 0), (2, 1), (2, 2), (1, 3), (1, U32_MAX))) if pending else 0,
        ledger=ledger,
        code=draw(st.sampled_from([1, 1, 2])),
    )
    if kind == "balancing" and draw(st.booleans()):
        transfer.amount = AMOUNT_MAX
    pending_ref: tuple[str, int] | None = None
    inherit: tuple[str, ...] = ()
    post_amount = "drawn"
    if kind in ("post", "void"):
        pending_ref = (
            draw(_weighted((4, "live"), (2, "batch"), (2, "resolved"), (1, "submitted"))),
            draw(_weighted((4, 0), (2, 1), (1, 2), (1, 3))),
        )
        # Zero fields inherit; "same" fields repeat the pending's value; others stay as drawn
        # (usually a mismatch).
        inherit = tuple(
            name for name in INHERITABLE if draw(_weighted((3, "same"), (1, "drawn"))) == "same"
        )
        for name in ("debit_account_id", "credit_account_id", "ledger", "code"):
            if draw(_weighted((3, True), (1, False))):
                setattr(transfer, name, 0)
        post_amount = draw(_weighted((2, "same"), (1, "over"), (3, "drawn")))
        if kind == "post":
            transfer.amount = draw(_weighted((2, AMOUNT_MAX), (2, 1), (1, 0), (1, 5)))
        else:
            transfer.amount = draw(_weighted((3, 0), (1, AMOUNT_MAX), (1, 1)))
    imported = batch_imported
    ts = draw(imported_timestamps) if imported else ZERO_TS
    fault = draw(st.one_of(st.none(), st.none(), st.sampled_from(TRANSFER_FAULTS)))
    if fault == "id_zero":
        transfer.id = 0
    elif fault == "id_max":
        transfer.id = AMOUNT_MAX
    elif fault == "reserved_flag":
        flags |= draw(st.sampled_from([1 << 9, 1 << 15]))
    elif fault == "chaos_flags":
        for bit in draw(st.sets(st.sampled_from([f for f in TransferFlags if f.value]))):
            flags ^= int(bit)
        flags &= ~int(TransferFlags.IMPORTED)
    elif fault == "ledger_zero":
        transfer.ledger = 0
    elif fault == "ledger_other":
        transfer.ledger = 3 - ledger
    elif fault == "ledger_unknown":
        transfer.ledger = 3
    elif fault == "code_zero":
        transfer.code = 0
    elif fault == "debit_bad":
        transfer.debit_account_id = draw(bad_account_ids)
    elif fault == "credit_bad":
        transfer.credit_account_id = draw(bad_account_ids)
    elif fault == "cross_ledger":
        transfer.credit_account_id = draw(st.integers(1, 4)) + 4 * (2 - ledger)
    elif fault == "same_accounts":
        transfer.credit_account_id = transfer.debit_account_id
    elif fault == "timeout":
        transfer.timeout = draw(st.sampled_from([1, 3, U32_MAX]))
    elif fault == "pending_id":
        pending_ref = None
        transfer.pending_id = draw(st.one_of(transfer_ids, st.sampled_from([0, AMOUNT_MAX])))
    elif fault == "huge_amount":
        transfer.amount = draw(huge_amounts)
        post_amount = "drawn"
    elif fault == "timestamp":
        ts = draw(odd_timestamps)
    elif fault == "imported_mismatch":
        imported = not imported
        ts = draw(st.one_of(imported_timestamps, st.just(ZERO_TS)))
    elif fault == "closing_not_pending":
        flags &= ~int(TransferFlags.PENDING)
        flags |= int(TransferFlags.CLOSING_DEBIT)
    elif fault == "user_data":
        transfer.user_data_64 = draw(st.integers(3, 5))
    if imported:
        flags |= int(TransferFlags.IMPORTED)
    transfer.flags = TransferFlags(flags)
    return TransferSpec(transfer, ts, pending_ref, inherit, post_amount)


def _changed(transfer: Transfer, change: str) -> Transfer:
    """A copy of ``transfer`` with one field changed (a resend that should not match)."""
    t = copy.copy(transfer)
    if change == "linked":
        t.flags = TransferFlags(int(t.flags) ^ int(TransferFlags.LINKED))
    elif change == "amount":
        t.amount = (t.amount + 1) % (AMOUNT_MAX + 1)
    elif change in ("ledger", "code"):
        setattr(t, change, getattr(t, change) ^ 3)
    elif change != "none":
        bits = {"timeout": 32, "user_data_32": 32, "user_data_64": 64}.get(change, 128)
        setattr(t, change, (getattr(t, change) + 1) % (1 << bits))
    return t


def _materialise(
    spec: TransferSpec, anchors: dict[str, int], index: int, pending: Transfer | None
) -> Transfer:
    t = replace(spec.transfer, timestamp=spec.ts.resolve(anchors, index))
    if spec.pending_ref is None:
        return t
    if pending is None:
        t.pending_id = spec.pending_ref[1] + 1  # most likely not a pending transfer
        return t
    t.pending_id = pending.id
    for name in spec.inherit:
        setattr(t, name, getattr(pending, name))
    if spec.post_amount == "same":
        t.amount = pending.amount
    elif spec.post_amount == "over" and pending.amount < AMOUNT_MAX:
        t.amount = pending.amount + 1
    return t


def _pending_for(
    ref: tuple[str, int], guide: ReferenceHarness, batch: list[Transfer], submitted: list[Transfer]
) -> Transfer | None:
    """The pending transfer a post/void refers to: live or resolved ones in the guide model,
    earlier in this batch, or any submitted (maybe failed) one; the newest first."""
    stored = [e for e in guide.ledger.transfers if int(e.transfer.flags) & TransferFlags.PENDING]
    candidates = {
        "live": [e.transfer for e in stored if e.pending_state is PendingState.PENDING],
        "resolved": [e.transfer for e in stored if e.pending_state is not PendingState.PENDING],
        "batch": [t for t in batch if int(t.flags) & TransferFlags.PENDING],
        "submitted": [t for t in submitted if int(t.flags) & TransferFlags.PENDING],
    }
    source, back = ref
    for name in (source, "live", "batch", "submitted"):
        if candidates[name]:
            found = candidates[name]
            return found[-1 - back % len(found)]
    return None


@st.composite
def step_specs(draw: st.DrawFn, reopens: bool) -> tuple[Any, ...]:
    """One step, still abstract: ``operations`` turns it into an ``Op``."""
    kinds = [(1, "accounts"), (5, "transfers"), (2, "advance")]
    if reopens:
        kinds.append((1, "reopen"))
    kind = draw(_weighted(*kinds))
    if kind == "advance":
        return (kind, draw(st.integers(0, 4)))
    if kind == "reopen":
        return (kind, draw(st.integers(0, 2)))
    if kind == "accounts":
        imported = draw(_weighted((4, False), (1, True)))
        return (kind, draw(st.lists(account_specs(imported), max_size=6)))
    imported = draw(_weighted((5, False), (1, True)))
    return (kind, draw(st.lists(transfer_specs(imported), max_size=8)))


@st.composite
def operations(draw: st.DrawFn, reopens: bool = True) -> list[Op]:
    """A materialised sequence: concrete batches, clock advances, and (engine) reopens.

    A reference model runs alongside (the "guide") only so that posts and voids can pick
    pending transfers that exist: the tests compare against a fresh model of their own.
    """
    # Mostly start with accounts 1..8, or there is little for transfers to work on.
    eight = st.lists(account_specs(False, faults=False), min_size=8, max_size=8)
    start = draw(st.one_of(eight, eight, eight, st.just([])))
    steps = draw(st.lists(step_specs(reopens), min_size=1, max_size=12))

    guide = ReferenceHarness(now=START)
    submitted: list[Transfer] = []
    ops: list[Op] = []

    def emit(op: Op) -> None:
        _apply(guide, op)
        ops.append(op)

    if start:
        emit(
            CreateAccounts(
                tuple(replace(a, id=i + 1, ledger=1 + i // 4) for i, (a, _) in enumerate(start))
            )
        )
    for kind, spec in steps:
        now = guide.now
        anchors = _anchors(guide)
        if kind == "advance":
            emit(Advance(now + spec * NS_PER_S))
        elif kind == "reopen":
            emit(Reopen(spec))
        elif kind == "accounts":
            emit(
                CreateAccounts(
                    tuple(
                        replace(a, timestamp=ts.resolve(anchors, i))
                        for i, (a, ts) in enumerate(spec)
                    )
                )
            )
        else:
            transfers: list[Transfer] = []
            for t_spec in spec:
                if t_spec.resend is None:
                    pending = None
                    if t_spec.pending_ref is not None:
                        pending = _pending_for(t_spec.pending_ref, guide, transfers, submitted)
                    t = _materialise(t_spec, anchors, len(transfers), pending)
                elif submitted:
                    # Prefer resending an event whose id was stored: idempotency paths.
                    stored = {e.transfer.id for e in guide.ledger.transfers}
                    stored.update(t.id for t in transfers)
                    again = [t for t in submitted if t.id in stored] or submitted
                    back, change = t_spec.resend
                    t = _changed(again[-1 - back % len(again)], change)
                else:
                    continue
                transfers.append(t)
                submitted.append(t)
            emit(CreateTransfers(tuple(transfers)))
    return ops


# --- running ----------------------------------------------------------------------------------


def _fresh(events: tuple[Any, ...]) -> list[Any]:
    return [copy.copy(e) for e in events]


def _apply(harness: ReferenceHarness | EngineHarness | RemoteHarness, op: Op) -> list[Any] | None:
    """Apply ``op``; returns the batch's results (None for clock and reopen steps)."""
    if isinstance(op, CreateAccounts):
        return harness.create_accounts(_fresh(op.events))
    if isinstance(op, CreateTransfers):
        return harness.create_transfers(_fresh(op.events))
    if isinstance(op, Advance):
        harness.set_now(op.now)
        harness.pulse()
        return None
    if isinstance(harness, EngineHarness):
        _reopen(harness, op.drop)
    return None


def _reopen(engine: EngineHarness, drop: int) -> None:
    """Close; remove the ``drop`` newest snapshots so recovery replays more journal; open."""
    engine.ledger.close()
    snapshots = engine.directory / "state" / "snapshots"
    if snapshots.is_dir():
        newest = sorted((p for p in snapshots.iterdir() if p.name.isdigit()), reverse=True)
        for path in newest[:drop]:
            shutil.rmtree(path)
    engine.reopen()


def _account_filters(account_id: int) -> Iterator[AccountFilter]:
    both = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    yield AccountFilter(account_id, 0, 0, 0, 0, 0, 0, LIMIT_MAX, both)
    yield AccountFilter(account_id, 0, 0, 0, 0, 0, 0, LIMIT_MAX, both | AccountFilterFlags.REVERSED)
    yield AccountFilter(account_id, 0, 0, 0, 1, 0, 0, 3, AccountFilterFlags.DEBITS)
    yield AccountFilter(
        account_id,
        0,
        1,
        0,
        0,
        START + 6,
        START + 2 * NS_PER_S,
        LIMIT_MAX,
        AccountFilterFlags.CREDITS | AccountFilterFlags.REVERSED,
    )


QUERY_FILTERS = [
    QueryFilter(0, 0, 0, 0, 0, 0, 0, LIMIT_MAX, QueryFilterFlags.NONE),
    QueryFilter(0, 0, 0, 1, 0, 0, 0, LIMIT_MAX, QueryFilterFlags.NONE),
    QueryFilter(0, 0, 0, 0, 2, 0, 0, 5, QueryFilterFlags.REVERSED),
    QueryFilter(0, 1, 0, 2, 0, 0, 0, LIMIT_MAX, QueryFilterFlags.REVERSED),
    QueryFilter(1, 0, 1, 0, 0, 0, 0, LIMIT_MAX, QueryFilterFlags.NONE),
    QueryFilter(0, 0, 0, 0, 0, START + 4, START + NS_PER_S + 8, 4, QueryFilterFlags.NONE),
]


def _lookups(harness: ReferenceHarness | EngineHarness | RemoteHarness) -> dict[str, Any]:
    return {
        "accounts": harness.lookup_accounts(ACCOUNT_IDS),
        "transfers": harness.lookup_transfers(TRANSFER_IDS),
    }


def _observations(harness: ReferenceHarness | EngineHarness | RemoteHarness) -> dict[str, Any]:
    """Everything a client can read: lookups, per-account history, queries."""
    seen = _lookups(harness)
    for account_id in ACCOUNT_IDS:
        for n, f in enumerate(_account_filters(account_id)):
            seen[f"account {account_id} transfers {n}"] = harness.get_account_transfers(f)
            seen[f"account {account_id} balances {n}"] = harness.get_account_balances(f)
    for n, q in enumerate(QUERY_FILTERS):
        seen[f"query_accounts {n}"] = harness.query_accounts(q)
        seen[f"query_transfers {n}"] = harness.query_transfers(q)
    return seen


def _assert_same(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert actual[key] == value, key


def _scratch() -> tempfile.TemporaryDirectory[str]:
    """A directory per example; in memory when possible (fsync costs nothing there)."""
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK)
    return tempfile.TemporaryDirectory(prefix="puhui-properties-", dir=shm if in_memory else None)


JOURNALS = st.sampled_from(["sqlite", "file"])


def _engine(directory: Path, journal: str = "sqlite", *, snapshots: bool = True) -> EngineHarness:
    """An engine journalling to SQLite or to the file journal, snapshotting every 5 events."""
    url = str(directory / "journal.sqlite") if journal == "sqlite" else str(directory / "journal")
    options = LedgerOptions(snapshot_interval_events=5) if snapshots else None
    return EngineHarness(directory, now=START, url=url, options=options)


# --- properties -------------------------------------------------------------------------------


@SETTINGS
@given(ops=operations(), journal=JOURNALS)
def test_engine_matches_reference_model(ops: list[Op], journal: str) -> None:
    model = ReferenceHarness(now=START)
    with _scratch() as tmp:
        engine = _engine(Path(tmp), journal)
        try:
            for step, op in enumerate(ops):
                note(f"step {step}: {op!r}")
                expected = _apply(model, op)
                actual = _apply(engine, op)
                assert actual == expected, f"results of step {step}"
                for result in expected or ():
                    event(f"{type(op).__name__}: {result.status.name}")
                assert engine.now == model.now, f"clock after step {step}"
                if isinstance(op, Reopen):
                    _assert_same(_observations(model), _observations(engine))
                else:
                    _assert_same(_lookups(model), _lookups(engine))
            before = _observations(engine)
            _assert_same(_observations(model), before)
            report = verify(engine.ledger)
            assert report.ok, report.problems

            # Recovery from the older of the two snapshots kept, plus the journal after it
            # (Reopen steps above also recover from the newest snapshot or the journal alone).
            _reopen(engine, 1)
            _assert_same(before, _observations(engine))
            report = verify(engine.ledger)
            assert report.ok, report.problems
        finally:
            engine.close()


@settings(SETTINGS, max_examples=40)
@given(ops=operations(reopens=False))
def test_remote_matches_reference_model(ops: list[Op]) -> None:
    """The same over the socket: ``connect`` to a ``serve`` of the engine in this process."""
    model = ReferenceHarness(now=START)
    with _scratch() as tmp:
        remote = RemoteHarness(Path(tmp), now=START)
        try:
            for step, op in enumerate(ops):
                note(f"step {step}: {op!r}")
                assert _apply(remote, op) == _apply(model, op), f"results of step {step}"
                assert remote.now == model.now, f"clock after step {step}"
                _assert_same(_lookups(model), _lookups(remote))
            _assert_same(_observations(model), _observations(remote))
        finally:
            remote.close()


def _ledger_totals(accounts: list[Account]) -> dict[int, list[int]]:
    totals: dict[int, list[int]] = {}
    for a in accounts:
        sums = totals.setdefault(a.ledger, [0, 0, 0, 0])
        sums[0] += a.debits_posted
        sums[1] += a.credits_posted
        sums[2] += a.debits_pending
        sums[3] += a.credits_pending
    return totals


@settings(SETTINGS, max_examples=100)
@given(ops=operations(reopens=False), journal=JOURNALS)
def test_money_is_conserved_per_ledger(ops: list[Op], journal: str) -> None:
    """Per ledger, debits equal credits (posted and pending), after every step."""
    with _scratch() as tmp:
        engine = _engine(Path(tmp), journal)
        try:
            for step, op in enumerate(ops):
                note(f"step {step}: {op!r}")
                _apply(engine, op)
                accounts = engine.lookup_accounts(ACCOUNT_IDS)
                for ledger, (dr_posted, cr_posted, dr_pending, cr_pending) in _ledger_totals(
                    accounts
                ).items():
                    assert dr_posted == cr_posted, f"ledger {ledger} posted after step {step}"
                    assert dr_pending == cr_pending, f"ledger {ledger} pending after step {step}"
                # Balance limits hold at all times, not only when a transfer is checked.
                for a in accounts:
                    debits = a.debits_pending + a.debits_posted
                    credits = a.credits_pending + a.credits_posted
                    if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
                        assert debits <= a.credits_posted, f"account {a.id} after step {step}"
                    if a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
                        assert credits <= a.debits_posted, f"account {a.id} after step {step}"
        finally:
            engine.close()


def _state_bytes(engine: EngineHarness) -> tuple[bytes, bytes, bytes, int, int]:
    state: tuple[bytes, bytes, bytes, int, int] = engine.ledger.read_state(
        lambda e: (
            e.accounts[: e.n_accounts].tobytes(),
            e.transfers[: e.n_transfers].tobytes(),
            e.xfer_state[: e.n_transfers].tobytes(),
            e.clock,
            e.watermark,
        )
    )
    return state


@settings(SETTINGS, max_examples=60)
@given(ops=operations())
def test_replay_is_deterministic(ops: list[Op]) -> None:
    """Two engines fed the same sequence end byte-identical: one journals to SQLite,
    snapshots every 5 events and restarts at each Reopen step; the other journals to the file
    journal with default options and never restarts."""
    with _scratch() as tmp:
        first = _engine(Path(tmp) / "first", "sqlite")
        second = _engine(Path(tmp) / "second", "file", snapshots=False)
        try:
            for step, op in enumerate(ops):
                note(f"step {step}: {op!r}")
                results = _apply(first, op)
                # Only the first engine restarts: recovery must not change what comes next.
                if not isinstance(op, Reopen):
                    assert _apply(second, op) == results, f"results of step {step}"
            assert _state_bytes(first) == _state_bytes(second)
            _reopen(first, 2)  # full replay of the journal
            assert _state_bytes(first) == _state_bytes(second)
        finally:
            first.close()
            second.close()
