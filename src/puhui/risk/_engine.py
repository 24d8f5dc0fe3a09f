"""The risk engine: features, model and rules in one pass per batch, every decision logged.

``RiskEngine`` is a ``decide`` (the services take any callable of that shape): for a batch of
events it computes the features (``FeatureStore``, in event order), scores them with the
model (``model.score``, a feature rules can read; a shadow model's score is computed and
logged beside it), evaluates the live ruleset (block/allow lists included) and answers one
``RiskDecision`` per event: the ruleset's decision, a score (the higher of the rules' score
and the model's), and reasons (the rules that hit with the values they read, then the
model's top contributing features). Every batch is appended to the decision log with the
events' columns and the values of every feature, so a decision can be explained later,
backtested, and the feature state rebuilt after a restart.

``decide_columns`` is the same path for events given as columns (arrays in, ``DecidedBatch``
out: no per-event objects); ``engine(events)`` is a thin adapter over it.

One engine serves one process; calls are serialised (the feature state has one writer).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._changes import AccountChanges
from ._decide import Decision, EventKind, RiskDecision, RiskEvent
from ._evaluate import Ruleset
from ._expr import FeatureType
from ._features import (
    FEATURE_SCHEMA,
    FeatureStore,
    InvalidRiskEventError,
    _customer_of,
    write_snapshot,
)
from ._lists import RiskLists
from ._load import RulesetWatcher
from ._log import DecisionLog, LogRecord, schema_path
from ._model import RiskModel
from ._stepups import StepUp, StepUpLog
from ._trusted import (
    EVER_TRUSTED_BITS,
    TRUSTED_LONG_AGO_NS,
    EverTrusted,
    TrustedDevices,
)

KINDS: Final = tuple(EventKind)
DECISIONS: Final = (Decision.ACCEPT, Decision.CHALLENGE, Decision.REVIEW, Decision.REJECT)
"""By severity: the rules' severity 0..3 indexes this."""
REASONS_MAX: Final = 8
_ROW_WISE_ROWS_MAX: Final = 64
"""Up to this many events, the log's feature matrix is converted at once (unit: events)."""
DEFAULT_RULES: Final = Path(__file__).parent / "rules" / "default.toml"
"""The ruleset Puhui ships (``docs/risk.md`` explains each rule)."""
SNAPSHOT_NAME: Final = "features.npz"
SNAPSHOT_META: Final = "features.json"
SNAPSHOT_META_ARRAY: Final = "engine_meta"
"""The array of the state's file holding ``features.json``'s JSON (its bytes)."""
SNAPSHOT_EVER_TRUSTED_ARRAY: Final = "engine_ever_trusted"
"""The array of the state's file holding ``EverTrusted``'s bits."""

EVENT_COLUMNS: Final = {
    "event.type": "The event's kind (``payment``, ``p2p``, ``top_up``, ``login``…).",
    "event.customer": "The customer, as ``c:<id>`` (what ``*_customers`` lists hold).",
    "event.device": "The device id the request came from.",
    "event.ip": "The IP address the request came from.",
    "event.counterparty": "Who receives the money: ``c:<id>``, ``m:<id>``, ``card:<id>``…",
    "event.merchant": "The merchant paid (``m:<id>``), else empty.",
    "event.card": "The card (``card:<id>``) of a top-up or withdrawal, else empty.",
}
"""Features the engine adds from the events themselves, for rules and lists."""
ENGINE_FEATURES: Final = {
    "device.trusted_for_s": (
        "Seconds since the engine first trusted this device for this customer (an accepted "
        "login or device change from it, or a passed step-up on it; for the customer's first "
        "device, any accepted event); the customer's first trusted device (the "
        "one they came with) counts as trusted since long ago (2**62 ns before the epoch, "
        "about 4.6e9 s); NaN while it is not trusted."
    ),
    "device.distance_km": (
        "Great-circle distance from where this customer's trusted device was last seen, in an "
        "accepted event of theirs from it (or one whose step-up passed); NaN when the device "
        "is not trusted or either place is unknown. Others' events never move it: a rejected "
        "or failed attempt, from another device or a copy of this one, leaves it where the "
        "owner was."
    ),
    "device.speed_kmh": (
        "``device.distance_km`` over the time since that event (taken as at least 1 s)."
    ),
    "counterparty.new_device_payee_s": (
        "Seconds since this customer first paid this counterparty (p2p, or a merchant) from a "
        "device the engine had trusted for less than a week (``NEW_DEVICE_S``) or not at all: "
        "a payee found after a new device; NaN for any other payee, and after 30 days "
        "(``NEW_DEVICE_PAYEES_KEPT_S``)."
    ),
    "device.familiar_payees_paid": (
        "Accepted payments (p2p or at a merchant) from this trusted device to payees the "
        "customer had paid before and did not find after a new device: 0 for a device that "
        "only ever paid payees it found itself (a takeover's), more for an owner's new phone "
        "paying their usual shops and friends. Since ruleset ``2026.11.28-7`` a payment made "
        "while the device was trusted less than a day (``FAMILIAR_ANY_AMOUNT_S``) counts only "
        "from 50 CNY (``FAMILIAR_MIN_AMOUNT``): a takeover's token 5 CNY at the victim's "
        "usual shop right after the login does not count."
    ),
    "customer.new_device_payees_sum_14d": (
        "What the customer sent to such payees (p2p events accepted or challenged) in the last "
        "14 days, minor units; 0 when none."
    ),
    "customer.new_payers_inflow_24h": (
        "What others sent this customer (p2p to ``c:<id>``, events accepted or challenged) in "
        "the last 24 hours, each paying them for the first time, minor units: money from "
        "strangers (what a mule or a layering hop receives); 0 when none."
    ),
    "customer.new_payers_24h": (
        "How many customers make up ``customer.new_payers_inflow_24h`` (distinct payers)."
    ),
    "counterparty.first_paid_s": (
        "Seconds since this customer first paid this counterparty (p2p), when that was in the "
        "last 24 hours (``NEW_TODAY_S``); NaN for a payee first paid before, or never (a first "
        "payment reads ``counterparty.first_payment``)."
    ),
    "customer.new_payees_sent_24h": (
        "What the customer sent (p2p, events accepted or challenged) in the last 24 hours to "
        "payees it first paid in that time, minor units: money to people new today (a coached "
        "victim's 'safe account', a stolen phone's mules; not the landlord paid every month); "
        "0 when none."
    ),
    "customer.new_card_top_ups_24h": (
        "What the customer topped up in the last 24 hours from cards used then for the first "
        "time (events accepted or challenged), minor units; 0 when none."
    ),
}
"""Numeric features the engine adds from its own state (logged with the store's)."""
NEW_DEVICE_S: Final = 7 * 86_400
"""A payee first paid from a device trusted less than this (or not at all) is followed."""
NEW_DEVICE_PAYEES_KEPT_S: Final = 30 * 86_400
"""How long a payee found after a new device is followed (unit: s)."""
NEW_DEVICE_SENT_WINDOW_S: Final = 14 * 86_400
"""The window of ``customer.new_device_payees_sum_14d`` (unit: s)."""
NEW_DEVICE_SENT_MAX: Final = 64
"""Payments to such payees kept per customer, the newest (unit: events)."""
FAMILIAR_MIN_AMOUNT: Final = 5_000
"""The least payment to a payee paid before that counts in ``device.familiar_payees_paid``
while its device is trusted less than ``FAMILIAR_ANY_AMOUNT_S`` (unit: minor units, 50 CNY;
since ruleset ``2026.11.28-7``): a token sum (5 CNY at the victim's usual breakfast shop)
right after a phished login costs a takeover nothing and must not make its device look like
the owner's new phone."""
FAMILIAR_ANY_AMOUNT_S: Final = 86_400
"""From a device trusted this long, a payment of any amount to a payee paid before counts
(unit: s): an owner's new phone goes on paying their usual shops, 6 or 30 CNY at a time, on
the days after; a takeover drains within the hours its session lasts."""
INFLOW_WINDOW_S: Final = 86_400
"""The window of the ``customer.new_payers_*`` and ``customer.new_card_top_ups_24h`` features
(unit: s)."""
INFLOWS_MAX: Final = 64
"""Money in from a first-time payer or a new card kept per customer, the newest (unit:
events)."""
NEW_CARD: Final = -1
"""The source of an inflow that is a top-up from a card used for the first time (other
inflows name their payer, a customer id)."""
NEW_TODAY_S: Final = 86_400
"""A p2p payee first paid less than this ago is new today (``counterparty.first_paid_s``,
``customer.new_payees_sent_24h``; unit: s)."""
NEW_TODAY_SENT_MAX: Final = 64
"""Payments to payees new today kept per customer, the newest (unit: events)."""
CHALLENGED_PLACES_MAX: Final = 65_536
"""Challenged events whose place a passed step-up would confirm, the newest (unit: pairs)."""
_P2P_CODE: Final = KINDS.index(EventKind.P2P)
_PAYMENT_CODE: Final = KINDS.index(EventKind.PAYMENT)
_TOP_UP_CODE: Final = KINDS.index(EventKind.TOP_UP)
_BINDING_CODES: Final = (KINDS.index(EventKind.LOGIN), KINDS.index(EventKind.DEVICE_CHANGE))
"""Event kinds whose acceptance makes a device trusted for a customer trusted one before (a
passed step-up does too; any accepted event trusts a customer's first device)."""


def engine_schema() -> dict[str, FeatureType]:
    """Every feature a ruleset run by the engine may read, with its type."""
    schema: dict[str, FeatureType] = {}
    for name, spec in FEATURE_SCHEMA.items():
        schema[name] = FeatureType.BOOLEAN if spec.type == "bool" else FeatureType.NUMBER
    for name in EVENT_COLUMNS:
        schema[name] = FeatureType.CATEGORY
    for name in ENGINE_FEATURES:
        schema[name] = FeatureType.NUMBER
    schema["model.score"] = FeatureType.NUMBER
    schema["model.shadow_score"] = FeatureType.NUMBER
    return schema


_STRING_COLUMNS: Final = ("currency", "device", "merchant", "counterparty", "ip")
_KIND_NAMES: Final = np.asarray([str(kind) for kind in KINDS], dtype=np.str_)
_KIND_CODES: Final = {kind: code for code, kind in enumerate(KINDS)}


def _text(values: Sequence[str]) -> npt.NDArray[np.str_]:
    return np.asarray(values if values else [""], dtype=np.str_)[: len(values)]


def event_columns(events: Sequence[RiskEvent]) -> dict[str, npt.NDArray[Any]]:
    """The events as the log keeps them (and as ``RiskEngine.decide_columns`` reads)."""
    return _columns_of(events)[0]


def _columns_of(
    events: Sequence[RiskEvent],
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, list[str]]]:
    """``event_columns``, and the string columns also as lists (what interning reads)."""
    nan = float("nan")
    codes = _KIND_CODES
    try:
        kinds = [codes[e.kind] for e in events]
    except (KeyError, TypeError):
        try:
            kinds = [codes[EventKind(e.kind)] for e in events]
        except ValueError:
            raise InvalidRiskEventError("an event of an unknown kind") from None
    strings = {
        "currency": [e.currency for e in events],
        "device": [e.device_id for e in events],
        "merchant": [e.merchant for e in events],
        "counterparty": [e.counterparty for e in events],
        "ip": [e.ip for e in events],
    }
    columns: dict[str, npt.NDArray[Any]] = {
        "kind": np.asarray(kinds, dtype=np.int8),
        "customer_id": np.asarray([e.customer_id for e in events], dtype=np.int64),
        "at_ns": np.asarray([e.at_ns for e in events], dtype=np.int64),
        "amount": np.asarray([e.amount for e in events], dtype=np.int64),
        "currency": _text(strings["currency"]),
        "device": _text(strings["device"]),
        "merchant": _text(strings["merchant"]),
        "counterparty": _text(strings["counterparty"]),
        "ip": _text(strings["ip"]),
        "latitude": np.asarray(
            [nan if e.latitude is None else e.latitude for e in events], dtype=np.float64
        ),
        "longitude": np.asarray(
            [nan if e.longitude is None else e.longitude for e in events], dtype=np.float64
        ),
        "tz_offset_s": np.asarray([e.tz_offset_s or 0 for e in events], dtype=np.int64),
        "kyc_level": np.asarray(
            [-1 if e.kyc_level is None else e.kyc_level for e in events], dtype=np.int64
        ),
        "account_created_ns": np.asarray(
            [e.account_created_ns or 0 for e in events], dtype=np.int64
        ),
    }
    return columns, strings


def _event_features(columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    counterparty = columns["counterparty"]
    merchant = columns["merchant"]
    is_card = np.char.startswith(counterparty, "card:")
    is_merchant = np.char.startswith(counterparty, "m:")
    return {
        "event.type": _KIND_NAMES[columns["kind"]],
        "event.customer": np.char.add("c:", columns["customer_id"].astype(np.str_)),
        "event.device": columns["device"],
        "event.ip": columns["ip"],
        "event.counterparty": counterparty,
        "event.merchant": np.where(
            merchant != "", merchant, np.where(is_merchant, counterparty, "")
        ),
        "event.card": np.where(is_card, counterparty, ""),
    }


_NUMBER_COLUMNS: Final[dict[str, tuple[Any, float | None]]] = {
    # name: (dtype, default when the column is absent; None: required)
    "kind": (np.int8, None),
    "customer_id": (np.int64, None),
    "at_ns": (np.int64, None),
    "amount": (np.int64, 0),
    "latitude": (np.float64, float("nan")),
    "longitude": (np.float64, float("nan")),
    "tz_offset_s": (np.int64, 0),
    "kyc_level": (np.int64, -1),
    "account_created_ns": (np.int64, 0),
}
COLUMNS: Final = (
    "kind",
    "customer_id",
    "at_ns",
    "amount",
    *_STRING_COLUMNS,
    "latitude",
    "longitude",
    "tz_offset_s",
    "kyc_level",
    "account_created_ns",
)
"""The columns ``decide_columns`` reads, in the order ``event_columns`` gives them."""


def _normalized(
    columns: Mapping[str, Any],
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, list[str]]]:
    """``columns`` as ``event_columns`` would have built them from the same events (the
    decision log keeps them so), and the string columns as lists; bad input is refused."""
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise InvalidRiskEventError(f"unknown column {unknown[0]!r}", column=unknown[0])
    for name in ("kind", "customer_id", "at_ns"):
        if name not in columns:
            raise InvalidRiskEventError(f"column {name} is required", column=name)
    kinds = np.asarray(columns["kind"])
    if kinds.ndim != 1:
        raise InvalidRiskEventError("column kind must be one-dimensional", column="kind")
    n = kinds.shape[0]
    out: dict[str, npt.NDArray[Any]] = {}
    strings: dict[str, list[str]] = {}
    for name in COLUMNS:
        given = columns.get(name)
        if name in _STRING_COLUMNS:
            texts = np.asarray([""] * n if given is None else given, dtype=object)
            if (
                texts.ndim != 1
                or texts.shape[0] != n
                or not all(isinstance(v, str) for v in texts.tolist())
            ):
                raise InvalidRiskEventError(f"column {name} must hold {n} strings", column=name)
            strings[name] = [str(v) for v in texts.tolist()]
            out[name] = _text(strings[name])
            continue
        dtype, default = _NUMBER_COLUMNS[name]
        if given is None:
            out[name] = np.full(n, default, dtype=dtype)
            continue
        array = np.asarray(given)
        integral = dtype != np.float64
        if (
            array.ndim != 1
            or array.shape[0] != n
            or array.dtype.kind not in ("iu" if integral else "iuf")
        ):
            kind = "integers" if integral else "numbers"
            raise InvalidRiskEventError(f"column {name} must hold {n} {kind}", column=name)
        if (
            integral
            and array.size
            and (int(array.min()) < np.iinfo(dtype).min or int(array.max()) > np.iinfo(dtype).max)
        ):
            raise InvalidRiskEventError(f"column {name}: a value is out of range", column=name)
        out[name] = np.ascontiguousarray(array, dtype=dtype)
    if n and (int(out["kind"].min()) < 0 or int(out["kind"].max()) >= len(KINDS)):
        raise InvalidRiskEventError("column kind: a value is unknown", column="kind")
    return out, strings


@dataclass(frozen=True, slots=True, eq=False)
class DecidedBatch:
    """A batch's decisions as columns (``RiskEngine.decide_columns``)."""

    severity: npt.NDArray[np.int8]
    """Per event: 0 accept, 1 challenge, 2 review, 3 reject (``DECISIONS`` in that order)."""
    score: npt.NDArray[np.int64]
    """Per event, 0-1000: the higher of the rules' score and the model's."""
    reasons: list[tuple[str, ...]]
    """Per event (empty for an event no rule hit)."""
    ruleset_version: str
    model_version: str

    def __len__(self) -> int:
        return int(self.severity.shape[0])

    def decisions(self) -> list[RiskDecision]:
        """One ``RiskDecision`` per event, in order (events without reasons that share a
        decision and a score share one immutable object: most events are accepted)."""
        ruleset, model = self.ruleset_version, self.model_version
        shared: dict[tuple[int, int], RiskDecision] = {}
        out: list[RiskDecision] = []
        for level, score, found in zip(
            self.severity.tolist(), self.score.tolist(), self.reasons, strict=True
        ):
            if found:
                out.append(RiskDecision(DECISIONS[level], score, found, ruleset, model))
                continue
            decision = shared.get((level, score))
            if decision is None:
                decision = RiskDecision(DECISIONS[level], score, (), ruleset, model)
                shared[level, score] = decision
            out.append(decision)
        return out


@dataclass(frozen=True, slots=True, eq=False)
class _Judged:
    """What the model and the rules made of a chunk of a batch (``RiskEngine._judge``)."""

    model_score: npt.NDArray[np.int64]
    shadow_score: npt.NDArray[np.float64]
    severity: npt.NDArray[Any]
    rule_scores: npt.NDArray[np.int64]
    hit: npt.NDArray[np.bool_]
    """Per event: some rule (active or shadow) hit it."""
    ranked: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]
    """``RuleResults.ranked_hits``, with event numbers of the whole batch."""
    explained: dict[int, list[tuple[str, float]]]
    """The model's top features of each flagged event (by event number of the whole batch)."""

    @staticmethod
    def join(parts: Sequence[_Judged]) -> _Judged:
        if len(parts) == 1:
            return parts[0]
        explained: dict[int, list[tuple[str, float]]] = {}
        for part in parts:
            explained.update(part.explained)
        return _Judged(
            np.concatenate([p.model_score for p in parts]),
            np.concatenate([p.shadow_score for p in parts]),
            np.concatenate([p.severity for p in parts]),
            np.concatenate([p.rule_scores for p in parts]),
            np.concatenate([p.hit for p in parts]),
            (
                np.concatenate([p.ranked[0] for p in parts]),
                np.concatenate([p.ranked[1] for p in parts]),
                np.concatenate([p.ranked[2] for p in parts]),
            ),
            explained,
        )


class RiskEngine:
    """Features → model → rules → decisions, logged. Call it like ``puhui.risk.decide``."""

    def __init__(
        self,
        rules: Ruleset | RulesetWatcher,
        *,
        features: FeatureStore | None = None,
        lists: RiskLists | None = None,
        model: RiskModel | None = None,
        shadow_model: RiskModel | None = None,
        log: DecisionLog | None = None,
        explain_top: int = 3,
    ) -> None:
        self.rules = rules
        self.features = features or FeatureStore()
        self.lists = lists
        self.model = model
        self.shadow_model = shadow_model
        self.log = log
        self.explain_top = explain_top
        self._lock = threading.Lock()
        self._snapshotting = threading.Lock()
        self._trust = TrustedDevices()
        """(customer, device) of each device a customer logged in or declared a device change
        from, accepted (or confirmed by step-up; the first device, by any accepted event),
        with the time it was first trusted (``TRUSTED_LONG_AGO_NS`` for the first device the
        engine trusts for a customer: the one they came with, as old as the customer is to
        the engine), its last place and its familiar payees paid:
        at most ``trusted_max`` (the feature store's ``pairs_max``), the least recently used
        forgotten beyond it (a device forgotten is new again: more checks, never fewer)."""
        self._step_up_log: StepUpLog | None = None
        self._changes = AccountChanges()
        """Password resets and device changes that took effect (not a refused attempt's):
        ``customer.since_password_reset_s`` and ``customer.since_device_change_s``."""
        self._challenged: dict[tuple[int, str], tuple[float, float, float]] = {}
        """The place of each pair's latest challenged event: a passed step-up
        (``trust_device``) makes it the device's last place, so that an owner whose phone
        shows somewhere new is challenged once, not at every event. At most
        ``CHALLENGED_PLACES_MAX``, the oldest half dropped beyond."""
        self._new_payees: dict[tuple[int, str], int] = {}
        """(customer, counterparty) first paid (p2p) from a device trusted less than
        ``NEW_DEVICE_S`` or not at all, with when (ns), oldest first; at most ``trusted_max``,
        the oldest 1/8 dropped beyond."""
        self._new_payees_sent: dict[int, list[tuple[int, int]]] = {}
        """Per customer, (time ns, amount) of the p2p events to those payees that were
        accepted or challenged (the newest ``NEW_DEVICE_SENT_MAX``)."""
        self._inflows: dict[int, list[tuple[int, int, int]]] = {}
        """Per customer, (time ns, amount, source) of the money in that was accepted or
        challenged from a payer paying them for the first time (source: the payer's id) or a
        top-up from a card used for the first time (``NEW_CARD``): the newest
        ``INFLOWS_MAX``; at most ``trusted_max`` customers, the least recently paid 1/8
        dropped beyond."""
        self._first_paid: OrderedDict[tuple[int, str], int] = OrderedDict()
        """(customer, p2p payee) first paid in the last ``NEW_TODAY_S`` (whatever the
        decision), with when (ns), oldest first; older ones dropped as time passes, at most
        ``trusted_max``, the oldest 1/8 dropped beyond."""
        self._new_today_sent: dict[int, list[tuple[int, int]]] = {}
        """Per customer, (time ns, amount) of the p2p events accepted or challenged to payees
        new today (the newest ``NEW_TODAY_SENT_MAX``)."""
        self._schema_names: tuple[str, ...] = ()
        self._schema_hash = ""

    def ruleset(self) -> Ruleset:
        return self.rules.current() if isinstance(self.rules, RulesetWatcher) else self.rules

    @property
    def model_version(self) -> str:
        return self.model.version if self.model is not None else "none"

    def __call__(self, events: Sequence[RiskEvent]) -> list[RiskDecision]:
        if not events:
            return []
        columns, strings = _columns_of(events)
        with self._lock:
            return self._decide(columns, strings).decisions()

    def decide_columns(self, columns: Mapping[str, Any]) -> DecidedBatch:
        """Decide a batch given as columns (the layout of ``event_columns``; ``kind``: positions
        in ``EventKind``; only ``kind``, ``customer_id`` and ``at_ns`` are required) and answer
        with columns: the fast path for services that hold their events as arrays."""
        normalized, strings = _normalized(columns)
        with self._lock:
            return self._decide(normalized, strings)

    def _decide(
        self, columns: Mapping[str, npt.NDArray[Any]], strings: Mapping[str, list[str]]
    ) -> DecidedBatch:
        customers: list[int] = columns["customer_id"].tolist()
        devices = strings["device"]
        n = len(customers)
        ruleset = self.ruleset()  # one ruleset for the whole batch, even across a reload
        # What needs no feature is worked out while the feature store's first pass runs.
        from_events: dict[str, npt.NDArray[Any]] = {}
        trusted_slots: list[npt.NDArray[np.int64]] = []

        def meanwhile() -> None:
            from_events.update(_event_features(columns))
            # A device is new for a customer until an event from it was accepted (or the
            # customer confirmed it by step-up): a rejected or failed attempt must not make
            # the attacker's phone familiar. Trust is as of the start of the batch.
            slots = self._trust.slots(customers, devices)
            trusted_slots.append(slots)
            at_ns = columns["at_ns"]
            from_events["device.new_for_customer"] = slots < 0
            from_events["device.trusted_for_s"] = self._trust.trusted_for_s(slots, at_ns)
            km, kmh = self._trust.travel(slots, columns["latitude"], columns["longitude"], at_ns)
            from_events["device.distance_km"] = km
            from_events["device.speed_kmh"] = kmh
            from_events.update(self._new_payees_of(customers, strings["counterparty"], columns))
            from_events.update(self._inflows_of(customers, columns["at_ns"]))
            from_events.update(self._new_today_of(customers, strings["counterparty"], at_ns))
            from_events["device.familiar_payees_paid"] = self._trust.familiar(slots)
            from_events.update(self._changes.features(customers, columns["kind"], at_ns))

        # Each chunk of events is scored, judged by the rules and explained as soon as its
        # features are ready, while the store's pass over the next chunk runs on the other
        # core (every step is per event: chunked, the results are those of the whole batch).
        parts: list[_Judged] = []

        def judge(low: int, high: int, computed: dict[str, npt.NDArray[Any]]) -> None:
            parts.append(self._judge(ruleset, low, high, computed, from_events, parallel=n == high))

        computed = self._features_of(columns, strings, meanwhile, judge)
        feats: dict[str, npt.NDArray[Any]] = dict(computed)
        feats.update(from_events)
        joined = _Judged.join(parts)
        feats["model.score"] = joined.model_score.astype(np.float64)
        feats["model.shadow_score"] = shadow = joined.shadow_score
        severity = joined.severity
        scores = np.maximum(joined.rule_scores, joined.model_score)
        explained = joined.explained
        hit = joined.hit
        ranked_events, hit_rules, hit_shadow = joined.ranked
        # Reasons only for the events a rule hit (the others have none): most are accepted
        # untouched, and one event's reasons cost more than deciding it. The hits shown are
        # picked for the whole batch at once (``RuleResults.outcome`` per event, ranked).
        reasons: list[tuple[str, ...]] = [()] * n
        rule_texts: dict[int, list[str]] = {}
        shadow_texts: dict[int, list[str]] = {}
        rules = ruleset.evaluated_rules
        for i, r, is_shadow in zip(
            ranked_events.tolist(), hit_rules.tolist(), hit_shadow.tolist(), strict=True
        ):
            rule = rules[r]
            if is_shadow:
                shadow_texts.setdefault(i, []).append(f"shadow:{rule.id}")
                continue
            values = [(name, feats[name].item(i)) for name in rule.features]
            rule_texts.setdefault(i, []).append(_hit_text(rule.id, values))
        for i in np.flatnonzero(hit | (severity > 0)).tolist():
            found = rule_texts.get(i, [])
            found += [f"model:{name}={value:+.3f}" for name, value in explained.get(i, [])]
            found += shadow_texts.get(i, [])
            reasons[i] = tuple(found[:REASONS_MAX])
        decided = DecidedBatch(
            severity.astype(np.int8),
            scores,
            reasons,
            ruleset.version,
            self.model_version,
        )
        # Every accepted event teaches: a new device becomes trusted (by a login or a device
        # change, or any event for a customer's first device), a trusted one becomes
        # the most recently used (kept the longest under ``trusted_max``). The replay of the
        # log after a restart calls the same with the logged decisions.
        self._learn(
            columns, devices, strings["counterparty"], feats, decided.severity, trusted_slots[0]
        )
        if self.log is not None:
            self._append(columns, feats, decided, shadow)
        return decided

    def _judge(
        self,
        ruleset: Ruleset,
        low: int,
        high: int,
        computed: Mapping[str, npt.NDArray[Any]],
        from_events: Mapping[str, npt.NDArray[Any]],
        *,
        parallel: bool,
    ) -> _Judged:
        """Model, shadow model, rules and the model's explanations for events ``low:high``
        (``parallel``: the trees may take both cores — not while a feature pass runs)."""
        feats: dict[str, npt.NDArray[Any]] = dict(computed)
        for name, column in from_events.items():
            feats[name] = column[low:high]
        rows = high - low
        model_score = np.zeros(rows, dtype=np.int64)
        if self.model is not None:
            model_score = self.model.score(feats, parallel=parallel).astype(np.int64)
        feats["model.score"] = model_score.astype(np.float64)
        shadow = (
            self.shadow_model.score(feats, parallel=parallel).astype(np.float64)
            if self.shadow_model is not None
            else np.zeros(rows, dtype=np.float64)
        )
        feats["model.shadow_score"] = shadow
        results = ruleset.evaluate(feats, lists=self.lists)
        severity = np.asarray(results.severity)
        flagged = np.flatnonzero(severity > 0)
        explained: dict[int, list[tuple[str, float]]] = {}
        if self.model is not None and len(flagged) and self.explain_top:
            names = self.model.feature_names
            top = self.model.explain(
                {k: v[flagged] for k, v in feats.items() if k in names},
                self.explain_top,
                parallel=parallel,
            )
            for row, contributions in zip((flagged + low).tolist(), top, strict=True):
                explained[row] = contributions
        events, hit_rules, hit_shadow = results.ranked_hits(REASONS_MAX)
        return _Judged(
            model_score,
            shadow,
            severity,
            np.asarray(results.scores, dtype=np.int64),
            np.diff(results.hit_offsets) > 0,
            (events + low, hit_rules, hit_shadow),
            explained,
        )

    def _features_of(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        strings: Mapping[str, list[str]] | None,
        meanwhile: Callable[[], object] | None = None,
        on_chunk: Callable[[int, int, dict[str, npt.NDArray[Any]]], object] | None = None,
    ) -> dict[str, Any]:
        """The feature store's pass over events given as the log's columns (``meanwhile``,
        ``on_chunk``: see ``FeatureStore.compute_columns``)."""

        def text(name: str) -> list[str]:
            return strings[name] if strings is not None else columns[name].tolist()

        return self.features.compute_columns(
            kind=columns["kind"],
            customer_id=columns["customer_id"],
            at_ns=columns["at_ns"],
            amount=columns["amount"],
            device=text("device"),
            merchant=text("merchant"),
            counterparty=text("counterparty"),
            ip=text("ip"),
            latitude=columns["latitude"],
            longitude=columns["longitude"],
            tz_offset_s=columns["tz_offset_s"],
            kyc_level=columns["kyc_level"],
            account_created_ns=columns["account_created_ns"],
            meanwhile=meanwhile,
            on_chunk=on_chunk,
        )

    def _learn(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        devices: list[str],
        counterparties: list[str],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: npt.NDArray[Any],
        slots: npt.NDArray[np.int64],
    ) -> None:
        """What a decided batch teaches the engine's own state (trusted devices, their last
        places, payees found after a new device): the same live and in the log's replay
        (``slots``: the trusted pairs' as of the start of the batch)."""
        customers: list[int] = columns["customer_id"].tolist()
        levels: list[int] = severity.tolist()
        familiar = self._learn_payees(customers, devices, counterparties, columns, feats, levels)
        self._learn_inflows(customers, counterparties, columns, feats, levels)
        self._learn_new_today(customers, counterparties, columns, feats, levels)
        self._trust.learn(
            customers,
            devices,
            slots,
            np.asarray(severity) == 0,
            columns["at_ns"],
            columns["latitude"],
            columns["longitude"],
            familiar,
            binds=np.isin(columns["kind"], _BINDING_CODES),
            bound=self.trusted_max,
        )
        self._learn_challenged(customers, devices, columns, levels)
        self._changes.learn(
            customers,
            devices,
            columns["kind"],
            columns["at_ns"],
            levels,
            bound=self.features.entities_max,
        )

    # --- trusted devices --------------------------------------------------------------------

    def _untrusted(self, customers: list[int], devices: list[str]) -> npt.NDArray[np.bool_]:
        """Per (customer, device): not trusted (``_trust_of``'s first answer)."""
        return self._trust.slots(customers, devices) < 0

    def _trust_of(
        self, customers: list[int], devices: list[str], at_ns: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Per event: the device is not trusted for the customer (``device.new_for_customer``)
        and for how long it has been (``device.trusted_for_s``, NaN when it is not)."""
        slots = self._trust.slots(customers, devices)
        return slots < 0, self._trust.trusted_for_s(slots, at_ns)

    @property
    def trusted_max(self) -> int:
        """Most (customer, device) pairs trusted at once (the feature store's ``pairs_max``)."""
        return self.features.pairs_max

    def trusted_count(self) -> int:
        """(customer, device) pairs trusted now."""
        return len(self._trust)

    def trusted_devices(self) -> dict[tuple[int, str], int]:
        """Each trusted (customer, device) with when it was first trusted (ns), least
        recently used first."""
        return self._trust.since()

    def device_places(self) -> dict[tuple[int, str], tuple[float, float, float]]:
        """Each trusted (customer, device)'s last place: latitude, longitude, time (ns)."""
        return self._trust.places()

    def familiar_payees_paid(self) -> dict[tuple[int, str], int]:
        """Each trusted (customer, device)'s ``device.familiar_payees_paid``, where not 0."""
        return self._trust.familiar_counts()

    def _learn_challenged(
        self,
        customers: list[int],
        devices: list[str],
        columns: Mapping[str, npt.NDArray[Any]],
        severity: list[int],
    ) -> None:
        """Each challenged event's place is remembered until its step-up passes
        (``trust_device`` moves the device there)."""
        level = np.asarray(severity)
        challenged = np.flatnonzero(level == 1).tolist()
        lats, lons, times = columns["latitude"], columns["longitude"], columns["at_ns"]
        for i in challenged:
            pair = (customers[i], devices[i])
            if not pair[1]:
                continue
            self._challenged.pop(pair, None)  # the newest last
            self._challenged[pair] = (float(lats[i]), float(lons[i]), float(times[i]))
        if len(self._challenged) > CHALLENGED_PLACES_MAX:
            keep = CHALLENGED_PLACES_MAX // 2
            self._challenged = dict(
                itertools.islice(self._challenged.items(), len(self._challenged) - keep, None)
            )

    def trust_device(self, customer_id: int, device_id: str) -> None:
        """The customer proved this device is theirs (passed a step-up on it): trusted from
        the newest event seen, as an accepted event from it then. With a decision log, kept
        on disk before returning (``step-ups.jsonl``: a crash does not forget it)."""
        with self._lock:
            now = max(self.features.watermark_ns, 0)
            self._apply_step_up(customer_id, device_id, now)
            if self.log is not None:
                self._step_ups().append(self.log.next_id, customer_id, device_id, now)

    def _step_ups(self) -> StepUpLog:
        """The step-up file beside the current decision log."""
        assert self.log is not None
        if self._step_up_log is None or self._step_up_log.path.parent != self.log.directory:
            self._step_up_log = StepUpLog(self.log.directory)
        return self._step_up_log

    def _apply_step_up(self, customer_id: int, device_id: str, now: int) -> None:
        """What a passed step-up teaches: the device trusted (since ``now``), placed where its
        challenged event was, the challenged reset or device change from it taken effect."""
        customers, devices = [customer_id], [device_id]
        slots = self._trust.slots(customers, devices)
        at = np.array([now], dtype=np.int64)
        self._trust.learn(customers, devices, slots, np.ones(1, bool), at, bound=self.trusted_max)
        place = self._challenged.pop((customer_id, device_id), None)
        if place is not None and not (math.isnan(place[0]) or math.isnan(place[1])):
            self._trust.place((customer_id, device_id), place)
        self._changes.confirm(customer_id, device_id)

    # --- payees found after a new device ----------------------------------------------------

    def _new_payees_of(
        self,
        customers: list[int],
        counterparties: list[str],
        columns: Mapping[str, npt.NDArray[Any]],
    ) -> dict[str, npt.NDArray[Any]]:
        """Per event: ``counterparty.new_device_payee_s`` and
        ``customer.new_device_payees_sum_14d`` (as of the start of the batch)."""
        n = len(customers)
        found = np.full(n, np.nan)
        sent_sum = np.zeros(n, dtype=np.int64)
        if not self._new_payees:
            return {
                "counterparty.new_device_payee_s": found,
                "customer.new_device_payees_sum_14d": sent_sum,
            }
        at_ns: list[int] = columns["at_ns"].tolist()
        payees, sent = self._new_payees, self._new_payees_sent
        kept_ns, window_ns = NEW_DEVICE_PAYEES_KEPT_S * 10**9, NEW_DEVICE_SENT_WINDOW_S * 10**9
        for i, (customer, counterparty) in enumerate(zip(customers, counterparties, strict=True)):
            first = payees.get((customer, counterparty))
            if first is not None and at_ns[i] - first < kept_ns:
                found[i] = max(0.0, (at_ns[i] - first) / 1e9)
            mine = sent.get(customer)
            if mine:
                since = at_ns[i] - window_ns
                sent_sum[i] = sum(amount for at, amount in mine if at > since)
        return {
            "counterparty.new_device_payee_s": found,
            "customer.new_device_payees_sum_14d": sent_sum,
        }

    def _learn_payees(
        self,
        customers: list[int],
        devices: list[str],
        counterparties: list[str],
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: list[int],
    ) -> npt.NDArray[np.int64]:
        """A p2p payee, or a merchant, paid for the first time from a device trusted less
        than ``NEW_DEVICE_S``, or not at all while the customer has others (a customer's
        first device is the one they came with), is followed whatever the decision (a refused
        first try must not hide it); what such p2p payees get in events accepted or
        challenged adds to the customer's sum (a merchant is followed only so that paying it
        again is not paying a familiar payee: since ruleset ``2026.11.28-6``). An accepted
        payment to a payee paid before (and not found so), of ``FAMILIAR_MIN_AMOUNT`` or more
        or from a device trusted ``FAMILIAR_ANY_AMOUNT_S`` or longer (since ``2026.11.28-7``),
        counts for its device
        (``device.familiar_payees_paid``): those events' positions are returned, for the trust
        state to count once it has learnt the batch.
        Called before the batch's trust is learnt: trust as of its start."""
        kinds = columns["kind"]
        paying = np.flatnonzero((kinds == _P2P_CODE) | (kinds == _PAYMENT_CODE))
        familiar: list[int] = []
        if not len(paying):
            return np.zeros(0, dtype=np.int64)
        first_payment = feats["counterparty.first_payment"]
        trusted_for = feats["device.trusted_for_s"]
        amounts, times = columns["amount"], columns["at_ns"]
        payees, sent = self._new_payees, self._new_payees_sent
        devices_of = self._trust.devices_of
        for i in paying.tolist():
            pair = (customers[i], counterparties[i])
            if not pair[1]:
                continue
            if (
                not first_payment[i]
                and severity[i] == 0
                and (amounts[i] >= FAMILIAR_MIN_AMOUNT or trusted_for[i] >= FAMILIAR_ANY_AMOUNT_S)
                and devices[i]
                and pair not in payees
            ):
                familiar.append(i)
            if pair not in payees:
                if not first_payment[i]:
                    continue
                trusted = trusted_for[i]
                if trusted >= NEW_DEVICE_S or (math.isnan(trusted) and not devices_of.get(pair[0])):
                    continue
                payees[pair] = int(times[i])
            if kinds[i] != _P2P_CODE:
                continue
            if severity[i] <= 1:
                mine = sent.setdefault(pair[0], [])
                mine.append((int(times[i]), int(amounts[i])))
                del mine[:-NEW_DEVICE_SENT_MAX]
        bound = self.trusted_max
        if len(payees) > bound:
            keep = bound - bound // 8
            self._new_payees = dict(itertools.islice(payees.items(), len(payees) - keep, None))
            still = {customer for customer, _ in self._new_payees}
            self._new_payees_sent = {c: v for c, v in sent.items() if c in still}
        return np.asarray(familiar, dtype=np.int64)

    # --- money in from strangers and new cards -----------------------------------------------

    def _inflows_of(
        self, customers: list[int], at_ns: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[Any]]:
        """Per event: ``customer.new_payers_inflow_24h``, ``customer.new_payers_24h`` and
        ``customer.new_card_top_ups_24h`` (as of the start of the batch)."""
        n = len(customers)
        from_payers = np.zeros(n, dtype=np.int64)
        payers = np.zeros(n, dtype=np.int64)
        from_cards = np.zeros(n, dtype=np.int64)
        inflows = self._inflows
        if inflows:
            times: list[int] = at_ns.tolist()
            window_ns = INFLOW_WINDOW_S * 10**9
            for i, customer in enumerate(customers):
                mine = inflows.get(customer)
                if not mine:
                    continue
                since = times[i] - window_ns
                seen: set[int] = set()
                for at, amount, source in mine:
                    if at <= since:
                        continue
                    if source == NEW_CARD:
                        from_cards[i] += amount
                    else:
                        from_payers[i] += amount
                        seen.add(source)
                payers[i] = len(seen)
        return {
            "customer.new_payers_inflow_24h": from_payers,
            "customer.new_payers_24h": payers,
            "customer.new_card_top_ups_24h": from_cards,
        }

    def _learn_inflows(
        self,
        customers: list[int],
        counterparties: list[str],
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: list[int],
    ) -> None:
        """A p2p payment accepted or challenged that pays a customer (``c:<id>``) for the
        first time is money in from a stranger for that customer; a top-up accepted or
        challenged from a card used for the first time, money in from a new card."""
        kinds = columns["kind"]
        moving = np.flatnonzero((kinds == _P2P_CODE) | (kinds == _TOP_UP_CODE)).tolist()
        if not moving:
            return
        first_payment = feats["counterparty.first_payment"]
        amounts, times = columns["amount"], columns["at_ns"]
        inflows = self._inflows
        for i in moving:
            if severity[i] > 1 or not first_payment[i]:
                continue
            receiver: int | None = customers[i]
            source = NEW_CARD
            if kinds[i] == _P2P_CODE:
                receiver, source = _customer_of(counterparties[i]), customers[i]
            if receiver is None:
                continue
            mine = inflows.pop(receiver, [])
            inflows[receiver] = mine  # the most recently paid last
            mine.append((int(times[i]), int(amounts[i]), source))
            del mine[:-INFLOWS_MAX]
        bound = self.trusted_max
        if len(inflows) > bound:
            keep = bound - bound // 8
            self._inflows = dict(itertools.islice(inflows.items(), len(inflows) - keep, None))

    # --- payees new today -----------------------------------------------------------------

    def _new_today_of(
        self, customers: list[int], counterparties: list[str], at_ns: npt.NDArray[np.int64]
    ) -> dict[str, npt.NDArray[Any]]:
        """Per event: ``counterparty.first_paid_s`` and ``customer.new_payees_sent_24h`` (as
        of the start of the batch)."""
        n = len(customers)
        first_paid = np.full(n, np.nan)
        sent_sum = np.zeros(n, dtype=np.int64)
        if self._first_paid or self._new_today_sent:
            times: list[int] = at_ns.tolist()
            window_ns = NEW_TODAY_S * 10**9
            paid, sent = self._first_paid, self._new_today_sent
            for i, customer in enumerate(customers):
                first = paid.get((customer, counterparties[i]))
                if first is not None and times[i] - first < window_ns:
                    first_paid[i] = max(0.0, (times[i] - first) / 1e9)
                mine = sent.get(customer)
                if mine:
                    since = times[i] - window_ns
                    sent_sum[i] = sum(amount for at, amount in mine if at > since)
        return {"counterparty.first_paid_s": first_paid, "customer.new_payees_sent_24h": sent_sum}

    def _learn_new_today(
        self,
        customers: list[int],
        counterparties: list[str],
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: list[int],
    ) -> None:
        """A p2p payee paid for the first time is new today for ``NEW_TODAY_S``, whatever the
        decision (a refused first try must not hide it); what the customer sends payees new
        today in events accepted or challenged adds to their sum."""
        kinds = columns["kind"]
        paying = np.flatnonzero(kinds == _P2P_CODE).tolist()
        if not paying:
            return
        first_payment = feats["counterparty.first_payment"]
        amounts, times = columns["amount"], columns["at_ns"]
        paid, sent = self._first_paid, self._new_today_sent
        window_ns = NEW_TODAY_S * 10**9
        for i in paying:
            pair = (customers[i], counterparties[i])
            if not pair[1]:
                continue
            t = int(times[i])
            if pair not in paid:
                if not first_payment[i]:
                    continue
                paid[pair] = t
            elif t - paid[pair] >= window_ns:
                continue
            if severity[i] <= 1:
                mine = sent.setdefault(pair[0], [])
                mine.append((t, int(amounts[i])))
                del mine[:-NEW_TODAY_SENT_MAX]
        newest = int(times[paying[-1]])
        while paid:  # oldest first: drop what is no longer today (nor for an event a day late)
            pair, first = next(iter(paid.items()))
            if newest - first < 2 * window_ns:
                break
            paid.popitem(last=False)
        bound = self.trusted_max
        if len(paid) > bound:
            keep = bound - bound // 8
            self._first_paid = OrderedDict(itertools.islice(paid.items(), len(paid) - keep, None))
        if len(sent) > bound:
            keep = bound - bound // 8
            self._new_today_sent = dict(itertools.islice(sent.items(), len(sent) - keep, None))

    # --- the decision log ------------------------------------------------------------------

    def _append(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        decided: DecidedBatch,
        shadow: npt.NDArray[np.float64],
    ) -> None:
        assert self.log is not None
        numeric = [k for k in (*FEATURE_SCHEMA, *ENGINE_FEATURES) if k in feats]
        numeric += ["model.score", "model.shadow_score"]
        names = tuple(numeric)
        if names != self._schema_names:
            self._schema_names = names
            self._schema_hash = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
            path = schema_path(self.log.directory, self._schema_hash)
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(list(names)))
                tmp.replace(path)
        if len(decided) <= _ROW_WISE_ROWS_MAX:  # one conversion, then a small transpose
            matrix = np.ascontiguousarray(
                np.array([feats[name] for name in names], dtype=np.float32).T
            )
        else:
            matrix = np.empty((len(decided), len(names)), dtype=np.float32)
            for k, name in enumerate(names):
                matrix[:, k] = feats[name]
        record = dict(columns)
        record["decision"] = decided.severity
        record["score"] = decided.score.astype(np.int16)
        # Each event's reasons as a JSON list, ASCII (json.dumps escapes the rest), all of
        # them back to back in one blob with each event's end offset as a column: a column as
        # wide as the longest event's reasons was most of a record (8 of 11.4 MB for 10,000).
        texts = [json.dumps(list(found)) if found else "[]" for found in decided.reasons]
        record["reasons_end"] = np.cumsum([len(text) for text in texts], dtype=np.int64)
        record["features"] = matrix
        text = "".join(texts).encode("ascii")
        self.log.append(
            record,
            {
                "ruleset": decided.ruleset_version,
                "model": self.model_version,
                "shadow_model": self.shadow_model.version if self.shadow_model else "none",
                "schema": self._schema_hash,
            },
            blobs={"reasons_text": np.frombuffer(text, dtype=np.uint8)},
        )

    # --- restarts ---------------------------------------------------------------------------

    def snapshot(self, directory: Path) -> None:
        """Save the feature state with the log position it covers and the trusted devices,
        atomically in one file (``features.json`` beside it holds the same position and
        devices, readable; ``recover`` prefers the state file's)."""
        with self._snapshotting:  # one snapshot at a time (they share file names)
            with self._lock:  # the state and its log position, copied in memory together
                directory.mkdir(parents=True, exist_ok=True)
                next_id = self.log.next_id if self.log is not None else 0
                step_up_seq = 0
                if self.log is not None:
                    self.log.flush()
                    step_up_seq = self._step_ups().seq
                arrays = self.features.snapshot_arrays()
                devices = self._trust.saved()
                changes = self._changes.saved()
                payees = list(self._new_payees.items())
                sent = [(c, list(v)) for c, v in self._new_payees_sent.items()]
                inflows = [(c, list(v)) for c, v in self._inflows.items()]
                first_paid = list(self._first_paid.items())
                new_today = [(c, list(v)) for c, v in self._new_today_sent.items()]
                ever_trusted = self._trust.ever.to_array()
            # Written without the lock: decisions go on meanwhile (they waited for the write
            # and its fsyncs before). The trusted pairs in their order of use, least recent
            # first: the restarted engine forgets the ones this one would have; each with the
            # time it was first trusted.
            saved = {
                "log_next_id": next_id,
                "step_up_seq": step_up_seq,
                "trusted": devices["trusted"],
                "places": devices["places"],
                "new_payees": [[c, payee, at] for (c, payee), at in payees],
                "new_payees_sent": [[c, [list(x) for x in v]] for c, v in sent],
                "inflows": [[c, [list(x) for x in v]] for c, v in inflows],
                "first_paid": [[c, payee, at] for (c, payee), at in first_paid],
                "new_today_sent": [[c, [list(x) for x in v]] for c, v in new_today],
                "familiar": devices["familiar"],
                **changes,
            }
            text = json.dumps(saved)
            # The log position and the trusted devices go inside the state's own file: the
            # three are replaced together (a crash between two files would pair a new state
            # with an older position, and replay the events between twice).
            arrays[SNAPSHOT_META_ARRAY] = np.frombuffer(text.encode(), np.uint8)
            arrays[SNAPSHOT_EVER_TRUSTED_ARRAY] = ever_trusted
            write_snapshot(arrays, directory / SNAPSHOT_NAME)
            del arrays
            meta = directory / SNAPSHOT_META  # the same, readable (what recover falls back on
            tmp = meta.with_name(meta.name + ".tmp")  # for a snapshot from before)
            tmp.write_text(text)
            tmp.replace(meta)

    def recover(self, directory: Path) -> int:
        """Rebuild the feature state: the snapshot in ``directory`` (if any), then every
        logged batch after it, in order, with the step-ups passed between them. Returns how
        many logged events were replayed."""
        with self._lock:
            since = 1
            step_up_seq = 0
            meta = directory / SNAPSHOT_META
            state = directory / SNAPSHOT_NAME
            saved = _snapshot_meta(state) if state.exists() else None
            if saved is None and state.exists() and meta.exists():  # a snapshot from before
                saved = json.loads(meta.read_text())
            if saved is not None:
                self.features = FeatureStore.restore(
                    state,
                    entities_max=self.features.entities_max,
                    pairs_max=self.features.pairs_max,
                )
                since = int(saved["log_next_id"])
                step_up_seq = int(saved.get("step_up_seq", 0))
                trusted = _trusted_of(saved.get("trusted", []))
                places = [
                    ((int(c), str(d)), (float(lat), float(lon), float(at)))
                    for c, d, lat, lon, at in saved.get("places", [])
                ]
                familiar = [
                    ((int(c), str(d)), int(count)) for c, d, count in saved.get("familiar", [])
                ]
                self._trust = TrustedDevices.load(
                    trusted.items(), places, familiar, _ever_trusted_of(state, trusted)
                )
                self._trust.forget(self.trusted_max)
                self._changes = AccountChanges.load(saved)
                self._new_payees = {
                    (int(c), str(payee)): int(at) for c, payee, at in saved.get("new_payees", [])
                }
                self._new_payees_sent = {
                    int(c): [(int(at), int(amount)) for at, amount in v]
                    for c, v in saved.get("new_payees_sent", [])
                }
                self._inflows = {  # a snapshot from before they were kept: none
                    int(c): [(int(at), int(amount), int(source)) for at, amount, source in v]
                    for c, v in saved.get("inflows", [])
                }
                self._first_paid = OrderedDict(  # a snapshot from before they were kept: none
                    ((int(c), str(payee)), int(at)) for c, payee, at in saved.get("first_paid", [])
                )
                self._new_today_sent = {
                    int(c): [(int(at), int(amount)) for at, amount in v]
                    for c, v in saved.get("new_today_sent", [])
                }
            if self.log is None:
                return 0
            # Step-ups passed after the snapshot, each applied between the batches it came
            # between (``after``: the log's next event id when it passed).
            step_ups = self._step_ups()
            step_ups.seq = max(step_ups.seq, step_up_seq)
            pending: list[StepUp] = step_ups.since(step_up_seq)
            replayed = 0
            for record in self.log.records(since_id=since):
                first = int(record.meta["first_id"])
                skip = max(0, since - first)
                while pending and pending[0].after <= first + skip:
                    step = pending.pop(0)
                    self._apply_step_up(step.customer, step.device, step.at_ns)
                c = {k: v[skip:] for k, v in record.row_columns().items()}
                feats = self._features_of(c, None)
                devices: list[str] = c["device"].tolist()
                slots = self._trust.slots(c["customer_id"].tolist(), devices)
                feats["device.trusted_for_s"] = self._trust.trusted_for_s(slots, c["at_ns"])
                self._learn(c, devices, c["counterparty"].tolist(), feats, c["decision"], slots)
                replayed += len(c["kind"])
            for step in pending:  # after the last logged batch
                self._apply_step_up(step.customer, step.device, step.at_ns)
            return replayed


def logged_reasons(record: LogRecord) -> list[tuple[str, ...]]:
    """Each event's reasons in a decision log record, whichever way it keeps them: one blob
    with per-event ends (``reasons_text``, ``reasons_end``: since 2026-11-27), or a column of
    JSON lists as ASCII bytes (``reasons``, 2026-11-26) or unicode (before)."""
    columns = record.columns
    if "reasons_end" in columns:
        text = columns["reasons_text"].tobytes().decode("ascii")
        bounds = [0, *columns["reasons_end"].tolist()]
        return [tuple(json.loads(text[a:b])) for a, b in itertools.pairwise(bounds)]
    out = []
    for found in columns["reasons"].tolist():
        decoded = found.decode("ascii") if isinstance(found, bytes) else found
        out.append(tuple(json.loads(decoded)))
    return out


def _hit_text(rule_id: str, values: Sequence[tuple[str, object]]) -> str:
    shown = ", ".join(f"{name}={_shown(value)}" for name, value in values)
    return f"{rule_id}({shown})" if shown else rule_id


def _shown(value: object) -> str:
    """A feature's value as a reason shows it; a float that is not a number (a feature with
    nothing to measure yet, such as the z-score of a customer with no history) is ``n/a``."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _trusted_of(saved: list[list[Any]] | dict[str, list[str]]) -> dict[tuple[int, str], int]:
    """The trusted pairs of a snapshot, least recently used first, with the time each was
    first trusted: a list of [customer, device, time] in that order; [customer, device]
    (written on 2026-11-27, before the times were kept) or devices by customer (before that,
    whose order of use was not kept either) are taken as trusted long ago."""
    old = TRUSTED_LONG_AGO_NS
    if isinstance(saved, dict):
        return dict.fromkeys(((int(c), device) for c, d in saved.items() for device in d), old)
    return {(int(item[0]), str(item[1])): int(item[2]) if len(item) > 2 else old for item in saved}


def _ever_trusted_of(path: Path, trusted: Mapping[tuple[int, str], int]) -> EverTrusted:
    """The filter of customers ever trusted saved in a state file; for one written before it
    was kept, the customers of the trusted pairs saved (those forgotten before are lost)."""
    with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        if SNAPSHOT_EVER_TRUSTED_ARRAY in npz.files:
            bits = npz[SNAPSHOT_EVER_TRUSTED_ARRAY]
            if bits.shape == (EVER_TRUSTED_BITS // 8,):
                return EverTrusted(saved=bits.tobytes())
    ever = EverTrusted()
    for customer, _ in trusted:
        ever.add(customer)
    return ever


def _snapshot_meta(path: Path) -> dict[str, Any] | None:
    """The log position and trusted devices saved inside a state file (None: a file written
    before they were, or not readable: ``FeatureStore.restore`` says why)."""
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            if SNAPSHOT_META_ARRAY not in npz.files:
                return None
            saved: dict[str, Any] = json.loads(npz[SNAPSHOT_META_ARRAY].tobytes())
            return saved
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
