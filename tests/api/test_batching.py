"""Group commit of audit entries: concurrent requests share one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from puhui.api._batching import AuditBatcher, PrincipalCache
from puhui.clock import ManualClock
from puhui.platform import AuditEntry, AuditLog, AuditRecord, InvalidApiKeyError, Tenants
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


def test_a_failed_shared_lookup_reaches_every_waiter_and_is_not_remembered(
    tmp_path: Path,
) -> None:
    tenants, _, token = _tenants_with_key(tmp_path)
    cache = PrincipalCache(tenants, ManualClock(1), ttl_s=1.0)
    wrong = token[:-4] + ("0000" if not token.endswith("0000") else "1111")

    async def run() -> None:
        results = await asyncio.gather(
            *(cache.authenticate(wrong) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, InvalidApiKeyError) for r in results)
        assert cache.lookups == 1
        with pytest.raises(InvalidApiKeyError):
            await cache.authenticate(wrong)  # a refusal is not remembered: looked up again
        assert cache.lookups == 2

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
