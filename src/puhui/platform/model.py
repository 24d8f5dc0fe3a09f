"""The platform's rules as pure functions: scopes, API key tokens, request fingerprints, the
audit chain's hashes and its verification, and the scrambling of a tenant's ledger ids.

Nothing here touches a database or a clock; the service modules do the I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
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
    WEBHOOKS_READ = "webhooks:read"
    """List webhook endpoints, events and dead letters."""
    WEBHOOKS_WRITE = "webhooks:write"
    """Create and disable webhook endpoints; replay events."""
    RISK_READ = "risk:read"
    """List and read review cases of the tenant's customers."""
    RISK_WRITE = "risk:write"
    """Decide review cases of the tenant's customers (approve, reject, escalate)."""
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


# --- creation times ---------------------------------------------------------------------------


def creation_ns(now_ns: int, newest_ns: int | None) -> int:
    """When a tenant's new key or webhook endpoint is created: now, or one nanosecond after
    the newest of its kind the tenant has (``newest_ns``, None for the first) when the clock
    reads no later (the same nanosecond, or a clock stepped back). Taken under the tenant's
    lock, these times ascend in commit order, so a list ordered by them puts a new row after
    every cursor already handed out (``(created_at_ns, id)`` is the lists' order)."""
    return now_ns if newest_ns is None else max(now_ns, newest_ns + 1)


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
    were deleted (or the anchor was changed); or fewer: entries were added past it."""


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
    entries: Iterable[AuditEntry],
    anchor_count: int,
    anchor_head_hash: str,
    later_anchor: Callable[[], tuple[int, str]] | None = None,
) -> AuditReport:
    """Check a log read in ``seq`` order against itself and its anchor; report the first
    entry that was edited, inserted or deleted (also at the end).

    ``later_anchor`` reads the anchor (count, head hash) again, once the entries are read,
    when the log is live: entries appended while it was read run past the first anchor, up to the
    later one. The log must then reach the first anchor (its entry ``anchor_count`` with
    that head) and hold no more entries than the later anchor counts (and end at its head
    when it holds as many)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0
    problem: AuditProblem | None = None
    hash_at_anchor = GENESIS_HASH if anchor_count == 0 else None
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
            if entry.seq == anchor_count:
                hash_at_anchor = entry.hash
    end_count, end_head = (
        (anchor_count, anchor_head_hash) if later_anchor is None else later_anchor()
    )
    if problem is None and (count < anchor_count or hash_at_anchor != anchor_head_hash):
        problem = AuditProblem(
            count + 1 if count <= anchor_count else anchor_count,
            AuditProblemKind.TRUNCATED,
            f"the anchor records {anchor_count} entries, the log holds {count}",
        )
    if problem is None and (count > end_count or (count == end_count and prev_hash != end_head)):
        problem = AuditProblem(
            end_count + 1 if count > end_count else count + 1,
            AuditProblemKind.TRUNCATED,
            f"the anchor records {end_count} entries, the log holds {count}",
        )
    anchor_count, anchor_head_hash = end_count, end_head
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


# --- webhooks ---------------------------------------------------------------------------------


class EventType(enum.StrEnum):
    """What a webhook event reports (``<noun>.<past tense>``). Append only: partners filter
    on these names."""

    PAYMENT_SUCCEEDED = "payment.succeeded"
    """A merchant payment (scanned QR, collected payment code, or an order's payment) went
    through."""
    PAYMENT_FAILED = "payment.failed"
    """A merchant payment failed or its risk hold lapsed; nothing moved."""
    TRANSFER_SUCCEEDED = "transfer.succeeded"
    """A P2P transfer between wallets went through."""
    TRANSFER_FAILED = "transfer.failed"
    TOP_UP_SUCCEEDED = "top_up.succeeded"
    """The bank confirmed a top-up; the wallet is credited."""
    TOP_UP_FAILED = "top_up.failed"
    WITHDRAWAL_SUCCEEDED = "withdrawal.succeeded"
    """The bank paid a withdrawal out to the card."""
    WITHDRAWAL_FAILED = "withdrawal.failed"
    SETTLEMENT_SUCCEEDED = "settlement.succeeded"
    """A merchant's settlement reached its bank account."""
    SETTLEMENT_FAILED = "settlement.failed"
    BILL_PAID = "bill.paid"
    """The biller wrote the bill off; the payment is final."""
    ORDER_PAID = "order.paid"
    """The buyer's money is in escrow."""
    ORDER_SHIPPED = "order.shipped"
    ORDER_FINISHED = "order.finished"
    """Escrow was released to the seller (receipt confirmed, by the buyer or its timer)."""
    ORDER_CLOSED = "order.closed"
    """Cancelled, unpaid in time, or refunded in full."""
    REFUND_REQUESTED = "refund.requested"
    REFUND_REJECTED = "refund.rejected"
    """The seller said no; the buyer may escalate."""
    REFUND_ESCALATED = "refund.escalated"
    REFUND_REFUNDED = "refund.refunded"
    """The money went back to the buyer."""
    REFUND_DENIED = "refund.denied"
    """Closed without money (not escalated in time, or arbitration for the seller)."""


ALL_EVENT_TYPES: Final = "*"
"""Subscribe an endpoint to every event type (also those added later)."""

webhook_url_chars_max: Final = 2048
"""Longest endpoint URL (unit: characters)."""
webhook_event_types_max: Final = 64
"""Most event types one endpoint names (unit: types)."""


class InvalidWebhookUrlError(InvalidInputError):
    """An endpoint URL that is not an absolute ``http``/``https`` URL with a host, is too long,
    or carries credentials or a fragment."""

    code = "webhook_url_invalid"


class UnknownEventTypeError(InvalidInputError):
    code = "webhook_event_type_unknown"


_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#\s]*)(?P<rest>[^#\s]*)(?P<frag>#.*)?"
)
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def check_webhook_url(url: object) -> str:
    """``url`` if Puhui may POST events to it: ``http``/``https`` only (no ``file:``,
    ``ftp:``, ``javascript:``, ...), a host, no user:password, no fragment."""
    if not isinstance(url, str) or not 0 < len(url) <= webhook_url_chars_max:
        raise InvalidWebhookUrlError(f"url must be 1 to {webhook_url_chars_max} characters")
    match = _URL.fullmatch(url)
    if match is None:
        raise InvalidWebhookUrlError("url must be an absolute http or https URL")
    if match["scheme"].lower() not in ("http", "https"):
        raise InvalidWebhookUrlError("url must use http or https")
    authority = match["authority"]
    if "@" in authority:
        raise InvalidWebhookUrlError("url must not carry a user name or password")
    host = _HOST.fullmatch(authority)
    if host is None or not authority.strip(".:[]"):
        raise InvalidWebhookUrlError("url needs a host name")
    port = host.group(2)
    if port is not None and not 0 < int(port[1:]) <= 65535:
        raise InvalidWebhookUrlError("url has an invalid port")
    if match["frag"] is not None:
        raise InvalidWebhookUrlError("url must not have a #fragment")
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in url):
        raise InvalidWebhookUrlError("url must be printable ASCII (percent-encode the rest)")
    return url


class InsecureWebhookUrlError(InvalidInputError):
    """An ``http://`` endpoint URL: events carry money movements, so only ``https://`` is
    accepted (``http://`` only to loopback, when ``WebhookOptions.loopback_allowed``)."""

    code = "webhook_url_insecure"


class ForbiddenWebhookAddressError(InvalidInputError):
    """The endpoint's host is, or resolves to, an address Puhui never sends to: loopback,
    private, shared, link-local (cloud metadata 169.254.169.254 included), multicast,
    unspecified or reserved. ``details["reason"]`` says which."""

    code = "webhook_url_forbidden"


class UnresolvableWebhookHostError(InvalidInputError):
    """The endpoint's host name has no address (checked when the endpoint is registered)."""

    code = "webhook_url_unresolvable"


CLOUD_METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, Alibaba (ECS), ...
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    }
)


NAT64_NETWORK: Final = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix (RFC 6052): its last 32 bits are the IPv4 address a NAT64
gateway connects to."""
LOCAL_NAT64_NETWORK: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
"""Local-use NAT64 (RFC 8215): translated inside one network, never globally reachable."""
IPV4_COMPATIBLE_NETWORK: Final = ipaddress.IPv6Network("::/96")
"""The deprecated IPv4-compatible form ``::a.b.c.d`` (RFC 4291, 2.5.5.1)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for on the way (mapped, NAT64, 6to4,
    IPv4-compatible), or None."""
    if ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002:0a00:0001:: is relayed to 10.0.0.1
        return ip.sixtofour
    if ip in NAT64_NETWORK or (ip in IPV4_COMPATIBLE_NETWORK and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def url_host(url: str) -> str:
    """The host of a URL ``check_webhook_url`` accepted (an IPv6 literal without brackets)."""
    match = _URL.fullmatch(url)
    host = _HOST.fullmatch(match["authority"]) if match is not None else None
    if host is None:
        raise InvalidWebhookUrlError("url needs a host name")
    return host.group(1).strip("[]").rstrip(".").lower()


def url_is_https(url: str) -> bool:
    return url[:8].lower() == "https://"


def forbidden_address_reason(address: str, *, loopback_allowed: bool) -> str | None:
    """Why Puhui must not send a webhook to ``address`` (an IP literal), or None if it may:
    only globally routable unicast addresses are fine (and loopback when allowed)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return "not_an_address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in LOCAL_NAT64_NETWORK:
            return "reserved"
        ip = _embedded_ipv4(ip) or ip  # counts as the IPv4 address it leads to
    if ip.is_loopback:
        return None if loopback_allowed else "loopback"
    if ip in CLOUD_METADATA_ADDRESSES:
        return "metadata"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"  # shared (100.64/10), documentation, benchmarking, 6to4 relays...
    return None


def check_destination(url: str, addresses: Iterable[str], *, loopback_allowed: bool) -> None:
    """Refuse a URL whose host resolved to ``addresses`` unless every one may receive
    webhooks, and an ``http://`` URL unless it goes to loopback, allowed."""
    found = list(addresses)
    if not found:
        raise UnresolvableWebhookHostError("the url's host has no address")
    for address in found:
        reason = forbidden_address_reason(address, loopback_allowed=loopback_allowed)
        if reason is not None:
            raise ForbiddenWebhookAddressError(
                f"the url's host is a {reason.replace('_', ' ')} address; webhooks go to "
                "public addresses only",
                reason=reason,
            )
    if not url_is_https(url):
        loopback = all(
            forbidden_address_reason(a, loopback_allowed=False) == "loopback" for a in found
        )
        if not (loopback and loopback_allowed):
            raise InsecureWebhookUrlError("url must use https")


def parse_event_types(types: Iterable[str]) -> frozenset[str]:
    """The event types an endpoint wants: known ``EventType`` names, or ``{"*"}`` for all."""
    found: set[str] = set()
    for text in types:
        if text == ALL_EVENT_TYPES:
            found.add(text)
            continue
        try:
            found.add(EventType(text).value)
        except ValueError:
            raise UnknownEventTypeError(
                f"unknown event type {str(text)[:64]!r}; see docs/api.md#webhooks"
            ) from None
    if not found:
        raise UnknownEventTypeError("an endpoint needs at least one event type (or '*')")
    if len(found) > webhook_event_types_max:
        raise UnknownEventTypeError(f"at most {webhook_event_types_max} event types")
    return frozenset({ALL_EVENT_TYPES}) if ALL_EVENT_TYPES in found else frozenset(found)


def wants(event_types: frozenset[str], event_type: str) -> bool:
    return ALL_EVENT_TYPES in event_types or event_type in event_types


SIGNATURE_HEADER: Final = "Puhui-Signature"
TIMESTAMP_HEADER: Final = "Puhui-Timestamp"
EVENT_ID_HEADER: Final = "Puhui-Event-Id"
SIGNATURE_VERSION: Final = "v1"
signature_header_chars_max: Final = 1024
"""Longest ``Puhui-Signature`` header ``verify_signature`` reads (unit: characters)."""


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The ``v1`` signature: hex HMAC-SHA256, keyed with the endpoint's secret (its text as
    UTF-8), of ``"<timestamp>.<body>"`` (the decimal Unix time, a dot, the exact body bytes)."""
    message = str(timestamp_s).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp_s: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex>``: the value of ``Puhui-Signature``."""
    return f"t={timestamp_s},{SIGNATURE_VERSION}={sign(secret, timestamp_s, body)}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance_s: int = 300, *, now_s: int | None = None
) -> bool:
    """Whether ``header`` (a ``Puhui-Signature`` value) signs ``body`` with ``secret`` at a
    time within ``tolerance_s`` seconds of now (``now_s``, default the machine's clock).

    For receivers. Every ``v1=`` value in the header is tried (there may be more than one
    while a secret is rotated); comparisons take constant time. A stale or future timestamp
    fails, so that a captured request cannot be replayed later. Pass the body exactly as
    received, before any JSON parsing.
    """
    if len(header) > signature_header_chars_max:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == SIGNATURE_VERSION and value.isascii():
            # (``compare_digest`` raises on a str beyond ASCII: a header's text is whatever
            # arrived, and a signature of ours never has such a character)
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if now_s is None:
        import time

        now_s = int(time.time())  # a receiver's check: the real clock is the point
    if abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When a failed delivery is tried again: exponential backoff with full jitter, capped,
    until ``attempts_max`` attempts have failed (then it is a dead letter)."""

    base_s: float = 10.0
    """Ceiling of the wait after the first failure (unit: seconds)."""
    cap_s: float = 6 * 3600.0
    """Largest ceiling (unit: seconds)."""
    floor_s: float = 1.0
    """Shortest wait, so that a flapping receiver is never hammered (unit: seconds)."""
    attempts_max: int = 15
    """Attempts (the first included) before a delivery becomes a dead letter."""

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.base_s <= self.cap_s:
            raise ValueError("need 0 < floor_s <= base_s <= cap_s")
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")

    def ceiling_s(self, failures: int) -> float:
        """The longest wait after ``failures`` failed attempts (1, 2, ...):
        ``min(cap, base * 2**(failures - 1))``."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, 62))

    def delay_s(self, failures: int, unit_random: float) -> float:
        """The wait after ``failures`` failed attempts, given ``unit_random`` in [0, 1):
        uniform over [floor, ceiling] ("full jitter", which spreads the retries of many
        deliveries that failed together best; AWS Architecture Blog, "Exponential Backoff
        And Jitter")."""
        if not 0.0 <= unit_random < 1.0:
            raise ValueError("unit_random must be in [0, 1)")
        ceiling = self.ceiling_s(failures)
        return self.floor_s + (ceiling - self.floor_s) * unit_random

    def exhausted(self, attempts: int) -> bool:
        """Whether a delivery that failed ``attempts`` times is a dead letter."""
        return attempts >= self.attempts_max
