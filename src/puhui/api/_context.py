"""What the routes share: built once by ``create_app`` and kept in ``app.state.puhui``."""

from __future__ import annotations

from dataclasses import dataclass

from puhui.clock import Clock
from puhui.ledger import AsyncLedger
from puhui.platform import (
    AuditLog,
    ClaimResult,
    IdempotencyRecords,
    StoredResponse,
    Tenants,
    Webhooks,
)

from ._batching import AuditBatcher, GroupCall, PrincipalCache
from ._guards import Admission, ApiOptions, RateLimiter
from ._metrics import ApiMetrics
from ._payments_context import PaymentsContext
from ._shared_limits import SharedRateLimiter


@dataclass(frozen=True, slots=True)
class ApiContext:
    tenants: Tenants
    idempotency: IdempotencyRecords
    claims: GroupCall[tuple[int, str, str], ClaimResult]
    """``idempotency.begin`` of concurrent requests, one transaction per group."""
    finishes: GroupCall[tuple[int, str, str, int, StoredResponse], None]
    """``idempotency.finish`` of concurrent requests (their claims' tokens), one
    transaction per group."""
    audit: AuditLog
    audit_batcher: AuditBatcher
    principals: PrincipalCache
    ledger: AsyncLedger
    limiter: RateLimiter | SharedRateLimiter
    options: ApiOptions
    clock: Clock
    metrics: ApiMetrics
    payments: PaymentsContext
    webhooks: Webhooks
    admission: Admission
    """Requests in flight, within ``options.requests_in_flight_max``."""
