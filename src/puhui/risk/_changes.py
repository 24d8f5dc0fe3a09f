"""Password resets and device changes that took effect: the engine's own
``customer.since_password_reset_s`` and ``customer.since_device_change_s``.

The feature store counts every event it sees, so an attacker's reset that the engine refused
(or whose step-up failed) looked like a reset to the rules that follow one: the owner's next
payment to someone new was held for a day. The engine keeps, per customer, the time of the
last reset and the last device change that took effect — accepted, held for review (the
analyst may let it through: more checks, never fewer), or challenged and then passed
(``confirm``: the step-up on that device) — and the features read it. Within a batch each
event also sees the changes of its customer earlier in the same batch whatever their
decision (decisions are made for the whole batch at once): never fewer checks than the
store's own feature gave for them.

At most ``bound`` customers of each kind are kept, the ones changed longest ago dropped
first (1/8 of the bound at a time); challenged changes awaiting their step-up are kept for
the newest ``PENDING_MAX``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._decide import EventKind

IntArray = npt.NDArray[np.int64]

_KINDS: Final = tuple(EventKind)
CHANGE_FEATURES: Final = {
    _KINDS.index(EventKind.PASSWORD_RESET): "customer.since_password_reset_s",
    _KINDS.index(EventKind.DEVICE_CHANGE): "customer.since_device_change_s",
}
"""Event kind (its position in ``EventKind``) → the feature of the time since the last one."""
PENDING_MAX: Final = 65_536
"""Challenged resets and device changes awaiting a step-up, the newest (unit: events)."""
_SEVERITY_CHALLENGE: Final = 1
_SEVERITY_REJECT: Final = 3


class AccountChanges:
    """Per customer, when their last password reset and device change took effect."""

    def __init__(self) -> None:
        self._last: dict[int, dict[int, int]] = {code: {} for code in CHANGE_FEATURES}
        """Per kind: customer → time (ns) of the last one that took effect, oldest first."""
        self._pending: dict[tuple[int, str, int], int] = {}
        """(customer, device, kind) → time (ns) of a challenged change awaiting its step-up."""

    def features(
        self, customers: Sequence[int], kinds: npt.NDArray[Any], at_ns: IntArray
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Per event, seconds since its customer's last reset and device change that took
        effect before the batch, or earlier in the batch (NaN: none)."""
        n = len(customers)
        out: dict[str, npt.NDArray[np.float64]] = {}
        for code, name in CHANGE_FEATURES.items():
            state = self._last[code]
            get = state.get
            last = (
                np.fromiter((get(c, -1) for c in customers), dtype=np.int64, count=n)
                if state
                else np.full(n, -1, dtype=np.int64)
            )
            here = np.flatnonzero(kinds == code)
            if len(here):
                _add_earlier(last, customers, kinds, at_ns, code, here)
            out[name] = np.where(last >= 0, (at_ns - last) / 1e9, np.nan)
        return out

    def learn(
        self,
        customers: Sequence[int],
        devices: Sequence[str],
        kinds: npt.NDArray[Any],
        at_ns: IntArray,
        severity: Sequence[int],
        *,
        bound: int,
    ) -> None:
        """A batch's resets and device changes, in order: accepted or held for review take
        effect; challenged ones wait for ``confirm``; rejected ones are nothing."""
        for code in CHANGE_FEATURES:
            state = self._last[code]
            for i in np.flatnonzero(kinds == code).tolist():
                level = severity[i]
                if level == _SEVERITY_REJECT:
                    continue
                at = int(at_ns[i])
                if level == _SEVERITY_CHALLENGE:
                    if devices[i]:
                        key = (customers[i], devices[i], code)
                        self._pending.pop(key, None)  # the newest last
                        self._pending[key] = at
                    continue
                state.pop(customers[i], None)
                state[customers[i]] = at
            if len(state) > bound:
                self._last[code] = dict(
                    itertools.islice(state.items(), len(state) - (bound - bound // 8), None)
                )
        if len(self._pending) > PENDING_MAX:
            keep = PENDING_MAX // 2
            self._pending = dict(
                itertools.islice(self._pending.items(), len(self._pending) - keep, None)
            )

    def confirm(self, customer: int, device: str) -> None:
        """The customer passed a step-up on ``device``: its challenged changes take effect."""
        for code, state in self._last.items():
            at = self._pending.pop((customer, device, code), None)
            if at is not None and at >= state.get(customer, -1):
                state.pop(customer, None)
                state[customer] = at

    def saved(self) -> dict[str, list[list[Any]]]:
        """The state as a snapshot keeps it (JSON lists; ``load`` reads them back)."""
        return {
            "changes": [
                [code, c, at] for code, state in self._last.items() for c, at in state.items()
            ],
            "pending_changes": [[c, d, code, at] for (c, d, code), at in self._pending.items()],
        }

    @classmethod
    def load(cls, saved: Mapping[str, Any]) -> AccountChanges:
        """The state from a snapshot's ``saved`` (none in a snapshot written before it was
        kept: then the changes since are learnt from the log, older ones are not known)."""
        state = cls()
        for code, customer, at in saved.get("changes", []):
            if int(code) in state._last:
                state._last[int(code)][int(customer)] = int(at)
        for customer, device, code, at in saved.get("pending_changes", []):
            state._pending[int(customer), str(device), int(code)] = int(at)
        return state


def _add_earlier(
    last: IntArray,
    customers: Sequence[int],
    kinds: npt.NDArray[Any],
    at_ns: IntArray,
    code: int,
    here: IntArray,
) -> None:
    """Raise each event's ``last`` to the time of its customer's latest event of kind
    ``code`` earlier in the batch (whatever its decision)."""
    ids = np.asarray(customers, dtype=np.int64)
    involved = np.flatnonzero(np.isin(ids, ids[here]))
    involved = involved[involved > here[0]]
    seen: dict[int, int] = {int(ids[here[0]]): int(at_ns[here[0]])}
    for i in involved.tolist():
        customer = customers[i]
        earlier = seen.get(customer)
        if earlier is not None and earlier > last[i]:
            last[i] = earlier
        if kinds[i] == code:
            seen[customer] = int(at_ns[i])
