"""The open platform's foundation: tenants, API keys, idempotency records, the audit chain,
and each tenant's isolated view of the ledger.

``Tenants`` creates tenants and keys and authenticates bearer tokens into a ``Principal``;
``IdempotencyRecords`` keeps the API's ``Idempotency-Key`` records (Stripe's semantics);
``AuditLog`` appends to and verifies the hash-chained audit log; ``TenantLedger`` is the
ledger as one tenant sees it; ``PaymentOwners`` says which tenant owns each payments
customer and merchant; ``Webhooks`` keeps tenants' webhook endpoints and the event outbox,
and ``DeliveryWorker`` delivers events, signed (``verify_signature`` for receivers). Pure
rules (scopes, tokens, fingerprints, chain hashes, id scrambling, webhook signatures and the
retry schedule) live in ``puhui.platform.model``; tables in ``puhui.store.platform``.
"""

from ._errors import (
    ApiKeyNotFoundError,
    IdempotencyRequestInProgressError,
    InvalidApiKeyError,
    PlatformError,
    ScopeMissingError,
    TenantNameTakenError,
    TenantNotFoundError,
)
from ._webhook_events import PartyKind, TenantOf
from .audit import AuditLog, AuditRecord
from .idempotency import Claim, ClaimResult, IdempotencyOptions, IdempotencyRecords, StoredResponse
from .ledger import ReservedFieldError, TenantLedger
from .model import (
    ALL_EVENT_TYPES,
    AuditEntry,
    AuditProblem,
    AuditProblemKind,
    AuditReport,
    EventType,
    ForbiddenWebhookAddressError,
    InsecureWebhookUrlError,
    InvalidIdempotencyKeyError,
    InvalidNameError,
    InvalidWebhookUrlError,
    RetrySchedule,
    Scope,
    ScopeNotAllowedError,
    TenantKind,
    TenantStatus,
    UnknownEventTypeError,
    UnknownScopeError,
    UnknownTenantKindError,
    UnresolvableWebhookHostError,
    signature_header,
    verify_signature,
)
from .owners import OwnedKind, PaymentOwners
from .tenants import ApiKey, Principal, Tenant, Tenants
from .webhooks import (
    DeliveryState,
    DeliveryWorker,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointLimitError,
    WebhookEndpointNotFoundError,
    WebhookEvent,
    WebhookEventNotFoundError,
    WebhookOptions,
    Webhooks,
)

__all__ = [
    "ALL_EVENT_TYPES",
    "ApiKey",
    "ApiKeyNotFoundError",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "AuditProblemKind",
    "AuditRecord",
    "AuditReport",
    "Claim",
    "ClaimResult",
    "DeliveryState",
    "DeliveryWorker",
    "EventType",
    "ForbiddenWebhookAddressError",
    "IdempotencyOptions",
    "IdempotencyRecords",
    "IdempotencyRequestInProgressError",
    "InsecureWebhookUrlError",
    "InvalidApiKeyError",
    "InvalidIdempotencyKeyError",
    "InvalidNameError",
    "InvalidWebhookUrlError",
    "OwnedKind",
    "PartyKind",
    "PaymentOwners",
    "PlatformError",
    "Principal",
    "ReservedFieldError",
    "RetrySchedule",
    "Scope",
    "ScopeMissingError",
    "ScopeNotAllowedError",
    "StoredResponse",
    "Tenant",
    "TenantKind",
    "TenantLedger",
    "TenantNameTakenError",
    "TenantNotFoundError",
    "TenantOf",
    "TenantStatus",
    "Tenants",
    "UnknownEventTypeError",
    "UnknownScopeError",
    "UnknownTenantKindError",
    "UnresolvableWebhookHostError",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointLimitError",
    "WebhookEndpointNotFoundError",
    "WebhookEvent",
    "WebhookEventNotFoundError",
    "WebhookOptions",
    "Webhooks",
    "signature_header",
    "verify_signature",
]
