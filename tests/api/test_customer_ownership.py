"""Phones are unique per tenant (no existence leak across tenants), and a customer or merchant
is created with its owner row in one transaction (no object that no tenant owns)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from puhui.payments import Payee
from puhui.platform import PaymentOwners
from puhui.store import payments as payments_tables
from puhui.store import platform as platform_tables

from .conftest import Api, make_api

P = "/v1/payments"
PHONE = "+8613712340000"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from make_api(tmp_path_factory.mktemp("owners"))


def _register(api: Api, token: str, phone: str, name: str = "Li") -> Any:
    return api.client.post(
        f"{P}/customers", json={"phone": phone, "display_name": name}, headers=api.auth(token)
    )


def _counts(api: Api) -> tuple[int, int, int]:
    with api.engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(payments_tables.customers)).one()[
                0
            ],
            conn.execute(sa.select(sa.func.count()).select_from(payments_tables.merchants)).one()[
                0
            ],
            conn.execute(
                sa.select(sa.func.count()).select_from(platform_tables.payment_owners)
            ).one()[0],
        )


def test_a_phone_of_another_tenants_customer_is_free_and_tells_nothing(api: Api) -> None:
    a_customer = _register(api, api.token_a, PHONE)
    assert a_customer.status_code == 201, a_customer.text
    # B registers the same phone: the answer is the one for a phone nobody has.
    fresh = _register(api, api.token_b, "+8613712349999")
    taken_elsewhere = _register(api, api.token_b, PHONE)
    assert taken_elsewhere.status_code == fresh.status_code == 201, taken_elsewhere.text
    assert taken_elsewhere.json()["id"] != a_customer.json()["id"]
    assert taken_elsewhere.json()["phone"] == a_customer.json()["phone"]
    # Within a tenant the phone stays unique.
    again = _register(api, api.token_a, PHONE)
    assert (again.status_code, again.json()["code"]) == (409, "phone_taken")

    # National ids alike: verified for A's customer, still free for B's.
    national = {"national_id": "ID-OWNERS-1"}
    for token, customer in ((api.token_a, a_customer), (api.token_b, taken_elsewhere)):
        verified = api.client.post(
            f"{P}/customers/{customer.json()['id']}/identity",
            json=national,
            headers=api.auth(token),
        )
        assert verified.status_code == 200, verified.text
    second_a = _register(api, api.token_a, "+8613712340001").json()
    clash = api.client.post(
        f"{P}/customers/{second_a['id']}/identity", json=national, headers=api.auth(api.token_a)
    )
    assert (clash.status_code, clash.json()["code"]) == (409, "identity_taken")

    # A payee named by phone is one of the caller's own customers.
    payments = api.client.app.state.puhui.payments.payments  # type: ignore[attr-defined]
    payee = Payee(phone=PHONE)
    assert payments.resolve_payee(payee, namespace=api.a.id) == a_customer.json()["id"]
    assert payments.resolve_payee(payee, namespace=api.b.id) == taken_elsewhere.json()["id"]


@pytest.mark.parametrize("kind", ["customer", "merchant"])
def test_a_failure_after_the_insert_leaves_neither_the_object_nor_its_owner(
    api: Api, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    phone = "+8613712345555"
    bodies = {
        "customer": ("/customers", {"phone": phone, "display_name": "Crash"}),
        "merchant": (
            "/merchants",
            {"name": "Crash", "category": "food", "fee_bps": 60, "settlement_card_token": "m"},
        ),
    }
    path, body = bodies[kind]
    before = _counts(api)
    real_claim_in = PaymentOwners.claim_in

    def crash_after_the_owner_row(self: PaymentOwners, conn: sa.Connection, *args: Any) -> None:
        real_claim_in(self, conn, *args)  # both rows written, the commit never comes
        raise RuntimeError("the process dies between the insert and the commit")

    monkeypatch.setattr(PaymentOwners, "claim_in", crash_after_the_owner_row)
    failed = api.client.post(P + path, json=body, headers=api.auth())
    assert (failed.status_code, failed.json()["code"]) == (500, "internal_error")
    assert _counts(api) == before  # nothing half-made: no object, no owner row

    monkeypatch.undo()
    retried = api.client.post(P + path, json=body, headers=api.auth())
    assert retried.status_code == 201, retried.text  # the phone was not left taken
    created = retried.json()["id"]
    after = _counts(api)
    assert after[2] == before[2] + 1
    with api.engine.connect() as conn:
        owner = conn.execute(
            sa.select(platform_tables.payment_owners.c.tenant_id).where(
                platform_tables.payment_owners.c.kind == kind,
                platform_tables.payment_owners.c.object_id == created,
            )
        ).scalar_one()
    assert owner == api.a.id
    seen = api.client.get(f"{P}/{kind}s/{created}", headers=api.auth())
    assert seen.status_code == 200


def test_every_customer_and_merchant_has_an_owner(api: Api) -> None:
    customers, merchants, owners = _counts(api)
    assert customers + merchants == owners
