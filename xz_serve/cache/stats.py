"""CacheStats: plain counters the cache keeps; metrics exporters read them (wiring comes later)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class CacheStats:
    """Monotonic counters for one process (and one level, ``semantic_bytes``); one instance is
    shared by every cache using one Redis.

    Plain ints rather than metric objects keep the cache free of telemetry imports; an exporter
    reads ``snapshot()`` and publishes deltas as ``xz_cache_<what>_total``.
    """

    l1_hits: int = 0
    l1_misses: int = 0
    l1_evictions: int = 0  # entries pushed out by the size bound (expiry is not counted)
    redis_hits: int = 0
    redis_misses: int = 0
    redis_writes: int = 0
    redis_corrupt: int = 0  # values read from Redis that do not decode: recomputed and replaced
    redis_errors: int = 0  # failed or too-slow calls, each served as misses
    redis_timeouts: int = 0  # the subset of errors that were timeouts
    redis_skipped: int = 0  # calls not made because Redis is in its backoff window
    coalesced_local: int = 0  # keys that waited on a computation already running in this process
    coalesced_remote: int = 0  # keys another replica computed while this one waited on its lease
    lease_takeovers: int = 0  # keys computed here after another replica's lease lapsed
    semantic_hits: int = 0
    semantic_misses: int = 0
    semantic_rejected: int = 0  # above the threshold but refused by the margin rule
    semantic_evictions: int = 0  # pushed out by a namespace's entry bound (semantic_max_entries)
    semantic_budget_evictions: int = 0  # pushed out by the replica's byte budget (semantic_max_bytes)
    semantic_bytes: int = 0  # a level, not a counter: what the semantic cache holds in memory now

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, by name."""
        return asdict(self)
