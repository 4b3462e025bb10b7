"""The sliding-window limiter: its arithmetic in the Lua script (real redis-server) and in memory."""

from __future__ import annotations

import asyncio
import math

import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from xz_serve.access.ratelimit import Decision, Limiter, MemoryLimiter, RedisLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def charge(limiter: Limiter, bucket: str, limit: int, cost: int = 1) -> Decision:
    """One limit charged through ``hit_all``, the limiters' only entry point."""
    return (await limiter.hit_all([(bucket, limit, cost)]))[0]


async def test_lua_admits_exactly_the_limit(store_client: Redis) -> None:
    limiter = RedisLimiter(store_client)
    decisions = [await charge(limiter, "k:requests", 5) for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert all(d.limit == 5 for d in decisions)
    refused = decisions[-1]
    assert refused.retry_after_s is not None and 59 < refused.retry_after_s <= 60
    assert 59 < refused.reset_s <= 60
    assert refused.headers("requests") == {
        "x-ratelimit-limit": "5", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "60"
    }  # fmt: skip
    assert (await charge(limiter, "other:requests", 5)).allowed  # buckets are independent


async def test_lua_weights_by_cost(store_client: Redis) -> None:
    limiter = RedisLimiter(store_client)
    assert (await charge(limiter, "k:texts", 10, cost=6)).remaining == 4
    refused = await charge(limiter, "k:texts", 10, cost=5)
    assert not refused.allowed and refused.remaining == 4  # refused units are not recorded
    assert (await charge(limiter, "k:texts", 10, cost=4)).remaining == 0
    never = await charge(limiter, "k:texts", 10, cost=11)
    assert not never.allowed and never.retry_after_s is None  # can never fit


async def test_lua_window_slides(store_client: Redis) -> None:
    limiter = RedisLimiter(store_client, window_s=0.4)
    assert (await charge(limiter, "k", 2, cost=1)).allowed
    await asyncio.sleep(0.2)
    assert (await charge(limiter, "k", 2, cost=1)).allowed
    refused = await charge(limiter, "k", 2)
    assert not refused.allowed
    assert refused.retry_after_s is not None
    assert 0.1 < refused.retry_after_s <= 0.21  # when the first grant ages out
    await asyncio.sleep(refused.retry_after_s + 0.03)
    again = await charge(limiter, "k", 2)
    assert again.allowed and again.remaining == 0  # the second grant is still in the window
    await asyncio.sleep(0.45)
    assert (await charge(limiter, "k", 2)).remaining == 1
    ttl = await store_client.pttl("xz:rl:{k}:k:log")
    assert 0 < ttl <= 400  # counters expire with the window: an idle key costs nothing


async def test_lua_is_exact_under_concurrency_from_many_clients(store_server: RedisServer) -> None:
    """Two "replicas" (own connections) racing 3N hits at one bucket admit exactly N."""
    clients = [Redis.from_url(store_server.url) for _ in range(2)]
    limiters = [RedisLimiter(c) for c in clients]
    n = 40
    decisions = await asyncio.gather(*(charge(limiters[i % 2], "race", n) for i in range(3 * n)))
    assert sum(d.allowed for d in decisions) == n
    for client in clients:
        await client.aclose()


async def test_lua_reloads_after_a_redis_restart(store_server: RedisServer) -> None:
    client = Redis.from_url(store_server.url)
    limiter = RedisLimiter(client)
    assert (await charge(limiter, "k", 3)).remaining == 2
    await client.aclose()
    store_server.restart()  # the script cache is gone; the counters are in the AOF
    client = Redis.from_url(store_server.url)
    limiter = RedisLimiter(client)
    assert (await charge(limiter, "k", 3)).remaining == 1
    await client.aclose()


@pytest.mark.parametrize("cost", [1, 3])
async def test_memory_limiter_matches_the_script(store_client: Redis, cost: int) -> None:
    clock = Clock()
    memory = MemoryLimiter(window_s=60, clock=clock)
    redis = RedisLimiter(store_client)
    for _ in range(6):
        a, b = await charge(memory, "k", 10, cost), await charge(redis, "k", 10, cost)
        assert (a.allowed, a.remaining, a.limit) == (b.allowed, b.remaining, b.limit)
        assert math.ceil(a.reset_s) == math.ceil(b.reset_s) == 60


async def test_memory_limiter_window() -> None:
    clock = Clock()
    limiter = MemoryLimiter(window_s=60, clock=clock)
    assert (await charge(limiter, "k", 2)).allowed
    clock.now += 30
    assert (await charge(limiter, "k", 2)).allowed
    refused = await charge(limiter, "k", 2)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30)
    clock.now += 30
    assert (await charge(limiter, "k", 2)).allowed
    assert not (await charge(limiter, "k", 2)).allowed
    clock.now += 61
    assert (await charge(limiter, "k", 2)).remaining == 1


async def test_limits_are_charged_together_or_not_at_all(store_client: Redis) -> None:
    for limiter in (RedisLimiter(store_client), MemoryLimiter()):
        charges = [("k:requests", 10, 1), ("k:texts", 5, 3)]
        first = await limiter.hit_all(charges)
        assert [(d.allowed, d.remaining) for d in first] == [(True, 9), (True, 2)]
        second = await limiter.hit_all(charges)  # the texts do not fit: the request is not counted
        assert [(d.allowed, d.remaining) for d in second] == [(True, 9), (False, 2)]
        assert second[0].retry_after_s is None and second[1].retry_after_s is not None
        third = await limiter.hit_all([("k:requests", 10, 1), ("k:texts", 5, 2)])
        assert [(d.allowed, d.remaining) for d in third] == [(True, 8), (True, 0)]
