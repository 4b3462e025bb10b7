"""xz_http_* and xz_replica_* metrics, recorded through ``ray.util.metrics``.

Ray's per-node metrics agent serves them in Prometheus format (with a ``ray_`` prefix, e.g.
``ray_xz_http_requests_total``) on the metrics export port, which both the Ray dashboard and
Prometheus read. Outside a Ray worker the calls are cheap no-ops, so unit tests need no cluster.
Every series carries ``application`` and ``deployment`` (from Serve's replica context), so two apps
on one cluster stay apart.
"""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_TEXTS = [1, 2, 4, 8, 16, 32, 64, 128]
_BASE = ("application", "deployment")


@cache
def serve_tags() -> dict[str, str]:
    """This replica's app and deployment names; empty strings outside a Serve replica."""
    try:
        from ray import serve

        replica = serve.get_replica_context()
        return {"application": replica.app_name, "deployment": replica.deployment}
    except Exception:
        return {"application": "", "deployment": ""}


class HttpMetrics:
    """Per-request RED metrics of the HTTP ingress, by route template and status."""

    def __init__(self) -> None:
        keys = (*_BASE, "route", "method", "status")
        self.requests = Counter(
            "xz_http_requests_total",
            description="HTTP requests answered, by route and status.",
            tag_keys=keys,
        )
        self.latency = Histogram(
            "xz_http_request_duration_ms",
            description="HTTP request latency in the ingress replica (ms), by route and status.",
            boundaries=LATENCY_MS,
            tag_keys=keys,
        )
        self.errors = Counter(
            "xz_http_errors_total",
            description="HTTP error responses by route, status and error code (the JSON error.code).",
            tag_keys=(*_BASE, "route", "status", "code"),
        )

    def record(self, route: str, method: str, status: int, elapsed_ms: float, code: str | None) -> None:
        tags = {**serve_tags(), "route": route, "method": method, "status": str(status)}
        self.requests.inc(1, tags=tags)
        self.latency.observe(elapsed_ms, tags=tags)
        if code is not None:
            self.errors.inc(1, tags={**serve_tags(), "route": route, "status": str(status), "code": code})


class ReplicaMetrics:
    """Batching and inference on a model replica: what the batch queue and the model are doing."""

    def __init__(self) -> None:
        self.queue_wait = Histogram(
            "xz_replica_queue_wait_ms",
            description="Time a predict call waited for its batch to start (ms).",
            boundaries=LATENCY_MS,
            tag_keys=_BASE,
        )
        self.batch_size = Histogram(
            "xz_replica_batch_size_texts",
            description="Texts per batch (before deduplication).",
            boundaries=BATCH_TEXTS,
            tag_keys=_BASE,
        )
        self.inference = Histogram(
            "xz_replica_inference_duration_ms",
            description="Model time per batch, including per-call retries after a failed pass (ms).",
            boundaries=LATENCY_MS,
            tag_keys=_BASE,
        )
        self.queue_depth = Gauge(
            "xz_replica_queue_depth_calls",
            description="Predict calls inside this replica: waiting for a batch or running in one.",
            tag_keys=_BASE,
        )
        self.calls = Counter(
            "xz_replica_calls_total",
            description="Predict calls finished, by outcome (ok, or the error kind).",
            tag_keys=(*_BASE, "outcome"),
        )

    def depth(self, calls: int) -> None:
        self.queue_depth.set(calls, tags=serve_tags())

    def batch(self, texts: int, inference_ms: float) -> None:
        self.batch_size.observe(texts, tags=serve_tags())
        self.inference.observe(inference_ms, tags=serve_tags())

    def call(self, queue_ms: float | None, outcome: str) -> None:
        if queue_ms is not None:
            self.queue_wait.observe(queue_ms, tags=serve_tags())
        self.calls.inc(1, tags={**serve_tags(), "outcome": outcome})


@cache
def http_metrics() -> HttpMetrics:
    """One set per process (Ray refuses nothing, but duplicates would double-report)."""
    return HttpMetrics()


@cache
def replica_metrics() -> ReplicaMetrics:
    """One set per process."""
    return ReplicaMetrics()
