"""Webhooks: signatures, the outbox, delivery with retries, dead letters, replay, restarts and
tenant isolation (a receiver in the test answers through httpx2's MockTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
import pytest
import sqlalchemy as sa

from puhui.clock import ManualClock
from puhui.errors import InvalidInputError
from puhui.platform import (
    DeliveryState,
    DeliveryWorker,
    EventType,
    ForbiddenWebhookAddressError,
    InsecureWebhookUrlError,
    InvalidWebhookUrlError,
    RetrySchedule,
    Tenant,
    Tenants,
    UnknownEventTypeError,
    UnresolvableWebhookHostError,
    WebhookEndpointLimitError,
    WebhookEndpointNotFoundError,
    WebhookEventNotFoundError,
    WebhookOptions,
    Webhooks,
    signature_header,
    verify_signature,
)
from puhui.platform.model import check_webhook_url, forbidden_address_reason
from puhui.store import create_engine
from puhui.store import platform as tables

from .._locks import PROMPTLY_S, backend_pid, wait_until_blocked_or_done
from .._plans import plans_of
from .conftest import SteppedClock, held

NS = 10**9
SCHEDULE = RetrySchedule(base_s=10.0, cap_s=80.0, floor_s=1.0, attempts_max=6)
PUBLIC_ADDRESS = "93.184.215.14"


def public_dns(host: str) -> list[str]:
    """The test's DNS: every name is one public address (the receiver is a MockTransport)."""
    return [PUBLIC_ADDRESS]


ALMOST_ONE = 0.999_999


@dataclass
class Receiver:
    """A webhook receiver: answers ``status`` and keeps what it got, with the clock's time."""

    clock: ManualClock
    status: int = 200
    got: list[tuple[int, httpx2.Request]] = field(default_factory=list)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.got.append((self.clock.now_ns(), request))
        return httpx2.Response(self.status, text="ok")

    def event_ids(self) -> list[str]:
        return [json.loads(r.content)["id"] for _, r in self.got]


def rounds(
    webhooks: Webhooks,
    receiver: Callable[[httpx2.Request], httpx2.Response],
    count: int = 1,
    unit_random: Callable[[], float] = lambda: ALMOST_ONE,
) -> int:
    """Run ``count`` worker rounds; how many attempts they made."""

    async def go() -> int:
        transport = httpx2.MockTransport(receiver)
        async with DeliveryWorker(webhooks, transport=transport, unit_random=unit_random) as w:
            return sum([await w.run_once() for _ in range(count)])

    return asyncio.run(go())


@dataclass
class Setup:
    engine: sa.Engine
    clock: ManualClock
    webhooks: Webhooks
    a: Tenant
    b: Tenant

    def record(self, tenant: Tenant, event_type: EventType = EventType.PAYMENT_SUCCEEDED) -> str:
        with self.engine.begin() as conn:
            return self.webhooks.record(conn, tenant.id, event_type, {"amount": "100"})


def _setup(engine: sa.Engine, clock: ManualClock) -> Setup:
    tenants = Tenants(engine, clock=clock)
    a, b = tenants.create("Bank A", "bank"), tenants.create("Bank B", "bank")
    webhooks = Webhooks(
        engine, clock=clock, options=WebhookOptions(retry=SCHEDULE, resolve=public_dns)
    )
    return Setup(engine, clock, webhooks, a, b)


@pytest.fixture
def setup(engine: sa.Engine, clock: ManualClock) -> Setup:
    return _setup(engine, clock)


# --- signatures -------------------------------------------------------------------------------


def test_a_signature_verifies_and_a_tampered_body_or_stale_time_does_not() -> None:
    secret, body, t = "whsec_abc", b'{"id":"evt_1","type":"payment.succeeded"}', 1_767_225_600
    header = signature_header(secret, t, body)
    assert header.startswith(f"t={t},v1=")
    assert verify_signature(secret, header, body, 300, now_s=t + 299)
    assert verify_signature(secret, header, body, 300, now_s=t - 299)  # clocks drift both ways
    assert not verify_signature(secret, header, body.replace(b"evt_1", b"evt_2"), now_s=t)
    assert not verify_signature(secret, header, body, 300, now_s=t + 301)
    assert not verify_signature("whsec_other", header, body, now_s=t)
    # The timestamp is signed: moving it forward breaks the signature.
    moved = header.replace(f"t={t}", f"t={t + 1000}")
    assert not verify_signature(secret, moved, body, now_s=t + 1000)
    for broken in ("", "v1=00", f"t={t}", "t=x,v1=00", f"t={t},v1=" + "0" * 64, "x" * 2000):
        assert not verify_signature(secret, broken, body, now_s=t)
    # During a rotation a header may carry two signatures: either may match.
    rotated = f"{header},v1={'f' * 64}"
    assert verify_signature(secret, rotated, body, now_s=t)


def test_a_signature_header_with_foreign_characters_is_refused_not_a_crash() -> None:
    """A receiver hands ``verify_signature`` whatever header arrived (frameworks decode
    header bytes as Latin-1): a ``v1`` value with a character beyond ASCII used to raise
    ``TypeError`` from ``hmac.compare_digest`` (the receiver's 500), and the docs' example
    also took a timestamp of superscript digits (``str.isdigit``) and raised ``ValueError``.
    Both now refuse it, and the other ``v1`` values are still tried."""
    secret, body, t = "whsec_abc", b"{}", 1_767_225_600
    good = signature_header(secret, t, body)
    for header in (f"t={t},v1=\u00e9", f"t={t},v1=\u00e9{'0' * 63}", "t=\u00b2,v1=00"):
        assert not verify_signature(secret, header, body, now_s=t)
    assert verify_signature(secret, f"{good},v1=\u00e9", body, now_s=t)
    assert verify_signature(secret, f"t={t},v1=\u00e9,{good.split(',')[1]}", body, now_s=t)
    example = _docs_receiver_example()
    now = int(time.time())
    good = signature_header(secret, now, body)
    for header in (f"t={now},v1=\u00e9", "t=\u00b2,v1=00", f"t={now},v1=00,v1=\u00e9"):
        assert not example(secret, header, body), header
    assert example(secret, f"{good},v1=\u00e9", body)


def test_the_signature_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    secret, body, t = "whsec_k", b"{}", 42
    expected = hmac.new(b"whsec_k", b"42.{}", hashlib.sha256).hexdigest()
    assert signature_header(secret, t, body) == f"t=42,v1={expected}"


def test_the_retry_schedule_grows_to_its_cap_with_full_jitter() -> None:
    schedule = RetrySchedule(base_s=10.0, cap_s=100.0, floor_s=1.0, attempts_max=8)
    assert [schedule.ceiling_s(n) for n in range(1, 7)] == [10, 20, 40, 80, 100, 100]
    rng = random.Random(5)
    for failures in range(1, 8):
        for _ in range(200):
            delay = schedule.delay_s(failures, rng.random())
            assert 1.0 <= delay <= schedule.ceiling_s(failures)
    assert schedule.delay_s(3, 0.0) == 1.0
    assert not schedule.exhausted(7) and schedule.exhausted(8)
    with pytest.raises(ValueError):
        schedule.delay_s(1, 1.0)
    with pytest.raises(ValueError):
        RetrySchedule(base_s=10.0, cap_s=5.0)


# --- endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "/relative/hook",
        "https://user:pass@example.com/hook",
        "https:///no-host",
        "https://example.com/hook#part",
        "https://exa mple.com/",
        "https://example.com:99999/",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_only_http_and_https_urls_are_accepted(setup: Setup, url: str) -> None:
    with pytest.raises(InvalidWebhookUrlError):
        setup.webhooks.create_endpoint(setup.a.id, url, ["*"])
    assert setup.webhooks.endpoints(setup.a.id) == []


def test_an_endpoint_shows_its_secret_once_and_is_listed_without_it(setup: Setup) -> None:
    w = setup.webhooks
    endpoint, secret = w.create_endpoint(
        setup.a.id, "https://partner.example/hooks?x=1", ["payment.succeeded", "order.paid"]
    )
    assert secret.startswith("whsec_") and len(secret) == 6 + 64
    assert endpoint.event_types == {"payment.succeeded", "order.paid"}
    listed = w.endpoints(setup.a.id)
    assert listed == [endpoint]
    assert secret not in repr(listed)
    all_types, _ = w.create_endpoint(setup.a.id, "https://p.example/all", ["*"])
    assert all_types.event_types == {"*"}
    with pytest.raises(UnknownEventTypeError):
        w.create_endpoint(setup.a.id, "https://p.example/", ["payment.exploded"])
    with pytest.raises(UnknownEventTypeError):
        w.create_endpoint(setup.a.id, "https://p.example/", [])


def test_a_tenant_has_a_bounded_number_of_enabled_endpoints(engine: sa.Engine) -> None:
    tenant = Tenants(engine).create("Bank C", "bank")
    w = Webhooks(engine, options=WebhookOptions(endpoints_per_tenant_max=2, resolve=public_dns))
    first, _ = w.create_endpoint(tenant.id, "https://p.example/1", ["*"])
    w.create_endpoint(tenant.id, "https://p.example/2", ["*"])
    with pytest.raises(WebhookEndpointLimitError):
        w.create_endpoint(tenant.id, "https://p.example/3", ["*"])
    w.disable_endpoint(tenant.id, first.id)
    w.create_endpoint(tenant.id, "https://p.example/3", ["*"])


def test_an_endpoint_created_after_a_page_is_listed_after_its_cursor(engine: sa.Engine) -> None:
    """Endpoints were listed by ``(created_at_ns, id)`` as the clock and a random id gave
    them: one created after a page, in the nanosecond of the page's last endpoint with a
    smaller id, or after the clock stepped back, sorted before the cursor and was never
    listed to a client paging on. Now a tenant's endpoints get ascending creation times."""
    clock = SteppedClock()
    ids = iter(["ff" * 8, "00" * 8, "80" * 8])
    w = Webhooks(
        engine,
        clock=clock,
        options=WebhookOptions(resolve=public_dns),
        new_id=lambda n: next(ids) if n == 8 else secrets.token_hex(n),
    )
    tenant = Tenants(engine, clock=clock).create("Bank C", "bank")
    w.create_endpoint(tenant.id, "https://p.example/1", ["*"])
    [last] = w.endpoints(tenant.id, limit=1)
    same_nanosecond, _ = w.create_endpoint(tenant.id, "https://p.example/2", ["*"])
    clock.now -= NS  # the machine's clock stepped back
    stepped_back, _ = w.create_endpoint(tenant.id, "https://p.example/3", ["*"])
    after = w.endpoints(tenant.id, after=(last.created_at_ns, last.id))
    assert after == [same_nanosecond, stepped_back]
    assert last.created_at_ns < same_nanosecond.created_at_ns < stepped_back.created_at_ns


# --- delivery ---------------------------------------------------------------------------------


def test_an_event_is_delivered_signed_to_the_endpoints_that_want_it(setup: Setup) -> None:
    w = setup.webhooks
    wanted, secret = w.create_endpoint(setup.a.id, "https://a.example/hook", ["payment.succeeded"])
    w.create_endpoint(setup.a.id, "https://a.example/orders", ["order.paid"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock)
    assert rounds(w, receiver) == 1
    assert len(receiver.got) == 1
    _, request = receiver.got[0]
    assert str(request.url) == "https://a.example/hook"
    assert request.headers["Puhui-Event-Id"] == event_id
    assert request.headers["content-type"] == "application/json"
    t = int(request.headers["Puhui-Timestamp"])
    assert t == setup.clock.now_ns() // NS
    assert verify_signature(secret, request.headers["Puhui-Signature"], request.content, now_s=t)
    body = json.loads(request.content)
    assert body == {
        "id": event_id,
        "type": "payment.succeeded",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "data": {"amount": "100"},
    }
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert (delivery.endpoint_id, delivery.state, delivery.attempts) == (
        wanted.id,
        DeliveryState.DELIVERED,
        1,
    )
    assert delivery.last_status == 200
    assert rounds(w, receiver) == 0  # delivered once, not again


def test_a_failing_receiver_gets_retries_with_growing_delays_then_a_dead_letter(
    setup: Setup,
) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock, status=500)
    for _ in range(SCHEDULE.attempts_max):
        [delivery] = w.deliveries(setup.a.id, event_id)
        assert delivery.state is DeliveryState.PENDING
        if delivery.next_attempt_at_ns > setup.clock.now_ns():
            setup.clock.set(delivery.next_attempt_at_ns - 1)
            assert rounds(w, receiver) == 0, "tried before it was due"
            setup.clock.advance(1)
        assert rounds(w, receiver) == 1
    times = [at for at, _ in receiver.got]
    gaps_s = [(b - a) / NS for a, b in itertools.pairwise(times)]
    # Full jitter pinned near its top: each wait is its ceiling, 10 s doubling to the 80 s cap.
    assert gaps_s == pytest.approx([10, 20, 40, 80, 80], abs=0.01)
    assert receiver.event_ids() == [event_id] * SCHEDULE.attempts_max
    [dead] = w.dead_letters(setup.a.id)
    assert (dead.event_id, dead.state, dead.attempts, dead.last_status) == (
        event_id,
        DeliveryState.DEAD,
        6,
        500,
    )
    assert dead.last_error == "HTTP 500"
    setup.clock.advance(10 * 24 * 3600 * NS)
    assert rounds(w, receiver) == 0, "a dead letter is not tried again by itself"


def test_jittered_retries_stay_within_their_ceilings(setup: Setup) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock, status=503)
    rng = random.Random(11)
    last = setup.clock.now_ns()
    for failures in range(1, SCHEDULE.attempts_max):
        assert rounds(w, receiver, unit_random=rng.random) == 1
        [delivery] = w.deliveries(setup.a.id, event_id)
        wait_s = (delivery.next_attempt_at_ns - last) / NS
        assert SCHEDULE.floor_s <= wait_s <= SCHEDULE.ceiling_s(failures)
        setup.clock.set(delivery.next_attempt_at_ns)
        last = delivery.next_attempt_at_ns


def test_a_refused_connection_or_timeout_is_a_failed_attempt(setup: Setup) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://down.example/hook", ["*"])
    event_id = setup.record(setup.a)

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    assert rounds(w, refuse) == 1
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert delivery.state is DeliveryState.PENDING
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (
        1,
        None,
        "ConnectError",
    )


def test_a_redirect_is_not_a_delivery(setup: Setup) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock, status=302)
    assert rounds(w, receiver) == 1
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert delivery.state is DeliveryState.PENDING and delivery.last_status == 302


def test_replay_delivers_a_dead_letter_again_and_a_delivered_event_too(setup: Setup) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock, status=500)
    for _ in range(SCHEDULE.attempts_max):
        rounds(w, receiver)
        setup.clock.advance(3600 * NS)
    assert [d.event_id for d in w.dead_letters(setup.a.id)] == [event_id]
    receiver.status = 200
    assert w.replay(setup.a.id, event_id) == 1
    assert w.dead_letters(setup.a.id) == []
    [pending] = w.deliveries(setup.a.id, event_id)  # as new: nothing of the dead attempts
    assert (pending.state, pending.attempts) == (DeliveryState.PENDING, 0)
    assert (pending.last_status, pending.last_error, pending.last_attempt_at_ns) == (None,) * 3
    assert rounds(w, receiver) == 1
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 1)
    assert delivery.delivered_at_ns is not None
    # A delivered event replays too (a receiver that lost it asks again): same event id.
    assert w.replay(setup.a.id, event_id) == 1
    [again] = w.deliveries(setup.a.id, event_id)
    assert (again.state, again.delivered_at_ns, again.last_status) == (
        DeliveryState.PENDING,
        None,
        None,
    )
    assert rounds(w, receiver) == 1
    assert receiver.event_ids()[-2:] == [event_id, event_id]


def test_replay_reaches_an_endpoint_created_after_the_event(setup: Setup) -> None:
    w = setup.webhooks
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock)
    assert rounds(w, receiver) == 0  # no endpoint yet: the event waits in the outbox
    w.create_endpoint(setup.a.id, "https://a.example/late", ["payment.succeeded"])
    w.create_endpoint(setup.a.id, "https://a.example/other", ["order.paid"])
    assert w.replay(setup.a.id, event_id) == 1
    assert rounds(w, receiver) == 1
    assert receiver.event_ids() == [event_id]


def test_a_disabled_endpoint_gets_nothing_and_its_queue_becomes_dead_letters(
    setup: Setup,
) -> None:
    w = setup.webhooks
    endpoint, _ = w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    queued = setup.record(setup.a)
    disabled = w.disable_endpoint(setup.a.id, endpoint.id)
    assert not disabled.enabled and disabled.disabled_at_ns == setup.clock.now_ns()
    setup.record(setup.a)
    receiver = Receiver(setup.clock)
    assert rounds(w, receiver) == 0
    assert receiver.got == []
    [dead] = w.dead_letters(setup.a.id)
    assert (dead.event_id, dead.last_error, dead.attempts) == (queued, "endpoint_disabled", 0)
    assert w.backlog() == 0
    # Replayed, the event goes to the endpoints enabled now.
    w.create_endpoint(setup.a.id, "https://a.example/new", ["*"])
    assert w.replay(setup.a.id, queued) == 1
    assert rounds(w, receiver) == 1
    assert [str(r.url) for _, r in receiver.got] == ["https://a.example/new"]


# --- crashes and restarts ---------------------------------------------------------------------


def test_nothing_is_lost_across_a_restart(setup: Setup) -> None:
    """Events recorded by one process are delivered by a new worker over the same database;
    an attempt cut short by a crash (claimed, never finished) is tried again once its lease
    runs out."""
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    ids = [setup.record(setup.a) for _ in range(3)]
    crashed = w.claim_due(limit=1)  # a worker took one and died before answering
    assert [c.event_id for c in crashed] == ids[:1]
    url = setup.engine.url.render_as_string(hide_password=False)
    setup.engine.dispose()

    engine = create_engine(url)  # the new process
    try:
        restarted = Webhooks(
            engine, clock=setup.clock, options=WebhookOptions(retry=SCHEDULE, resolve=public_dns)
        )
        receiver = Receiver(setup.clock)
        assert rounds(restarted, receiver) == 2
        assert sorted(receiver.event_ids()) == sorted(ids[1:])
        setup.clock.advance(int(restarted.options.lease_s * NS) - 1)
        assert rounds(restarted, receiver) == 0, "the crashed attempt's lease still runs"
        setup.clock.advance(1)
        assert rounds(restarted, receiver) == 1
        assert sorted(receiver.event_ids()) == sorted(ids)
        [delivery] = restarted.deliveries(setup.a.id, ids[0])
        assert (delivery.state, delivery.attempts) == (DeliveryState.DELIVERED, 2)
    finally:
        engine.dispose()


def test_an_event_recorded_while_its_endpoint_is_disabled_becomes_a_dead_letter(
    setup: Setup,
) -> None:
    """A payment's transaction reads the endpoint as enabled and queues a delivery; the
    endpoint is disabled (and its pending deliveries dead-lettered) before that transaction
    commits, so the disabling did not see the new delivery. It must not stay pending for
    ever, never attempted, never a dead letter, holding its event from pruning: the worker
    makes it a dead letter (``endpoint_disabled``) instead of sending it."""
    if setup.engine.dialect.name == "sqlite":
        pytest.skip("SQLite runs one writing transaction at a time: no such interleaving")
    w = setup.webhooks
    endpoint, _ = w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    with setup.engine.begin() as conn:
        event_id = w.record(conn, setup.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
        w.disable_endpoint(setup.a.id, endpoint.id)  # commits first, on another connection
    receiver = Receiver(setup.clock)
    assert rounds(receiver=receiver, webhooks=w) == 0 and receiver.got == []
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert (delivery.state, delivery.last_error) == (DeliveryState.DEAD, "endpoint_disabled")
    assert [d.event_id for d in w.dead_letters(setup.a.id)] == [event_id]
    assert w.backlog() == 0


def test_a_late_answer_from_an_expired_lease_changes_nothing(setup: Setup) -> None:
    from puhui.platform.webhooks import AttemptResult

    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    [slow] = w.claim_due()
    setup.clock.advance(int(w.options.lease_s * NS))
    [again] = w.claim_due()  # the lease ran out: another worker took it
    w.finish_attempts([AttemptResult(again, 200, None)], lambda: 0.5)
    w.finish_attempts([AttemptResult(slow, 500, "HTTP 500")], lambda: 0.5)
    [delivery] = w.deliveries(setup.a.id, event_id)
    assert (delivery.state, delivery.last_status) == (DeliveryState.DELIVERED, 200)


# --- the outbox's transaction -----------------------------------------------------------------


def test_an_event_commits_or_rolls_back_with_the_transaction_that_records_it(
    setup: Setup,
) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    with pytest.raises(RuntimeError), setup.engine.begin() as conn:
        w.record(conn, setup.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
        raise RuntimeError("the state change failed")
    assert w.events(setup.a.id) == []
    assert rounds(w, Receiver(setup.clock)) == 0
    kept = setup.record(setup.a)
    assert [e.id for e in w.events(setup.a.id)] == [kept]


# --- tenants ----------------------------------------------------------------------------------


def test_a_tenant_sees_and_touches_only_its_own_webhooks(setup: Setup) -> None:
    w = setup.webhooks
    endpoint, _ = w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    event_id = setup.record(setup.a)
    receiver = Receiver(setup.clock, status=500)
    for _ in range(SCHEDULE.attempts_max):
        rounds(w, receiver)
        setup.clock.advance(3600 * NS)
    b = setup.b.id
    assert w.endpoints(b) == [] and w.events(b) == [] and w.dead_letters(b) == []
    with pytest.raises(WebhookEventNotFoundError):
        w.event(b, event_id)
    with pytest.raises(WebhookEventNotFoundError):
        w.replay(b, event_id)
    with pytest.raises(WebhookEventNotFoundError):
        w.deliveries(b, event_id)
    with pytest.raises(WebhookEndpointNotFoundError):
        w.disable_endpoint(b, endpoint.id)
    assert w.endpoint(setup.a.id, endpoint.id).enabled
    assert len(w.dead_letters(setup.a.id)) == 1
    # B's events go to B's endpoints only.
    w.create_endpoint(b, "https://b.example/hook", ["*"])
    b_event = setup.record(setup.b)
    receiver.status = 200
    rounds(w, receiver)
    assert [(str(r.url), json.loads(r.content)["id"]) for _, r in receiver.got[-1:]] == [
        ("https://b.example/hook", b_event)
    ]


def test_events_are_listed_a_page_at_a_time(setup: Setup) -> None:
    w = setup.webhooks
    ids = [setup.record(setup.a, EventType.ORDER_PAID) for _ in range(5)]
    setup.record(setup.b)
    first = w.events(setup.a.id, limit=2)
    second = w.events(setup.a.id, after=first[-1].position, limit=2)
    third = w.events(setup.a.id, after=second[-1].position, limit=2)
    assert [e.id for e in first + second + third] == ids
    assert w.events(setup.a.id, after=third[-1].position) == []
    assert w.events(setup.a.id, event_type="payment.succeeded") == []


def test_the_events_listing_reads_its_index(setup: Setup) -> None:
    """On SQLite, a page of a tenant's events after a position is a range of the
    ``(tenant_id, txid, seq)`` index from the position's ``txid``, in the index's order (no
    scan of the tenant's earlier events, no sort)."""
    w = setup.webhooks
    if setup.engine.dialect.name != "sqlite":
        return  # the plan is SQLite's
    setup.record(setup.a)
    found = plans_of(setup.engine, ("platform_webhook_events",), lambda: w.events(setup.a.id))
    [(_, plan)] = found
    assert plan == [
        "SEARCH platform_webhook_events USING INDEX "
        "ix_platform_webhook_events_tenant_id_txid_seq (tenant_id=? AND txid>?)"
    ], plan


def _docs_receiver_example() -> Callable[[str, str, bytes], bool]:
    """The receiver's ``verify_signature`` of docs/api.md, run."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    [example] = [b for b in blocks if "def verify_signature" in b]
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    verify = namespace["verify_signature"]
    assert callable(verify)
    return cast(Callable[[str, str, bytes], bool], verify)


def test_the_receivers_example_in_the_docs_verifies_our_signatures() -> None:
    """The Python example of docs/api.md agrees with ``signature_header``."""
    verify = _docs_receiver_example()
    now = int(time.time())  # the example checks against the receiver's real clock
    body = b'{"id":"evt_1"}'
    header = signature_header("whsec_doc", now, body)
    assert verify("whsec_doc", header, body)
    assert not verify("whsec_doc", header, body + b" ")
    assert not verify("whsec_doc", signature_header("whsec_doc", now - 3600, body), body)


def test_old_events_are_pruned_unless_a_delivery_still_waits(setup: Setup) -> None:
    w = setup.webhooks
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    delivered = setup.record(setup.a)
    rounds(w, Receiver(setup.clock))
    waiting = setup.record(setup.a)
    rounds(w, Receiver(setup.clock, status=500))
    unwanted = setup.record(setup.b)  # B has no endpoint: nothing to deliver
    assert w.prune() == 0
    setup.clock.advance(int(w.options.event_retention_s * NS) + 1)
    fresh = setup.record(setup.a)
    assert w.prune() == 2
    assert [e.id for e in w.events(setup.a.id)] == [waiting, fresh]
    assert w.events(setup.b.id) == []
    with pytest.raises(WebhookEventNotFoundError):
        w.replay(setup.a.id, delivered)
    with pytest.raises(WebhookEventNotFoundError):
        w.event(setup.b.id, unwanted)


def test_the_worker_prunes_a_backlog_round_after_round(setup: Setup) -> None:
    """While a pruning deletes its most, the worker prunes again at its next round (not a
    minute later): a backlog of old events is not left to outgrow the pruning rate."""
    w = Webhooks(setup.engine, clock=setup.clock, options=WebhookOptions(prune_events_max=2))
    for _ in range(5):
        setup.record(setup.b)  # no endpoint: nothing to deliver, prunable once old
    setup.clock.advance(int(w.options.event_retention_s * NS) + 1)
    made = 0

    async def run() -> None:
        stop = asyncio.Event()
        async with DeliveryWorker(
            w, transport=httpx2.MockTransport(Receiver(setup.clock))
        ) as worker:

            async def round_() -> int:
                nonlocal made
                made += 1
                if made == 4:
                    stop.set()
                return 0

            worker.run_once = round_  # type: ignore[method-assign]
            await worker.run(stop, interval_s=0.001)

    asyncio.run(run())
    # 2 + 2 in two rounds, the clock standing still; the newest event is kept
    assert len(w.events(setup.b.id)) == 1


def test_pruning_every_old_event_does_not_hand_out_positions_again(setup: Setup) -> None:
    """The store's newest event is never pruned: on SQLite new events' seq and txid follow
    the largest ones, and with every event gone they started again from 1 — a poller past
    the old positions never saw the new events."""
    w = setup.webhooks
    for _ in range(3):
        setup.record(setup.b)  # no endpoint: nothing to deliver, prunable once old
    [*_, last] = w.events(setup.b.id)
    setup.clock.advance(int(w.options.event_retention_s * NS) + 1)
    assert w.prune() == 2
    assert w.prune() == 0
    new = setup.record(setup.b)
    assert [e.id for e in w.events(setup.b.id, after=last.position)] == [new]


def test_pruning_reads_each_old_event_s_own_deliveries(setup: Setup) -> None:
    """On SQLite, whether an old event still has a delivery waiting is read through its
    own deliveries (by event), not every pending delivery of the store per event."""
    w = setup.webhooks
    if setup.engine.dialect.name != "sqlite":
        return  # the plan is SQLite's
    w.create_endpoint(setup.a.id, "https://a.example/hook", ["*"])
    setup.record(setup.a)
    setup.clock.advance(int(w.options.event_retention_s * NS) + 1)
    found = plans_of(setup.engine, ("platform_webhook_deliveries",), w.prune)
    [(_, plan)] = [(sql, lines) for sql, lines in found if "EXISTS" in sql]
    assert any(
        "USING INDEX sqlite_autoindex_platform_webhook_deliveries_1 (event_seq=?)" in line
        for line in plan
    ), plan


# --- where webhooks may go (SSRF guard) -------------------------------------------------------


def _guarded(engine: sa.Engine, table: dict[str, list[str]], **options: Any) -> Webhooks:
    def resolve(host: str) -> list[str]:
        return table.get(host, [])

    return Webhooks(engine, options=WebhookOptions(resolve=resolve, **options))


@pytest.mark.parametrize(
    ("url", "error", "reason"),
    [
        ("http://partner.example/hook", InsecureWebhookUrlError, None),
        ("https://127.0.0.1/hook", ForbiddenWebhookAddressError, "loopback"),
        ("https://localhost:8443/hook", ForbiddenWebhookAddressError, "loopback"),
        ("https://[::1]/hook", ForbiddenWebhookAddressError, "loopback"),
        ("https://169.254.169.254/latest/meta-data", ForbiddenWebhookAddressError, "metadata"),
        ("https://metadata.example/", ForbiddenWebhookAddressError, "metadata"),
        ("https://100.100.100.200/", ForbiddenWebhookAddressError, "metadata"),
        ("https://169.254.10.1/", ForbiddenWebhookAddressError, "link_local"),
        ("https://[fe80::1]/", ForbiddenWebhookAddressError, "link_local"),
        ("https://10.1.2.3/", ForbiddenWebhookAddressError, "private"),
        ("https://192.168.0.10/", ForbiddenWebhookAddressError, "private"),
        ("https://172.16.5.5/", ForbiddenWebhookAddressError, "private"),
        ("https://[fd00::5]/", ForbiddenWebhookAddressError, "private"),
        ("https://[::ffff:10.0.0.1]/", ForbiddenWebhookAddressError, "private"),
        ("https://internal.example/", ForbiddenWebhookAddressError, "private"),
        ("https://mixed.example/", ForbiddenWebhookAddressError, "private"),
        ("https://224.0.0.1/", ForbiddenWebhookAddressError, "multicast"),
        ("https://0.0.0.0/", ForbiddenWebhookAddressError, "unspecified"),
        ("https://100.64.0.1/", ForbiddenWebhookAddressError, "reserved"),
        ("https://nowhere.example/", UnresolvableWebhookHostError, None),
        ("gopher://partner.example/", InvalidWebhookUrlError, None),
        ("https://user@partner.example/", InvalidWebhookUrlError, None),
    ],
)
def test_an_endpoint_must_be_https_on_a_public_address(
    url: str, error: type[Exception], reason: str | None
) -> None:
    w = _guarded(sa.create_engine("sqlite://"), DNS)  # the checks read no table
    with pytest.raises(error) as raised:
        w.check_destination(check_webhook_url(url))
    if reason is not None:
        assert raised.value.details["reason"] == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("64:ff9b::a00:1", "private"),  # NAT64 (RFC 6052) of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64 (RFC 8215): never global
        ("2002:a00:1::1", "private"),  # 6to4 (RFC 3056) of 10.0.0.1
        ("2002:a9fe:a9fe::", "metadata"),  # 6to4 of 169.254.169.254
        ("::a00:1", "private"),  # IPv4-compatible (deprecated) 10.0.0.1
        ("::7f00:1", "loopback"),
    ],
)
def test_an_ipv6_address_embedding_a_forbidden_ipv4_one_is_refused(
    address: str, reason: str
) -> None:
    """IPv6 forms that carry an IPv4 address to a translator or relay (NAT64, 6to4, the old
    IPv4-compatible form) count as that IPv4 address, as an IPv4-mapped one does: a NAT64
    gateway turns ``64:ff9b::a00:1`` into a connection to 10.0.0.1 inside the network."""
    w = _guarded(sa.create_engine("sqlite://"), {"nat64.example": [address]})
    for url in (f"https://[{address}]/hook", "https://nat64.example/hook"):
        with pytest.raises(ForbiddenWebhookAddressError) as raised:
            w.check_destination(check_webhook_url(url))
        assert raised.value.details["reason"] == reason
    # ... and a public IPv4 address behind NAT64 or 6to4 is fine.
    for public in ("64:ff9b::5db8:d70e", "2002:5db8:d70e::1"):
        assert forbidden_address_reason(public, loopback_allowed=False) is None


def test_a_refused_endpoint_is_not_created(engine: sa.Engine) -> None:
    tenant = Tenants(engine).create("Bank S", "bank")
    w = _guarded(engine, DNS)
    for url in ("http://partner.example/", "https://metadata.example/", "https://nowhere.example/"):
        with pytest.raises(InvalidInputError):
            w.create_endpoint(tenant.id, url, ["*"])
    assert w.endpoints(tenant.id) == []
    w.create_endpoint(tenant.id, "https://partner.example/hook", ["*"])
    assert len(w.endpoints(tenant.id)) == 1


DNS = {
    "partner.example": [PUBLIC_ADDRESS],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.example": ["169.254.169.254"],
    "internal.example": ["10.0.0.7"],
    "mixed.example": [PUBLIC_ADDRESS, "192.168.1.1"],  # one bad address is enough to refuse
}


def test_loopback_only_with_the_development_allowance(engine: sa.Engine) -> None:
    tenant = Tenants(engine).create("Bank D", "bank")
    w = _guarded(engine, DNS, loopback_allowed=True)
    for url in ("http://127.0.0.1:9000/h", "http://localhost:9000/h", "https://[::1]/h"):
        w.create_endpoint(tenant.id, url, ["*"])
    # The allowance is for loopback only: private, metadata and plain http elsewhere stay out.
    for url, error in (
        ("https://10.0.0.1/", ForbiddenWebhookAddressError),
        ("https://169.254.169.254/", ForbiddenWebhookAddressError),
        ("http://partner.example/", InsecureWebhookUrlError),
    ):
        with pytest.raises(error):
            w.create_endpoint(tenant.id, url, ["*"])
    assert len(w.endpoints(tenant.id)) == 3


def test_delivery_refuses_a_connection_that_reaches_a_forbidden_address(
    engine: sa.Engine, clock: ManualClock
) -> None:
    """DNS rebinding between the check and the connect: the name checks public (the test's
    resolver), but the HTTP client resolves it again to connect and lands on loopback. The
    connection's real peer is checked before a byte of the request is sent."""
    import socket
    import threading

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    accepted: list[bool] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        accepted.append(True)
        with conn:
            conn.settimeout(2)
            try:
                while chunk := conn.recv(65536):
                    received.append(chunk)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    tenant = Tenants(engine, clock=clock).create("Bank N", "bank")
    w = Webhooks(
        engine,
        clock=clock,
        options=WebhookOptions(retry=SCHEDULE, resolve=lambda host: [PUBLIC_ADDRESS]),
    )
    w.create_endpoint(tenant.id, f"https://localhost:{port}/hook", ["*"])
    with engine.begin() as conn:
        event_id = w.record(conn, tenant.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})

    async def one_round() -> int:
        async with DeliveryWorker(w, unit_random=lambda: ALMOST_ONE) as worker:  # real network
            return await worker.run_once()

    try:
        assert asyncio.run(one_round()) == 1
        thread.join(5)
    finally:
        listener.close()
    assert accepted == [True]  # the client did connect to loopback...
    assert b"".join(received) == b""  # ...and sent nothing: no TLS hello, no request
    [delivery] = w.deliveries(tenant.id, event_id)
    assert (delivery.state, delivery.last_error) == ("pending", "webhook_url_forbidden")


def test_delivery_checks_the_address_again_and_never_follows_redirects(
    engine: sa.Engine, clock: ManualClock
) -> None:
    tenant = Tenants(engine, clock=clock).create("Bank R", "bank")
    table = {"moving.example": [PUBLIC_ADDRESS], "redirecting.example": [PUBLIC_ADDRESS]}

    def resolve(host: str) -> list[str]:
        return table.get(host, [])

    w = Webhooks(engine, clock=clock, options=WebhookOptions(retry=SCHEDULE, resolve=resolve))
    moving, _ = w.create_endpoint(tenant.id, "https://moving.example/hook", ["*"])
    table["moving.example"] = ["169.254.169.254"]  # DNS rebinding after registration
    with engine.begin() as conn:
        event_id = w.record(conn, tenant.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
    receiver = Receiver(clock)
    assert rounds(w, receiver) == 1
    assert receiver.got == []  # nothing was sent to the metadata address
    [delivery] = w.deliveries(tenant.id, event_id)
    assert (delivery.state, delivery.last_error) == ("pending", "webhook_url_forbidden")

    endpoint, _ = w.create_endpoint(tenant.id, "https://redirecting.example/hook", ["*"])
    with engine.begin() as conn:
        second = w.record(conn, tenant.id, EventType.PAYMENT_SUCCEEDED, {"amount": "2"})
    w.disable_endpoint(tenant.id, moving.id)
    sent: list[str] = []

    def redirect(request: httpx2.Request) -> httpx2.Response:
        sent.append(str(request.url))
        return httpx2.Response(302, headers={"Location": "http://169.254.169.254/"})

    assert rounds(w, redirect) == 1
    assert sent == ["https://redirecting.example/hook"]  # the Location was not followed
    [attempt] = [d for d in w.deliveries(tenant.id, second) if d.endpoint_id == endpoint.id]
    assert (attempt.state, attempt.last_status, attempt.last_error) == ("pending", 302, "HTTP 302")


def test_record_many_is_record_for_each_event_in_order(setup: Setup) -> None:
    w = setup.webhooks
    everything, _ = w.create_endpoint(setup.a.id, "https://a.example/all", ["*"])
    orders, _ = w.create_endpoint(setup.a.id, "https://a.example/orders", ["order.paid"])
    w.create_endpoint(setup.b.id, "https://b.example/hook", ["payment.succeeded"])
    events = [
        (setup.a.id, EventType.PAYMENT_SUCCEEDED, {"n": "1"}),
        (setup.b.id, EventType.PAYMENT_SUCCEEDED, {"n": "2"}),
        (setup.a.id, EventType.ORDER_PAID, {"n": "3"}),
        (setup.b.id, EventType.ORDER_PAID, {"n": "4"}),  # no endpoint of B wants it
    ]
    with pytest.raises(RuntimeError), setup.engine.begin() as conn:
        w.record_many(conn, events)
        raise RuntimeError("the state change failed")
    assert w.events(setup.a.id) == [] and w.events(setup.b.id) == []
    with setup.engine.begin() as conn:
        ids = w.record_many(conn, events)
        assert w.record_many(conn, []) == []
    listed = {e.id: e for t in (setup.a, setup.b) for e in w.events(t.id)}
    assert [listed[i].data for i in ids] == [{"n": "1"}, {"n": "2"}, {"n": "3"}, {"n": "4"}]
    assert [listed[i].tenant_id for i in ids] == [setup.a.id, setup.b.id, setup.a.id, setup.b.id]
    seqs = [listed[i].seq for i in ids]
    assert seqs == sorted(seqs) and len(set(ids)) == 4
    assert len({listed[i].txid for i in ids}) == 1  # one transaction, one statement
    wanted = [sorted(d.endpoint_id for d in w.deliveries(listed[i].tenant_id, i)) for i in ids]
    assert wanted[0] == [everything.id] and wanted[2] == sorted([everything.id, orders.id])
    assert len(wanted[1]) == 1 and wanted[3] == []
    receiver = Receiver(setup.clock)
    assert rounds(w, receiver) == 4
    assert sorted(receiver.event_ids()) == sorted([ids[0], ids[1], ids[2], ids[2]])
    with setup.engine.begin() as conn:
        later = w.record(conn, setup.a.id, EventType.ORDER_PAID, {"n": "5"})
    assert listed[ids[2]].position < w.event(setup.a.id, later).position


# --- PostgreSQL: concurrent transactions ------------------------------------------------------


@pytest.fixture
def pg_setup(pg_engine: sa.Engine, clock: ManualClock) -> Setup:
    """``setup`` on PostgreSQL only (``pg_engine`` skips without one)."""
    return _setup(pg_engine, clock)


@pytest.mark.postgres
def test_a_poller_never_pages_past_an_event_that_commits_later(pg_setup: Setup) -> None:
    """Two transactions record an event each: the first takes its ``seq`` and stays open,
    the second records a later ``seq`` and commits; a poller pages between the two commits,
    then again. Before, the poller got the second event, kept its ``seq`` as the cursor, and
    never saw the first (a smaller ``seq``, committed after): lost for pollers. Now the
    second event is not listed while the first transaction (which took its id earlier) is
    open, and then both are, in the order the transactions took their ids. (SQLite runs one
    writing transaction at a time.)"""
    s, w = pg_setup, pg_setup.webhooks
    seen: list[str] = []
    cursor = (0, 0)

    def poll() -> None:
        nonlocal cursor
        for event in w.events(s.a.id, after=cursor):
            seen.append(event.id)
            cursor = event.position

    with s.engine.connect() as first, ThreadPoolExecutor(1) as pool:
        first.begin()
        early = w.record(first, s.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
        later = pool.submit(s.record, s.a)
        wait_until_blocked_or_done(s.engine, backend_pid(first), later)
        poll()
        assert seen == []  # not even the second: the first is still open
        first.commit()
        later_id = later.result(PROMPTLY_S)
    poll()
    assert sorted(seen) == sorted([early, later_id])
    assert [e.id for e in w.events(s.a.id)] == [early, later_id]


@pytest.mark.postgres
def test_transactions_that_record_events_do_not_wait_for_each_other(pg_setup: Setup) -> None:
    """Two transactions record an event each (and its delivery to the same endpoint) and
    stay open: the second does not wait for the first. Before, the second waited for the
    first's advisory lock until the first ended (here: ``lock_timeout`` ends the wait with
    an error), so every transaction that records events committed one at a time. Neither
    event is listed before the first transaction ends, even once the second committed."""
    s, w = pg_setup, pg_setup.webhooks
    w.create_endpoint(s.a.id, "https://a.example/hook", ["*"])
    with s.engine.connect() as first, s.engine.connect() as second:
        first.begin()
        second.begin()
        second.execute(sa.text("SET LOCAL lock_timeout = '1s'"))  # waits for no lock at all
        early = w.record(first, s.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
        later = w.record(second, s.a.id, EventType.PAYMENT_SUCCEEDED, {"amount": "2"})
        assert w.events(s.a.id) == []
        second.commit()
        assert w.events(s.a.id) == []
        first.commit()
    assert [e.id for e in w.events(s.a.id)] == [early, later]
    assert [len(w.deliveries(s.a.id, e)) for e in (early, later)] == [1, 1]


def _pause_after(
    engine: sa.Engine, statement_starts: str, paused: list[int | None], resume: threading.Event
) -> Callable[[], None]:
    """Hold the thread marked ``_PAUSING.on`` right after its first statement that starts
    with ``statement_starts``, until ``resume``, its transaction open; its backend's pid is
    appended to ``paused`` then. Returns the function that removes the hook."""

    def after(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if getattr(_PAUSING, "on", False) and statement.lstrip().startswith(statement_starts):
            _PAUSING.on = False
            paused.append(backend_pid(conn))
            assert resume.wait(PROMPTLY_S)

    sa.event.listen(engine, "after_cursor_execute", after)
    return lambda: sa.event.remove(engine, "after_cursor_execute", after)


_PAUSING = threading.local()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("first", "paused_after"),
    [
        ("prune", "SELECT platform_webhook_events.seq"),  # it has chosen the event
        ("prune", "DELETE FROM platform_webhook_events"),  # it has deleted it, uncommitted
        ("replay", "SELECT platform_webhook_events.seq"),  # it has read the event
    ],
)
def test_a_replay_racing_the_pruning_of_its_event_is_queued_or_not_found(
    pg_setup: Setup, first: str, paused_after: str
) -> None:
    """An old, delivered event is pruned while it is replayed, one of the two held mid-way
    (its transaction open) while the other runs. Whichever went first wins cleanly: the
    pruning's event is gone and the replay answers ``webhook_event_not_found`` (404); the
    replay's event stays, with its delivery pending, and the pruning leaves it for later.
    Before, the replay inserted a delivery for the event the pruning deleted (a foreign-key
    violation: a 500), or queued it after the pruning chose the event, answered 1, and the
    pruning then deleted the delivery and the event."""
    s, w = pg_setup, pg_setup.webhooks
    w.create_endpoint(s.a.id, "https://a.example/hook", ["*"])
    event_id = s.record(s.a)
    s.record(s.b)  # B has no endpoint; the store's newest event, never pruned
    rounds(w, Receiver(s.clock))
    s.clock.advance(int(w.options.event_retention_s * NS) + 1)
    paused: list[int | None] = []
    resume = threading.Event()

    def prune() -> int:
        _PAUSING.on = first == "prune"
        return w.prune()

    def replay() -> int | Exception:
        _PAUSING.on = first == "replay"
        try:
            return w.replay(s.a.id, event_id)
        except Exception as error:  # what the route would answer: checked below
            return error

    unhook = _pause_after(s.engine, paused_after, paused, resume)
    try:
        with ThreadPoolExecutor(2) as pool:
            pausing = pool.submit(prune if first == "prune" else replay)
            deadline = time.monotonic() + PROMPTLY_S
            while not paused:
                assert time.monotonic() < deadline and not pausing.done(), "it never paused"
                time.sleep(0.01)
            other = pool.submit(replay if first == "prune" else prune)
            wait_until_blocked_or_done(s.engine, paused[0], other)
            resume.set()
            answers = {first: pausing.result(PROMPTLY_S)}
            answers["replay" if first == "prune" else "prune"] = other.result(PROMPTLY_S)
    finally:
        resume.set()
        unhook()
    with s.engine.connect() as conn:
        deliveries = conn.execute(
            sa.select(tables.webhook_deliveries.c.state, tables.webhook_events.c.id).join(
                tables.webhook_events,
                tables.webhook_events.c.seq == tables.webhook_deliveries.c.event_seq,
                isouter=True,
            )
        ).all()
    events = [e.id for e in w.events(s.a.id)]
    if first == "prune":  # the event and its deliveries are gone; the replay finds nothing
        assert isinstance(answers["replay"], WebhookEventNotFoundError), answers
        assert (answers["prune"], deliveries, events) == (1, [], [])
    else:  # the replay's delivery waits, and its event with it
        assert answers == {"replay": 1, "prune": 0}
        assert [(d.state, d.id) for d in deliveries] == [("pending", event_id)]
        assert events == [event_id]


@pytest.mark.parametrize("trickled", ["head", "body"])
def test_a_receiver_that_trickles_its_answer_cannot_hold_the_worker_past_the_timeout(
    engine: sa.Engine, clock: ManualClock, trickled: str
) -> None:
    """A receiver that sends its answer a byte at a time, each within the client's read
    timeout, used to hold its attempt — and the worker's whole round, every tenant's
    deliveries — for as long as it liked (a 64 KiB head at a byte per 9 s: hours), past the
    lease, so another server sent the event again meanwhile. ``request_timeout_s`` now
    bounds the whole attempt: a head not in by then is a failed attempt (retried); a status
    already in counts, the rest of the body is not waited for."""
    tick_s, timeout_s = 0.05, 0.5

    async def scenario() -> tuple[int, float, bool]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if trickled == "head":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                trickle = itertools.repeat(b"X")  # an endless header line
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                trickle = itertools.repeat(b".")
            try:
                for byte in trickle:
                    if stop.is_set():
                        break
                    writer.write(byte)
                    await writer.drain()
                    await asyncio.sleep(tick_s)
            except ConnectionError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        stop = asyncio.Event()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        w.create_endpoint(tenant.id, f"http://127.0.0.1:{port}/hook", ["*"])
        with engine.begin() as conn:
            w.record(conn, tenant.id, EventType.PAYMENT_SUCCEEDED, {"amount": "1"})
        try:
            async with DeliveryWorker(w, unit_random=lambda: ALMOST_ONE) as worker:
                started = time.monotonic()
                try:
                    made = await asyncio.wait_for(worker.run_once(), 20 * timeout_s)
                except TimeoutError:
                    return 0, time.monotonic() - started, True
                return made, time.monotonic() - started, False
        finally:
            stop.set()
            server.close()
            await asyncio.sleep(2 * tick_s)  # the handlers see ``stop`` and close

    tenant = Tenants(engine, clock=clock).create("Bank T", "bank")
    w = Webhooks(
        engine,
        clock=clock,
        options=WebhookOptions(retry=SCHEDULE, loopback_allowed=True, request_timeout_s=timeout_s),
    )
    made, took_s, stuck = asyncio.run(scenario())
    assert not stuck, f"the round was still waiting for the receiver after {took_s:.1f} s"
    assert made == 1 and took_s < 4 * timeout_s
    [event] = w.events(tenant.id)
    [delivery] = w.deliveries(tenant.id, event.id)
    if trickled == "head":
        assert (delivery.state, delivery.last_status, delivery.last_error) == (
            DeliveryState.PENDING,
            None,
            "TimeoutError",
        )
    else:
        assert (delivery.state, delivery.last_status) == (DeliveryState.DELIVERED, 200)


@pytest.mark.postgres
def test_endpoints_created_at_once_on_postgresql_keep_the_tenants_limit(pg_setup: Setup) -> None:
    """Two endpoints created at once by a tenant one short of its limit: each creation
    counted the enabled endpoints before either wrote its own, so both went in (17 of 16).
    Now the second waits for the first and is refused."""
    s, w = pg_setup, pg_setup.webhooks
    limit = w.options.endpoints_per_tenant_max
    for n in range(limit - 1):
        w.create_endpoint(s.a.id, f"https://a.example/{n}", ["*"])
    # Each creation waits before its INSERT until the other gets there too (at most 2 s:
    # with the lock, the other is still waiting for the tenant's row and never does).
    barrier = threading.Barrier(2, timeout=2)

    def meet_before_insert(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith(f"INSERT INTO {tables.webhook_endpoints.name}"):
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()

    def create(n: int) -> str:
        try:
            w.create_endpoint(s.a.id, f"https://a.example/late-{n}", ["*"])
        except WebhookEndpointLimitError:
            return "refused"
        return "created"

    sa.event.listen(s.engine, "before_cursor_execute", meet_before_insert)
    try:
        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(create, range(2)))
    finally:
        sa.event.remove(s.engine, "before_cursor_execute", meet_before_insert)
    assert outcomes == ["created", "refused"]
    assert sum(e.enabled for e in w.endpoints(s.a.id)) == limit


@pytest.mark.postgres
def test_an_endpoint_whose_creation_commits_late_is_listed_after_a_cursor_on_postgresql(
    pg_setup: Setup,
) -> None:
    """An endpoint's creation read the clock, then another endpoint was created and listed,
    then the first committed: its earlier time sorted it before the cursor, never listed to
    a client paging on. Now the time is taken under the tenant's lock, in commit order."""
    s, w = pg_setup, pg_setup.webhooks
    with (
        held(s.engine, "late") as hold,
        ThreadPoolExecutor(1, thread_name_prefix="late") as pool,
    ):
        late = pool.submit(w.create_endpoint, s.a.id, "https://a.example/late", ["*"])
        assert hold.reached.wait(PROMPTLY_S)
        s.clock.advance(NS)
        w.create_endpoint(s.a.id, "https://a.example/early", ["*"])
        [last] = w.endpoints(s.a.id)
        hold.go.set()
        late_endpoint, _ = late.result(PROMPTLY_S)
    assert w.endpoints(s.a.id, after=(last.created_at_ns, last.id)) == [late_endpoint]
