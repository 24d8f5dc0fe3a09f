"""The app's lifespan: what exists at start-up is frozen out of the collector's reach while
the app serves (``ApiOptions.freeze_gc_on_start``), and unfrozen on shutdown; the youngest
generation is collected less often meanwhile (``ApiOptions.gc_young_objects``)."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

import pytest

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
