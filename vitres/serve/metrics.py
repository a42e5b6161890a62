"""The server's Prometheus metrics, in a registry of their own.

Each server (each app) owns a :class:`prometheus_client.CollectorRegistry`, so several
apps in one process -- tests, a benchmark -- never share or clash over counters. Names
follow the Prometheus conventions (base units: seconds; ``_total`` on counters).

====================================  =========  ========================================
metric                                type       meaning
====================================  =========  ========================================
vitres_requests_total{outcome}        counter    requests by outcome: ok, bad_request
                                                 (400), too_large (413), shed (503),
                                                 unavailable (503, shutting down), error
                                                 (500), timeout (504), disconnected (the
                                                 client left before its body arrived)
vitres_shed_total{reason}             counter    503s: slo (no resolution could meet the
                                                 SLO), queue_full, expired (waited past
                                                 hope), in_flight (too many requests
                                                 inside the HTTP layer)
vitres_request_latency_seconds        histogram  arrival to answer, answered requests
vitres_queue_wait_seconds             histogram  arrival to the start of its batch
vitres_batch_latency_seconds          histogram  model time per batch
vitres_batch_size                     histogram  requests per batch
vitres_resolution_pixels{side}        gauge      height / width of the last batch
vitres_current_batch_size             gauge      size of the last batch
vitres_queue_depth                    gauge      requests waiting now
vitres_http_in_flight                 gauge      classify requests inside the server now
vitres_event_loop_delay_seconds       gauge      how late the event loop runs ready work
                                                 (:mod:`vitres.serve.loop_delay`)
vitres_latency_correction             gauge      online factor measured / predicted
vitres_latency_band_ratio             gauge      median served / sweep p95 (monitor window)
vitres_error_rate                     gauge      failed / all requests (monitor window)
vitres_rollbacks_total{reason}        counter    rollbacks to the safe configuration
vitres_rolled_back                    gauge      1 once serving the safe configuration
vitres_slo_seconds                    gauge      the latency objective
====================================  =========  ========================================

Several replicas (``vitres serve --ray``) each count in their own registry;
:func:`render_replicas` exposes them together, every sample labelled with the replica
that counted it (``replica="..."``), so that a Prometheus query sums over that label to
aggregate (``sum without (replica) (...)``) or keeps it to compare replicas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

__all__ = [
    "CONTENT_TYPE_LATEST",
    "OUTCOMES",
    "REPLICA_LABEL",
    "SHED_REASONS",
    "ServerMetrics",
    "render_replicas",
    "sum_samples",
]

#: The label :func:`render_replicas` adds to every sample: the replica that counted it.
REPLICA_LABEL = "replica"

OUTCOMES = (
    "ok",
    "bad_request",
    "too_large",
    "shed",
    "unavailable",
    "error",
    "timeout",
    "disconnected",
)
SHED_REASONS = ("slo", "queue_full", "expired", "in_flight")
ROLLBACK_REASONS = ("latency", "errors")

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class ServerMetrics:
    """Every metric of one server; see the module docstring.

    Args:
        slo_ms: The latency objective, exported as ``vitres_slo_seconds``.
        max_batch: Largest batch (sets the batch-size buckets).
    """

    def __init__(self, slo_ms: float, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # registered in this order, which is the order they are rendered in
        self._add_traffic(max_batch)
        self._add_state(slo_ms)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)
        for reason in SHED_REASONS:
            self.shed.labels(reason=reason)
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(reason=reason)
        self.correction.set(1.0)

    def _add_traffic(self, max_batch: int) -> None:
        """Counters and histograms of requests and batches."""
        r = self.registry
        self.requests = Counter(
            "vitres_requests", "Answered requests by outcome.", ["outcome"], registry=r
        )
        self.shed = Counter(
            "vitres_shed",
            "Requests answered 503 to hold the SLO, by reason.",
            ["reason"],
            registry=r,
        )
        self.request_latency = Histogram(
            "vitres_request_latency_seconds",
            "Arrival to answer of requests answered with a prediction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vitres_queue_wait_seconds",
            "Arrival to the start of the request's batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "vitres_batch_latency_seconds",
            "Model time of one batch (preprocessing and forward).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch})
        self.batch_size = Histogram(
            "vitres_batch_size",
            "Requests per batch.",
            buckets=[b for b in batch_buckets if b <= max_batch],
            registry=r,
        )

    def _add_state(self, slo_ms: float) -> None:
        """Gauges of the server's state (read at each scrape), rollbacks and the SLO."""
        r = self.registry
        self.resolution = Gauge(
            "vitres_resolution_pixels", "Input size of the last batch.", ["side"], registry=r
        )
        self.current_batch = Gauge(
            "vitres_current_batch_size", "Requests in the last batch.", registry=r
        )
        # the worker sets it to read its queue at each scrape
        self.queue_depth = Gauge("vitres_queue_depth", "Requests waiting now.", registry=r)
        # the app sets these two to read its own state at each scrape
        self.in_flight = Gauge(
            "vitres_http_in_flight", "Classify requests inside the server now.", registry=r
        )
        self.loop_delay = Gauge(
            "vitres_event_loop_delay_seconds",
            "How late the event loop runs ready work (largest of the last window).",
            registry=r,
        )
        self.correction = Gauge(
            "vitres_latency_correction",
            "Online correction: measured / predicted latency (EWMA).",
            registry=r,
        )
        self.band_ratio = Gauge(
            "vitres_latency_band_ratio",
            "Median served latency / the sweep's p95 over the monitor window.",
            registry=r,
        )
        self.error_rate = Gauge(
            "vitres_error_rate", "Failed / all requests over the monitor window.", registry=r
        )
        self.rollbacks = Counter(
            "vitres_rollbacks",
            "Rollbacks to the safe configuration, by reason.",
            ["reason"],
            registry=r,
        )
        self.rolled_back = Gauge(
            "vitres_rolled_back", "1 once the server runs its safe configuration.", registry=r
        )
        slo = Gauge("vitres_slo_seconds", "The per-request latency objective.", registry=r)
        slo.set(slo_ms / 1000.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def snapshot(self) -> list[Metric]:
        """Every metric family with its current samples (plain, picklable objects), for
        :func:`render_replicas`."""
        return list(self.registry.collect())


class _Families:
    """A collector that yields fixed metric families (what :func:`render_replicas` renders)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def render_replicas(snapshots: Mapping[str, Sequence[Metric]]) -> bytes:
    """The Prometheus text exposition of several replicas' metrics.

    Each family appears once (the same names, help and types as one server's
    :meth:`ServerMetrics.render`); each sample carries :data:`REPLICA_LABEL` = the replica
    that counted it, its other labels unchanged.

    Args:
        snapshots: ``{replica id: ServerMetrics.snapshot()}``.

    Raises:
        ValueError: a sample already has a ``replica`` label.
    """
    families: dict[str, Metric] = {}
    for replica, metrics in sorted(snapshots.items()):
        for family in metrics:
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            for sample in family.samples:
                if REPLICA_LABEL in sample.labels:
                    raise ValueError(
                        f"{sample.name} already has a {REPLICA_LABEL!r} label; cannot merge"
                    )
                labels = {**sample.labels, REPLICA_LABEL: str(replica)}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


def sum_samples(snapshots: Mapping[str, Sequence[Metric]], name: str, **labels: str) -> float:
    """The sum over replicas (and over any labels not given) of the samples called
    ``name`` (e.g. ``vitres_requests_total``) whose labels include ``labels``."""
    return sum(
        sample.value
        for metrics in snapshots.values()
        for family in metrics
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
