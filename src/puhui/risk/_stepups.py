"""Passed step-ups, kept durably beside the decision log.

The decision log holds decided events only; what a passed step-up teaches the engine (the
device is the customer's, a challenged reset took effect) used to live in memory until the
next snapshot, so a crash forgot it and the customer was challenged again. Each passed
step-up is now appended to ``step-ups.jsonl`` in the log's directory and synced to disk
before ``trust_device`` returns, with the log position it came after, so that the replay
after a restart applies it between the same two batches. A snapshot records the number of
the last step-up it holds; the replay applies the ones after it. The file is kept like the
decision log it sits beside (a step-up is rarer than a decision by far).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

STEP_UPS_NAME: Final = "step-ups.jsonl"


@dataclass(frozen=True, slots=True)
class StepUp:
    seq: int
    """Its number, from 1, never reused (a snapshot holds those up to its ``step_up_seq``)."""
    after: int
    """The decision log's next event id when it passed: it comes before that event."""
    customer: int
    device: str
    at_ns: int
    """The engine's watermark then: when the device counts as trusted from."""


class StepUpLog:
    """The append-only file of passed step-ups in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STEP_UPS_NAME
        self.seq = 0
        """The last step-up's number (appended here, or held by a snapshot: ``recover``)."""
        kept = self._read()
        if kept:
            self.seq = kept[-1].seq

    def _read(self) -> list[StepUp]:
        """The complete lines (a line cut short by a crash while being written was never
        acknowledged: it is cut off the file, so the next append starts a line of its own)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with self.path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        out = []
        for line in data[:end].splitlines():
            item = json.loads(line)
            out.append(
                StepUp(
                    int(item["seq"]),
                    int(item["after"]),
                    int(item["customer"]),
                    str(item["device"]),
                    int(item["at_ns"]),
                )
            )
        return out

    def append(self, after: int, customer: int, device: str, at_ns: int) -> None:
        """Add one, synced to disk before returning."""
        step = StepUp(self.seq + 1, after, customer, device, at_ns)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(_line(step))
            f.flush()
            os.fsync(f.fileno())
        self.seq = step.seq

    def since(self, seq: int) -> list[StepUp]:
        """The step-ups after number ``seq``, in order."""
        return [step for step in self._read() if step.seq > seq]


def _line(step: StepUp) -> str:
    fields = {
        "seq": step.seq,
        "after": step.after,
        "customer": step.customer,
        "device": step.device,
        "at_ns": step.at_ns,
    }
    return json.dumps(fields) + "\n"
