"""The cache role's RedisGuard, from a CacheSpec: every cache failure becomes a miss."""

from __future__ import annotations

from xz_serve.cache.spec import CacheSpec
from xz_serve.cache.stats import CacheStats
from xz_serve.kernel.redis import RedisGuard


def cache_stats(guard: RedisGuard) -> CacheStats:
    """The cache counters behind ``guard``: its own when they are CacheStats, else new ones that the
    guard counts its failures into from now on (a guard built without cache stats)."""
    if isinstance(guard.stats, CacheStats):
        return guard.stats
    stats = CacheStats()
    guard.stats = stats
    return stats


def cache_guard(spec: CacheSpec, stats: CacheStats | None = None) -> RedisGuard:
    """A guard over the cache Redis ``spec`` names (over no client when it names none).

    One per process: the exact cache, the coalescer and the reply cache share it, so one outage is
    detected once and one pool serves them all.
    """
    return RedisGuard.connect(
        spec.redis_url, "cache", timeout_ms=spec.timeout_ms, backoff_ms=spec.backoff_ms,
        connect_timeout_ms=spec.connect_timeout_ms, max_connections=spec.max_connections,
        stats=stats if stats is not None else CacheStats(),
    )  # fmt: skip
