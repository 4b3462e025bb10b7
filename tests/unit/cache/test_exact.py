"""ExactCache without a Redis server: L1 only, and fail-open with backoff when Redis misbehaves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from xz_serve.cache.exact import ExactCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.redis import RedisGuard


class BrokenRedis:
    """Stands in for a Redis that refuses connections, or hangs when ``hang`` is set."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.calls = 0

    async def _fail(self) -> Any:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(10)
        raise redis.ConnectionError("connection refused")

    async def mget(self, keys: list[str]) -> Any:
        return await self._fail()

    def pipeline(self, transaction: bool = False) -> BrokenRedis:
        return self

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def execute(self) -> Any:
        return await self._fail()


async def test_l1_only_without_redis() -> None:
    cache = ExactCache.from_spec(CacheSpec())
    assert await cache.get_many(["a", "b"]) == [None, None]
    assert await cache.set_many({"a": b"1"}) is False  # nothing shared, but L1 has it
    assert await cache.get_many(["a", "b", "a"]) == [b"1", None, b"1"]
    assert cache.stats.l1_hits == 1 and cache.stats.redis_errors == 0  # per distinct key


async def test_errors_are_misses_then_backoff() -> None:
    broken = BrokenRedis()
    guard = RedisGuard(broken, timeout_ms=50, backoff_ms=60_000)  # type: ignore[arg-type]
    cache = ExactCache(guard)
    assert await cache.get_many(["a"]) == [None]
    assert await cache.set_many({"a": b"1"}) is False
    assert await cache.get_many(["b"]) == [None]
    assert broken.calls == 1  # the second and third call were skipped: backoff window open
    assert cache.stats.redis_errors == 1 and cache.stats.redis_skipped == 2
    assert await cache.get("a") == b"1"  # L1 still serves


async def test_hang_costs_at_most_the_timeout_and_resumes() -> None:
    broken = BrokenRedis(hang=True)
    guard = RedisGuard(broken, timeout_ms=30, backoff_ms=50)  # type: ignore[arg-type]
    cache = ExactCache(guard)
    started = time.perf_counter()
    assert await cache.get_many(["a", "b"]) == [None, None]
    assert time.perf_counter() - started < 0.2
    assert cache.stats.redis_timeouts == 1
    await asyncio.sleep(0.06)  # the window closes by itself
    assert guard.available
    await cache.get_many(["c"])
    assert broken.calls == 2


async def test_background_write_is_tracked() -> None:
    cache = ExactCache(RedisGuard(None))
    task = cache.schedule_set_many([("k", b"v")])
    await cache.drain()
    assert task.done() and await cache.get("k") == b"v"
