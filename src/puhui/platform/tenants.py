"""Tenants (partner institutions) and their API keys.

A key is shown once, at creation, as ``pk_<key id>_<secret>``; only the SHA-256 of the secret
is stored (``model.secret_digest`` says why that suffices). ``authenticate`` turns a bearer
token into a ``Principal``: the tenant, the key and its scopes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from puhui.clock import Clock, SystemClock
from puhui.store import platform as tables

from ._errors import (
    ApiKeyNotFoundError,
    InvalidApiKeyError,
    ScopeMissingError,
    TenantNameTakenError,
    TenantNotFoundError,
)
from .model import (
    Scope,
    TenantKind,
    TenantStatus,
    check_name,
    creation_ns,
    format_token,
    key_id_chars,
    key_name_chars_max,
    parse_kind,
    parse_mask,
    parse_scopes,
    parse_token,
    scopes_text,
    secret_bytes,
    secret_digest,
    secret_matches,
    tenant_name_chars_max,
)

keys_listed_max = 1000
"""Most keys one listing returns (unit: keys)."""

tenant_id_max = (1 << 63) - 1
"""The largest tenant number the SQL store can hold (a signed 64-bit integer)."""


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    """The tenant's number: also the ``user_data_32`` of every ledger account it owns."""
    name: str
    kind: TenantKind
    status: TenantStatus
    ledger_id_mask: int
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its secret."""

    id: str
    tenant_id: int
    name: str
    scopes: frozenset[Scope]
    created_at_ns: int
    revoked_at_ns: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ns is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an active tenant through one of its unrevoked keys."""

    tenant: Tenant
    key_id: str
    scopes: frozenset[Scope]

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise ScopeMissingError(f"this key lacks the scope {scope.value}", scope=scope.value)


def _tenant(row: sa.Row[tuple[object, ...]]) -> Tenant:
    m = row._mapping
    return Tenant(
        id=int(m["id"]),
        name=str(m["name"]),
        kind=TenantKind(m["kind"]),
        status=TenantStatus(m["status"]),
        ledger_id_mask=parse_mask(str(m["ledger_id_mask"])),
        created_at_ns=int(m["created_at_ns"]),
    )


def _key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    revoked = m["revoked_at_ns"]
    return ApiKey(
        id=str(m["id"]),
        tenant_id=int(m["tenant_id"]),
        name=str(m["name"]),
        scopes=frozenset(Scope(s) for s in str(m["scopes"]).split()),
        created_at_ns=int(m["created_at_ns"]),
        revoked_at_ns=None if revoked is None else int(revoked),
    )


def lock_tenant_for_creation(
    conn: sa.Connection, table: sa.Table, tenant_id: int, clock: Clock
) -> int:
    """Lock the tenant's row (PostgreSQL; SQLite runs one writer at a time) for the rest of
    ``conn``'s transaction and answer the creation time of the tenant's new row of ``table``
    (keys or webhook endpoints: ``tenant_id`` and ``created_at_ns`` columns, indexed
    together): ``model.creation_ns`` of the clock read now, under the lock, and the
    tenant's newest row. Its lists page by ``(created_at_ns, id)``: a row created after a
    cursor was handed out sorts after it, whatever the clock did."""
    # FOR NO KEY UPDATE: creations wait for each other, but not the foreign key checks of
    # the tenant's other writes (an idempotency record, an event), which FOR UPDATE blocked.
    conn.execute(
        sa.select(tables.tenants.c.id)
        .where(tables.tenants.c.id == tenant_id)
        .with_for_update(key_share=True)
    )
    newest = conn.execute(
        sa.select(sa.func.max(table.c.created_at_ns)).where(table.c.tenant_id == tenant_id)
    ).scalar_one()
    return creation_ns(clock.now_ns(), None if newest is None else int(newest))


class Tenants:
    """Tenants and API keys in the SQL store."""

    def __init__(self, engine: sa.Engine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock = clock or SystemClock()

    # --- tenants ---

    def create(self, name: str, kind: TenantKind | str) -> Tenant:
        name = check_name(name, "tenant name", tenant_name_chars_max)
        tenant_kind = parse_kind(kind)
        mask = 0
        while mask == 0:
            mask = secrets.randbits(128)
        now = self.clock.now_ns()
        with self.engine.begin() as conn:
            # One creation at a time (PostgreSQL; SQLite runs one writer at a time): two at
            # once would each find the name free (and the second break the unique name), and
            # a number drawn by one that commits after a later number is listed would sort
            # before a cursor handed out. The mode lets row locks, foreign key checks and
            # reads of the table through.
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    f"LOCK TABLE {tables.tenants.name} IN SHARE ROW EXCLUSIVE MODE"
                )
            taken = conn.execute(
                sa.select(tables.tenants.c.id).where(tables.tenants.c.name == name)
            ).first()
            if taken is not None:
                raise TenantNameTakenError(f"a tenant named {name!r} exists")
            result = conn.execute(
                tables.tenants.insert().values(
                    name=name,
                    kind=tenant_kind.value,
                    status=TenantStatus.ACTIVE.value,
                    ledger_id_mask=f"{mask:032x}",
                    created_at_ns=now,
                )
            )
            tenant_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return Tenant(
            id=tenant_id,
            name=name,
            kind=tenant_kind,
            status=TenantStatus.ACTIVE,
            ledger_id_mask=mask,
            created_at_ns=now,
        )

    def get(self, tenant_id: int) -> Tenant:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tables.tenants).where(tables.tenants.c.id == tenant_id)
            ).first()
        if row is None:
            raise TenantNotFoundError(f"no tenant {tenant_id}")
        return _tenant(row)

    def find(self, name_or_id: str) -> Tenant:
        """A tenant by its number or its name (for the CLI). A number no tenant can have (past
        the store's 64-bit integers) is ``tenant_not_found`` like any other."""
        is_number = name_or_id.isascii() and name_or_id.isdigit()
        if is_number and int(name_or_id) > tenant_id_max:
            raise TenantNotFoundError(f"no tenant {name_or_id[:64]!r}")
        column = tables.tenants.c.id if is_number else tables.tenants.c.name
        value: object = int(name_or_id) if is_number else name_or_id
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tables.tenants).where(column == value)).first()
        if row is None:
            raise TenantNotFoundError(f"no tenant {name_or_id[:64]!r}")
        return _tenant(row)

    def list_tenants(self, *, after_id: int = 0, limit: int | None = None) -> list[Tenant]:
        """Tenants by number, those after ``after_id`` (a page of ``limit``, or all)."""
        query = (
            sa.select(tables.tenants)
            .where(tables.tenants.c.id > after_id)
            .order_by(tables.tenants.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_tenant(row) for row in rows]

    def set_status(self, tenant_id: int, status: TenantStatus) -> Tenant:
        with self.engine.begin() as conn:
            done = conn.execute(
                tables.tenants.update()
                .where(tables.tenants.c.id == tenant_id)
                .values(status=TenantStatus(status).value)
            )
        if done.rowcount != 1:
            raise TenantNotFoundError(f"no tenant {tenant_id}")
        return self.get(tenant_id)

    # --- keys ---

    def create_key(
        self, tenant_id: int, scopes: Iterable[str], name: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key of the tenant and its token (``pk_<id>_<secret>``): the only time the
        secret exists outside the caller's hands; it is never stored or shown again."""
        tenant = self.get(tenant_id)
        label = check_name(name, "key name", key_name_chars_max) if name else ""
        granted = parse_scopes(scopes, tenant.kind)
        key_id = secrets.token_hex(key_id_chars // 2)
        secret_hex = secrets.token_hex(secret_bytes)
        with self.engine.begin() as conn:
            now = lock_tenant_for_creation(conn, tables.api_keys, tenant.id, self.clock)
            conn.execute(
                tables.api_keys.insert().values(
                    id=key_id,
                    tenant_id=tenant.id,
                    name=label,
                    secret_sha256=secret_digest(secret_hex),
                    scopes=scopes_text(granted),
                    created_at_ns=now,
                    revoked_at_ns=None,
                )
            )
        key = ApiKey(key_id, tenant.id, label, granted, now, None)
        return key, format_token(key_id, secret_hex)

    def list_keys(
        self,
        tenant_id: int | None = None,
        *,
        after: tuple[int, str] | None = None,
        limit: int = keys_listed_max,
    ) -> list[ApiKey]:
        """Keys (of one tenant, or all), oldest first, without secrets: at most ``limit``
        (and ``keys_listed_max``), those after ``after`` (a key's creation time and id)."""
        keys = tables.api_keys
        query = sa.select(keys).order_by(keys.c.created_at_ns, keys.c.id)
        if tenant_id is not None:
            query = query.where(keys.c.tenant_id == tenant_id)
        if after is not None:
            at_ns, key_id = after
            query = query.where(
                sa.or_(
                    keys.c.created_at_ns > at_ns,
                    sa.and_(keys.c.created_at_ns == at_ns, keys.c.id > key_id),
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(min(limit, keys_listed_max))).all()
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str, *, tenant_id: int | None = None) -> ApiKey:
        """Revoke a key (again is fine: the first revocation time stays). With
        ``tenant_id``, only a key of that tenant is found."""
        query = sa.select(tables.api_keys).where(tables.api_keys.c.id == key_id)
        if tenant_id is not None:
            query = query.where(tables.api_keys.c.tenant_id == tenant_id)
        with self.engine.begin() as conn:
            row = conn.execute(query).first()
            if row is None:
                raise ApiKeyNotFoundError(f"no key {key_id[:32]!r}")
            key = _key(row)
            if key.revoked_at_ns is None:
                now = self.clock.now_ns()
                conn.execute(
                    tables.api_keys.update()
                    .where(tables.api_keys.c.id == key.id)
                    .values(revoked_at_ns=now)
                )
                key = ApiKey(key.id, key.tenant_id, key.name, key.scopes, key.created_at_ns, now)
        return key

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token stands for, or ``InvalidApiKeyError``."""
        parsed = parse_token(token)
        if parsed is None:
            raise InvalidApiKeyError("malformed API key")
        key_id, secret_hex = parsed
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    tables.api_keys.c.secret_sha256,
                    tables.api_keys.c.scopes,
                    tables.api_keys.c.revoked_at_ns,
                    *tables.tenants.c,
                )
                .join(tables.tenants, tables.tenants.c.id == tables.api_keys.c.tenant_id)
                .where(tables.api_keys.c.id == key_id)
            ).first()
        stored = row._mapping["secret_sha256"] if row is not None else "0" * 64
        # Compared even when the key is unknown, so that timing tells nothing either.
        matches = secret_matches(secret_hex, str(stored))
        if row is None or not matches:
            raise InvalidApiKeyError("unknown API key")
        m = row._mapping
        if m["revoked_at_ns"] is not None:
            raise InvalidApiKeyError("unknown API key")
        tenant = _tenant(row)
        if tenant.status is not TenantStatus.ACTIVE:
            raise InvalidApiKeyError("unknown API key")
        scopes = frozenset(Scope(s) for s in str(m["scopes"]).split())
        return Principal(tenant=tenant, key_id=key_id, scopes=scopes)
