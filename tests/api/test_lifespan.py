"""The app's lifespan: housekeeping (expired idempotency records deleted); what exists at
start-up is frozen out of the collector's reach while the app serves
(``ApiOptions.freeze_gc_on_start``), and unfrozen on shutdown; the youngest generation is
collected less often meanwhile (``ApiOptions.gc_young_objects``)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.api import ApiOptions, _app
from puhui.platform import IdempotencyOptions
from puhui.store.platform import idempotency

from .conftest import Api, make_api

running_api = contextmanager(make_api)


def test_start_up_freezes_the_objects_that_exist_and_shutdown_unfreezes_them(
    tmp_path: Path,
) -> None:
    gc.unfreeze()
    with running_api(tmp_path) as api:  # started: the lifespan ran
        assert gc.get_freeze_count() > 10_000  # the app and its services, at least
        response = api.client.get("/v1/payments/customers/1", headers=api.auth())
        assert response.status_code == 404  # serving as usual
    assert gc.get_freeze_count() == 0  # shut down


def test_the_collector_is_left_alone_when_asked(tmp_path: Path) -> None:
    gc.unfreeze()
    with running_api(tmp_path, ApiOptions(freeze_gc_on_start=False)):
        assert gc.get_freeze_count() == 0


def test_the_youngest_generation_is_collected_less_often_while_serving(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before[0] != 12_345
    with running_api(tmp_path, ApiOptions(gc_young_objects=12_345)) as api:
        assert gc.get_threshold() == (12_345, *before[1:])
        assert api.client.get("/healthz").status_code == 200
    assert gc.get_threshold() == before  # shut down: the threshold before


def test_the_threshold_is_left_alone_when_asked(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with running_api(tmp_path, ApiOptions(gc_young_objects=None)):
        assert gc.get_threshold() == before
    assert gc.get_threshold() == before


@pytest.mark.parametrize("objects", [0, -1])
def test_the_threshold_must_be_positive(objects: int) -> None:
    with pytest.raises(ValueError, match="gc_young_objects"):
        ApiOptions(gc_young_objects=objects)


def _idempotency_rows(api: Api) -> int:
    with api.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(idempotency)).scalar_one())


def _post_with_key(api: Api, key: str) -> None:
    response = api.client.post(
        "/v1/payments/customers",
        json={"phone": f"+861390000{len(key):04d}", "display_name": "K"},
        headers=api.auth(**{"Idempotency-Key": key}),
    )
    assert response.status_code == 201, response.text


def test_housekeeping_deletes_the_idempotency_records_whose_window_is_over(
    tmp_path: Path,
) -> None:
    options = ApiOptions(
        housekeeping_interval_s=0.02, idempotency=IdempotencyOptions(window_s=3600.0)
    )
    with running_api(tmp_path, options) as api:
        _post_with_key(api, "old")
        api.clock.advance(3601 * 10**9)  # its window is over
        _post_with_key(api, "fresh-one")
        deadline = time.monotonic() + 10
        while _idempotency_rows(api) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with api.engine.connect() as conn:
            keys = conn.execute(sa.select(idempotency.c.key)).scalars().all()
        assert keys == ["fresh-one"]  # the expired one went, the fresh one stays


class _Expired:
    """Stand-in records: ``left`` expired ones, deleted ``limit`` at a time."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.calls = 0

    def purge_expired(self, limit: int) -> int:
        self.calls += 1
        done = min(limit, self.left)
        self.left -= done
        return done


def _housekeeping_app(records: object) -> Any:
    return SimpleNamespace(state=SimpleNamespace(puhui=SimpleNamespace(idempotency=records)))


def test_housekeeping_goes_on_at_once_while_a_round_finds_its_most() -> None:
    """A backlog is not left for the next interval (an hour here): rounds follow each other
    while they find their most; shutdown does not wait for the interval either."""
    records = _Expired(5)
    options = ApiOptions(housekeeping_interval_s=3600.0, housekeeping_rows_max=2)

    async def serve() -> float:
        async with _app._housekeeping(_housekeeping_app(records), options):
            deadline = time.monotonic() + 10
            while records.left and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            started = time.monotonic()
        return time.monotonic() - started

    shutdown_s = asyncio.run(serve())
    assert records.left == 0 and records.calls == 3  # 2 + 2 + 1, then asleep
    assert shutdown_s < 5


def test_shutdown_stops_a_round_after_its_statement_and_waits_for_it() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(_Expired):
        def purge_expired(self, limit: int) -> int:
            entered.set()
            assert release.wait(10)
            return super().purge_expired(limit)

    records = Slow(10**9)  # always a full step: only stopping ends the round
    options = ApiOptions(housekeeping_interval_s=3600.0, housekeeping_rows_max=10**9)

    async def serve() -> None:
        async with _app._housekeeping(_housekeeping_app(records), options):
            while not entered.is_set():
                await asyncio.sleep(0.005)
            threading.Timer(0.05, release.set).start()  # the statement ends after shutdown began

    asyncio.run(serve())
    assert records.calls == 1  # waited for the statement in flight; none after it


def test_housekeeping_can_be_left_to_another_process(tmp_path: Path) -> None:
    options = ApiOptions(
        housekeeping_interval_s=None, idempotency=IdempotencyOptions(window_s=3600.0)
    )
    with running_api(tmp_path, options) as api:
        _post_with_key(api, "old")
        api.clock.advance(3601 * 10**9)
        time.sleep(0.1)
        assert _idempotency_rows(api) == 1


def test_a_housekeeping_round_is_bounded_and_goes_in_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    class Records:
        def purge_expired(self, limit: int) -> int:
            calls.append(limit)
            return limit  # always a full step: more is waiting

    monkeypatch.setattr(_app, "purge_statement_rows_max", 4)
    context = SimpleNamespace(idempotency=Records())
    assert _app._purge_round(context, 10) == 10
    assert calls == [4, 4, 2]
    calls.clear()

    class Few(Records):
        def purge_expired(self, limit: int) -> int:
            calls.append(limit)
            return 1

    assert _app._purge_round(SimpleNamespace(idempotency=Few()), 10) == 1
    assert calls == [4]  # fewer than a step: nothing more is expired


@pytest.mark.parametrize("bad", [{"housekeeping_interval_s": 0}, {"housekeeping_rows_max": 0}])
def test_housekeeping_limits_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="housekeeping"):
        ApiOptions(**bad)  # type: ignore[arg-type]
