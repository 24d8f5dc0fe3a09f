"""A slow, plain-Python model of the feature store, written from the definitions.

It keeps every event it has seen and computes each feature by scanning that history, with no
rings, hash tables or running moments: what the compiled store must equal. Windows follow the
documented bucket semantics: a window of ``n`` buckets of ``g`` ns at time ``t`` holds the
events whose bucket ``t_e // g`` lies in ``(t // g - n, t // g]``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from puhui.risk import EventKind, RiskEvent

NS = 1_000_000_000
KINDS = list(EventKind)
MONEY = {0, 1, 2, 3}
OUTFLOW = {0, 1, 3}
PASSWORD_RESET = 6
DEVICE_CHANGE = 5

# name → (bucket ns, buckets), as documented in docs/risk-features.md
WINDOWS = {
    "1m": (5 * NS, 12),
    "1h": (180 * NS, 20),
    "24h": (3600 * NS, 24),
    "7d": (86400 * NS, 7),
    "30d": (86400 * NS, 30),
}
WINDOW_NS = {
    "1m": 60 * NS,
    "1h": 3600 * NS,
    "24h": 86400 * NS,
    "7d": 7 * 86400 * NS,
    "30d": 30 * 86400 * NS,
}
HOUR = (3600 * NS, 24)
DAY = (86400 * NS, 30)


@dataclass(frozen=True)
class Seen:
    """An event as the store saw it: ``t`` is its time after out-of-order clamping."""

    t: int
    kind: int
    customer: int
    amount: int
    device: str
    merchant: str
    counterparty: str
    ip: str
    latitude: float | None
    longitude: float | None
    kyc_level: int | None
    account_created_ns: int | None


def in_window(t_e: int, t: int, window: tuple[int, int]) -> bool:
    g, n = window
    return t_e // g > t // g - n


def amount_bucket(amount: int) -> int:
    if amount < 2:
        return max(amount, 0)
    p = amount.bit_length() - 1
    return min(2 * p + ((amount >> (p - 1)) & 1), 63)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(min(max(a, 0.0), 1.0)))


def link_of(counterparty: str) -> int | None:
    if counterparty.startswith("c:") and counterparty[2:].isdigit() and counterparty[2:].isascii():
        return int(counterparty[2:])
    return None


@dataclass
class Reference:
    history: list[Seen] = field(default_factory=list)
    watermark: int = -1

    def step(self, event: RiskEvent) -> dict[str, Any]:
        """The features of ``event`` as of just before it; then it joins the history."""
        at = event.at_ns
        t = max(at, self.watermark)
        late = t - at
        self.watermark = t
        kind = KINDS.index(event.kind)
        money = kind in MONEY
        merchant = event.merchant
        if not merchant and event.counterparty.startswith("m:"):
            merchant = event.counterparty
        c = event.customer_id
        cp = event.counterparty
        prior = self.history
        mine = [e for e in prior if e.customer == c]
        paid = [e for e in prior if e.kind in MONEY]
        f: dict[str, Any] = {
            "event.late_ns": late,
            "event.kind": kind,
            "event.amount": event.amount,
        }

        keys: dict[str, Callable[[Seen], bool]] = {
            "customer": lambda e: e.customer == c,
            "device": lambda e: bool(event.device_id) and e.device == event.device_id,
            "merchant": lambda e: bool(merchant) and e.merchant == merchant,
            "counterparty": lambda e: bool(cp) and e.counterparty == cp,
            "ip": lambda e: bool(event.ip) and e.ip == event.ip,
        }
        for entity, match in keys.items():
            for name, window in WINDOWS.items():
                hits = [e for e in paid if match(e) and in_window(e.t, t, window)]
                f[f"{entity}.count_{name}"] = len(hits)
                f[f"{entity}.sum_{name}"] = sum(e.amount for e in hits)

        my_payments = [e for e in mine if e.kind in MONEY]
        f["customer.distinct_counterparties_24h"] = len(
            {e.counterparty for e in my_payments if e.counterparty and in_window(e.t, t, HOUR)}
        )
        f["customer.distinct_counterparties_30d"] = len(
            {e.counterparty for e in my_payments if e.counterparty and in_window(e.t, t, DAY)}
        )
        to_cp = [e for e in paid if cp and e.counterparty == cp]
        f["counterparty.distinct_payers_24h"] = len(
            {e.customer for e in to_cp if in_window(e.t, t, HOUR)}
        )
        f["counterparty.first_payment"] = bool(cp) and not any(
            e.counterparty == cp for e in my_payments
        )
        f["device.new_for_customer"] = bool(event.device_id) and not any(
            e.device == event.device_id for e in mine
        )

        amounts = [e.amount for e in my_payments]
        f["customer.amount_history_count"] = len(amounts)
        z = math.nan
        if money and len(amounts) >= 2:
            std = statistics.stdev(amounts)
            if std > 0:
                z = (event.amount - statistics.fmean(amounts)) / std
        f["customer.amount_zscore"] = z
        pct = math.nan
        if money and amounts:
            bucket = amount_bucket(event.amount)
            below = sum(1 for a in amounts if amount_bucket(a) < bucket)
            same = sum(1 for a in amounts if amount_bucket(a) == bucket)
            pct = (below + 0.5 * same) / len(amounts)
        f["customer.amount_percentile"] = pct

        f["customer.account_age_s"] = (t - self._created(c, event.account_created_ns, t)) / NS
        resets = [e.t for e in mine if e.kind == PASSWORD_RESET]
        f["customer.since_password_reset_s"] = (t - resets[-1]) / NS if resets else math.nan
        changes = [e.t for e in mine if e.kind == DEVICE_CHANGE]
        f["customer.since_device_change_s"] = (t - changes[-1]) / NS if changes else math.nan
        known_kyc = [e.kyc_level for e in mine if e.kyc_level is not None and e.kyc_level >= 0]
        kyc = event.kyc_level if event.kyc_level is not None and event.kyc_level >= 0 else None
        f["customer.kyc_level"] = kyc if kyc is not None else (known_kyc[-1] if known_kyc else -1)
        hour = ((t // NS + (event.tz_offset_s or 0)) // 3600) % 24
        f["event.local_hour"] = hour
        f["event.is_night"] = hour < 6

        located = [e for e in mine if e.latitude is not None and e.longitude is not None]
        if event.latitude is not None and event.longitude is not None and located:
            last = located[-1]
            assert last.latitude is not None and last.longitude is not None
            km = haversine_km(last.latitude, last.longitude, event.latitude, event.longitude)
            seconds = (t - last.t) / NS
            f["location.distance_km"] = km
            f["location.interval_s"] = seconds
            f["location.speed_kmh"] = km * 3600 / max(seconds, 1.0)
        else:
            f["location.distance_km"] = math.nan
            f["location.interval_s"] = math.nan
            f["location.speed_kmh"] = math.nan

        f["customer.outflow_24h"] = self._outflow(c, t)
        if cp:
            link = link_of(cp)
            linked_seen = link is not None and any(e.customer == link for e in prior)
            if linked_seen:
                assert link is not None
                f["counterparty.account_age_s"] = (t - self._created(link, None, t)) / NS
            elif to_cp:
                f["counterparty.account_age_s"] = (t - to_cp[0].t) / NS
            else:
                f["counterparty.account_age_s"] = 0.0
            out = self._outflow(link, t) if link is not None else 0
            inflow = f["counterparty.sum_24h"]
            f["counterparty.outflow_24h"] = out
            f["counterparty.passthrough_ratio_24h"] = out / inflow if inflow > 0 else math.nan
        else:
            f["counterparty.account_age_s"] = math.nan
            f["counterparty.outflow_24h"] = 0
            f["counterparty.passthrough_ratio_24h"] = math.nan

        self.history.append(
            Seen(
                t=t,
                kind=kind,
                customer=c,
                amount=event.amount if money else 0,
                device=event.device_id,
                merchant=merchant,
                counterparty=cp,
                ip=event.ip,
                latitude=event.latitude,
                longitude=event.longitude,
                kyc_level=event.kyc_level,
                account_created_ns=event.account_created_ns,
            )
        )
        return f

    def _created(self, customer: int, given: int | None, t: int) -> int:
        """Creation time: given with the event, else the newest given before, else the first
        sighting (this event's time if there was none)."""
        if given:
            return given
        mine = [e for e in self.history if e.customer == customer]
        stated = [e.account_created_ns for e in mine if e.account_created_ns]
        if stated:
            return stated[-1]
        return mine[0].t if mine else t

    def _outflow(self, customer: int, t: int) -> int:
        return sum(
            e.amount
            for e in self.history
            if e.customer == customer and e.kind in OUTFLOW and in_window(e.t, t, HOUR)
        )
