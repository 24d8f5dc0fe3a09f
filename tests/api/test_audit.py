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


def test_concurrent_writes_are_all_audited_in_one_chain(api: Api) -> None:
    import threading

    start = threading.Barrier(8)

    def send(i: int) -> None:
        start.wait()
        body = {"accounts": [account(1000 + i)]}
        api.client.post("/v1/ledger/accounts", json=body, headers=api.auth())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit = AuditLog(api.engine)
    report = audit.verify()
    assert report.ok and report.entries == 8
    assert {e.status for e in audit.entries()} == {200}


def test_a_revoked_key_stops_working_within_the_auth_cache_time(api: Api) -> None:
    _, token = api.tenants.create_key(api.a.id, ["ledger:read"])
    key_id = api.tenants.authenticate(token).key_id
    path, body = "/v1/ledger/accounts/lookup", {"ids": ["1"]}
    assert api.client.post(path, json=body, headers=api.auth(token)).status_code == 200
    api.tenants.revoke_key(key_id)  # elsewhere (e.g. the CLI): this server remembers the key
    assert api.client.post(path, json=body, headers=api.auth(token)).status_code == 200
    api.clock.advance(1_000_000_000)  # ApiOptions.auth_cache_s (1 s) later
    response = api.client.post(path, json=body, headers=api.auth(token))
    assert response.status_code == 401 and response.json()["code"] == "api_key_invalid"


def test_a_path_with_a_nul_is_refused_and_audited_with_it_escaped(api: Api) -> None:
    """``%00`` in a path reaches the route decoded (a NUL): the request is refused and its
    entry keeps the NUL as ``%00`` (PostgreSQL's text cannot hold one: the group commit of
    audit entries failed there, every request in it answered 500)."""
    response = api.client.post(
        "/v1/payments/customers/%00/top-ups",
        json={"card_id": 1, "amount": 100, "currency": "CNY"},
        headers=api.auth(),
    )
    assert response.status_code == 422
    [entry] = AuditLog(api.engine).entries()
    assert (entry.route, entry.target, entry.status) == (
        "/v1/payments/customers/{customer_id}/top-ups",
        "/v1/payments/customers/%00/top-ups",
        422,
    )
    assert AuditLog(api.engine).verify().ok
