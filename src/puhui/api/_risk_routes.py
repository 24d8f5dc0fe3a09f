"""Risk control over HTTP: review cases (list, show, decide) and the block/allow lists.

Cases belong to the tenant that owns the case's customer (``PaymentOwners``): another
tenant's case is answered exactly as one that does not exist. Deciding a case goes through
``puhui.risk.Cases`` and the payments service's resolver — approving a held payment posts
it, rejecting voids it — with the server's own bank gateway.

Block and allow lists are the platform's, not a tenant's (one list protects every tenant), so
their routes need ``platform:admin`` (operator keys only). Changes are written to the SQL
store; every engine following it (``SyncedRiskLists``) picks them up without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from puhui.platform import OwnedKind, PaymentOwners, Scope
from puhui.risk import (
    Case,
    CaseNotFoundError,
    Cases,
    CaseStatus,
    ListEntry,
    ListStore,
    explain_reasons,
)

from ._guards import decode_cursor, encode_cursor, page_size
from ._ledger_routes import PROBLEM_RESPONSES
from ._problems import InvalidCursorError
from ._route import PlatformRoute, endpoint, principal_of
from ._schemas import _In

T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="An API key: `pk_<key id>_<secret>`.")

router = APIRouter(
    prefix="/v1/risk",
    tags=["risk"],
    route_class=PlatformRoute,
    responses={
        **PROBLEM_RESPONSES,
        404: {**PROBLEM_RESPONSES[409], "description": "No such object for this tenant"},
    },
    dependencies=[Depends(bearer)],
)

cases_scanned_max: Final = 10_000
"""Most cases one list request reads to fill a page of the tenant's own (unit: cases); a
page cut short by it still carries a cursor to go on from."""

_NO_CASE = "no such case"


@dataclass(frozen=True, slots=True)
class RiskContext:
    """What the risk routes use, built once by ``create_app`` (``app.state.puhui_risk``)."""

    cases: Cases
    lists: ListStore
    owners: PaymentOwners


def _ctx(request: Request) -> RiskContext:
    context: RiskContext = request.app.state.puhui_risk
    return context


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _owned_by_caller(request: Request, customer_id: int) -> bool:
    owners = _ctx(request).owners
    owner = owners.known(OwnedKind.CUSTOMER, customer_id)
    if owner is None:
        owner = await _call(owners.owner, OwnedKind.CUSTOMER, customer_id)
    return owner == principal_of(request).tenant.id


async def _case(request: Request, case_id: int) -> Case:
    try:
        case = await _call(_ctx(request).cases.case, case_id)
    except CaseNotFoundError:
        raise CaseNotFoundError(_NO_CASE) from None
    if not await _owned_by_caller(request, case.customer_id):
        raise CaseNotFoundError(_NO_CASE)
    return case


# --- schemas ---------------------------------------------------------------------------------


class ReasonOut(BaseModel):
    kind: Literal["rule", "model", "shadow", "other"]
    name: str = Field(description="The rule id, or the model's feature.")
    values: dict[str, str] = Field(
        description="For a rule: the feature values it read, as the engine printed them."
    )
    contribution: float | None = Field(
        description="For a model reason: the feature's log-odds contribution."
    )


class CaseOut(BaseModel):
    id: int
    subject_kind: str = Field(description="What is held: `operation` (a payment).")
    subject_id: str = Field(description="The held operation's id (decimal).")
    customer_id: int
    amount: int = Field(description="Minor units.")
    currency: str
    score: int = Field(description="The decision's score, 0..1000.")
    status: CaseStatus
    analyst: str | None
    note: str
    account_takeover: bool
    label: int | None = Field(description="1 fraud, 0 legitimate; null while undecided.")
    resolved: bool = Field(description="The decision was carried out on the held payment.")
    opened_at_ns: int
    decided_at_ns: int | None
    reasons: list[ReasonOut]
    features: dict[str, str] = Field(
        description="Every feature value the decision's rules read (from its reasons)."
    )


class CasePage(BaseModel):
    data: list[CaseOut]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null on the last page."
    )


class CaseDecisionIn(_In):
    outcome: Literal["approve", "reject", "escalate"]
    analyst: str = Field(min_length=1, max_length=64, description="Who decides.")
    note: str = Field(default="", max_length=500)
    account_takeover: bool = Field(
        default=False, description="With reject: the account is in a fraudster's hands."
    )


class ListEntryIn(_In):
    value: str = Field(min_length=1, max_length=200, description="c:<id> for a customer.")
    reason: str = Field(min_length=1, max_length=500)
    expires_at_ns: int | None = Field(
        default=None, ge=0, le=(1 << 63) - 1, description="Lapses then (ns since the epoch)."
    )


class ListEntryOut(BaseModel):
    list_name: str
    value: str
    reason: str
    added_at_ns: int
    expires_at_ns: int | None
    live: bool


class ListEntryPage(BaseModel):
    data: list[ListEntryOut]
    next_cursor: str | None


class RemovedOut(BaseModel):
    removed: bool


def case_out(case: Case) -> CaseOut:
    reasons = explain_reasons(case.reasons)
    features: dict[str, str] = {}
    for reason in reasons:
        features.update(reason.values)
    subject_id = case.subject_id
    if case.subject_kind == "operation":
        subject_id = str(int(case.subject_id, 16))
    return CaseOut(
        id=case.id,
        subject_kind=case.subject_kind,
        subject_id=subject_id,
        customer_id=case.customer_id,
        amount=case.amount,
        currency=case.currency,
        score=case.score,
        status=case.status,
        analyst=case.analyst,
        note=case.note,
        account_takeover=case.account_takeover,
        label=case.label,
        resolved=case.resolved,
        opened_at_ns=case.opened_at_ns,
        decided_at_ns=case.decided_at_ns,
        reasons=[ReasonOut(**r.as_json()) for r in reasons],
        features=features,
    )


def _entry_out(name: str, entry: ListEntry, now_ns: int) -> ListEntryOut:
    return ListEntryOut(
        list_name=name,
        value=entry.value,
        reason=entry.reason,
        added_at_ns=entry.added_at_ns,
        expires_at_ns=entry.expires_at_ns,
        live=entry.is_live(now_ns),
    )


# --- cases -----------------------------------------------------------------------------------

CaseId = Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
Limit = Annotated[int | None, Query(ge=1, description="Page size (default 100, at most 1000).")]
Cursor = Annotated[str | None, Query(max_length=512, description="From the previous page.")]
StatusQuery = Annotated[CaseStatus | None, Query(description="Only cases of this status.")]


@router.get("/cases", response_model=CasePage)
@endpoint(Scope.RISK_READ, changes_state=False)
async def list_cases(
    request: Request, status: StatusQuery = None, limit: Limit = None, cursor: Cursor = None
) -> CasePage:
    """Review cases of this tenant's customers, oldest first, a page at a time."""
    page = page_size(request.app.state.puhui.options, limit)
    after = 0
    if cursor is not None:
        last = decode_cursor("risk_cases", cursor).get("i")
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise InvalidCursorError("malformed cursor")
        after = last
    cases = _ctx(request).cases
    found: list[Case] = []
    scanned = 0
    more = True
    while more and len(found) < page and scanned < cases_scanned_max:
        asked = min(page * 4, 1_000)
        batch = await _call(cases.cases, status, after_id=after, limit=asked)
        more = len(batch) == asked
        for k, case in enumerate(batch):
            scanned += 1
            after = case.id
            if await _owned_by_caller(request, case.customer_id):
                found.append(case)
                if len(found) == page:
                    more = more or k < len(batch) - 1
                    break
    # The last page is the one that read to the end; any other hands out a cursor (the next
    # page may turn out empty, never wrong).
    next_cursor = encode_cursor("risk_cases", {"i": after}) if more else None
    return CasePage(data=[case_out(c) for c in found], next_cursor=next_cursor)


@router.get("/cases/{case_id}", response_model=CaseOut)
@endpoint(Scope.RISK_READ, changes_state=False)
async def get_case(case_id: CaseId, request: Request) -> CaseOut:
    """One case, with the decision's reasons and the feature values its rules read."""
    return case_out(await _case(request, case_id))


@router.post("/cases/{case_id}/decision", response_model=CaseOut)
@endpoint(Scope.RISK_WRITE, changes_state=True)
async def decide_case(case_id: CaseId, body: CaseDecisionIn, request: Request) -> CaseOut:
    """An analyst's decision: approve (the held payment is posted), reject (it is voided;
    with ``account_takeover`` the account is frozen) or escalate. Approve and reject are
    final (``case_closed``)."""
    await _case(request, case_id)
    decided = await _call(
        _ctx(request).cases.decide,
        case_id,
        analyst=body.analyst,
        outcome=body.outcome,
        note=body.note,
        account_takeover=body.account_takeover,
    )
    return case_out(decided)


# --- block and allow lists (platform operators) -----------------------------------------------

ListName = Annotated[
    str,
    Path(
        pattern=r"^(allowed|blocked)_(cards|customers|devices|ips|merchants)$",
        description="`blocked_` or `allowed_` and one of cards, customers, devices, ips,"
        " merchants.",
    ),
]


@router.get("/lists/{list_name}", response_model=ListEntryPage)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=False)
async def list_entries(
    list_name: ListName, request: Request, limit: Limit = None, cursor: Cursor = None
) -> ListEntryPage:
    """The entries of one list (expired ones too, ``live`` false), by value."""
    page = page_size(request.app.state.puhui.options, limit)
    after: str | None = None
    if cursor is not None:
        last = decode_cursor(f"risk_list:{list_name}", cursor).get("v")
        if not isinstance(last, str):
            raise InvalidCursorError("malformed cursor")
        after = last
    store = _ctx(request).lists
    entries = await _call(store.entries, list_name, after_value=after, limit=page)
    now = store.clock.now_ns()
    next_cursor = None
    if len(entries) == page:
        next_cursor = encode_cursor(f"risk_list:{list_name}", {"v": entries[-1].value})
    return ListEntryPage(
        data=[_entry_out(list_name, e, now) for e in entries], next_cursor=next_cursor
    )


@router.post("/lists/{list_name}/entries", response_model=ListEntryOut)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True)
async def add_list_entry(list_name: ListName, body: ListEntryIn, request: Request) -> ListEntryOut:
    """Put a value on a list (replacing its entry there); engines see it within a second."""
    store = _ctx(request).lists
    entry = await _call(
        store.add, list_name, body.value, reason=body.reason, expires_at_ns=body.expires_at_ns
    )
    return _entry_out(list_name, entry, store.clock.now_ns())


@router.delete("/lists/{list_name}/entries", response_model=RemovedOut)
@endpoint(Scope.PLATFORM_ADMIN, changes_state=True)
async def remove_list_entry(
    list_name: ListName,
    request: Request,
    value: Annotated[str, Query(min_length=1, max_length=200, description="What to remove.")],
) -> RemovedOut:
    """Take a value off a list."""
    return RemovedOut(removed=await _call(_ctx(request).lists.remove, list_name, value))
