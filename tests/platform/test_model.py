"""The platform's pure rules: id scrambling, scopes, tokens, fingerprints, the audit chain."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puhui.platform import Scope, ScopeNotAllowedError, TenantKind, UnknownScopeError
from puhui.platform.model import (
    GENESIS_HASH,
    U128_MAX,
    AuditEntry,
    AuditProblemKind,
    InvalidIdempotencyKeyError,
    audit_hash,
    check_idempotency_key,
    format_token,
    parse_scopes,
    parse_token,
    request_fingerprint,
    scramble_id,
    secret_digest,
    secret_matches,
    verify_chain,
)

u128 = st.integers(min_value=0, max_value=U128_MAX)
masks = st.integers(min_value=1, max_value=U128_MAX)


@given(u128, masks)
def test_scrambling_is_its_own_inverse(value: int, mask: int) -> None:
    scrambled = scramble_id(value, mask)
    assert 0 <= scrambled <= U128_MAX
    assert scramble_id(scrambled, mask) == value


@given(masks)
def test_zero_and_int_max_keep_their_meaning(mask: int) -> None:
    assert scramble_id(0, mask) == 0
    assert scramble_id(U128_MAX, mask) == U128_MAX


@given(u128, u128, masks)
def test_scrambling_never_merges_two_ids(a: int, b: int, mask: int) -> None:
    if a != b:
        assert scramble_id(a, mask) != scramble_id(b, mask)


@given(st.integers(min_value=1, max_value=U128_MAX - 1), masks, masks)
def test_two_tenants_ids_differ_in_the_ledger(value: int, mask_a: int, mask_b: int) -> None:
    fixed = {0, U128_MAX, mask_a, mask_a ^ U128_MAX, mask_b, mask_b ^ U128_MAX}
    if mask_a != mask_b and value not in fixed:
        assert scramble_id(value, mask_a) != scramble_id(value, mask_b)


def test_scopes() -> None:
    assert parse_scopes(["ledger:read", "ledger:write"], TenantKind.BANK) == {
        Scope.LEDGER_READ,
        Scope.LEDGER_WRITE,
    }
    assert Scope.PLATFORM_ADMIN in parse_scopes(["platform:admin"], TenantKind.OPERATOR)
    with pytest.raises(ScopeNotAllowedError):
        parse_scopes(["platform:admin"], TenantKind.BANK)
    with pytest.raises(UnknownScopeError):
        parse_scopes(["ledger:delete"], TenantKind.BANK)
    with pytest.raises(UnknownScopeError):
        parse_scopes([], TenantKind.BANK)


def test_tokens() -> None:
    token = format_token("0123456789abcdef", "ab" * 32)
    assert parse_token(token) == ("0123456789abcdef", "ab" * 32)
    for bad in ["", "pk_", token + "0", token.upper(), "sk_" + token[3:], token + " "]:
        assert parse_token(bad) is None
    assert secret_matches("ab" * 32, secret_digest("ab" * 32))
    assert not secret_matches("ab" * 31 + "ac", secret_digest("ab" * 32))


def test_fingerprint_compares_json_by_content() -> None:
    a = request_fingerprint("POST", "/v1/x", b'{"a": 1, "b": [1, 2]}')
    assert a == request_fingerprint("post", "/v1/x", b'{"b":[1,2],"a":1}')
    assert a != request_fingerprint("POST", "/v1/x", b'{"a": 2, "b": [1, 2]}')
    assert a != request_fingerprint("POST", "/v1/y", b'{"a": 1, "b": [1, 2]}')
    assert request_fingerprint("POST", "/v1/x", b"\xff") != request_fingerprint(
        "POST", "/v1/x", b"\xfe"
    )


def test_idempotency_key_syntax() -> None:
    assert check_idempotency_key("order-42") == "order-42"
    for bad in ["", "a b", "x" * 256, "ключ"]:
        with pytest.raises(InvalidIdempotencyKeyError):
            check_idempotency_key(bad)


def _chain(n: int) -> list[AuditEntry]:
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        target = f"/t/{seq}"
        digest = audit_hash(
            seq=seq,
            at_ns=seq * 10,
            tenant_id=1,
            key_id="k",
            method="POST",
            route="/r",
            target=target,
            status=200,
            prev_hash=prev,
        )
        entries.append(AuditEntry(seq, seq * 10, 1, "k", "POST", "/r", target, 200, prev, digest))
        prev = digest
    return entries


def test_verify_chain_finds_the_first_bad_entry() -> None:
    chain = _chain(5)
    head = chain[-1].hash
    assert verify_chain(chain, 5, head).ok
    assert verify_chain([], 0, GENESIS_HASH).ok

    edited = list(chain)
    edited[2] = dataclasses.replace(edited[2], status=500)
    report = verify_chain(edited, 5, head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (3, AuditProblemKind.EDITED)

    deleted = chain[:2] + chain[3:]
    report = verify_chain(deleted, 5, head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (3, AuditProblemKind.MISSING)

    truncated = chain[:4]
    report = verify_chain(truncated, 5, head)
    assert report.problem is not None
    assert (report.problem.seq, report.problem.kind) == (5, AuditProblemKind.TRUNCATED)
