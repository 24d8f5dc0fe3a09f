"""Long-lived helper threads of the risk engine, one per job kind, made once per process.

The engine overlaps work on the two cores of a batch (the feature pass beside interning and
judging, the second half of the model's rows): starting a thread for each piece cost a GIL
hand-off in ``Thread.start`` every time (~1 ms per start on a busy machine), so each kind of
piece goes to its own single-thread executor instead. Engines and stores share them; their
pieces queue.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_WORKERS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def worker(name: str) -> ThreadPoolExecutor:
    """The single-thread executor for pieces of kind ``name`` (its thread's name prefix).
    A piece must not wait for another piece of the same kind (it would wait forever)."""
    with _LOCK:
        found = _WORKERS.get(name)
        if found is None:
            found = _WORKERS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return found
