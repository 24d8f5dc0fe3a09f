"""Tenants and API keys: shown once, stored as hashes only, scoped, revocable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.platform import (
    ApiKeyNotFoundError,
    Claim,
    IdempotencyRecords,
    InvalidApiKeyError,
    InvalidNameError,
    OwnedKind,
    PaymentOwners,
    Scope,
    ScopeMissingError,
    ScopeNotAllowedError,
    TenantKind,
    TenantNameTakenError,
    Tenants,
    TenantStatus,
    UnknownTenantKindError,
)
from puhui.platform import owners as owners_module
from puhui.store import platform as tables

from .._locks import PROMPTLY_S, wait_until_blocked_or_done
from .conftest import SteppedClock, held, is_write


def test_a_key_is_shown_once_and_stored_as_a_hash_only(
    engine: sa.Engine, clock: ManualClock
) -> None:
    tenants = Tenants(engine, clock=clock)
    bank = tenants.create("Bank A", TenantKind.BANK)
    key, token = tenants.create_key(bank.id, ["ledger:read"], "reporting")
    secret = token.rsplit("_", 1)[1]
    assert token.startswith(f"pk_{key.id}_") and len(secret) == 64
    with engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(sa.select(tables.api_keys)).all()]
    assert rows and not any(secret in value for row in rows for value in row)
    listed = tenants.list_keys(bank.id)
    assert [k.id for k in listed] == [key.id]
    assert not hasattr(listed[0], "secret")
    principal = tenants.authenticate(token)
    assert (principal.tenant.id, principal.key_id) == (bank.id, key.id)
    assert principal.scopes == {Scope.LEDGER_READ}


def test_wrong_secret_malformed_and_revoked_keys_do_not_authenticate(
    engine: sa.Engine, clock: ManualClock
) -> None:
    tenants = Tenants(engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    key, token = tenants.create_key(bank.id, ["ledger:read"])
    other_secret = token[:-1] + ("0" if token[-1] != "0" else "1")
    for bad in [other_secret, "pk_nope", "", token + "x", f"pk_{'0' * 16}_{'a' * 64}"]:
        with pytest.raises(InvalidApiKeyError):
            tenants.authenticate(bad)
    clock.advance(5)
    revoked = tenants.revoke_key(key.id)
    assert revoked.revoked_at_ns == clock.now_ns()
    again = tenants.revoke_key(key.id)  # idempotent: the first time stays
    assert again.revoked_at_ns == revoked.revoked_at_ns
    with pytest.raises(InvalidApiKeyError):
        tenants.authenticate(token)
    with pytest.raises(ApiKeyNotFoundError):
        tenants.revoke_key("0" * 16)
    assert tenants.list_keys(bank.id)[0].revoked


def test_a_suspended_tenants_keys_stop_working(engine: sa.Engine, clock: ManualClock) -> None:
    tenants = Tenants(engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    _, token = tenants.create_key(bank.id, ["ledger:read"])
    tenants.set_status(bank.id, TenantStatus.SUSPENDED)
    with pytest.raises(InvalidApiKeyError):
        tenants.authenticate(token)
    tenants.set_status(bank.id, TenantStatus.ACTIVE)
    assert tenants.authenticate(token).tenant.status is TenantStatus.ACTIVE


def test_scopes_and_operator_keys(engine: sa.Engine, clock: ManualClock) -> None:
    tenants = Tenants(engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    ops = tenants.create("Platform ops", "operator")
    with pytest.raises(ScopeNotAllowedError):
        tenants.create_key(bank.id, ["platform:admin"])
    _, token = tenants.create_key(ops.id, ["platform:admin"])
    principal = tenants.authenticate(token)
    principal.require(Scope.PLATFORM_ADMIN)
    with pytest.raises(ScopeMissingError):
        principal.require(Scope.LEDGER_WRITE)


def test_tenant_names_and_masks(engine: sa.Engine, clock: ManualClock) -> None:
    tenants = Tenants(engine, clock=clock)
    a = tenants.create("Bank A", "bank")
    b = tenants.create("Insurer B", "insurer")
    assert a.id != b.id and a.ledger_id_mask != b.ledger_id_mask
    assert 0 not in (a.ledger_id_mask, b.ledger_id_mask)
    assert tenants.find("Bank A") == a == tenants.get(a.id) == tenants.find(str(a.id))
    with pytest.raises(TenantNameTakenError):
        tenants.create("Bank A", "bank")
    for bad in ["", " lead", "x" * 65, "a;drop"]:
        with pytest.raises(InvalidNameError):
            tenants.create(bad, "bank")
    with pytest.raises(UnknownTenantKindError):
        tenants.create("C", "casino")
    assert [t.name for t in tenants.list_tenants()] == ["Bank A", "Insurer B"]


def test_a_key_created_after_a_page_is_listed_after_its_cursor(engine: sa.Engine) -> None:
    """Keys were listed by ``(created_at_ns, id)`` as the clock and a random id gave them:
    one created after a page, in the nanosecond of the page's last key with a smaller id (one
    time in two), or after the clock stepped back, sorted before the cursor and was never
    listed to a client paging on. Now a tenant's keys get ascending creation times."""
    clock = SteppedClock()
    tenants = Tenants(engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    tenants.create_key(bank.id, ["ledger:read"])
    [last] = tenants.list_keys(bank.id, limit=1)
    same_nanosecond, _ = tenants.create_key(bank.id, ["ledger:read"])
    clock.now -= 10**9  # the machine's clock stepped back
    stepped_back, _ = tenants.create_key(bank.id, ["ledger:read"])
    after = tenants.list_keys(bank.id, after=(last.created_at_ns, last.id))
    assert after == [same_nanosecond, stepped_back]
    assert last.created_at_ns < same_nanosecond.created_at_ns < stepped_back.created_at_ns


@pytest.mark.postgres
def test_a_key_whose_creation_commits_late_is_listed_after_a_cursor_on_postgresql(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """A key's creation read the clock, then another key was created and listed, then the
    first committed: its earlier time sorted it before the cursor, never listed to a client
    paging on. Now the time is taken under the tenant's lock, in commit order."""
    tenants = Tenants(pg_engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    with (
        held(pg_engine, "late") as hold,
        ThreadPoolExecutor(1, thread_name_prefix="late") as pool,
    ):
        late = pool.submit(tenants.create_key, bank.id, ["ledger:read"])
        assert hold.reached.wait(PROMPTLY_S)
        clock.advance(10**9)
        tenants.create_key(bank.id, ["ledger:read"])
        [last] = tenants.list_keys(bank.id)
        hold.go.set()
        late_key, _ = late.result(PROMPTLY_S)
    assert tenants.list_keys(bank.id, after=(last.created_at_ns, last.id)) == [late_key]


def _locks_the_tenant(statement: str) -> bool:
    return f"FROM {tables.tenants.name}" in statement and is_write(statement)


@pytest.mark.postgres
def test_a_key_s_creation_does_not_hold_up_the_tenant_s_other_writes_on_postgresql(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """A key's creation locks its tenant's row until it commits; the lock was FOR UPDATE,
    which also stops the foreign key check of every insert naming the tenant (each
    ``Idempotency-Key`` claim of its requests) until then. FOR NO KEY UPDATE lets them
    through, and creations still wait for each other."""
    tenants = Tenants(pg_engine, clock=clock)
    bank = tenants.create("Bank A", "bank")
    records = IdempotencyRecords(pg_engine, clock=clock)
    with (
        held(pg_engine, "late", _locks_the_tenant, after=True) as hold,
        ThreadPoolExecutor(3, thread_name_prefix="late") as pool,
    ):
        creating = pool.submit(tenants.create_key, bank.id, ["ledger:read"])
        assert hold.reached.wait(PROMPTLY_S)
        claim = pool.submit(records.begin, bank.id, "k", "fp")
        wait_until_blocked_or_done(pg_engine, hold.pid, claim)
        assert claim.done() and claim.result().claim is Claim.STARTED
        another = pool.submit(tenants.create_key, bank.id, ["ledger:read"])
        wait_until_blocked_or_done(pg_engine, hold.pid, another)
        assert not another.done()  # creations wait for each other
        hold.go.set()
        creating.result(PROMPTLY_S), another.result(PROMPTLY_S)


def _inserts_a_tenant(statement: str) -> bool:
    return statement.lstrip().startswith(f"INSERT INTO {tables.tenants.name}")


def _checks_a_tenant_name(statement: str) -> bool:
    return f"FROM {tables.tenants.name}" in statement and "name =" in statement


@pytest.mark.postgres
def test_a_tenant_whose_creation_commits_late_is_listed_after_a_cursor_on_postgresql(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """A tenant's creation drew its number (and stayed open), another tenant was created and
    a client listed tenants, then the first committed: its smaller number sorted it before
    the client's cursor, never listed to it. Now creations go one at a time: the second waits
    for the first, and every tenant is listed before or after the cursor."""
    tenants = Tenants(pg_engine, clock=clock)
    tenants.create("Bank A", "bank")
    with (
        held(pg_engine, "late", _inserts_a_tenant, after=True) as hold,
        ThreadPoolExecutor(2, thread_name_prefix="late") as pool,
    ):
        late = pool.submit(tenants.create, "Bank Late", "bank")
        assert hold.reached.wait(PROMPTLY_S)
        meanwhile = pool.submit(tenants.create, "Bank Meanwhile", "bank")
        wait_until_blocked_or_done(pg_engine, hold.pid, meanwhile)
        first_page = tenants.list_tenants()
        hold.go.set()
        late.result(PROMPTLY_S), meanwhile.result(PROMPTLY_S)
    rest = tenants.list_tenants(after_id=first_page[-1].id)
    assert sorted(t.name for t in first_page + rest) == [
        "Bank A",
        "Bank Late",
        "Bank Meanwhile",
    ]


@pytest.mark.postgres
def test_two_tenants_of_one_name_created_at_once_on_postgresql(
    pg_engine: sa.Engine, clock: ManualClock
) -> None:
    """Two creations of one name at once each found the name free, and the second INSERT
    broke the store's unique constraint: an IntegrityError (the API's 500). Now the second
    waits for the first and is ``tenant_name_taken``."""
    tenants = Tenants(pg_engine, clock=clock)
    with (
        held(pg_engine, "late", _checks_a_tenant_name, after=True) as hold,
        ThreadPoolExecutor(2, thread_name_prefix="late") as pool,
    ):
        first = pool.submit(tenants.create, "Bank Twin", "bank")
        assert hold.reached.wait(PROMPTLY_S)
        second = pool.submit(tenants.create, "Bank Twin", "bank")
        wait_until_blocked_or_done(pg_engine, hold.pid, second)
        hold.go.set()
        assert first.result(PROMPTLY_S).name == "Bank Twin"
        with pytest.raises(TenantNameTakenError):
            second.result(PROMPTLY_S)
    assert [t.name for t in tenants.list_tenants()] == ["Bank Twin"]


def test_the_owners_memory_forgets_its_oldest_facts_beyond_its_bound(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owners_module, "owners_cached_max", 2)
    tenants = Tenants(engine)
    a = tenants.create("Bank A", TenantKind.BANK)
    owners = PaymentOwners(engine)
    for object_id in (1, 2, 3):
        owners.claim(a.id, OwnedKind.CUSTOMER, object_id)
    assert owners.known(OwnedKind.CUSTOMER, 1) is None  # the oldest went
    assert owners.known(OwnedKind.CUSTOMER, 3) == a.id  # the newest stay
    assert owners.known(OwnedKind.CUSTOMER, 2) == a.id
    assert owners.owner(OwnedKind.CUSTOMER, 1) == a.id  # read from SQL again
