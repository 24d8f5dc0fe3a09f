"""The risk engine's decision path as it was before the columnar fast path (commit c0aa283):
per-event objects, reasons built event by event, the model walked by LightGBM's decision
written plainly in Python. ``test_engine_fast_path.py`` replays a simulated day through it
and through ``RiskEngine`` and asks for the same decisions and the same log.

Kept verbatim but for the model (``_ReferenceModel``: the old kernels' logic, uncompiled),
the restart methods (not needed here), and the engine's features added since, written
plainly event by event (``device.trusted_for_s``; the trusted device's travel, the payees
found after a new device and the money in from strangers and new cards, ``_travel``,
``_new_payees`` and ``_inflows``: unbounded, no eviction).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from puhui.risk import Decision, EventKind, RiskDecision, RiskEvent, RiskLists, Ruleset
from puhui.risk._engine import (  # the reasons' text and the engine's features, as it has them
    ENGINE_FEATURES,
    FAMILIAR_ANY_AMOUNT_S,
    FAMILIAR_MIN_AMOUNT,
    INFLOW_WINDOW_S,
    INFLOWS_MAX,
    NEW_CARD,
    NEW_DEVICE_PAYEES_KEPT_S,
    NEW_DEVICE_S,
    NEW_DEVICE_SENT_MAX,
    NEW_DEVICE_SENT_WINDOW_S,
    NEW_TODAY_S,
    NEW_TODAY_SENT_MAX,
    _hit_text,
)
from puhui.risk._features import FEATURE_SCHEMA, FeatureStore, InvalidRiskEventError
from puhui.risk._log import DecisionLog
from puhui.risk._model import RiskModel
from puhui.risk._trusted import TRUSTED_LONG_AGO_NS, haversine_km


def _child(value: float, node: int, f: Any) -> int:
    """LightGBM's numerical decision, as the old kernel's ``_child_py`` wrote it."""
    kind = f.missing[node]
    if math.isnan(value) and kind != 2:
        value = 0.0
    if (kind == 1 and -1e-35 <= value <= 1e-35) or (kind == 2 and math.isnan(value)):
        return int(f.left[node] if f.default_left[node] else f.right[node])
    if value <= f.threshold[node]:
        return int(f.left[node])
    return int(f.right[node])


KINDS: Final = tuple(EventKind)
_CHANGES: Final = {
    EventKind.PASSWORD_RESET: "customer.since_password_reset_s",
    EventKind.DEVICE_CHANGE: "customer.since_device_change_s",
}
DECISIONS: Final = (Decision.ACCEPT, Decision.CHALLENGE, Decision.REVIEW, Decision.REJECT)
"""By severity: the rules' severity 0..3 indexes this."""
REASONS_MAX: Final = 8


def _text(values: Sequence[str]) -> npt.NDArray[np.str_]:
    return np.asarray(values if values else [""], dtype=np.str_)[: len(values)]


def event_columns(events: Sequence[RiskEvent]) -> dict[str, npt.NDArray[Any]]:
    """The events as the log keeps them (and as ``FeatureStore.batch_from_columns`` reads)."""
    nan = float("nan")
    try:
        kinds = [KINDS.index(EventKind(e.kind)) for e in events]
    except ValueError:
        raise InvalidRiskEventError("an event of an unknown kind") from None
    return {
        "kind": np.asarray(kinds, dtype=np.int8),
        "customer_id": np.asarray([e.customer_id for e in events], dtype=np.int64),
        "at_ns": np.asarray([e.at_ns for e in events], dtype=np.int64),
        "amount": np.asarray([e.amount for e in events], dtype=np.int64),
        "currency": _text([e.currency for e in events]),
        "device": _text([e.device_id for e in events]),
        "merchant": _text([e.merchant for e in events]),
        "counterparty": _text([e.counterparty for e in events]),
        "ip": _text([e.ip for e in events]),
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


def _event_features(columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    counterparty = columns["counterparty"]
    merchant = columns["merchant"]
    is_card = np.char.startswith(counterparty, "card:")
    is_merchant = np.char.startswith(counterparty, "m:")
    return {
        "event.type": np.asarray([str(KINDS[k]) for k in columns["kind"]], dtype=np.str_),
        "event.customer": np.char.add("c:", columns["customer_id"].astype(np.str_)),
        "event.device": columns["device"],
        "event.ip": columns["ip"],
        "event.counterparty": counterparty,
        "event.merchant": np.where(
            merchant != "", merchant, np.where(is_merchant, counterparty, "")
        ),
        "event.card": np.where(is_card, counterparty, ""),
    }


class _ReferenceModel:
    """``RiskModel.score`` and ``explain`` as they were, in plain Python."""

    def __init__(self, model: RiskModel) -> None:
        self.model = model
        self.feature_names = model.feature_names
        self.version = model.version

    def _raw(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        f = self.model._forest
        out = np.empty(x.shape[0])
        for row in range(x.shape[0]):
            total = 0.0
            for root in f.roots.tolist():
                node = root
                while node >= 0:
                    node = _child(float(x[row, f.feature[node]]), node, f)
                total += float(f.leaf_value[~node])
            out[row] = total
        return out

    def score(self, features: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.int32]:
        raw = self._raw(self.model.matrix(features))
        probability = 1.0 / (1.0 + np.exp(-raw))
        return np.rint(probability * 1000).astype(np.int32)

    def explain(
        self, features: Mapping[str, npt.ArrayLike], top: int = 3
    ) -> list[list[tuple[str, float]]]:
        x = self.model.matrix(features)
        if x.shape[0] == 0:
            return []
        f = self.model._forest
        contrib = np.zeros((x.shape[0], len(self.feature_names)), dtype=np.float64)
        for row in range(x.shape[0]):
            for root in f.roots.tolist():
                node = root
                while node >= 0:
                    child = _child(float(x[row, f.feature[node]]), node, f)
                    after = f.leaf_value[~child] if child < 0 else f.node_value[child]
                    contrib[row, f.feature[node]] += after - f.node_value[node]
                    node = child
        k = min(top, contrib.shape[1])
        order = np.argsort(-contrib, axis=1)[:, :k]
        out = []
        for values, picks in zip(contrib, order, strict=True):
            out.append(
                [
                    (self.feature_names[i], round(float(values[i]), 4))
                    for i in picks
                    if values[i] > 0
                ]
            )
        return out


class EngineBefore:
    """``RiskEngine`` before the fast path (ruleset given, no hot reload)."""

    def __init__(
        self,
        rules: Ruleset,
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
        self.model = _ReferenceModel(model) if model is not None else None
        self.shadow_model = _ReferenceModel(shadow_model) if shadow_model is not None else None
        self.log = log
        self.explain_top = explain_top
        self._lock = threading.Lock()
        self._trusted: dict[int, dict[str, int]] = {}
        """Devices each customer used in an accepted event (or confirmed by step-up), with
        when each was first trusted (added with ``device.trusted_for_s``)."""
        self._places: dict[tuple[int, str], tuple[float, float, int]] = {}
        self._challenged: dict[tuple[int, str], tuple[float, float, int]] = {}
        self._new_payees: dict[tuple[int, str], int] = {}
        self._sent: dict[int, list[tuple[int, int]]] = {}
        self._familiar: dict[tuple[int, str], int] = {}
        self._inflows: dict[int, list[tuple[int, int, int]]] = {}
        self._first_paid: dict[tuple[int, str], int] = {}
        self._new_today_sent: dict[int, list[tuple[int, int]]] = {}
        self._took_effect: dict[str, dict[int, int]] = {kind: {} for kind in _CHANGES}
        self._pending_changes: dict[tuple[int, str, str], int] = {}
        self._schema_names: tuple[str, ...] = ()
        self._schema_hash = ""

    def ruleset(self) -> Ruleset:
        return self.rules

    @property
    def model_version(self) -> str:
        return self.model.version if self.model is not None else "none"

    def __call__(self, events: Sequence[RiskEvent]) -> list[RiskDecision]:
        if not events:
            return []
        columns = event_columns(events)
        with self._lock:
            return self._decide(columns)

    def _decide(self, columns: Mapping[str, npt.NDArray[Any]]) -> list[RiskDecision]:
        computed = self._features_of(columns)
        feats: dict[str, npt.NDArray[Any]] = dict(computed)
        feats.update(_event_features(columns))
        # A device is new for a customer until an event from it was accepted (or the
        # customer confirmed it by step-up): a rejected or failed attempt must not make the
        # attacker's phone familiar. Trust is as of the start of the batch.
        feats["device.new_for_customer"] = self._untrusted(columns)
        feats["device.trusted_for_s"] = self._trusted_for(columns)
        feats.update(self._travel(columns))
        feats.update(self._new_payees_of(columns))
        feats.update(self._inflows_of(columns))
        feats.update(self._new_today_of(columns))
        feats["device.familiar_payees_paid"] = np.asarray(
            [self._familiar.get(pair, 0) for pair in self._pairs(columns, "device")],
            dtype=np.int64,
        )
        feats.update(self._since_changes(columns))
        n = len(columns["kind"])
        model_score = np.zeros(n, dtype=np.int64)
        if self.model is not None:
            model_score = self.model.score(feats).astype(np.int64)
        feats["model.score"] = model_score.astype(np.float64)
        shadow = (
            self.shadow_model.score(feats).astype(np.float64)
            if self.shadow_model is not None
            else np.zeros(n, dtype=np.float64)
        )
        feats["model.shadow_score"] = shadow
        ruleset = self.ruleset()
        results = ruleset.evaluate(feats, lists=self.lists)
        severity = np.asarray(results.severity)
        scores = np.maximum(np.asarray(results.scores, dtype=np.int64), model_score)
        flagged = np.flatnonzero(severity > 0)
        explained: dict[int, list[tuple[str, float]]] = {}
        if self.model is not None and len(flagged) and self.explain_top:
            rows = {k: v[flagged] for k, v in feats.items() if k in self.model.feature_names}
            top = self.model.explain(rows, self.explain_top)
            for row, contributions in zip(flagged.tolist(), top, strict=True):
                explained[row] = contributions
        out: list[RiskDecision] = []
        reasons_column: list[str] = []
        for i in range(n):
            reasons: tuple[str, ...] = ()
            if severity[i] > 0 or results.hit_offsets[i + 1] > results.hit_offsets[i]:
                outcome = results.outcome(i, limit=REASONS_MAX)
                found = [_hit_text(h.rule_id, h.values) for h in outcome.reasons]
                found += [f"model:{name}={value:+.3f}" for name, value in explained.get(i, [])]
                found += [f"shadow:{h.rule_id}" for h in outcome.shadow_hits]
                reasons = tuple(found[:REASONS_MAX])
            out.append(
                RiskDecision(
                    DECISIONS[int(severity[i])],
                    int(scores[i]),
                    reasons,
                    results.ruleset_version,
                    self.model_version,
                )
            )
            reasons_column.append(json.dumps(list(reasons)) if reasons else "[]")
        familiar = self._learn_payees(columns, feats, severity)
        self._learn_inflows(columns, feats, severity)
        self._learn_new_today(columns, feats, severity)
        taught = self._learn_trust(columns, severity)
        pairs = self._pairs(columns, "device")
        for i in familiar:  # from a device trusted by then (not one that only paid)
            if taught[i]:
                self._familiar[pairs[i]] = self._familiar.get(pairs[i], 0) + 1
        self._learn_places(columns, severity, taught)
        self._learn_changes(columns, severity)
        if self.log is not None:
            self._append(columns, feats, out, reasons_column, results.ruleset_version, shadow)
        return out

    def _features_of(self, columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """The feature store's pass over events given as the log's columns."""
        batch = self.features.batch_from_columns(
            kind=columns["kind"],
            customer_id=columns["customer_id"],
            at_ns=columns["at_ns"],
            amount=columns["amount"],
            device=list(columns["device"]),
            merchant=list(columns["merchant"]),
            counterparty=list(columns["counterparty"]),
            ip=list(columns["ip"]),
            latitude=columns["latitude"],
            longitude=columns["longitude"],
            tz_offset_s=columns["tz_offset_s"],
            kyc_level=columns["kyc_level"],
            account_created_ns=columns["account_created_ns"],
        )
        return dict(self.features.compute(batch))

    # --- trusted devices --------------------------------------------------------------------

    def _untrusted(self, columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.bool_]:
        trusted = self._trusted
        empty: dict[str, int] = {}
        return np.fromiter(
            (
                str(device) not in trusted.get(int(customer), empty)
                for customer, device in zip(columns["customer_id"], columns["device"], strict=True)
            ),
            dtype=np.bool_,
            count=len(columns["device"]),
        )

    def _trusted_for(self, columns: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        out = np.full(len(columns["device"]), np.nan)
        for i, (customer, device, at) in enumerate(
            zip(columns["customer_id"], columns["device"], columns["at_ns"], strict=True)
        ):
            since = self._trusted.get(int(customer), {}).get(str(device))
            if since is not None:
                out[i] = max(0.0, (int(at) - since) / 1e9)
        return out

    def _learn_trust(
        self, columns: Mapping[str, npt.NDArray[Any]], severity: npt.NDArray[Any]
    ) -> list[bool]:
        """Each event in order; returns, per event, whether it was accepted from a device
        trusted once it was learnt (what it teaches: a place, a familiar payee)."""
        taught = []
        for customer, device, level, at, kind in zip(
            columns["customer_id"],
            columns["device"],
            severity,
            columns["at_ns"],
            columns["kind"],
            strict=True,
        ):
            binds = KINDS[int(kind)] in (EventKind.LOGIN, EventKind.DEVICE_CHANGE)
            # Any accepted event trusts a customer's first device; another takes a login or
            # a device change (or a passed step-up).
            if level == 0 and device and (binds or not self._trusted.get(int(customer))):
                self._trust(int(customer), str(device), int(at))
            taught.append(
                bool(level == 0 and device) and str(device) in self._trusted.get(int(customer), {})
            )
        return taught

    def trust_device(self, customer_id: int, device_id: str) -> None:
        """The customer proved this device is theirs (passed a step-up on it): the place of
        its latest challenged event becomes its last place."""
        if device_id:
            with self._lock:
                self._trust(customer_id, device_id, max(self.features.watermark_ns, 0))
                place = self._challenged.pop((customer_id, device_id), None)
                if place is not None and not math.isnan(place[0]) and not math.isnan(place[1]):
                    self._places[customer_id, device_id] = place
                for kind, took in self._took_effect.items():
                    at = self._pending_changes.pop((customer_id, device_id, kind), None)
                    if at is not None and at >= took.get(customer_id, -1):
                        took[customer_id] = at

    def _since_changes(self, columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
        """Seconds since each event's customer's last reset / device change that took effect
        before the batch, or any earlier in the batch (NaN: none)."""
        out = {}
        for kind, name in _CHANGES.items():
            values = np.full(len(columns["kind"]), np.nan)
            in_batch: dict[int, int] = {}
            for i, (customer, code, at) in enumerate(
                zip(columns["customer_id"], columns["kind"], columns["at_ns"], strict=True)
            ):
                c = int(customer)
                last = max(self._took_effect[kind].get(c, -1), in_batch.get(c, -1))
                if last >= 0:
                    values[i] = (int(at) - last) / 1e9
                if KINDS[int(code)] == kind:
                    in_batch[c] = int(at)
            out[name] = values
        return out

    def _learn_changes(
        self, columns: Mapping[str, npt.NDArray[Any]], severity: npt.NDArray[Any]
    ) -> None:
        """Accepted or reviewed resets and device changes take effect; challenged ones wait
        for a step-up on their device; rejected ones are nothing."""
        for customer, device, code, at, level in zip(
            columns["customer_id"],
            columns["device"],
            columns["kind"],
            columns["at_ns"],
            severity,
            strict=True,
        ):
            kind = KINDS[int(code)]
            if kind not in _CHANGES or level == 3:
                continue
            if level == 1:
                if device:
                    self._pending_changes[int(customer), str(device), kind] = int(at)
            else:
                self._took_effect[kind][int(customer)] = int(at)

    def _pairs(self, columns: Mapping[str, npt.NDArray[Any]], name: str) -> list[tuple[int, str]]:
        return [
            (int(c), str(x)) for c, x in zip(columns["customer_id"], columns[name], strict=True)
        ]

    def _travel(self, columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        n = len(columns["kind"])
        last = np.full((n, 3), np.nan)
        for i, pair in enumerate(self._pairs(columns, "device")):
            trusted = pair[1] in self._trusted.get(pair[0], {})
            if trusted and pair in self._places:
                last[i] = self._places[pair]
        km = haversine_km(last[:, 0], last[:, 1], columns["latitude"], columns["longitude"])
        seconds = (columns["at_ns"] - last[:, 2]) / 1e9
        return {
            "device.distance_km": km,
            "device.speed_kmh": km * 3600.0 / np.maximum(seconds, 1.0),
        }

    def _learn_places(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        severity: npt.NDArray[Any],
        taught: Sequence[bool],
    ) -> None:
        for i, pair in enumerate(self._pairs(columns, "device")):
            place = (
                float(columns["latitude"][i]),
                float(columns["longitude"][i]),
                int(columns["at_ns"][i]),
            )
            if not pair[1]:
                continue
            if severity[i] == 1:
                self._challenged[pair] = place
            elif (
                severity[i] == 0
                and not (math.isnan(place[0]) or math.isnan(place[1]))
                and taught[i]  # only a trusted device's place
            ):
                self._places[pair] = place

    def _new_payees_of(
        self, columns: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[Any]]:
        n = len(columns["kind"])
        found = np.full(n, np.nan)
        total = np.zeros(n, dtype=np.int64)
        for i, pair in enumerate(self._pairs(columns, "counterparty")):
            at = int(columns["at_ns"][i])
            first = self._new_payees.get(pair)
            if first is not None and at - first < NEW_DEVICE_PAYEES_KEPT_S * 10**9:
                found[i] = max(0.0, (at - first) / 1e9)
            for when, amount in self._sent.get(pair[0], []):
                if when > at - NEW_DEVICE_SENT_WINDOW_S * 10**9:
                    total[i] += amount
        return {
            "counterparty.new_device_payee_s": found,
            "customer.new_device_payees_sum_14d": total,
        }

    def _learn_payees(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: npt.NDArray[Any],
    ) -> list[int]:
        """Payees found after a new device; returns the positions of the accepted payments
        to a payee paid before (of ``FAMILIAR_MIN_AMOUNT`` or more, or from a device trusted
        ``FAMILIAR_ANY_AMOUNT_S`` or longer)
        (``device.familiar_payees_paid``, counted once the batch's trust is learnt)."""
        familiar: list[int] = []
        for i, pair in enumerate(self._pairs(columns, "counterparty")):
            kind = KINDS[int(columns["kind"][i])]
            if kind not in (EventKind.P2P, EventKind.PAYMENT) or not pair[1]:
                continue
            device = str(columns["device"][i])
            paid_before = not feats["counterparty.first_payment"][i]
            token = (  # 5 CNY at a usual shop right after a phished login
                int(columns["amount"][i]) < FAMILIAR_MIN_AMOUNT
                and not float(feats["device.trusted_for_s"][i]) >= FAMILIAR_ANY_AMOUNT_S
            )
            if (
                paid_before
                and severity[i] == 0
                and not token
                and device
                and pair not in self._new_payees
            ):
                familiar.append(i)
            if pair not in self._new_payees:
                trusted = float(feats["device.trusted_for_s"][i])
                was_new = trusted < NEW_DEVICE_S or (
                    math.isnan(trusted) and bool(self._trusted.get(pair[0]))
                )
                if not (feats["counterparty.first_payment"][i] and was_new):
                    continue
                self._new_payees[pair] = int(columns["at_ns"][i])
            if kind is not EventKind.P2P:
                continue
            if severity[i] <= 1:
                sent = self._sent.setdefault(pair[0], [])
                sent.append((int(columns["at_ns"][i]), int(columns["amount"][i])))
                del sent[:-NEW_DEVICE_SENT_MAX]
        return familiar

    def _inflows_of(self, columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        n = len(columns["kind"])
        out = {
            name: np.zeros(n, dtype=np.int64)
            for name in (
                "customer.new_payers_inflow_24h",
                "customer.new_payers_24h",
                "customer.new_card_top_ups_24h",
            )
        }
        for i in range(n):
            at = int(columns["at_ns"][i])
            payers = set()
            for when, amount, source in self._inflows.get(int(columns["customer_id"][i]), []):
                if when <= at - INFLOW_WINDOW_S * 10**9:
                    continue
                if source == NEW_CARD:
                    out["customer.new_card_top_ups_24h"][i] += amount
                else:
                    out["customer.new_payers_inflow_24h"][i] += amount
                    payers.add(source)
            out["customer.new_payers_24h"][i] = len(payers)
        return out

    def _learn_inflows(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: npt.NDArray[Any],
    ) -> None:
        """Money in, accepted or challenged, from a first-time payer (for the customer paid)
        or a top-up from a card used for the first time."""
        for i in range(len(columns["kind"])):
            kind = KINDS[int(columns["kind"][i])]
            if severity[i] > 1 or not feats["counterparty.first_payment"][i]:
                continue
            payer = int(columns["customer_id"][i])
            counterparty = str(columns["counterparty"][i])
            if kind is EventKind.TOP_UP:
                receiver, source = payer, NEW_CARD
            elif kind is EventKind.P2P and counterparty.startswith("c:"):
                if not (counterparty[2:].isdigit() and counterparty[2:].isascii()):
                    continue
                receiver, source = int(counterparty[2:]), payer
            else:
                continue
            mine = self._inflows.setdefault(receiver, [])
            mine.append((int(columns["at_ns"][i]), int(columns["amount"][i]), source))
            del mine[:-INFLOWS_MAX]

    def _new_today_of(self, columns: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        n = len(columns["kind"])
        first_paid = np.full(n, np.nan)
        sent_sum = np.zeros(n, dtype=np.int64)
        window = NEW_TODAY_S * 10**9
        for i, pair in enumerate(self._pairs(columns, "counterparty")):
            at = int(columns["at_ns"][i])
            first = self._first_paid.get(pair)
            if first is not None and at - first < window:
                first_paid[i] = max(0.0, (at - first) / 1e9)
            for when, amount in self._new_today_sent.get(pair[0], []):
                if when > at - window:
                    sent_sum[i] += amount
        return {"counterparty.first_paid_s": first_paid, "customer.new_payees_sent_24h": sent_sum}

    def _learn_new_today(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        severity: npt.NDArray[Any],
    ) -> None:
        """A p2p payee first paid is new today for a day; what it gets then, accepted or
        challenged, adds to the customer's sum."""
        for i, pair in enumerate(self._pairs(columns, "counterparty")):
            if KINDS[int(columns["kind"][i])] is not EventKind.P2P or not pair[1]:
                continue
            at = int(columns["at_ns"][i])
            if pair not in self._first_paid:
                if not feats["counterparty.first_payment"][i]:
                    continue
                self._first_paid[pair] = at
            elif at - self._first_paid[pair] >= NEW_TODAY_S * 10**9:
                continue
            if severity[i] <= 1:
                mine = self._new_today_sent.setdefault(pair[0], [])
                mine.append((at, int(columns["amount"][i])))
                del mine[:-NEW_TODAY_SENT_MAX]

    def _trust(self, customer: int, device: str, at: int) -> None:
        mine = self._trusted.setdefault(customer, {})
        mine.setdefault(device, at if mine else TRUSTED_LONG_AGO_NS)  # the first: long ago

    # --- the decision log ------------------------------------------------------------------

    def _append(
        self,
        columns: Mapping[str, npt.NDArray[Any]],
        feats: Mapping[str, npt.NDArray[Any]],
        decisions: Sequence[RiskDecision],
        reasons: Sequence[str],
        ruleset_version: str,
        shadow: npt.NDArray[np.float64],
    ) -> None:
        assert self.log is not None
        numeric = [k for k in (*FEATURE_SCHEMA, *ENGINE_FEATURES) if k in feats]
        numeric += ["model.score", "model.shadow_score"]
        names = tuple(numeric)
        if names != self._schema_names:
            self._schema_names = names
            self._schema_hash = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
            schema_path = self.log.directory / f"schema-{self._schema_hash}.json"
            if not schema_path.exists():
                tmp = schema_path.with_name(schema_path.name + ".tmp")
                tmp.write_text(json.dumps(list(names)))
                tmp.replace(schema_path)
        matrix = np.column_stack([np.asarray(feats[k], dtype=np.float32) for k in names])
        record = dict(columns)
        record["decision"] = np.asarray(
            [DECISIONS.index(d.decision) for d in decisions], dtype=np.int8
        )
        record["score"] = np.asarray([d.score for d in decisions], dtype=np.int16)
        record["reasons"] = _text(list(reasons))
        record["features"] = matrix
        self.log.append(
            record,
            {
                "ruleset": ruleset_version,
                "model": self.model_version,
                "shadow_model": self.shadow_model.version if self.shadow_model else "none",
                "schema": self._schema_hash,
            },
        )
