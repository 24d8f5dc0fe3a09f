"""Group commit of audit entries: concurrent requests share one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from puhui.api._batching import AuditBatcher
from puhui.clock import ManualClock
from puhui.platform import AuditEntry, AuditLog, AuditRecord
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
