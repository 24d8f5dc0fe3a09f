"""Prometheus metrics of one API app, served at ``/metrics`` (text exposition format).

Each app has its own registry (two apps in one process never mix their figures). Labels
carry route templates, never concrete paths, ids or keys: no personal data, bounded
cardinality. A request answered before any route is known (the body guard's 413, 503 and
408, ``_bodies``) is counted under the route ``UNROUTED``, its method as one of ``METHODS``
or ``other`` (the client chooses the method: any token would be a new label value).
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS_EVENTS = (1, 2, 8, 32, 128, 512, 2048, 8189)

UNROUTED: Final = "unrouted"
"""The ``route`` label of requests answered before any route is known (no template starts
without ``/``)."""
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The ``method`` label values of those requests; any other method is ``other``."""


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "puhui_api_requests",
            "Requests to authenticated routes, by route template, method and status; requests "
            "refused before any route is known (request body limits) under route unrouted.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "puhui_api_request_seconds",
            "Time from authentication to the response, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.ledger_batch = Histogram(
            "puhui_api_ledger_batch_events",
            "Events per create_accounts / create_transfers request.",
            ["operation"],
            buckets=BATCH_BUCKETS_EVENTS,
            registry=self.registry,
        )
        self.ledger_latency = Histogram(
            "puhui_api_ledger_batch_seconds",
            "Time the ledger took for one create_accounts / create_transfers request.",
            ["operation"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "puhui_api_queue_depth",
            "Requests waiting on a shared queue (queued or in the batch being run), counted "
            "when scraped: idempotency_claims, idempotency_finishes, audit, payments.",
            ["queue"],
            registry=self.registry,
        )
        self.webhook_backlog = Gauge(
            "puhui_webhook_backlog",
            "Webhook deliveries waiting (pending), counted when scraped.",
            registry=self.registry,
        )

        # The children of the request metrics by their labels: ``labels()`` takes a lock and
        # checks its arguments on every call (two calls per request); a label set is looked
        # up once. Bounded: the label values are route templates, methods and statuses.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def count_request(self, route: str, method: str, status: int) -> None:
        """One more request of ``route`` (template) and ``method`` answered ``status``."""
        child = self._counted.get((route, method, status))
        if child is None:
            child = self._counted[route, method, status] = self.requests.labels(
                route, method, status
            )
        child.inc()

    def count_unrouted(self, method: str, status: int) -> None:
        """One more request answered ``status`` before any route was known."""
        self.count_request(UNROUTED, method if method in METHODS else "other", status)

    def time_request(self, route: str, method: str, seconds: float) -> None:
        """A request of ``route`` and ``method`` took ``seconds`` from authentication on."""
        child = self._timed.get((route, method))
        if child is None:
            child = self._timed[route, method] = self.latency.labels(route, method)
        child.observe(seconds)
