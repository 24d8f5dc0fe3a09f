"""The app's lifespan: what exists at start-up is frozen out of the collector's reach while
the app serves (``ApiOptions.freeze_gc_on_start``), and unfrozen on shutdown."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

from puhui.api import ApiOptions

from .conftest import make_api

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
