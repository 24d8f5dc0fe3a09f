"""The open platform's foundation: tenants, API keys, idempotency records, the audit chain,
and each tenant's isolated view of the ledger.

``Tenants`` creates tenants and keys and authenticates bearer tokens into a ``Principal``;
``IdempotencyRecords`` keeps the API's ``Idempotency-Key`` records (Stripe's semantics);
``AuditLog`` appends to and verifies the hash-chained audit log; ``TenantLedger`` is the
ledger as one tenant sees it; ``PaymentOwners`` says which tenant owns each payments
customer and merchant. Pure rules (scopes, tokens, fingerprints, chain hashes, id
scrambling) live in ``puhui.platform.model``; tables in ``puhui.store.platform``.
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
from .audit import AuditLog, AuditRecord
from .idempotency import Claim, ClaimResult, IdempotencyOptions, IdempotencyRecords, StoredResponse
from .ledger import ReservedFieldError, TenantLedger
from .model import (
    AuditEntry,
    AuditProblem,
    AuditProblemKind,
    AuditReport,
    InvalidIdempotencyKeyError,
    InvalidNameError,
    Scope,
    ScopeNotAllowedError,
    TenantKind,
    TenantStatus,
    UnknownScopeError,
    UnknownTenantKindError,
)
from .owners import OwnedKind, PaymentOwners
from .tenants import ApiKey, Principal, Tenant, Tenants

__all__ = [
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
    "IdempotencyOptions",
    "IdempotencyRecords",
    "IdempotencyRequestInProgressError",
    "InvalidApiKeyError",
    "InvalidIdempotencyKeyError",
    "InvalidNameError",
    "OwnedKind",
    "PaymentOwners",
    "PlatformError",
    "Principal",
    "ReservedFieldError",
    "Scope",
    "ScopeMissingError",
    "ScopeNotAllowedError",
    "StoredResponse",
    "Tenant",
    "TenantKind",
    "TenantLedger",
    "TenantNameTakenError",
    "TenantNotFoundError",
    "TenantStatus",
    "Tenants",
    "UnknownScopeError",
    "UnknownTenantKindError",
]
