"""CacheMetrics: the cache's counters and lookup latency as Ray metrics (Prometheus via Ray's exporter).

``CacheStats`` stays a plain dataclass the cache increments at each event; this module publishes
its deltas, so the cache itself has no telemetry import and costs nothing extra per key. Metrics are
no-ops outside a Ray worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ray.util.metrics import Counter, Gauge, Histogram

from xz_serve.cache.stats import CacheStats

# CacheStats field -> (metric, tags). One place maps plain counters to metric names and labels.
_REQUESTS = {
    "l1_hits": {"layer": "l1", "result": "hit"},
    "l1_misses": {"layer": "l1", "result": "miss"},
    "redis_hits": {"layer": "exact", "result": "hit"},
    "redis_misses": {"layer": "exact", "result": "miss"},
    "redis_corrupt": {"layer": "exact", "result": "corrupt"},  # unreadable: recomputed and replaced
    "semantic_hits": {"layer": "semantic", "result": "hit"},
    "semantic_misses": {"layer": "semantic", "result": "miss"},
    "semantic_rejected": {"layer": "semantic", "result": "rejected"},
}
_COALESCED = {
    "coalesced_local": {"scope": "local"},
    "coalesced_remote": {"scope": "remote"},
    "lease_takeovers": {"scope": "takeover"},
}
_EVICTIONS = {
    "l1_evictions": {"layer": "l1"},
    "semantic_evictions": {"layer": "semantic"},  # a namespace's entry bound
    "semantic_budget_evictions": {"layer": "semantic_budget"},  # the replica's byte budget
}
_LEVELS = ("semantic_bytes",)  # CacheStats fields that are levels: published as they are, not as deltas
_REDIS_ERRORS = {
    "redis_errors": {"kind": "error"},  # every failed or too-slow call (timeouts included)
    "redis_timeouts": {"kind": "timeout"},
    "redis_skipped": {"kind": "skipped"},  # not tried: inside the backoff window after an error
}
LOOKUP_BOUNDARIES_MS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250]


class CacheMetrics:
    """Publishes one process's CacheStats deltas, request outcomes and lookup latency.

    ``publish`` is cheap (a dict of ints) and rate-limited to ``every_s``, so calling it after each
    request is fine; the counters it exports are the deltas since the last publish.
    """

    def __init__(
        self, stats: CacheStats, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stats = stats
        self.every_s = every_s
        self._clock = clock
        self._last = clock()
        self._seen = stats.snapshot()
        self.requests = Counter(
            "xz_cache_requests_total",
            description="Cache lookups per key by layer (l1, exact = Redis, semantic) and result "
            "(corrupt: a Redis value that does not decode, computed again and replaced).",
            tag_keys=("layer", "result"),
        )
        self.coalesced = Counter(
            "xz_cache_coalesced_total",
            description="Keys served by a computation already in flight (local: this process; remote: "
            "another replica's lease; takeover: computed here after a lease lapsed).",
            tag_keys=("scope",),
        )
        self.evictions = Counter(
            "xz_cache_evictions_total",
            description="Entries pushed out by a size bound, by layer (semantic: a namespace's entry "
            "bound; semantic_budget: the replica's byte budget for the semantic cache).",
            tag_keys=("layer",),
        )
        self.semantic_bytes = Gauge(
            "xz_cache_semantic_bytes",
            description="Memory the semantic (reply) cache holds on this replica, in bytes; bounded by "
            "cache.semantic_max_bytes.",
        )
        self.redis_errors = Counter(
            "xz_cache_redis_errors_total",
            description="Redis calls that failed, timed out, or were skipped during backoff; each "
            "is served as a miss.",
            tag_keys=("kind",),
        )
        self.redis_writes = Counter(
            "xz_cache_redis_writes_total", description="Entries written to the shared Redis layer."
        )
        self.responses = Counter(
            "xz_cache_responses_total",
            description="Requests by cache outcome (the X-Cache header: hit, miss, partial, coalesced, "
            "bypass, unavailable).",
            tag_keys=("outcome",),
        )
        self.computed = Counter(
            "xz_cache_computed_texts_total",
            description="Texts sent to the model by the cached client (the rest were saved).",
        )
        self.lookup_latency = Histogram(
            "xz_cache_lookup_latency_ms",
            description="Time to look up one request's keys (L1, then one Redis MGET).",
            boundaries=LOOKUP_BOUNDARIES_MS,
        )
        self.redis_evicted = Gauge(
            "xz_cache_redis_evicted_keys",
            description="Keys the cache Redis evicted under maxmemory (its INFO evicted_keys).",
        )

    def request(self, outcome: str, computed: int, lookup_ms: float | None) -> None:
        """Record one request's outcome, then publish the counters if ``every_s`` has passed."""
        self.responses.inc(1, tags={"outcome": outcome})
        if computed:
            self.computed.inc(computed)
        if lookup_ms is not None:
            self.lookup_latency.observe(lookup_ms)
        if self._clock() - self._last >= self.every_s:
            self.publish()

    def publish(self) -> dict[str, int]:
        """Export every counter's change since the last call; returns those changes (for tests)."""
        self._last = self._clock()
        now = self.stats.snapshot()
        delta = {name: now[name] - self._seen.get(name, 0) for name in now if name not in _LEVELS}
        self._seen = now
        self.semantic_bytes.set(now["semantic_bytes"])
        for table, metric in (
            (_REQUESTS, self.requests),
            (_COALESCED, self.coalesced),
            (_EVICTIONS, self.evictions),
            (_REDIS_ERRORS, self.redis_errors),
        ):
            for name, tags in table.items():
                if delta.get(name, 0) > 0:
                    metric.inc(delta[name], tags=tags)
        if delta.get("redis_writes", 0) > 0:
            self.redis_writes.inc(delta["redis_writes"])
        return {name: value for name, value in delta.items() if value}

    def redis_evictions(self, evicted_keys: int) -> None:
        """The server-side eviction count read from ``INFO stats``."""
        self.redis_evicted.set(evicted_keys)
