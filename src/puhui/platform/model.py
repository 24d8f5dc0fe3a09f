"""The platform's rules as pure functions: scopes, API key tokens, request fingerprints, the
audit chain's hashes and its verification, and the scrambling of a tenant's ledger ids.

Nothing here touches a database or a clock; the service modules do the I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from puhui.errors import InvalidInputError

# --- tenants ----------------------------------------------------------------------------------


class TenantKind(enum.StrEnum):
    """What kind of partner institution a tenant is."""

    BANK = "bank"
    FUND_COMPANY = "fund_company"
    INSURER = "insurer"
    MERCHANT_ACQUIRER = "merchant_acquirer"
    BILLER = "biller"
    OPERATOR = "operator"
    """The platform's own operators: the only tenants whose keys may hold ``platform:admin``."""


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    """Its keys no longer authenticate."""


class UnknownTenantKindError(InvalidInputError):
    code = "unknown_tenant_kind"


def parse_kind(kind: object) -> TenantKind:
    try:
        return TenantKind(str(kind))
    except ValueError:
        known = ", ".join(k.value for k in TenantKind)
        raise UnknownTenantKindError(
            f"unknown tenant kind {str(kind)[:32]!r}; known: {known}"
        ) from None


tenant_name_chars_max: Final = 64
"""Longest tenant name (unit: characters)."""

key_name_chars_max: Final = 64
"""Longest API key label (unit: characters)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")


class InvalidNameError(InvalidInputError):
    """A tenant name or key label that is empty, too long or has characters other than
    letters, digits, space, dot, underscore and hyphen."""

    code = "invalid_name"


def check_name(name: object, what: str, chars_max: int) -> str:
    """``name`` if it is a valid tenant name or key label, else ``InvalidNameError``."""
    if not isinstance(name, str) or not 0 < len(name) <= chars_max or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"{what} must be 1 to {chars_max} letters, digits, spaces, '.', '_' or '-'"
        )
    return name


# --- scopes -----------------------------------------------------------------------------------


class Scope(enum.StrEnum):
    """What an API key may do. A route names the one scope it needs."""

    LEDGER_READ = "ledger:read"
    LEDGER_WRITE = "ledger:write"
    PAYMENTS_READ = "payments:read"
    PAYMENTS_WRITE = "payments:write"
    PLATFORM_ADMIN = "platform:admin"
    """Administration of tenants and keys; only keys of an operator tenant carry it."""


class UnknownScopeError(InvalidInputError):
    code = "unknown_scope"


class ScopeNotAllowedError(InvalidInputError):
    """``platform:admin`` asked for a key of a tenant that is not an operator."""

    code = "scope_not_allowed"


def parse_scopes(scopes: Iterable[str], kind: TenantKind) -> frozenset[Scope]:
    """The scopes named in ``scopes`` for a key of a tenant of ``kind``.

    A scope that does not exist is rejected; so is ``platform:admin`` outside an operator
    tenant. An empty list is rejected too: a key that can do nothing is a mistake.
    """
    found: set[Scope] = set()
    for text in scopes:
        try:
            found.add(Scope(text))
        except ValueError:
            raise UnknownScopeError(
                f"unknown scope {text[:32]!r}; known: {', '.join(s.value for s in Scope)}"
            ) from None
    if not found:
        raise UnknownScopeError("a key needs at least one scope")
    if Scope.PLATFORM_ADMIN in found and kind is not TenantKind.OPERATOR:
        raise ScopeNotAllowedError("only keys of an operator tenant may hold platform:admin")
    return frozenset(found)


def scopes_text(scopes: Iterable[Scope]) -> str:
    """Scopes as stored: sorted, space separated."""
    return " ".join(sorted(scope.value for scope in scopes))


# --- API key tokens ---------------------------------------------------------------------------

KEY_PREFIX: Final = "pk"
key_id_chars: Final = 16
"""Hex characters of a key id (64 random bits): public, names the key in lists and logs."""
secret_bytes: Final = 32
"""Random bytes of a key's secret (256 bits), shown once as 64 hex characters."""
token_chars_max: Final = 128
"""Longest bearer token read at all (unit: characters); longer ones are rejected unread."""

_TOKEN = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{{key_id_chars}}})_([0-9a-f]{{{2 * secret_bytes}}})")


def format_token(key_id: str, secret_hex: str) -> str:
    """The text a client sends as ``Authorization: Bearer <token>``."""
    return f"{KEY_PREFIX}_{key_id}_{secret_hex}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret hex)`` of a well-formed token, else None."""
    if len(token) > token_chars_max:
        return None
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def secret_digest(secret_hex: str) -> str:
    """What is stored of a secret: its SHA-256, hex.

    A single fast hash suffices here, unlike for passwords: bcrypt/scrypt/argon2 exist to
    slow down guessing of *low-entropy* secrets chosen by people. Our secrets are 256 bits
    from ``secrets.token_bytes``; whoever steals the hashes still faces 2**256 candidates
    per key, which no amount of hashing speed makes feasible. A fast hash also keeps
    authentication cheap on every request.
    """
    return hashlib.sha256(secret_hex.encode("ascii")).hexdigest()


def secret_matches(secret_hex: str, stored_digest: str) -> bool:
    """Constant-time comparison of a presented secret with a stored digest."""
    return hmac.compare_digest(secret_digest(secret_hex), stored_digest)


# --- idempotency ------------------------------------------------------------------------------

idempotency_key_chars_max: Final = 255
"""Longest ``Idempotency-Key`` header value (unit: characters), as Stripe."""

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")


class InvalidIdempotencyKeyError(InvalidInputError):
    """An ``Idempotency-Key`` that is empty, too long or not printable ASCII."""

    code = "idempotency_key_invalid"


def check_idempotency_key(key: str) -> str:
    if not 0 < len(key) <= idempotency_key_chars_max or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidIdempotencyKeyError(
            f"Idempotency-Key must be 1 to {idempotency_key_chars_max} printable ASCII "
            "characters without spaces"
        )
    return key


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """What identifies a request under an idempotency key: method, path and body.

    A JSON body is compared by its content, not its spelling (key order and whitespace do not
    matter); any other body byte for byte.
    """
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


# --- audit chain ------------------------------------------------------------------------------

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first entry."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One state-changing request: who (tenant, key), what (method, route, target), when,
    and how it ended (HTTP status). ``prev_hash`` chains it to the entry before."""

    seq: int
    at_ns: int
    tenant_id: int | None
    key_id: str | None
    method: str
    route: str
    target: str
    status: int
    prev_hash: str
    hash: str


def audit_hash(
    *,
    seq: int,
    at_ns: int,
    tenant_id: int | None,
    key_id: str | None,
    method: str,
    route: str,
    target: str,
    status: int,
    prev_hash: str,
) -> str:
    """SHA-256 over every field of an entry and the hash of the entry before it."""
    fields = [seq, at_ns, tenant_id, key_id, method, route, target, status, prev_hash]
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class AuditProblemKind(enum.StrEnum):
    EDITED = "edited"
    """The entry's fields no longer give its stored hash."""
    CHAIN_BROKEN = "chain_broken"
    """The entry does not point at the one before it: one was inserted or removed before."""
    MISSING = "missing"
    """A sequence number is skipped: entries were deleted here."""
    TRUNCATED = "truncated"
    """The anchor counts more entries (or another head) than the log holds: the last ones
    were deleted (or the anchor was changed)."""


@dataclass(frozen=True, slots=True)
class AuditProblem:
    seq: int
    """The first entry found wrong (for ``truncated``: the first one missing at the end)."""
    kind: AuditProblemKind
    detail: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    ok: bool
    entries: int
    head_hash: str
    """Hash of the last entry (``GENESIS_HASH`` for an empty log): keep it somewhere else to
    detect a rewrite of the whole log and its anchor."""
    anchor_count: int
    anchor_head_hash: str
    problem: AuditProblem | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_hash": self.head_hash,
            "anchor_count": self.anchor_count,
            "anchor_head_hash": self.anchor_head_hash,
            "problem": None
            if self.problem is None
            else {
                "seq": self.problem.seq,
                "kind": self.problem.kind.value,
                "detail": self.problem.detail,
            },
        }


def verify_chain(
    entries: Iterable[AuditEntry], anchor_count: int, anchor_head_hash: str
) -> AuditReport:
    """Check a log read in ``seq`` order against itself and its anchor; report the first
    entry that was edited, inserted or deleted (also at the end)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0
    problem: AuditProblem | None = None
    for entry in entries:
        count += 1
        if problem is not None:
            continue
        recomputed = audit_hash(
            seq=entry.seq,
            at_ns=entry.at_ns,
            tenant_id=entry.tenant_id,
            key_id=entry.key_id,
            method=entry.method,
            route=entry.route,
            target=entry.target,
            status=entry.status,
            prev_hash=entry.prev_hash,
        )
        if not hmac.compare_digest(recomputed, entry.hash):
            problem = AuditProblem(entry.seq, AuditProblemKind.EDITED, "hash does not match")
        elif entry.seq > expected_seq:
            problem = AuditProblem(
                expected_seq,
                AuditProblemKind.MISSING,
                f"entries {expected_seq}..{entry.seq - 1} are missing",
            )
        elif entry.seq < expected_seq or entry.prev_hash != prev_hash:
            problem = AuditProblem(
                entry.seq,
                AuditProblemKind.CHAIN_BROKEN,
                "does not follow the entry before it (an entry was inserted or removed)",
            )
        else:
            prev_hash = entry.hash
            expected_seq += 1
    if problem is None and (count != anchor_count or prev_hash != anchor_head_hash):
        problem = AuditProblem(
            count + 1,
            AuditProblemKind.TRUNCATED,
            f"the anchor records {anchor_count} entries, the log holds {count}",
        )
    return AuditReport(
        ok=problem is None,
        entries=count,
        head_hash=prev_hash,
        anchor_count=anchor_count,
        anchor_head_hash=anchor_head_hash,
        problem=problem,
    )


# --- tenant ledger ids ------------------------------------------------------------------------

U128_MAX: Final = (1 << 128) - 1


def scramble_id(value: int, mask: int) -> int:
    """A tenant's id as the ledger stores it (and back: the function is its own inverse).

    Every tenant has a random, non-zero 128-bit ``mask``; its ids are XORed with it, so two
    tenants' ids never meet in the shared ledger: one tenant's id ``x`` names a ledger
    account another tenant reaches only by guessing 128 random bits. The values TigerBeetle
    gives a meaning (0: "none", 2**128-1: "int max") stay themselves, and so do the two ids
    that would otherwise become them (``mask`` and ``mask ^ (2**128-1)``), which keeps the
    function a bijection of the 128-bit range.
    """
    if value in (0, U128_MAX, mask, mask ^ U128_MAX):
        return value
    return value ^ mask


def parse_mask(text: str) -> int:
    return int(text, 16)
