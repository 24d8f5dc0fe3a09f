"""``create_app``: the API's composition root (the caller opens and closes what it passes)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from puhui.clock import Clock, SystemClock
from puhui.errors import PuhuiError
from puhui.ledger import AsyncLedger, Ledger, RemoteLedger
from puhui.payments import (
    BankGateway,
    BillerGateway,
    Bills,
    Checkout,
    PaymentBatches,
    Payments,
    SimulatedBank,
    SimulatedBiller,
)
from puhui.platform import (
    AuditLog,
    ClaimResult,
    DeliveryWorker,
    IdempotencyRecords,
    PaymentOwners,
    StoredResponse,
    Tenants,
    Webhooks,
)
from puhui.risk import Cases, ListStore

from . import (
    _ledger_routes,
    _payments_routes,
    _platform_routes,
    _risk_routes,
    _webhook_routes,
)
from ._batching import AuditBatcher, GroupCall, PrincipalCache
from ._bodies import BodyBudget, BodyGuard
from ._context import ApiContext
from ._guards import Admission, ApiOptions, RateLimiter
from ._lean_routes import LeanRoutes
from ._logging import RequestLogMiddleware, configure_logging, logging_configured
from ._metrics import ApiMetrics
from ._payments_context import PaymentsContext
from ._problems import problem_from_exception
from ._route import PlatformRoute
from ._shared_limits import SharedRateLimiter

API_TITLE = "Puhui open API"

ROUTERS = (
    _ledger_routes.router,
    _payments_routes.router,
    _webhook_routes.router,
    _risk_routes.router,
    _platform_routes.router,
)
"""One router per domain; each later service adds its own here."""

LEAN_ROUTES = frozenset(
    {
        ("/v1/payments/customers/{customer_id}/transfers", "POST"),
        ("/v1/payments/customers/{customer_id}/merchant-payments", "POST"),
        ("/v1/ledger/accounts", "POST"),
        ("/v1/ledger/transfers", "POST"),
    }
)
"""(template, method) of the routes whose well-formed requests skip FastAPI's per-request
machinery (``_lean_routes``): the single payments, the API's most frequent requests, and the
ledger's JSON create batches, its largest (read by ``_json_events``)."""


def platform_routes(app: FastAPI) -> list[PlatformRoute]:
    """Every authenticated route of ``app`` (the isolation tests iterate these)."""
    found: list[PlatformRoute] = []
    pending: list[Any] = list(app.routes)
    while pending:
        route = pending.pop(0)
        if isinstance(route, PlatformRoute):
            found.append(route)
        elif hasattr(route, "original_router"):  # FastAPI keeps included routers as a branch
            pending.extend(route.original_router.routes)
    return found


def create_app(
    engine: sa.Engine,
    ledger: Ledger | RemoteLedger | AsyncLedger,
    *,
    clock: Clock | None = None,
    options: ApiOptions | None = None,
    payments: Payments | None = None,
    bank: BankGateway | None = None,
    billers: BillerGateway | None = None,
    limiter: RateLimiter | SharedRateLimiter | None = None,
) -> FastAPI:
    """The API over the SQL store ``engine`` (migrated to the newest schema by the caller) and
    the open ``ledger`` (embedded, or a ``RemoteLedger`` of a ledger another process serves).
    Nothing is opened here and nothing is closed on shutdown.

    ``payments`` is the payments service the routes call; without it one is built over
    ``engine`` and ``ledger`` with the ``bank`` and ``billers`` gateways (the simulators when
    not given: a deployment passes its real adapters).

    ``limiter`` holds the API keys' token buckets: without it, a ``RateLimiter`` of this
    process; a server of several worker processes passes each the ``SharedRateLimiter`` it
    opened, whose table must have been created with ``options``' rate and burst."""
    if not logging_configured():  # ``puhui serve`` configures first; tests may too
        configure_logging()
    clock = clock or SystemClock()
    options = options or ApiOptions()
    if limiter is None:
        limiter = RateLimiter(clock, options.rate_per_key_per_s, options.rate_burst_requests)
    elif (limiter.rate_per_s, limiter.burst) != (
        options.rate_per_key_per_s,
        options.rate_burst_requests,
    ):
        raise ValueError(
            f"the limiter's rate and burst ({limiter.rate_per_s}/s, {limiter.burst}) are not "
            f"the options' ({options.rate_per_key_per_s}/s, {options.rate_burst_requests})"
        )
    async_ledger = ledger if isinstance(ledger, AsyncLedger) else AsyncLedger(ledger)
    from importlib import metadata

    try:
        version = metadata.version("puhui")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        version = "0+unknown"
    webhooks = Webhooks(engine, clock=clock, options=options.webhooks)
    app = FastAPI(
        title=API_TITLE,
        version=version,
        description="Partners' HTTP API: the ledger (TigerBeetle's semantics), payments and "
        "webhooks, per tenant. See docs/api.md.",
        lifespan=_lifespan(webhooks, options),
        # FastAPI's own OpenTelemetry hooks asked the environment for a tracer provider on
        # every request; the API's metrics are its own (``/metrics``).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    if payments is None:
        payments = Payments(
            engine,
            async_ledger.ledger,
            clock=clock,
            bank=bank or SimulatedBank(clock),
            cases=Cases(engine, clock),
        )
    owners = PaymentOwners(engine, clock=clock)
    # Review cases and block/allow lists. A ``payments`` given without a case queue holds
    # nothing for review; cases opened elsewhere are listed, and decisions on them are
    # carried out by the service that registered the resolver (``Cases.resolve_pending``).
    app.state.puhui_risk = _risk_routes.RiskContext(
        cases=payments.cases or Cases(engine, clock),
        lists=ListStore(engine, clock),
        owners=owners,
    )
    checkout = Checkout(payments)
    payments_context = PaymentsContext(
        payments=payments,
        checkout=checkout,
        bills=Bills(payments, billers or SimulatedBiller(clock)),
        owners=owners,
        batches=PaymentBatches(payments),
    )
    # Webhooks of payments and orders, written in the transaction of each change, for the
    # tenant that owns the customer or merchant (read in that same transaction).
    webhooks.watch_payments(payments, owners.tenant_of)
    webhooks.watch_checkout(checkout, owners.tenant_of)
    tenants = Tenants(engine, clock=clock)
    idempotency = IdempotencyRecords(engine, clock=clock, options=options.idempotency)

    def begin_many(claims: Sequence[tuple[int, str, str]]) -> list[ClaimResult]:
        return idempotency.begin_many(claims)

    def finish_many(done: Sequence[tuple[int, str, str, int, StoredResponse]]) -> list[None]:
        idempotency.finish_many(done)
        return [None] * len(done)

    audit = AuditLog(engine, clock=clock)
    metrics = ApiMetrics()
    app.state.puhui = ApiContext(
        tenants=tenants,
        idempotency=idempotency,
        claims=GroupCall(begin_many),
        finishes=GroupCall(finish_many),
        audit=audit,
        audit_batcher=AuditBatcher(audit),
        principals=PrincipalCache(tenants, clock, options.auth_cache_s),
        ledger=async_ledger,
        limiter=limiter,
        options=options,
        clock=clock,
        metrics=metrics,
        payments=payments_context,
        webhooks=webhooks,
        admission=Admission(options.requests_in_flight_max),
    )
    metrics.webhook_backlog.set_function(webhooks.backlog)
    context: ApiContext = app.state.puhui
    for queue, depth in (
        ("idempotency_claims", context.claims.depth),
        ("idempotency_finishes", context.finishes.depth),
        ("audit", context.audit_batcher.depth),
        ("payments", payments_context.depth),
    ):
        metrics.queue_depth.labels(queue).set_function(depth)
    for router in ROUTERS:
        # The routes join the app's own route table rather than being included as nested
        # routers: the same routes and the same OpenAPI document, but a request is matched
        # once against plain patterns (``include_router``'s nesting matched the chosen
        # router's table twice, with extra scope bookkeeping per candidate route).
        app.router.routes.extend(router.routes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics_text() -> Response:
        # A plain function: FastAPI runs it in a worker thread, so the webhook backlog's
        # SQL count (a gauge's callback) never holds up the event loop's other requests.
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def as_problem(_request: Request, exc: Exception) -> Response:
        return problem_from_exception(exc)

    handlers: Any = app.exception_handlers
    for kind in (StarletteHTTPException, RequestValidationError, PuhuiError):
        handlers[kind] = as_problem
    # The hottest routes' well-formed requests skip the router (the same answers, see
    # ``_lean_routes``).
    if options.lean_routes:
        lean = [
            r
            for r in platform_routes(app)
            if any((r.path, method) in LEAN_ROUTES for method in r.methods or ())
        ]
        if len(lean) != len(LEAN_ROUTES):  # a template renamed: say so, never go slow quietly
            raise ValueError("a route of LEAN_ROUTES is not in the app")
        app.add_middleware(
            LeanRoutes,
            routes=lean,
            table=app.router.routes,
            bytes_max=options.request_body_bytes_max,
        )
    # Outside every route's handling: the limits on request bodies (the size of one, the
    # bytes held at once, how long one may take).
    app.state.body_budget = BodyBudget(options.request_bodies_bytes_max)
    app.add_middleware(
        BodyGuard,
        budget=app.state.body_budget,
        timeout_s=options.request_body_timeout_s,
        body_bytes_max=options.request_body_bytes_max,
        metrics=metrics,
    )
    app.add_middleware(RequestLogMiddleware)  # outermost: every answer has a request id
    return app


worker_stop_grace_s = 5.0
"""How long shutdown waits for a delivery round in flight beyond its request timeout (unit:
seconds); an attempt cut short is retried after its lease by the next server."""

log = logging.getLogger("puhui.api")


def _lifespan(webhooks: Webhooks, options: ApiOptions) -> Any:
    """The app's lifespan: with ``freeze_gc_on_start``, what exists at start-up is kept out
    of the garbage collector's full collections while the app serves, and with
    ``gc_young_objects`` its youngest generation is collected less often; with a delivery
    interval, a webhook delivery worker runs beside the API and is stopped (its round in
    flight finished, or cut short) on shutdown; with a housekeeping interval, expired
    idempotency records are deleted beside it (``_housekeeping``)."""
    webhook_delivery = _delivering(webhooks, options.webhook_delivery_interval_s)

    @contextlib.asynccontextmanager
    async def delivering(app: FastAPI) -> AsyncIterator[None]:
        async with webhook_delivery(app), _housekeeping(app, options):
            yield

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with _young_threshold(options.gc_young_objects):
            if not options.freeze_gc_on_start:
                async with delivering(app):
                    yield
                return
            async with frozen(app):
                yield

    @contextlib.asynccontextmanager
    async def frozen(app: FastAPI) -> AsyncIterator[None]:
        # The objects built before serving (the app, the services, the risk engine's and
        # the ledger's state: ~230,000 in the benchmark's server) live as long as the app.
        # Each full collection walked them all: ~200 ms of CPU, with every request stopped,
        # several times in ten seconds under load. Frozen, they are never walked (nor
        # freed by the collector: they are not garbage); unfrozen again on shutdown.
        gc.freeze()
        try:
            async with delivering(app):
                yield
        finally:
            gc.unfreeze()

    return lifespan


@contextlib.contextmanager
def _young_threshold(objects: int | None) -> Iterator[None]:
    """The collector's youngest-generation threshold set to ``objects`` (None: unchanged)
    within the block, the one before restored after it."""
    if objects is None:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(objects, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


purge_statement_rows_max = 10_000
"""Most expired idempotency records one statement of housekeeping deletes (unit: rows)."""


@contextlib.asynccontextmanager
async def _housekeeping(app: FastAPI, options: ApiOptions) -> AsyncIterator[None]:
    """Beside the API: a round at start-up, then one every ``housekeeping_interval_s`` —
    at once instead while a round finds its most (a backlog) — deleting expired idempotency
    records (see ``ApiOptions``). On shutdown the round in flight stops after its current
    statement and is waited for (what it committed stays deleted; the next server goes on)."""
    interval_s = options.housekeeping_interval_s
    if interval_s is None:
        yield
        return
    stopping = threading.Event()  # seen by the round's thread between statements
    wake = asyncio.Event()

    async def rounds() -> None:
        context = app.state.puhui
        rows_max = options.housekeeping_rows_max
        while not stopping.is_set():
            purged = 0
            try:
                purged = await asyncio.to_thread(_purge_round, context, rows_max, stopping)
            except Exception:  # the store is down: logged, tried again next round
                log.exception("housekeeping round failed")
            if purged >= rows_max:
                continue  # more is expired: the next round now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval_s)

    task = asyncio.create_task(rounds(), name="housekeeping")
    app.state.housekeeping = task
    try:
        yield
    finally:
        stopping.set()
        wake.set()
        await task


def _purge_round(context: Any, rows_max: int, stopping: threading.Event | None = None) -> int:
    """Delete expired idempotency records, at most ``rows_max`` (and none once ``stopping``
    is set); how many went. A statement that deletes fewer than asked ends the round: nothing
    more is expired, or (PostgreSQL) the rest is held by requests taking keys over, which the
    purge skips rather than waits for (``IdempotencyRecords.purge_expired``)."""
    purged = 0
    while purged < rows_max and not (stopping is not None and stopping.is_set()):
        step = min(purge_statement_rows_max, rows_max - purged)
        done = int(context.idempotency.purge_expired(limit=step))
        purged += done
        if done < step:
            break
    return purged


def _delivering(webhooks: Webhooks, interval_s: float | None) -> Any:
    """The webhook delivery part of the lifespan: with an interval, a worker runs beside
    the API and is stopped (its round in flight finished, or cut short) on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if interval_s is None:
            yield
            return
        stop = asyncio.Event()
        async with DeliveryWorker(webhooks) as worker:
            task = asyncio.create_task(worker.run(stop, interval_s), name="webhook-delivery")
            app.state.webhook_delivery = task
            try:
                yield
            finally:
                stop.set()
                grace = webhooks.options.request_timeout_s + worker_stop_grace_s
                try:
                    await asyncio.wait_for(task, timeout=grace)
                except TimeoutError:  # wait_for cancelled it; leases bring its work back
                    log.warning("webhook delivery worker cut short on shutdown")

    return lifespan
