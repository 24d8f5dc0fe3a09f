"""Load rulesets from text or files, and keep a live one in step with its file (hot reload).

The reload contract: ``RulesetWatcher.current()`` always returns a whole, compiled ruleset.
At most every ``check_interval_ms`` it compares the file's (mtime, size) with what it last
saw; when they differ it reads the file once, and only if the bytes hash differently from the
live ruleset's does it compile them. A file that fails to compile leaves the old ruleset live
and is exposed as ``error`` (until a later version compiles). The swap is one reference
assignment under a lock, so a caller sees the old ruleset or the new one, never a mixture.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from puhui.clock import Clock

from ._errors import RuleParseError
from ._evaluate import Ruleset
from ._expr import FeatureType
from ._lists import LIST_NAMES
from ._ruleset import read_ruleset, ruleset_bytes_max

check_interval_ms_default = 1_000
"""How often ``RulesetWatcher.current()`` looks at the file by default (unit: ms)."""


def parse_ruleset(
    data: bytes | str,
    schema: Mapping[str, FeatureType],
    *,
    source: str = "<string>",
    lists: Collection[str] = LIST_NAMES,
    sample: Mapping[str, np.ndarray] | None = None,
) -> Ruleset:
    """Compile a ruleset from the text of a ruleset file (``RuleParseError`` if invalid).

    ``schema`` names every feature a rule may read and its type; ``lists`` the list names
    ``list("…")`` may name; ``source`` is the name errors cite. ``sample``, a representative
    feature batch (recent traffic), lets the compiler index each rule on its rarest condition
    as measured (without it, it guesses by the kind of condition); results are the same
    either way, only speed differs.
    """
    return Ruleset(read_ruleset(data, schema, source=source, lists=lists), sample)


def load_ruleset(
    path: str | Path,
    schema: Mapping[str, FeatureType],
    *,
    lists: Collection[str] = LIST_NAMES,
    sample: Mapping[str, np.ndarray] | None = None,
) -> Ruleset:
    """Compile the ruleset file at ``path`` (see ``parse_ruleset``)."""
    data = _read(Path(path))
    return parse_ruleset(data, schema, source=str(path), lists=lists, sample=sample)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(ruleset_bytes_max + 1)
    except OSError as error:
        raise RuleParseError(f"cannot read the file ({error.strerror})", source=str(path)) from None
    return data


class RulesetWatcher:
    """The live ruleset of one file, reloaded when the file changes (thread-safe)."""

    def __init__(
        self,
        path: str | Path,
        schema: Mapping[str, FeatureType],
        *,
        clock: Clock,
        check_interval_ms: int = check_interval_ms_default,
        lists: Collection[str] = LIST_NAMES,
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Load ``path`` now (``RuleParseError`` if it is invalid: there is nothing to keep).

        ``sample``: see ``parse_ruleset``; replace it with ``set_sample`` (used from the next
        reload).
        """
        self.path = Path(path)
        self._schema = dict(schema)
        self._lists = tuple(lists)
        self._sample = sample
        self._clock = clock
        self._interval_ns = check_interval_ms * 1_000_000
        self._lock = threading.Lock()
        self._signature = self._stat()
        data = _read(self.path)
        self._live = self._compile(data)
        self._live_digest = hashlib.sha256(data).digest()
        self._checked_ns = clock.now_ns()
        self._error: RuleParseError | None = None
        self.reloads = 0
        """How many times a new ruleset went live."""

    @property
    def error(self) -> RuleParseError | None:
        """Why the file's latest content is not live (``None`` when it is)."""
        return self._error

    def current(self) -> Ruleset:
        """The live ruleset (after reloading it, if the file changed and compiles)."""
        now = self._clock.now_ns()
        if now - self._checked_ns >= self._interval_ns and self._lock.acquire(blocking=False):
            try:
                self._checked_ns = now
                signature = self._stat()
                if signature != self._signature:
                    self._reload(signature)
            finally:
                self._lock.release()
        return self._live

    def reload(self) -> Ruleset:
        """Look at the file now, whatever the interval; the live ruleset afterwards."""
        with self._lock:
            self._checked_ns = self._clock.now_ns()
            self._reload(self._stat())
        return self._live

    def set_sample(self, sample: Mapping[str, np.ndarray] | None) -> None:
        """The feature batch the next compilations measure their guards on."""
        self._sample = sample

    def _compile(self, data: bytes) -> Ruleset:
        return parse_ruleset(
            data, self._schema, source=str(self.path), lists=self._lists, sample=self._sample
        )

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _reload(self, signature: tuple[int, int] | None) -> None:
        self._signature = signature
        try:
            data = _read(self.path)
            digest = hashlib.sha256(data).digest()
            if digest == self._live_digest:
                self._error = None
                return
            ruleset = self._compile(data)
        except RuleParseError as error:
            self._error = error
            return
        self._live = ruleset
        self._live_digest = digest
        self._error = None
        self.reloads += 1
