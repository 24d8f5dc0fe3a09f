"""Errors of the platform service; each code is listed in ``docs/errors.md``."""

from __future__ import annotations

from puhui.errors import PuhuiError


class PlatformError(PuhuiError):
    """A platform operation that cannot be done as asked (nothing changed)."""

    code = "platform_error"


class TenantNotFoundError(PlatformError):
    code = "tenant_not_found"


class TenantNameTakenError(PlatformError):
    code = "tenant_name_taken"


class ApiKeyNotFoundError(PlatformError):
    """No key with that id (or not one of this tenant's)."""

    code = "api_key_not_found"


class InvalidApiKeyError(PlatformError):
    """The bearer token is missing, malformed, unknown, revoked, or its tenant is suspended.

    One code for all of these, so that a caller learns nothing about which keys exist."""

    code = "api_key_invalid"


class ScopeMissingError(PlatformError):
    """The key is valid but lacks the scope the operation needs."""

    code = "scope_missing"


class IdempotencyRequestInProgressError(PlatformError):
    """A request with the same idempotency key is still being processed; retry later."""

    code = "idempotency_request_in_progress"
