"""Decisions read back from the decision log, each with every feature value it saw: the audit
trail's reader (``puhui risk decisions``).

The log is scanned in order (it has no index): a lookup reads every record from
``after_id`` on, so filter by time (``from_ns``) and page with ``after_id`` on a long log.
It is read without opening it for writing, so a running engine's log may be read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from puhui.errors import InvalidInputError

from ._decide import Decision, EventKind
from ._engine import DECISIONS, KINDS, logged_reasons
from ._log import feature_names, read_records

DECISIONS_PAGE_MAX: Final = 1000
"""Most decisions one lookup returns."""


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One logged decision, as the engine made it, with the values of every feature it saw."""

    id: int
    """Its position in the log (dense, from 1): the cursor of the next page."""
    at_ns: int
    kind: EventKind
    customer_id: int
    amount: int
    currency: str
    device: str
    ip: str
    counterparty: str
    merchant: str
    decision: Decision
    score: int
    reasons: tuple[str, ...]
    ruleset_version: str
    model_version: str
    features: dict[str, float | None]
    """Every feature (and ``model.score``, ``model.shadow_score``) in the log's schema; None
    where the feature had no value (NaN: no history, no location)."""

    def as_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "kind": self.kind.value,
            "decision": self.decision.value,
            "reasons": list(self.reasons),
        }


def find_decisions(
    log_dir: Path,
    *,
    customer_id: int | None = None,
    decision: Decision | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    after_id: int = 0,
    limit: int = 50,
) -> list[LoggedDecision]:
    """The logged decisions after ``after_id`` (oldest first, at most ``limit``) of one
    customer, of one decision, with event times in ``[from_ns, to_ns)`` — each filter only
    when given."""
    if not 1 <= limit <= DECISIONS_PAGE_MAX:
        raise InvalidInputError(f"limit must be 1..{DECISIONS_PAGE_MAX}")
    if after_id < 0:
        raise InvalidInputError("after_id must be 0 or more")
    found: list[LoggedDecision] = []
    schemas: dict[str, list[str]] = {}
    for record in read_records(log_dir, since_id=after_id + 1):
        columns = record.row_columns()
        first = int(record.meta["first_id"])
        keep = np.arange(first, first + record.rows) > after_id
        if customer_id is not None:
            keep &= columns["customer_id"] == customer_id
        if decision is not None:
            keep &= columns["decision"] == DECISIONS.index(decision)
        if from_ns is not None:
            keep &= columns["at_ns"] >= from_ns
        if to_ns is not None:
            keep &= columns["at_ns"] < to_ns
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            continue
        schema = str(record.meta["schema"])
        if schema not in schemas:
            schemas[schema] = feature_names(log_dir, record)
        names = schemas[schema]
        reasons = logged_reasons(record)
        for row in rows.tolist():
            values = columns["features"][row].tolist()
            found.append(
                LoggedDecision(
                    id=first + row,
                    at_ns=int(columns["at_ns"][row]),
                    kind=KINDS[int(columns["kind"][row])],
                    customer_id=int(columns["customer_id"][row]),
                    amount=int(columns["amount"][row]),
                    currency=str(columns["currency"][row]),
                    device=str(columns["device"][row]),
                    ip=str(columns["ip"][row]),
                    counterparty=str(columns["counterparty"][row]),
                    merchant=str(columns["merchant"][row]),
                    decision=DECISIONS[int(columns["decision"][row])],
                    score=int(columns["score"][row]),
                    reasons=tuple(reasons[row]),
                    ruleset_version=str(record.meta.get("ruleset", "")),
                    model_version=str(record.meta.get("model", "none")),
                    features={
                        name: v if math.isfinite(v) else None
                        for name, v in zip(names, values, strict=True)
                    },
                )
            )
            if len(found) == limit:
                return found
    return found
