"""``open_engine``: the live risk engine of one server, with its state on disk.

A server (``puhui serve``) decides every money movement with one engine. Its files live in one
directory, which one process at a time may hold (an exclusive lock, like the ledger's):

- ``log/``: the decision log (every decision with the feature values it used);
- ``state/``: the feature state as of some decision, written on a clean shutdown and every
  ``snapshot_interval_s`` while running; on start it is loaded and every logged decision after
  it replayed, so velocity counts, histories and trusted devices survive a restart or a crash.
  After each of those snapshots the lists' lapsed entries are deleted (``purge_expired``).

The ruleset is the file given (hot-reloaded: a changed file goes live on the next decision
that follows a check; an invalid one is refused and the last good ruleset stays live) or the
packaged default; the model and the shadow model are optional files of ``puhui risk train``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from puhui.clock import Clock
from puhui.errors import PuhuiError

from ._decide import EventKind, RiskEvent
from ._engine import DEFAULT_RULES, RiskEngine, engine_schema
from ._evaluate import Ruleset
from ._features import ENTITIES_MAX_DEFAULT, PAIRS_MAX_DEFAULT, FeatureStore
from ._lists import RiskLists
from ._load import RulesetWatcher, load_ruleset
from ._log import DecisionLog
from ._model import RiskModel

log = logging.getLogger("puhui.risk")

SNAPSHOT_INTERVAL_S_DEFAULT = 300.0
"""Seconds between background snapshots of the feature state while a server runs (bounds the
replay on the next start)."""


class RiskStateLockedError(PuhuiError):
    """Another process holds this risk state directory (one engine per directory)."""

    code = "risk_state_locked"


@contextlib.contextmanager
def open_engine(
    directory: Path,
    *,
    clock: Clock,
    rules: Path | None = None,
    model: Path | None = None,
    shadow_model: Path | None = None,
    lists: RiskLists | None = None,
    snapshot_interval_s: float | None = SNAPSHOT_INTERVAL_S_DEFAULT,
    entities: int = 0,
    pairs: int = 0,
) -> Iterator[RiskEngine]:
    """The engine over ``directory`` (created if missing), its feature state recovered.

    On exit the feature state is snapshotted and the log closed, so the next start replays
    nothing. ``snapshot_interval_s=None`` takes no snapshots while running.

    ``entities`` and ``pairs`` bound the feature state (``FeatureStore(entities_max=…,
    pairs_max=…)``: at most that many keys of each entity kind and pairs; beyond, the least
    recently seen are evicted) and size it up front for the bound (``FeatureStore.reserve``: a
    store that grows while serving stalls every decision behind the copy). 0: the default
    bounds (``ENTITIES_MAX_DEFAULT``, ``PAIRS_MAX_DEFAULT``), the state grown as needed.

    Raises ``RiskStateLockedError`` when another process has the directory open,
    ``RuleParseError`` for an invalid ruleset file and ``ModelFileError`` for an unusable
    model file; nothing is left open then.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = _lock(directory)
    try:
        schema = engine_schema()
        ruleset = (
            RulesetWatcher(rules, schema, clock=clock)
            if rules is not None
            else load_ruleset(DEFAULT_RULES, schema)
        )
        live = RiskModel.load(model) if model is not None else None
        shadow = RiskModel.load(shadow_model) if shadow_model is not None else None
        log.info(
            "risk engine starting: loading its compiled kernels "
            "(a fresh install compiles them first, once: minutes on a small machine)"
        )
        _warm_up(ruleset, live, clock)
        decision_log = DecisionLog(directory / "log")
        try:
            engine = RiskEngine(
                ruleset,
                features=FeatureStore(
                    entities_max=entities or ENTITIES_MAX_DEFAULT,
                    pairs_max=pairs or PAIRS_MAX_DEFAULT,
                ),
                lists=lists if lists is not None else RiskLists(clock),
                model=live,
                shadow_model=shadow,
                log=decision_log,
            )
            state = directory / "state"
            replayed = engine.recover(state)
            engine.features.reserve(entities, pairs=pairs)
            log.info("risk engine recovered: %d logged decisions replayed", replayed)
            stop = threading.Event()
            snapshots = _start_snapshots(engine, state, stop, snapshot_interval_s)
            try:
                yield engine
            finally:
                stop.set()
                if snapshots is not None:
                    snapshots.join()
                engine.snapshot(state)
        finally:
            decision_log.close()
    finally:
        os.close(lock_fd)


def _warm_up(rules: Ruleset | RulesetWatcher, model: RiskModel | None, clock: Clock) -> None:
    """Decide one made-up event on a scratch engine (its own empty state, no log), so the
    compiled kernels are loaded (or compiled, on a fresh install: tens of seconds) before the
    server takes its first payment rather than during it."""
    now = clock.now_ns()
    scratch = RiskEngine(rules, lists=RiskLists(clock), model=model)
    scratch(
        [
            RiskEvent(
                EventKind.P2P,
                customer_id=1,
                at_ns=now,
                amount=100,
                currency="CNY",
                counterparty="c:2",
                device_id="warm-up",
                ip="127.0.0.1",
                latitude=0.0,
                longitude=0.0,
                tz_offset_s=0,
                kyc_level=2,
                account_created_ns=now,
            )
        ]
    )


def _lock(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        raise RiskStateLockedError(f"risk state {directory} is open in another process") from error
    return fd


def _start_snapshots(
    engine: RiskEngine, state: Path, stop: threading.Event, interval_s: float | None
) -> threading.Thread | None:
    if interval_s is None:
        return None

    def run() -> None:
        while not stop.wait(interval_s):
            try:
                engine.snapshot(state)
            except OSError:  # the log still has every decision; the next one may succeed
                log.exception("risk feature snapshot failed")
            try:  # lapsed list entries go too (else every reload carries them, for ever)
                if engine.lists is not None:
                    engine.lists.purge_expired()
            except Exception:  # the store is down: logged, tried again next time
                log.exception("purging lapsed risk list entries failed")

    thread = threading.Thread(target=run, name="puhui-risk-snapshots", daemon=True)
    thread.start()
    return thread
