"""ExactCache against a real redis-server: sharing between replicas, outages, and recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.cache.conftest import RedisServer
from xz_serve.cache.exact import ExactCache
from xz_serve.kernel.redis import RedisGuard


async def test_value_from_one_replica_is_a_hit_on_another(make_guard: Callable[..., RedisGuard]) -> None:
    a, b = ExactCache(make_guard()), ExactCache(make_guard())
    assert await a.set_many({"k1": b"v1", "k2": b"v2"}, ttl_s=60) is True
    assert await b.get_many(["k1", "nope", "k2"]) == [b"v1", None, b"v2"]
    assert b.stats.redis_hits == 2 and b.stats.redis_misses == 1
    assert await b.get("k1") == b"v1" and b.stats.l1_hits == 1  # now served from b's L1
    ttl = await b.guard.client.ttl("k1")  # type: ignore[union-attr]
    assert 0 < ttl <= 60


async def test_server_is_bounded(make_guard: Callable[..., RedisGuard]) -> None:
    assert await make_guard().memory_policy() == (64 * 1024 * 1024, "allkeys-lru")


async def test_hung_redis_costs_at_most_the_timeout(
    redis_server: RedisServer, make_guard: Callable[..., RedisGuard]
) -> None:
    cache = ExactCache(make_guard(timeout_ms=100, backoff_ms=300))
    await cache.set_many({"warm": b"1"})  # the pool holds an open connection now
    redis_server.pause()
    try:
        started = time.perf_counter()
        assert await cache.get_many(["a", "b"]) == [None, None]
        assert time.perf_counter() - started < 0.1 + 0.08
        started = time.perf_counter()
        assert await cache.set_many({"a": b"1"}) is False  # skipped: backoff window
        assert time.perf_counter() - started < 0.01
        assert cache.stats.redis_timeouts == 1 and cache.stats.redis_skipped == 1
    finally:
        redis_server.resume()
    await asyncio.sleep(0.35)
    assert await cache.set_many({"c": b"3"}) is True  # resumed by itself


async def test_killed_then_restarted_redis(
    redis_server: RedisServer, make_guard: Callable[..., RedisGuard]
) -> None:
    cache = ExactCache(make_guard(timeout_ms=100, backoff_ms=200), l1_max_entries=0)
    assert await cache.set_many({"k": b"v"}) is True
    redis_server.stop()
    for _ in range(3):
        started = time.perf_counter()
        assert await cache.get_many(["k", "x"]) == [None, None]  # fail open, no exception
        assert await cache.set_many({"x": b"1"}) is False
        assert time.perf_counter() - started < 0.1 + 0.05
    assert cache.stats.redis_errors >= 1
    redis_server.start()  # same port, empty (no persistence)
    deadline = time.monotonic() + 2
    while not await cache.set_many({"k": b"again"}):
        assert time.monotonic() < deadline, "cache did not resume after redis came back"
        await asyncio.sleep(0.05)
    assert await cache.get_many(["k"]) == [b"again"]
    assert cache.stats.redis_hits == 1
