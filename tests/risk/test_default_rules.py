"""The shipped ruleset, rule by rule: for each rule an event that fires it and a near miss (one
value just across the rule's edge) that does not. Evaluated directly on feature columns —
one batch for the whole table — so the table pins the rules' edges, not the feature store.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pytest

from puhui.clock import ManualClock
from puhui.risk import FeatureType, RiskLists, RuleResults, Ruleset, load_ruleset
from puhui.risk._engine import DEFAULT_RULES, engine_schema

DAY: Final = 86_400
WEEK: Final = 7 * DAY

BENIGN: Final[dict[str, Any]] = {
    "event.type": "p2p",
    "event.amount": 100,  # 1 CNY
    "event.customer": "c:1",
    "event.device": "dev-own",
    "event.ip": "10.0.0.1",
    "event.card": "",
    "event.merchant": "",
    "customer.account_age_s": 800 * DAY,
    "customer.amount_history_count": 50,
    "customer.amount_percentile": 0.5,
    "customer.amount_zscore": 0.0,
    "customer.count_1h": 0,
    "device.count_24h": 0,
    "customer.count_24h": 0,
    "customer.count_30d": 40,
    "customer.sum_24h": 0,
    "customer.outflow_24h": 0,
    "customer.kyc_level": 2,
    "customer.since_device_change_s": 400 * DAY,
    "customer.since_password_reset_s": 400 * DAY,
    "counterparty.account_age_s": 900 * DAY,
    "counterparty.distinct_payers_24h": 0,
    "counterparty.first_payment": False,
    "counterparty.passthrough_ratio_24h": 0.0,
    "counterparty.sum_24h": 0,
    "counterparty.count_1h": 0,
    "counterparty.count_24h": 0,
    "counterparty.sum_1h": 0,
    "counterparty.sum_30d": 0,
    "counterparty.count_7d": 0,
    "counterparty.sum_7d": 0,
    "counterparty.count_30d": 0,
    "device.count_1h": 1,
    "device.new_for_customer": False,
    "device.trusted_for_s": 400 * DAY,
    "device.distance_km": 0.0,
    "device.speed_kmh": 0.0,
    "device.familiar_payees_paid": 40,
    "counterparty.new_device_payee_s": float("nan"),
    "customer.new_device_payees_sum_14d": 0,
    "customer.new_payers_inflow_24h": 0,
    "customer.new_payers_24h": 0,
    "customer.new_card_top_ups_24h": 0,
    "counterparty.first_paid_s": float("nan"),
    "customer.new_payees_sent_24h": 0,
    "event.is_night": False,
    "location.distance_km": 0.0,
    "location.speed_kmh": 0.0,
    "model.score": 0,
}
"""An established customer paying a friend a little from their own phone: no rule fires."""

_NEW_BUYER: Final[dict[str, Any]] = {
    "event.type": "payment",
    "customer.account_age_s": DAY,
    "customer.kyc_level": 1,
    "customer.amount_history_count": 3,
    "event.amount": 50_000,
}
"""A day-old, basic-KYC account's third money event: 500 CNY at a merchant."""

_DRAIN: Final[dict[str, Any]] = {
    "counterparty.new_device_payee_s": 3 * DAY,
    "customer.new_device_payees_sum_14d": 45_000,
    "device.familiar_payees_paid": 0,
    "event.amount": 5_000,
}
"""150 CNY a night for the fourth night to a payee first paid from a new device three days
ago, from a device that never paid anyone the customer paid before it."""

_FAN_OUT: Final[dict[str, Any]] = {
    "counterparty.first_payment": True,
    "device.trusted_for_s": DAY - 1,
    "device.familiar_payees_paid": 0,
    "customer.new_device_payees_sum_14d": 38_000,
    "event.amount": 19_000,
}
"""The third 190 CNY to someone never paid, an hour after a phone was first trusted on an
account of 800 days."""

_NIGHT: Final[dict[str, Any]] = {
    "event.is_night": True,
    "counterparty.first_payment": True,
    "event.amount": 100_000,
    "customer.amount_percentile": 0.98,
}
"""1,000 CNY at night to someone never paid, above 97 % of the customer's past amounts."""

_PARTS: Final[dict[str, Any]] = {
    "counterparty.account_age_s": 90 * DAY - 1,
    "counterparty.distinct_payers_24h": 1,
    "counterparty.count_24h": 2,
    "counterparty.sum_24h": 90_000,
    "counterparty.sum_30d": 90_000,
    "event.amount": 10_000,
}
"""The third payment today to an 89-day-old account this customer alone paid (900 CNY before,
nothing earlier in the month): 100 CNY takes it to 1,000."""

_CONVERGE: Final[dict[str, Any]] = {
    "event.type": "payment",
    "event.amount": 100_000,
    "customer.account_age_s": 90 * DAY - 1,
    "customer.amount_history_count": 9,
    "counterparty.account_age_s": 30 * DAY - 1,
    "counterparty.sum_24h": 100_000,
}
"""A thin 89-day-old account spends 1,000 CNY at a merchant first paid 29 days ago that took
1,000 CNY today."""

_CASH_PARTS: Final[dict[str, Any]] = {
    "event.type": "withdrawal",
    "event.amount": 19_900,
    "customer.outflow_24h": 30_100,
    "device.trusted_for_s": 3_600,
    "counterparty.count_24h": 2,
    "counterparty.count_30d": 2,
}
"""From a phone trusted an hour ago, a third 199 CNY to a card first used today: 500 CNY."""

_SPREE: Final[dict[str, Any]] = {
    "event.type": "payment",
    "event.amount": 19_000,
    "customer.outflow_24h": 31_000,
    "device.trusted_for_s": 3_600,
    "device.familiar_payees_paid": 0,
    "device.count_1h": 2,
}
"""From a phone trusted an hour ago that paid no usual payee, its third payment in the hour,
taking the day to 500 CNY."""

_NIGHT_PARTS: Final[dict[str, Any]] = {
    "event.is_night": True,
    "event.amount": 99_900,
    "counterparty.first_paid_s": 600.0,
    "customer.count_1h": 2,
    "customer.new_payees_sent_24h": 100_100,
}
"""At night, a third event in the hour, 999 CNY to a payee first paid ten minutes ago: 2,000 CNY
sent to payees new today."""

_OVER_DAYS: Final[dict[str, Any]] = {
    "event.amount": 49_000,
    "customer.amount_percentile": 0.91,
    "counterparty.account_age_s": 60 * DAY - 1,
    "counterparty.distinct_payers_24h": 1,
    "counterparty.count_7d": 3,
    "counterparty.sum_7d": 151_000,
    "counterparty.sum_30d": 151_000 + 49_999,
}
"""A fourth 490 CNY this week, above 91 % of the customer's past amounts, to a 59-day-old payee
with one payer today: 2,000 CNY this week."""

_CONVERGE_PARTS: Final[dict[str, Any]] = {
    **_CONVERGE,
    "event.amount": 10_000,
    "customer.outflow_24h": 40_000,
    "counterparty.count_24h": 2,
}
"""The thin account's payments today reach 500 CNY in a part of 100 CNY, at that merchant
whose two sales today averaged 500 CNY."""

_CYCLE: Final[dict[str, Any]] = {
    "event.type": "withdrawal",
    "counterparty.first_payment": True,
    "event.amount": 20_000,
    "customer.outflow_24h": 30_000,
    "customer.new_card_top_ups_24h": 50_000,
}
"""200 CNY to a card never used, after 300 CNY sent out today and 500 CNY topped up from new
cards."""

_PASSES_ON: Final[dict[str, Any]] = {
    "event.type": "withdrawal",
    "customer.count_30d": 3,
    "customer.new_payers_inflow_24h": 50_000,
    "customer.new_payers_24h": 5,
    "customer.outflow_24h": 10_000,
    "event.amount": 15_000,
}
"""A quiet account withdraws 150 CNY after 100 CNY: half of the 500 CNY five strangers sent it
today."""

# rule id -> (changes that fire it, the same with one value just across the edge)
CASES: Final[dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]] = {
    "list.blocked": [
        ({"event.device": "dev-stolen"}, {"event.device": "dev-stolen-2"}),
        ({"event.customer": "c:666"}, {"event.customer": "c:667"}),
        ({"event.ip": "203.0.113.9"}, {"event.ip": "203.0.113.10"}),
        ({"event.card": "card:13"}, {"event.card": "card:14"}),
        ({"event.merchant": "m:77"}, {"event.merchant": "m:78"}),
    ],
    "ato.login.new_device": [
        (
            {
                "event.type": "login",
                "device.new_for_customer": True,
                "customer.account_age_s": DAY + 1,
            },
            {"event.type": "login", "device.new_for_customer": True, "customer.account_age_s": DAY},
        ),
    ],
    "ato.device_change.untrusted": [
        (
            {
                "event.type": "device_change",
                "event.amount": 0,
                "device.new_for_customer": True,
                "customer.account_age_s": DAY + 1,
            },
            {
                "event.type": "device_change",
                "event.amount": 0,
                "device.new_for_customer": True,
                "customer.account_age_s": DAY,
            },
        ),
        (
            {"event.type": "device_change", "event.amount": 0, "device.new_for_customer": True},
            {"event.type": "device_change", "event.amount": 0, "device.new_for_customer": False},
        ),
    ],
    "ato.money_out_untrusted_device_again": [
        (
            {"event.type": "payment", "device.new_for_customer": True, "device.count_24h": 2},
            {"event.type": "payment", "device.new_for_customer": True, "device.count_24h": 1},
        ),
        (
            {"event.type": "p2p", "device.new_for_customer": True, "device.count_24h": 5},
            {"event.type": "p2p", "device.new_for_customer": False, "device.count_24h": 5},
        ),
        (
            {"event.type": "withdrawal", "device.new_for_customer": True, "device.count_24h": 2},
            {
                "event.type": "withdrawal",
                "device.new_for_customer": True,
                "device.count_24h": 2,
                "customer.amount_history_count": 0,
            },
        ),
    ],
    "ato.money_out_untrusted_device": [
        (
            {"event.type": "payment", "device.new_for_customer": True, "event.amount": 2_001},
            {"event.type": "payment", "device.new_for_customer": True, "event.amount": 2_000},
        ),
        (
            {"event.type": "withdrawal", "device.new_for_customer": True, "event.amount": 2_001},
            {"event.type": "withdrawal", "device.new_for_customer": False, "event.amount": 2_001},
        ),
        (
            {"device.new_for_customer": True, "location.distance_km": 300.0},
            {"device.new_for_customer": True, "location.distance_km": 299.9},
        ),
        (
            {"device.new_for_customer": True, "event.amount": 50_000},
            {
                "device.new_for_customer": True,
                "event.amount": 50_000,
                "customer.amount_history_count": 0,
            },
        ),
        (
            {"device.new_for_customer": True, "event.amount": 50_000},
            {"device.new_for_customer": True, "event.amount": 50_000, "event.type": "top_up"},
        ),
    ],
    "ato.impossible_travel": [
        (
            {
                "device.new_for_customer": True,
                "location.speed_kmh": 1001,
                "location.distance_km": 301,
            },
            {
                "device.new_for_customer": True,
                "location.speed_kmh": 1000,
                "location.distance_km": 301,
            },
        ),
    ],
    "ato.cloned_device": [
        (
            {"device.speed_kmh": 1001, "device.distance_km": 301},
            {"device.speed_kmh": 1000, "device.distance_km": 301},
        ),
        (
            {"device.speed_kmh": 1001, "device.distance_km": 301},
            {"device.speed_kmh": 1001, "device.distance_km": 300},
        ),
    ],
    "ato.reset.new_device": [
        (
            {"event.type": "password_reset", "device.new_for_customer": True},
            {"event.type": "password_reset", "device.new_for_customer": False},
        ),
    ],
    "ato.card_after_reset": [
        (
            {"event.type": "card_binding", "customer.since_password_reset_s": DAY - 1},
            {"event.type": "card_binding", "customer.since_password_reset_s": DAY},
        ),
        (
            {"event.type": "card_binding", "customer.since_device_change_s": DAY - 1},
            {"event.type": "card_binding", "customer.since_device_change_s": DAY},
        ),
    ],
    "ato.money_out_after_reset": [
        (
            {
                "customer.since_password_reset_s": 600,
                "counterparty.first_payment": True,
                "event.amount": 20_000,
            },
            {
                "customer.since_password_reset_s": 600,
                "counterparty.first_payment": True,
                "event.amount": 19_999,
            },
        ),
        (
            {
                "event.type": "withdrawal",
                "customer.since_device_change_s": 600,
                "event.amount": 20_000,
            },
            {"event.type": "top_up", "customer.since_device_change_s": 600, "event.amount": 20_000},
        ),
    ],
    "ato.charge_card_after_reset": [
        (
            {
                "event.type": "top_up",
                "customer.since_password_reset_s": 3_599,
                "event.amount": 50_000,
            },
            {
                "event.type": "top_up",
                "customer.since_password_reset_s": 3_600,
                "event.amount": 50_000,
            },
        ),
    ],
    "mule.young_cash_out": [
        (
            {
                "event.type": "withdrawal",
                "customer.account_age_s": 2 * WEEK - 1,
                "customer.amount_history_count": 9,
                "customer.outflow_24h": 19_999,
                "event.amount": 1,
            },
            {
                "event.type": "p2p",
                "customer.account_age_s": 2 * WEEK - 1,
                "customer.amount_history_count": 9,
                "customer.outflow_24h": 19_999,
                "event.amount": 1,
            },
        ),
        (
            {
                "event.type": "withdrawal",
                "customer.account_age_s": 2 * WEEK - 1,
                "customer.amount_history_count": 9,
                "event.amount": 20_000,
            },
            {
                "event.type": "withdrawal",
                "customer.account_age_s": 2 * WEEK - 1,
                "customer.amount_history_count": 10,
                "event.amount": 20_000,
            },
        ),
    ],
    "ato.money_out_on_new_device": [
        (
            {
                "device.trusted_for_s": DAY - 1,
                "counterparty.first_payment": True,
                "event.amount": 20_000,
            },
            {
                "device.trusted_for_s": DAY,
                "counterparty.first_payment": True,
                "event.amount": 20_000,
            },
        ),
        (
            {
                "device.trusted_for_s": 600,
                "customer.account_age_s": 600 + WEEK + 1,
                "event.type": "withdrawal",
                "event.amount": 20_000,
            },
            {
                "device.trusted_for_s": 600,
                "customer.account_age_s": 600 + WEEK,
                "event.type": "withdrawal",
                "event.amount": 20_000,
            },
        ),
        (
            {
                "device.trusted_for_s": 600,
                "event.type": "payment",
                "event.amount": 20_000,
                "counterparty.first_payment": True,
            },
            {
                "device.trusted_for_s": 600,
                "event.type": "payment",
                "event.amount": 19_999,
                "counterparty.first_payment": True,
            },
        ),
    ],
    "ato.drain_after_change": [
        (
            {
                "customer.since_password_reset_s": 600,
                "counterparty.count_1h": 1,
                "counterparty.sum_1h": 49_999,
                "event.amount": 1,
            },
            {
                "customer.since_password_reset_s": 600,
                "counterparty.count_1h": 1,
                "counterparty.sum_1h": 49_998,
                "event.amount": 1,
            },
        ),
        (
            {
                "customer.since_password_reset_s": 600,
                "counterparty.count_1h": 1,
                "event.amount": 50_000,
            },
            {
                "customer.since_password_reset_s": 600,
                "counterparty.count_1h": 0,
                "event.amount": 50_000,
            },
        ),
        (
            {
                "customer.since_device_change_s": DAY - 1,
                "counterparty.count_1h": 1,
                "event.amount": 50_000,
            },
            {
                "customer.since_device_change_s": DAY,
                "counterparty.count_1h": 1,
                "event.amount": 50_000,
            },
        ),
        (
            {"device.trusted_for_s": DAY - 1, "counterparty.count_1h": 1, "event.amount": 50_000},
            {
                "device.trusted_for_s": DAY - 1,
                "counterparty.count_1h": 1,
                "event.type": "withdrawal",
                "event.amount": 50_000,
            },
        ),
    ],
    "ato.slow_drain_new_payee": [
        (_DRAIN, {**_DRAIN, "customer.new_device_payees_sum_14d": 44_999}),
        (
            {**_DRAIN, "counterparty.new_device_payee_s": 2 * WEEK - 1},
            {**_DRAIN, "counterparty.new_device_payee_s": 2 * WEEK},
        ),
        (_DRAIN, {**_DRAIN, "device.familiar_payees_paid": 1}),
        (_DRAIN, {**_DRAIN, "event.type": "payment"}),
        (
            {**_DRAIN, "customer.account_age_s": 3 * DAY + WEEK + 1},
            {**_DRAIN, "customer.account_age_s": 3 * DAY + WEEK},
        ),
    ],
    "ato.new_card_cash_out": [
        (
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": True,
                "event.amount": 20_000,
                "customer.since_password_reset_s": WEEK - 1,
            },
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": True,
                "event.amount": 20_000,
                "customer.since_password_reset_s": WEEK,
            },
        ),
        (
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": True,
                "event.amount": 20_000,
                "device.trusted_for_s": WEEK - 1,
            },
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": False,
                "event.amount": 20_000,
                "device.trusted_for_s": WEEK - 1,
            },
        ),
    ],
    "mule.fan_in_first_payments": [
        (
            {
                "counterparty.first_payment": True,
                "counterparty.distinct_payers_24h": 2,
                "counterparty.sum_24h": 100_000,
                "event.amount": 50_000,
            },
            {
                "counterparty.first_payment": True,
                "counterparty.distinct_payers_24h": 1,
                "counterparty.sum_24h": 100_000,
                "event.amount": 50_000,
            },
        ),
        (
            {
                "counterparty.first_payment": True,
                "counterparty.distinct_payers_24h": 2,
                "counterparty.sum_24h": 100_000,
                "event.amount": 50_000,
            },
            {
                "counterparty.first_payment": True,
                "counterparty.distinct_payers_24h": 2,
                "counterparty.sum_24h": 99_999,
                "event.amount": 50_000,
            },
        ),
    ],
    "mule.fan_in_young_payers": [
        (
            {"customer.account_age_s": DAY - 1, "counterparty.distinct_payers_24h": 2},
            {"customer.account_age_s": DAY, "counterparty.distinct_payers_24h": 2},
        ),
    ],
    "mule.pass_through_large": [
        (
            {
                "event.amount": 100_000,
                "counterparty.sum_24h": 100_000,
                "counterparty.passthrough_ratio_24h": 0.81,
            },
            {
                "event.amount": 100_000,
                "counterparty.sum_24h": 99_999,
                "counterparty.passthrough_ratio_24h": 0.81,
            },
        ),
    ],
    "cash.unusual_to_new_card": [
        (
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": True,
                "event.amount": 100_000,
                "customer.amount_percentile": 0.971,
            },
            {
                "event.type": "withdrawal",
                "counterparty.first_payment": True,
                "event.amount": 100_000,
                "customer.amount_percentile": 0.97,
            },
        ),
    ],
    "cards.binding_spree": [
        (
            {
                "event.type": "card_binding",
                "customer.account_age_s": 30 * DAY - 1,
                "customer.count_24h": 3,
            },
            {
                "event.type": "card_binding",
                "customer.account_age_s": 30 * DAY - 1,
                "customer.count_24h": 2,
            },
        ),
    ],
    "cards.charge_after_tests": [
        (
            {
                "event.type": "top_up",
                "customer.account_age_s": 30 * DAY - 1,
                "event.amount": 50_000,
                "customer.count_24h": 2,
                "customer.sum_24h": 4_000,
            },
            {
                "event.type": "top_up",
                "customer.account_age_s": 30 * DAY - 1,
                "event.amount": 50_000,
                "customer.count_24h": 2,
                "customer.sum_24h": 4_001,
            },
        ),
    ],
    "scam.sudden_inflow_quiet_payee": [
        (
            {
                "counterparty.account_age_s": 90 * DAY - 1,
                "event.amount": 50_000,
                "counterparty.sum_24h": 250_000,
                "counterparty.sum_30d": 299_999,
            },
            {
                "counterparty.account_age_s": 90 * DAY - 1,
                "event.amount": 50_000,
                "counterparty.sum_24h": 250_000,
                "counterparty.sum_30d": 300_000,
            },
        ),
        (
            {
                "counterparty.account_age_s": 90 * DAY - 1,
                "event.amount": 250_000,
                "counterparty.sum_24h": 50_000,
                "counterparty.sum_30d": 50_000,
            },
            {
                "counterparty.account_age_s": 90 * DAY - 1,
                "event.amount": 250_001,
                "counterparty.sum_24h": 49_999,
                "counterparty.sum_30d": 49_999,
            },
        ),
    ],
    "mule.day_one_withdrawal": [
        (
            {"event.type": "withdrawal", "customer.account_age_s": DAY - 1},
            {"event.type": "withdrawal", "customer.account_age_s": DAY},
        ),
    ],
    "mule.pays_young_fan_in": [
        (
            {
                "counterparty.account_age_s": 2 * WEEK - 1,
                "counterparty.distinct_payers_24h": 2,
                "event.amount": 20_000,
            },
            {
                "counterparty.account_age_s": 2 * WEEK - 1,
                "counterparty.distinct_payers_24h": 1,
                "event.amount": 20_000,
            },
        ),
    ],
    "mule.pass_through": [
        (
            {"counterparty.passthrough_ratio_24h": 0.81, "event.amount": 20_000},
            {"counterparty.passthrough_ratio_24h": 0.8, "event.amount": 20_000},
        ),
    ],
    "mule.young_collector": [
        (
            {"counterparty.account_age_s": WEEK - 1, "counterparty.distinct_payers_24h": 3},
            {"counterparty.account_age_s": WEEK - 1, "counterparty.distinct_payers_24h": 2},
        ),
    ],
    "cards.testing": [
        (
            {"event.type": "top_up", "customer.count_1h": 3, "event.amount": 1_000},
            {"event.type": "top_up", "customer.count_1h": 3, "event.amount": 1_001},
        ),
    ],
    "cards.binding_burst": [
        (
            {
                "event.type": "card_binding",
                "customer.account_age_s": WEEK - 1,
                "customer.count_1h": 2,
            },
            {
                "event.type": "card_binding",
                "customer.account_age_s": WEEK - 1,
                "customer.count_1h": 1,
            },
        ),
    ],
    "cards.young_busy": [
        (
            {"customer.account_age_s": DAY - 1, "customer.count_1h": 3, "event.amount": 1},
            {"customer.account_age_s": DAY - 1, "customer.count_1h": 3, "event.amount": 0},
        ),
    ],
    "cards.young_large_top_up": [
        (
            {"event.type": "top_up", "customer.account_age_s": WEEK - 1, "event.amount": 100_000},
            {"event.type": "top_up", "customer.account_age_s": WEEK - 1, "event.amount": 99_999},
        ),
    ],
    "scam.unusual_to_young_payee": [
        (
            {
                "counterparty.first_payment": True,
                "counterparty.account_age_s": 30 * DAY - 1,
                "event.amount": 50_000,
                "customer.amount_zscore": 3.01,
            },
            {
                "counterparty.first_payment": True,
                "counterparty.account_age_s": 30 * DAY - 1,
                "event.amount": 50_000,
                "customer.amount_zscore": 3.0,
            },
        ),
        (
            {
                "counterparty.first_payment": True,
                "counterparty.account_age_s": 30 * DAY - 1,
                "event.amount": 50_000,
                "customer.amount_history_count": 2,
            },
            {
                "counterparty.first_payment": True,
                "counterparty.account_age_s": 30 * DAY,
                "event.amount": 50_000,
                "customer.amount_history_count": 2,
            },
        ),
    ],
    "stepup.large_new_payee": [
        (
            {"counterparty.first_payment": True, "event.amount": 300_000},
            {"counterparty.first_payment": False, "event.amount": 300_000},
        ),
    ],
    "scam.pays_week_old_account": [
        (
            {"counterparty.account_age_s": WEEK - 1, "event.amount": 20_000},
            {"counterparty.account_age_s": WEEK, "event.amount": 20_000},
        ),
    ],
    "merchant.young_buyer_big_ticket": [
        (
            {"event.type": "payment", "customer.account_age_s": WEEK - 1, "event.amount": 50_000},
            {"event.type": "payment", "customer.account_age_s": WEEK - 1, "event.amount": 49_999},
        ),
    ],
    "merchant.new_account_cash_out": [
        (
            {**_NEW_BUYER, "customer.account_age_s": 2 * DAY - 1},
            {**_NEW_BUYER, "customer.account_age_s": 2 * DAY},
        ),
        (_NEW_BUYER, {**_NEW_BUYER, "customer.kyc_level": 2}),
        (_NEW_BUYER, {**_NEW_BUYER, "customer.amount_history_count": 4}),
        (_NEW_BUYER, {**_NEW_BUYER, "event.amount": 49_999}),
    ],
    "ato.fan_out_new_device": [
        (_FAN_OUT, {**_FAN_OUT, "event.amount": 11_999}),
        (_FAN_OUT, {**_FAN_OUT, "device.trusted_for_s": DAY}),
        (_FAN_OUT, {**_FAN_OUT, "device.familiar_payees_paid": 1}),
        (_FAN_OUT, {**_FAN_OUT, "counterparty.first_payment": False}),
        (
            {**_FAN_OUT, "customer.account_age_s": DAY - 1 + WEEK + 1},
            {**_FAN_OUT, "customer.account_age_s": DAY - 1 + WEEK},
        ),
    ],
    "scam.night_unusual_payee": [
        (_NIGHT, {**_NIGHT, "event.amount": 99_999}),
        (_NIGHT, {**_NIGHT, "event.is_night": False}),
        (_NIGHT, {**_NIGHT, "customer.amount_percentile": 0.97}),
        (
            {**_NIGHT, "counterparty.first_payment": False, "counterparty.count_1h": 1},
            {**_NIGHT, "counterparty.first_payment": False, "counterparty.count_1h": 0},
        ),
        (
            {**_NIGHT, "customer.amount_percentile": 0.5, "customer.amount_zscore": 3.01},
            {**_NIGHT, "customer.amount_percentile": 0.5, "customer.amount_zscore": 3.0},
        ),
        (
            {**_NIGHT, "customer.amount_percentile": 0.5, "customer.amount_history_count": 2},
            {**_NIGHT, "customer.amount_percentile": 0.5, "customer.amount_history_count": 3},
        ),
    ],
    "scam.quiet_payee_paid_repeatedly": [
        (_PARTS, {**_PARTS, "event.amount": 9_999}),
        (_PARTS, {**_PARTS, "counterparty.count_24h": 1}),
        (_PARTS, {**_PARTS, "counterparty.distinct_payers_24h": 2}),
        (_PARTS, {**_PARTS, "counterparty.account_age_s": 90 * DAY}),
        (_PARTS, {**_PARTS, "counterparty.sum_30d": 140_000}),
        (_PARTS, {**_PARTS, "counterparty.first_payment": True}),
        (
            {
                **_PARTS,
                "event.amount": 20_000,
                "counterparty.sum_24h": 80_000,
                "counterparty.sum_30d": 80_000,
            },
            {
                **_PARTS,
                "event.amount": 19_999,
                "counterparty.sum_24h": 80_000,
                "counterparty.sum_30d": 80_000,
            },
        ),
    ],
    "merchant.thin_payers_converge": [
        (_CONVERGE, {**_CONVERGE, "event.amount": 99_999}),
        (_CONVERGE, {**_CONVERGE, "customer.account_age_s": 90 * DAY}),
        (_CONVERGE, {**_CONVERGE, "customer.amount_history_count": 10}),
        (_CONVERGE, {**_CONVERGE, "counterparty.account_age_s": 30 * DAY}),
        (_CONVERGE, {**_CONVERGE, "counterparty.sum_24h": 99_999}),
    ],
    "cash.new_card_in_new_card_out": [
        (_CYCLE, {**_CYCLE, "customer.new_card_top_ups_24h": 49_999}),
        (_CYCLE, {**_CYCLE, "event.amount": 19_999}),
        (_CYCLE, {**_CYCLE, "counterparty.first_payment": False}),
        (
            {**_CYCLE, "counterparty.first_payment": False, "counterparty.count_24h": 1},
            {**_CYCLE, "event.type": "p2p"},
        ),
    ],
    "mule.quiet_account_cashes_out": [
        (_PASSES_ON, {**_PASSES_ON, "customer.count_30d": 4}),
        (
            {**_PASSES_ON, "customer.count_30d": 13, "customer.count_24h": 10},
            {**_PASSES_ON, "customer.count_30d": 14, "customer.count_24h": 10},
        ),
        (_PASSES_ON, {**_PASSES_ON, "event.amount": 14_999}),
        (_PASSES_ON, {**_PASSES_ON, "customer.new_payers_24h": 6}),
        (_PASSES_ON, {**_PASSES_ON, "event.type": "p2p"}),
        (
            {**_PASSES_ON, "customer.new_payers_24h": 1, "event.amount": 40_000},
            {
                **_PASSES_ON,
                "customer.new_payers_inflow_24h": 49_999,
                "customer.new_payers_24h": 1,
                "event.amount": 40_000,
            },
        ),
    ],
    "ato.cash_out_in_parts": [
        (_CASH_PARTS, {**_CASH_PARTS, "event.amount": 19_899}),
        (_CASH_PARTS, {**_CASH_PARTS, "counterparty.count_30d": 3}),
        (_CASH_PARTS, {**_CASH_PARTS, "device.trusted_for_s": DAY}),
        (_CASH_PARTS, {**_CASH_PARTS, "event.type": "p2p"}),
        (
            {**_CASH_PARTS, "customer.account_age_s": 3_600 + WEEK + 1},
            {**_CASH_PARTS, "customer.account_age_s": 3_600 + WEEK},
        ),
        (
            {**_CASH_PARTS, "customer.since_password_reset_s": 60.0},
            {
                **_CASH_PARTS,
                "customer.since_password_reset_s": 60.0,
                "device.trusted_for_s": 400 * DAY,
            },
        ),
    ],
    "ato.shop_spree_new_device": [
        (_SPREE, {**_SPREE, "event.amount": 18_999}),
        (_SPREE, {**_SPREE, "device.count_1h": 1}),
        (_SPREE, {**_SPREE, "device.familiar_payees_paid": 1}),
        (_SPREE, {**_SPREE, "device.trusted_for_s": DAY}),
        (_SPREE, {**_SPREE, "event.type": "p2p"}),
        (
            {**_SPREE, "customer.account_age_s": 3_600 + WEEK + 1},
            {**_SPREE, "customer.account_age_s": 3_600 + WEEK},
        ),
    ],
    "scam.night_split_payments": [
        (_NIGHT_PARTS, {**_NIGHT_PARTS, "customer.new_payees_sent_24h": 100_099}),
        (_NIGHT_PARTS, {**_NIGHT_PARTS, "event.is_night": False}),
        (_NIGHT_PARTS, {**_NIGHT_PARTS, "customer.count_1h": 1}),
        (_NIGHT_PARTS, {**_NIGHT_PARTS, "counterparty.first_paid_s": float("nan")}),
        (_NIGHT_PARTS, {**_NIGHT_PARTS, "event.type": "withdrawal"}),
        (
            {**_NIGHT_PARTS, "counterparty.first_paid_s": 86_399.0},
            {**_NIGHT_PARTS, "counterparty.first_paid_s": 86_400.0},
        ),
        (
            {
                **_NIGHT_PARTS,
                "counterparty.first_paid_s": float("nan"),
                "counterparty.first_payment": True,
            },
            {**_NIGHT_PARTS, "event.amount": 9_999, "customer.new_payees_sent_24h": 200_000},
        ),
    ],
    "scam.young_payee_paid_over_days": [
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.sum_7d": 150_999}),
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.count_7d": 2}),
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.distinct_payers_24h": 2}),
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.account_age_s": 60 * DAY}),
        (_OVER_DAYS, {**_OVER_DAYS, "customer.amount_percentile": 0.9}),
        (
            {**_OVER_DAYS, "customer.amount_percentile": 0.5, "customer.amount_zscore": 3.01},
            {**_OVER_DAYS, "customer.amount_percentile": 0.5, "customer.amount_zscore": 3.0},
        ),
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.sum_30d": 151_000 + 50_000}),
        (_OVER_DAYS, {**_OVER_DAYS, "counterparty.first_payment": True}),
        (
            {**_OVER_DAYS, "event.amount": 10_000, "counterparty.sum_7d": 190_000},
            {**_OVER_DAYS, "event.amount": 9_999, "counterparty.sum_7d": 190_001},
        ),
    ],
    "merchant.thin_payers_converge_in_parts": [
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "customer.outflow_24h": 39_999}),
        (
            {**_CONVERGE_PARTS, "customer.outflow_24h": 40_001},
            {**_CONVERGE_PARTS, "event.amount": 9_999, "customer.outflow_24h": 40_001},
        ),
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "customer.account_age_s": 90 * DAY}),
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "customer.amount_history_count": 10}),
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "counterparty.account_age_s": 30 * DAY}),
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "counterparty.sum_24h": 99_999}),
        (_CONVERGE_PARTS, {**_CONVERGE_PARTS, "counterparty.count_24h": 3}),
    ],
    "farm.device_crowd": [
        (
            {"customer.account_age_s": WEEK - 1, "device.count_1h": 6},
            {"customer.account_age_s": WEEK - 1, "device.count_1h": 5},
        ),
    ],
    "model.high": [
        ({"model.score": 900}, {"model.score": 899}),
    ],
}

ROWS: Final[list[tuple[str, str, dict[str, Any]]]] = [("benign", "", {})] + [
    (f"{rule_id}#{k}:{side}", rule_id, changes)
    for rule_id, pairs in CASES.items()
    for k, pair in enumerate(pairs)
    for side, changes in zip(("fires", "near-miss"), pair, strict=True)
]


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset(DEFAULT_RULES, engine_schema())


@pytest.fixture(scope="module")
def results(ruleset: Ruleset) -> RuleResults:
    """The whole table as one batch, one row per case."""
    clock = ManualClock(1_767_000_000 * 10**9)
    lists = RiskLists(clock)
    for name, value in [
        ("blocked_devices", "dev-stolen"),
        ("blocked_customers", "c:666"),
        ("blocked_ips", "203.0.113.9"),
        ("blocked_cards", "card:13"),
        ("blocked_merchants", "m:77"),
    ]:
        lists.add(name, value, reason="test")
    columns: dict[str, Any] = {}
    for name in ruleset.features:
        values = [{**BENIGN, **changes}[name] for _, _, changes in ROWS]
        kind = ruleset.schema[name]
        if kind is FeatureType.CATEGORY:
            columns[name] = np.asarray(values, dtype=np.str_)
        elif kind is FeatureType.BOOLEAN:
            columns[name] = np.asarray(values, dtype=np.bool_)
        else:
            columns[name] = np.asarray(values, dtype=np.float64)
    return ruleset.evaluate(columns, lists=lists)


def _hits(ruleset: Ruleset, results: RuleResults, row: int) -> set[str]:
    offsets = results.hit_offsets
    return {
        ruleset.evaluated_rules[int(h)].id for h in results.hits[offsets[row] : offsets[row + 1]]
    }


def test_every_rule_of_the_file_has_cases(ruleset: Ruleset) -> None:
    assert set(CASES) == {rule.id for rule in ruleset.evaluated_rules}
    assert set(BENIGN) == set(ruleset.features)


def test_the_benign_event_fires_nothing(ruleset: Ruleset, results: RuleResults) -> None:
    assert _hits(ruleset, results, 0) == set()
    assert int(results.severity[0]) == 0 and int(results.scores[0]) == 0


@pytest.mark.parametrize(
    ("row", "rule_id"),
    [(k, rule_id) for k, (_, rule_id, _) in enumerate(ROWS) if rule_id],
    ids=[label for label, rule_id, _ in ROWS if rule_id],
)
def test_each_rule_fires_and_its_near_miss_does_not(
    ruleset: Ruleset, results: RuleResults, row: int, rule_id: str
) -> None:
    fires = ROWS[row][0].endswith(":fires")
    assert (rule_id in _hits(ruleset, results, row)) is fires, _hits(ruleset, results, row)
