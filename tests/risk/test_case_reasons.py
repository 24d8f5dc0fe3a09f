"""A held decision's reasons read back as structured values (what the case API shows)."""

from __future__ import annotations

from puhui.risk import CaseReason, explain_reasons


def test_rules_model_contributions_and_shadow_hits() -> None:
    assert explain_reasons(
        [
            "ato.drain(event.type=withdrawal, customer.since_password_reset_s=120)",
            "model:customer.count_1h=+0.831",
            "model:amount=-0.2",
            "shadow:velocity",
            "list.blocked",
        ]
    ) == [
        CaseReason(
            "rule",
            "ato.drain",
            (("event.type", "withdrawal"), ("customer.since_password_reset_s", "120")),
        ),
        CaseReason("model", "customer.count_1h", contribution=0.831),
        CaseReason("model", "amount", contribution=-0.2),
        CaseReason("shadow", "velocity"),
        CaseReason("rule", "list.blocked"),
    ]


def test_odd_text_is_kept_not_lost() -> None:
    # A category value holding ", " stays one value; text in no known form is "other".
    [rule, broken, model] = explain_reasons(
        ["r1(event.merchant=Tea, Coffee, event.amount=5)", "r2(x=1", "model:amount=big"]
    )
    assert rule.values == (("event.merchant", "Tea, Coffee"), ("event.amount", "5"))
    assert broken == CaseReason("other", "r2(x=1")
    assert model == CaseReason("other", "model:amount=big")
    assert rule.as_json() == {
        "kind": "rule",
        "name": "r1",
        "values": {"event.merchant": "Tea, Coffee", "event.amount": "5"},
        "contribution": None,
    }
