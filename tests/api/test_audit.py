"""Every state-changing request is audited (who, what, when, result); reads are not."""

from __future__ import annotations

from puhui.platform import AuditLog

from .conftest import Api, account


def test_state_changing_requests_are_chained_into_the_audit_log(api: Api) -> None:
    audit = AuditLog(api.engine)
    auth = api.auth()
    api.client.post("/v1/ledger/accounts", json={"accounts": [account(1)]}, headers=auth)
    api.clock.advance(1000)
    api.client.post("/v1/ledger/accounts", json={"accounts": [{"id": 1}]}, headers=auth)
    api.client.post("/v1/ledger/accounts/lookup", json={"ids": ["1"]}, headers=auth)
    api.client.get("/v1/ledger/accounts/1/transfers", headers=auth)
    api.client.post("/v1/ledger/accounts", json={"accounts": [account(2)]})  # no key
    _, reader = api.tenants.create_key(api.b.id, ["ledger:read"])
    api.client.post("/v1/ledger/transfers", json={"transfers": []}, headers=api.auth(reader))
    entries = audit.entries()
    principal_a = api.tenants.authenticate(api.token_a)
    assert [(e.tenant_id, e.key_id, e.method, e.route, e.status) for e in entries] == [
        (api.a.id, principal_a.key_id, "POST", "/v1/ledger/accounts", 200),
        (api.a.id, principal_a.key_id, "POST", "/v1/ledger/accounts", 422),
        (api.b.id, api.tenants.authenticate(reader).key_id, "POST", "/v1/ledger/transfers", 403),
    ]
    assert entries[1].at_ns == entries[0].at_ns + 1000
    report = audit.verify()
    assert report.ok and report.entries == 3
