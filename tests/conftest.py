"""Fixtures shared by the whole suite: journal backends and a migrated SQL store (SQLite
always, PostgreSQL in CI)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

POSTGRES_ENV = "PUHUI_TEST_DATABASE_URL"


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


POSTGRES_ONLY = frozenset(
    {
        # Tests marked ``postgres`` whose node ids do not say so.
        "test_a_poller_never_pages_past_an_event_that_commits_later",
        "test_transactions_that_record_events_do_not_wait_for_each_other",
        "test_a_replay_racing_the_pruning_of_its_event_is_queued_or_not_found",
        "test_a_purge_skips_the_record_a_request_is_taking_over",
        "test_a_purge_and_a_request_taking_over_two_keys_do_not_deadlock",
        "test_a_group_of_claims_and_a_group_of_finishes_do_not_deadlock",
    }
)


def uses_postgres(nodeid: str) -> bool:
    """Whether the test of ``nodeid`` uses PostgreSQL: its id names it (a ``postgresql``
    parameter), or it is one of ``POSTGRES_ONLY``."""
    name = nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
    return "postgres" in nodeid.lower() or name in POSTGRES_ONLY


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``postgres`` must be known as one by its node id alone (see
    ``pytest_xdist_make_scheduler``): refuse to run a suite where one is not."""
    unknown = [
        item.nodeid
        for item in items
        if item.get_closest_marker("postgres") and not uses_postgres(item.nodeid)
    ]
    if unknown:
        raise pytest.UsageError(f"add these PostgreSQL tests to POSTGRES_ONLY: {unknown}")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``make test`` runs two workers) every test that uses PostgreSQL
    runs in the first worker, one at a time, as in a plain run: the webhook events list reads
    up to the oldest transaction still open in the whole cluster (``pg_current_snapshot``),
    so another worker's open transaction would hold a test's events back. The other tests
    are shared out by load, as pytest-xdist's default does.

    Not ``--dist loadgroup``: with pytest 9 it does not group at all (it marks a group in a
    node id attribute pytest 9 no longer reads), and like ``loadscope`` it runs tests that
    share a node id (schemathesis' cases, one per route) only once."""
    from xdist.scheduler import LoadScheduling  # type: ignore[import-untyped]

    class PostgresInOneWorker(LoadScheduling):  # type: ignore[misc]
        def schedule(self) -> None:
            if (
                self.collection is not None  # type: ignore[has-type]
                or len(self.nodes) < 2
                or not self._check_nodes_have_same_collection()
            ):
                super().schedule()
                return
            collection = next(iter(self.node2collection.values()))
            postgres = [i for i, nodeid in enumerate(collection) if uses_postgres(nodeid)]
            if not postgres:
                super().schedule()
                return
            self.collection = collection
            taken = set(postgres)
            self.pending[:] = [i for i in range(len(collection)) if i not in taken]
            if self.maxschedchunk is None:  # type: ignore[has-type]
                self.maxschedchunk = len(collection)
            first = self.nodes[0]
            self.node2pending[first].extend(postgres)
            first.send_runtest_some(postgres)
            chunk = max(2, min(len(self.pending) // len(self.nodes) // 4, self.maxschedchunk))
            for node in self.nodes:
                self._send_tests(node, chunk)
            if not self.pending:
                for node in self.nodes:
                    node.shutdown()

    return PostgresInOneWorker(config, log)


def _psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (dropped afterwards)."""
    url = postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (CI sets it; .ci/run exports it)")
    import psycopg

    schema = f"puhui_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_conninfo(url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_psycopg_conninfo(url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "file", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """The journal of a fresh ledger, on each backend."""
    from pathlib import Path

    if request.param == "sqlite":
        return str(Path(str(tmp_path)) / "journal.sqlite")
    if request.param == "file":
        return f"file://{Path(str(tmp_path)) / 'journal'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated SQL store, on each backend (a directory's own ``engine`` overrides it)."""
    from puhui.store import create_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'puhui.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_schema_url")
    sql = create_engine(url)
    migrate(sql)
    yield sql
    sql.dispose()
