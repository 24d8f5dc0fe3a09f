"""Group commit of audit entries: concurrent requests share one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from puhui.api import _batching
from puhui.api._batching import AuditBatcher, PrincipalCache
from puhui.clock import ManualClock
from puhui.platform import (
    AuditEntry,
    AuditLog,
    AuditRecord,
    InvalidApiKeyError,
    Principal,
    Tenant,
    Tenants,
    TenantStatus,
)
from puhui.store import create_engine, migrate


class CountingLog(AuditLog):
    calls: list[int]

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        self.calls.append(len(records))
        return super().append_many(records)


def test_concurrent_appends_share_a_transaction(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    migrate(engine)
    log = CountingLog(engine, clock=ManualClock(1))
    log.calls = []
    batcher = AuditBatcher(log)

    async def run() -> None:
        records = [AuditRecord(1, "k", "POST", "/r", f"/t/{i}", 200) for i in range(50)]
        await asyncio.gather(*(batcher.append(r) for r in records))
        await batcher.append(AuditRecord(1, "k", "POST", "/r", "/t/last", 201))

    asyncio.run(run())
    assert log.calls == [50, 1]
    report = log.verify()
    assert report.ok and report.entries == 51
    assert [e.target for e in log.entries(limit=100)][-2:] == ["/t/49", "/t/last"]
    engine.dispose()


def test_a_failed_group_reports_to_every_waiter(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")  # not migrated: no tables
    batcher = AuditBatcher(AuditLog(engine, clock=ManualClock(1)))

    async def run() -> list[BaseException | None]:
        records = [AuditRecord(1, "k", "POST", "/r", "/t", 200) for _ in range(3)]
        results = await asyncio.gather(
            *(batcher.append(r) for r in records), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    errors = asyncio.run(run())
    assert all(error is not None for error in errors)
    engine.dispose()


class RefusingLog(CountingLog):
    """An audit log whose store refuses any group holding an entry for ``/bad``."""

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        self.calls.append(len(records))
        if any(r.target == "/bad" for r in records):
            raise ValueError("the store refuses this entry")
        return AuditLog.append_many(self, records)


def test_an_entry_the_store_refuses_fails_its_own_request_only(tmp_path: Path) -> None:
    """One entry of a group that the store cannot take used to fail the whole group: every
    request audited with it answered 500, and none was audited. Now the group is written
    again one entry at a time: the others are audited, the faulty one fails alone."""
    engine = create_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    migrate(engine)
    log = RefusingLog(engine, clock=ManualClock(1))
    log.calls = []
    batcher = AuditBatcher(log)

    async def run() -> list[BaseException | None]:
        targets = ["/t/0", "/bad", "/t/2"]
        records = [AuditRecord(1, "k", "POST", "/r", target, 200) for target in targets]
        results = await asyncio.gather(
            *(batcher.append(r) for r in records), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    errors = asyncio.run(run())
    assert [type(e) for e in errors] == [type(None), ValueError, type(None)]
    assert log.calls == [3, 1, 1, 1]
    assert [e.target for e in log.entries(limit=10)] == ["/t/0", "/t/2"]
    assert log.verify().ok
    engine.dispose()


# --- PrincipalCache: concurrent misses of one token share one lookup ------------------------


def _tenants_with_key(tmp_path: Path) -> tuple[Tenants, str, str]:
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    migrate(engine)
    tenants = Tenants(engine, clock=ManualClock(1))
    tenant = tenants.create("Bank", "bank")
    key, token = tenants.create_key(tenant.id, ["payments:read"])
    return tenants, key.id, token


def test_concurrent_misses_of_a_token_share_one_lookup(tmp_path: Path) -> None:
    tenants, key_id, token = _tenants_with_key(tmp_path)
    clock = ManualClock(1)
    cache = PrincipalCache(tenants, clock, ttl_s=1.0)

    async def run() -> None:
        found = await asyncio.gather(*(cache.authenticate(token) for _ in range(20)))
        assert {p.key_id for p in found} == {key_id}
        assert cache.lookups == 1
        await cache.authenticate(token)  # remembered
        assert cache.lookups == 1
        clock.advance(2 * 10**9)  # expired: the next burst looks it up once more
        await asyncio.gather(*(cache.authenticate(token) for _ in range(20)))
        assert cache.lookups == 2

    asyncio.run(run())
    tenants.engine.dispose()


class CountingTenants(Tenants):
    """``Tenants`` that count their store reads (one per ``authenticate``)."""

    reads = 0

    def authenticate(self, token: str) -> Principal:
        self.reads += 1
        return super().authenticate(token)


def _counting(tmp_path: Path) -> tuple[CountingTenants, Tenant, str, str]:
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    migrate(engine)
    tenants = CountingTenants(engine, clock=ManualClock(1))
    tenant = tenants.create("Bank", "bank")
    key, token = tenants.create_key(tenant.id, ["payments:read"])
    return tenants, tenant, key.id, token


def _wrong(token: str) -> str:
    """``token`` with another secret: a well-formed token of a key that exists."""
    return token[:-4] + ("0000" if not token.endswith("0000") else "1111")


async def _refusal(cache: PrincipalCache, token: str) -> str:
    with pytest.raises(InvalidApiKeyError) as refused:
        await cache.authenticate(token)
    return str(refused.value.message)


def test_a_failed_shared_lookup_reaches_every_waiter_and_is_remembered_for_the_ttl(
    tmp_path: Path,
) -> None:
    tenants, _, _, token = _counting(tmp_path)
    clock = ManualClock(1)
    cache = PrincipalCache(tenants, clock, ttl_s=1.0)
    wrong = _wrong(token)

    async def run() -> None:
        results = await asyncio.gather(
            *(cache.authenticate(wrong) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, InvalidApiKeyError) for r in results)
        assert cache.lookups == tenants.reads == 1
        for _ in range(100):  # a client repeating its bad token: answered from memory
            assert await _refusal(cache, wrong) == "unknown API key"
        assert tenants.reads == 1
        clock.advance(10**9 - 1)
        await _refusal(cache, wrong)
        assert tenants.reads == 1
        clock.advance(1)  # ttl_s (1 s) after the lookup began: looked up again
        assert await _refusal(cache, wrong) == "unknown API key"
        assert tenants.reads == 2
        assert await _refusal(cache, "pk_nope") == "malformed API key"  # no SQL, a thread hop
        assert await _refusal(cache, "pk_nope") == "malformed API key"
        assert tenants.reads == 3

    asyncio.run(run())
    tenants.engine.dispose()


def test_a_store_error_is_not_remembered(tmp_path: Path) -> None:
    tenants, _, _, token = _counting(tmp_path)
    cache = PrincipalCache(tenants, ManualClock(1), ttl_s=1.0)
    with tenants.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE platform_api_keys")

    async def run() -> None:
        for _ in range(3):
            with pytest.raises(sa.exc.OperationalError):
                await cache.authenticate(token)
        assert tenants.reads == 3 and cache.refusals_remembered() == 0

    asyncio.run(run())
    tenants.engine.dispose()


def test_distinct_bad_tokens_are_remembered_up_to_the_bound_oldest_forgotten_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batching, "principals_refused_max", 3)
    tenants, _, _, token = _counting(tmp_path)
    clock = ManualClock(1)
    cache = PrincipalCache(tenants, clock, ttl_s=1.0)
    bad = [f"pk_{i:016x}_{'0' * 64}" for i in range(10)]

    async def run() -> None:
        for t in bad:  # a spray of distinct bad tokens
            await _refusal(cache, t)
            assert cache.refusals_remembered() <= 3
        assert tenants.reads == 10
        for t in bad[-3:]:  # the newest three are remembered
            await _refusal(cache, t)
        assert tenants.reads == 10
        await _refusal(cache, bad[0])  # the oldest was forgotten: looked up again
        assert tenants.reads == 11
        assert await cache.authenticate(token)  # valid keys are unaffected
        clock.advance(10**9)  # all expired: the next refusal pushes them out
        await _refusal(cache, _wrong(token))
        assert cache.refusals_remembered() == 1

    asyncio.run(run())
    tenants.engine.dispose()


def test_a_revoked_key_stops_within_the_ttl_and_is_then_refused_from_memory(
    tmp_path: Path,
) -> None:
    tenants, _, key_id, token = _counting(tmp_path)
    clock = ManualClock(1)
    cache = PrincipalCache(tenants, clock, ttl_s=1.0)

    async def run() -> None:
        assert (await cache.authenticate(token)).key_id == key_id
        tenants.revoke_key(key_id)  # elsewhere: this cache still knows the key
        assert (await cache.authenticate(token)).key_id == key_id
        clock.advance(10**9)
        assert await _refusal(cache, token) == "unknown API key"
        assert await _refusal(cache, token) == "unknown API key"
        assert tenants.reads == 2

    asyncio.run(run())
    tenants.engine.dispose()


def test_a_tenant_made_active_again_elsewhere_is_accepted_within_the_ttl(
    tmp_path: Path,
) -> None:
    """The one refusal that can turn into an answer: as a revocation elsewhere takes up to
    ``ttl_s`` to be seen, so does a tenant's return (and ``forget`` sees it at once)."""
    tenants, tenant, key_id, token = _counting(tmp_path)
    clock = ManualClock(1)
    cache = PrincipalCache(tenants, clock, ttl_s=1.0)

    async def run() -> None:
        tenants.set_status(tenant.id, TenantStatus.SUSPENDED)
        await _refusal(cache, token)
        tenants.set_status(tenant.id, TenantStatus.ACTIVE)
        await _refusal(cache, token)  # remembered
        clock.advance(10**9)
        assert (await cache.authenticate(token)).key_id == key_id
        tenants.set_status(tenant.id, TenantStatus.SUSPENDED)
        clock.advance(10**9)
        await _refusal(cache, token)
        tenants.set_status(tenant.id, TenantStatus.ACTIVE)
        cache.forget()  # as a change made in this process does
        assert (await cache.authenticate(token)).key_id == key_id

    asyncio.run(run())
    tenants.engine.dispose()


def test_forget_drops_a_lookup_in_flight(tmp_path: Path) -> None:
    tenants, key_id, token = _tenants_with_key(tmp_path)
    cache = PrincipalCache(tenants, ManualClock(1), ttl_s=1.0)

    async def run() -> None:
        first = asyncio.ensure_future(cache.authenticate(token))
        await asyncio.sleep(0)  # its lookup is in flight
        tenants.revoke_key(key_id)
        cache.forget()
        with pytest.raises(InvalidApiKeyError):  # a request after forget() looks again
            await cache.authenticate(token)
        await asyncio.gather(first, return_exceptions=True)
        with pytest.raises(InvalidApiKeyError):  # the first lookup was not remembered
            await cache.authenticate(token)

    asyncio.run(run())
    tenants.engine.dispose()
