"""Prometheus metrics of one server (its own registry, so several servers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ADAPTER_BUCKETS = (1, 2, 3, 4, 8, 16, 32, 64)


class ServeMetrics:
    """Requests, errors, latency, texts, batch sizes, queue depth and loaded adapters, per adapter where it fits.

    Adapter labels only ever hold names of adapters that were loaded (unknown names count as `-`), so a client
    cannot grow the label set without bound.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "peftkit_requests", "HTTP requests answered", ["endpoint", "adapter", "status"], registry=r
        )
        self.errors = Counter(
            "peftkit_errors",
            "HTTP requests answered with an error (status >= 400)",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "peftkit_request_seconds",
            "Request latency, received to answered",
            ["endpoint", "adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter("peftkit_texts", "Texts classified", ["adapter"], registry=r)
        self.batch_rows = Histogram(
            "peftkit_batch_rows",
            "Texts per batch (one forward or a group of them)",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_adapters = Histogram(
            "peftkit_batch_adapters", "Distinct adapters per batch", buckets=ADAPTER_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "peftkit_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_texts = Gauge("peftkit_queue_texts", "Texts waiting in the queue", registry=r)
        self.queue_requests = Gauge("peftkit_queue_requests", "Requests waiting in the queue", registry=r)
        self.adapters_loaded = Gauge("peftkit_adapters_loaded", "Adapters loaded", registry=r)
        self.adapter_loads = Counter(
            "peftkit_adapter_loads", "Adapter load attempts", ["outcome"], registry=r
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
