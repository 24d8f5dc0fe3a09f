"""Webhooks over HTTP: a tenant's endpoints, its events, dead letters and replay.

Every route sees only the calling tenant's endpoints and events: another tenant's ids answer
404 exactly as ids that exist nowhere.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from puhui.platform import (
    Scope,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    Webhooks,
)
from puhui.platform.model import parse_event_types, webhook_event_types_max, webhook_url_chars_max
from puhui.platform.webhooks import rfc3339

from ._context import ApiContext
from ._guards import decode_cursor, encode_cursor, page_size
from ._ledger_routes import PROBLEM_RESPONSES, Cursor, Limit, _problem, bearer
from ._problems import InvalidCursorError
from ._route import PlatformRoute, endpoint, principal_of

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    route_class=PlatformRoute,
    responses={
        **PROBLEM_RESPONSES,
        404: {**_problem, "description": "No such endpoint or event (for this tenant)"},
    },
    dependencies=[Depends(bearer)],  # documents the scheme; PlatformRoute authenticates
)

EndpointId = Annotated[
    str, Path(pattern=r"^we_[0-9a-f]{16}$", description="An endpoint id: `we_` + 16 hex.")
]
EventId = Annotated[
    str, Path(pattern=r"^evt_[0-9a-f]{32}$", description="An event id: `evt_` + 32 hex.")
]


class CreateEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        max_length=webhook_url_chars_max,
        description="Where events are POSTed: an absolute http or https URL.",
        examples=["https://partner.example/puhui/webhooks"],
    )
    event_types: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1,
        max_length=webhook_event_types_max,
        description='The event types wanted (see docs/api.md#webhooks), or ["*"] for all.',
        examples=[["payment.succeeded", "order.paid"]],
    )


class EndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    created_at: str
    disabled_at: str | None


class CreatedEndpointOut(EndpointOut):
    secret: str | None = Field(
        description="The signing secret (`whsec_…`): shown now, never again. Keep it to "
        "verify `Puhui-Signature`. Null when the answer is an idempotent replay."
    )


class EndpointPage(BaseModel):
    data: list[EndpointOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: str
    type: str
    created_at: str
    data: dict[str, Any]


class EventPage(BaseModel):
    data: list[EventOut]
    next_cursor: str | None = Field(
        description="Where to go on from: after the page's last event, whenever the page "
        "has events, also when it is the last page for now (poll again with it later). "
        "Null only on an empty page: keep the cursor you sent."
    )
    has_more: bool = Field(
        description="More events are listable after this page right now: fetch the next "
        "page at once (false: poll again later with `next_cursor`)."
    )


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    state: str
    """``pending``, ``delivered`` or ``dead``."""
    attempts: int
    next_attempt_at: str | None
    """When the next attempt is due (pending only)."""
    last_status: int | None
    """The receiver's HTTP status at the last attempt (null: no answer)."""
    last_error: str | None
    last_attempt_at: str | None
    delivered_at: str | None


class EventDetailOut(EventOut):
    deliveries: list[DeliveryOut]


class DeliveryPage(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None


class ReplayOut(BaseModel):
    event_id: str
    deliveries_queued: int
    """Deliveries queued now, one per enabled endpoint that wants the event's type."""


def _webhooks(request: Request) -> Webhooks:
    context: ApiContext = request.app.state.puhui
    return context.webhooks


def _tenant(request: Request) -> int:
    return principal_of(request).tenant.id


def _at(at_ns: int | None) -> str | None:
    return None if at_ns is None else rfc3339(at_ns)


def endpoint_out(e: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=e.id,
        url=e.url,
        event_types=sorted(e.event_types),
        enabled=e.enabled,
        created_at=rfc3339(e.created_at_ns),
        disabled_at=_at(e.disabled_at_ns),
    )


def event_out(e: WebhookEvent) -> EventOut:
    return EventOut(**e.envelope())


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=str(d.id),
        event_id=d.event_id,
        event_type=d.event_type,
        endpoint_id=d.endpoint_id,
        state=str(d.state),
        attempts=d.attempts,
        next_attempt_at=rfc3339(d.next_attempt_at_ns) if d.state == "pending" else None,
        last_status=d.last_status,
        last_error=d.last_error,
        last_attempt_at=_at(d.last_attempt_at_ns),
        delivered_at=_at(d.delivered_at_ns),
    )


def _position_number(value: object) -> int:
    """A number of a cursor's position: a non-negative int, else ``cursor_invalid``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidCursorError("malformed cursor")
    return value


def _int_position(kind: str, cursor: str | None, name: str) -> int:
    if cursor is None:
        return 0
    return _position_number(decode_cursor(kind, cursor).get(name))


def _event_position(kind: str, cursor: str | None) -> tuple[int, int]:
    """The ``(txid, seq)`` an events cursor holds. One made before events kept their
    transaction's id holds ``seq`` only: it is read as ``(0, seq)``, the same place (events
    written before then have txid 0 and were listed by ``seq``; every later one has a
    larger txid), so it skips nothing."""
    if cursor is None:
        return (0, 0)
    position = decode_cursor(kind, cursor)
    return (_position_number(position.get("txid", 0)), _position_number(position.get("seq")))


@router.post("/endpoints", response_model=CreatedEndpointOut, summary="create an endpoint")
@endpoint(Scope.WEBHOOKS_WRITE, changes_state=True, shown_once=("secret",))
async def create_endpoint(body: CreateEndpointIn, request: Request) -> CreatedEndpointOut:
    """Register an endpoint for some event types. The answer carries the signing secret,
    the only time it is shown: it is not kept under the request's ``Idempotency-Key`` (a
    replay answers the same endpoint with ``"secret": null``)."""
    created, secret = await asyncio.to_thread(
        _webhooks(request).create_endpoint, _tenant(request), body.url, body.event_types
    )
    return CreatedEndpointOut(**endpoint_out(created).model_dump(), secret=secret)


@router.get("/endpoints", response_model=EndpointPage, summary="list endpoints")
@endpoint(Scope.WEBHOOKS_READ, changes_state=False)
async def list_endpoints(
    request: Request, limit: Limit = None, cursor: Cursor = None
) -> EndpointPage:
    """The tenant's endpoints (disabled ones too), oldest first, without their secrets."""
    kind = "webhook_endpoints"
    page = page_size(request.app.state.puhui.options, limit)
    after: tuple[int, str] | None = None
    if cursor is not None:
        position = decode_cursor(kind, cursor)
        at, last_id = position.get("at"), position.get("id")
        if not isinstance(at, int) or isinstance(at, bool) or not isinstance(last_id, str):
            raise InvalidCursorError("malformed cursor")
        after = (at, last_id)
    found = await asyncio.to_thread(
        _webhooks(request).endpoints, _tenant(request), after=after, limit=page
    )
    next_cursor = None
    if len(found) == page:
        next_cursor = encode_cursor(kind, {"at": found[-1].created_at_ns, "id": found[-1].id})
    return EndpointPage(data=[endpoint_out(e) for e in found], next_cursor=next_cursor)


@router.post(
    "/endpoints/{endpoint_id}/disable", response_model=EndpointOut, summary="disable an endpoint"
)
@endpoint(Scope.WEBHOOKS_WRITE, changes_state=True)
async def disable_endpoint(endpoint_id: EndpointId, request: Request) -> EndpointOut:
    """Stop delivering to the endpoint (again is fine): its pending deliveries become dead
    letters. A disabled endpoint stays disabled (create a new one)."""
    disabled = await asyncio.to_thread(
        _webhooks(request).disable_endpoint, _tenant(request), endpoint_id
    )
    return endpoint_out(disabled)


@router.get("/events", response_model=EventPage, summary="list events")
@endpoint(Scope.WEBHOOKS_READ, changes_state=False)
async def list_events(
    request: Request,
    limit: Limit = None,
    cursor: Cursor = None,
    type: Annotated[
        str | None, Query(max_length=64, description="Only events of this type.")
    ] = None,
) -> EventPage:
    """The tenant's events, oldest first (the outbox, whether or not any endpoint wants
    them): in commit order as far as a poller can tell, so paging on with ``next_cursor``
    never passes an event that commits later. ``next_cursor`` is set whenever the page has
    events, the last page too: a poller keeps it and asks again later."""
    kind = "webhook_events"
    page = page_size(request.app.state.puhui.options, limit)
    if type is not None:
        parse_event_types([type])
    after = _event_position(kind, cursor)
    found = await asyncio.to_thread(
        _webhooks(request).events,
        _tenant(request),
        after=after,
        limit=page + 1,  # one more: is there a next page?
        event_type=type,
    )
    shown = found[:page]
    next_cursor = None
    if shown:
        txid, seq = shown[-1].position
        next_cursor = encode_cursor(kind, {"txid": txid, "seq": seq})
    return EventPage(
        data=[event_out(e) for e in shown], next_cursor=next_cursor, has_more=len(found) > page
    )


@router.get("/events/{event_id}", response_model=EventDetailOut, summary="get an event")
@endpoint(Scope.WEBHOOKS_READ, changes_state=False)
async def get_event(event_id: EventId, request: Request) -> EventDetailOut:
    """One event and its deliveries (one per endpoint it was queued for)."""
    webhooks, tenant = _webhooks(request), _tenant(request)
    event = await asyncio.to_thread(webhooks.event, tenant, event_id)
    deliveries = await asyncio.to_thread(webhooks.deliveries, tenant, event_id)
    return EventDetailOut(
        **event_out(event).model_dump(), deliveries=[delivery_out(d) for d in deliveries]
    )


@router.post(
    "/events/{event_id}/replay", response_model=ReplayOut, summary="deliver an event again"
)
@endpoint(Scope.WEBHOOKS_WRITE, changes_state=True)
async def replay_event(event_id: EventId, request: Request) -> ReplayOut:
    """Queue the event again for each enabled endpoint that wants it: dead letters,
    delivered and pending deliveries alike start over with a fresh retry schedule."""
    queued = await asyncio.to_thread(_webhooks(request).replay, _tenant(request), event_id)
    return ReplayOut(event_id=event_id, deliveries_queued=queued)


@router.get("/dead-letters", response_model=DeliveryPage, summary="list dead letters")
@endpoint(Scope.WEBHOOKS_READ, changes_state=False)
async def list_dead_letters(
    request: Request, limit: Limit = None, cursor: Cursor = None
) -> DeliveryPage:
    """Deliveries that failed every attempt, oldest first. Replay their events to try
    again."""
    kind = "webhook_dead_letters"
    page = page_size(request.app.state.puhui.options, limit)
    after = _int_position(kind, cursor, "id")
    found = await asyncio.to_thread(
        _webhooks(request).dead_letters, _tenant(request), after_id=after, limit=page
    )
    next_cursor = encode_cursor(kind, {"id": found[-1].id}) if len(found) == page else None
    return DeliveryPage(data=[delivery_out(d) for d in found], next_cursor=next_cursor)
