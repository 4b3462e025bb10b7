"""Coalescing across replicas through Redis leases: one compute for everyone, takeover when a holder dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from xz_serve.cache.coalesce import Coalescer, lease_key
from xz_serve.cache.exact import ExactCache
from xz_serve.cache.guard import RedisGuard


def replica(make_guard: Callable[..., RedisGuard], **kw: int) -> Coalescer:
    return Coalescer(ExactCache(make_guard()), poll_ms=5, **kw)


async def test_fifty_requests_over_two_replicas_compute_once(make_guard: Callable[..., RedisGuard]) -> None:
    replicas = [replica(make_guard), replica(make_guard)]
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"answer"

    results = await asyncio.gather(*(replicas[i % 2].run("xz:k", compute) for i in range(50)))
    assert calls == 1
    assert results == [b"answer"] * 50
    follower = replicas[1] if replicas[0].stats.coalesced_remote == 0 else replicas[0]
    assert follower.stats.coalesced_remote == 1 and follower.stats.coalesced_local == 24
    assert await replicas[0].guard.client.exists(lease_key("xz:k")) == 0  # type: ignore[union-attr]


async def test_run_many_splits_work_between_replicas(make_guard: Callable[..., RedisGuard]) -> None:
    a, b = replica(make_guard), replica(make_guard)
    seen: list[list[str]] = []

    async def compute(keys: list[str]) -> list[bytes]:
        seen.append(keys)
        await asyncio.sleep(0.03)
        return [k.upper().encode() for k in keys]

    ra, rb = await asyncio.gather(a.run_many(["p", "q"], compute), b.run_many(["q", "r"], compute))
    assert ra == [b"P", b"Q"] and rb == [b"Q", b"R"]
    computed = sorted(k for batch in seen for k in batch)
    assert computed == ["p", "q", "r"]  # q once, by whichever replica took its lease


async def test_lease_holder_dies_and_another_replica_takes_over(
    make_guard: Callable[..., RedisGuard],
) -> None:
    dead = make_guard()
    assert dead.client is not None
    await dead.client.set(lease_key("xz:k"), "dead-token", nx=True, px=200)  # took the lease, then died
    live = replica(make_guard, lease_ms=1000)

    async def compute() -> bytes:
        return b"mine"

    started = time.perf_counter()
    assert await live.run("xz:k", compute) == b"mine"
    assert 0.15 < time.perf_counter() - started < 0.6  # waited for the lease to lapse, not longer
    assert live.stats.lease_takeovers == 1


async def test_failing_holder_releases_at_once(make_guard: Callable[..., RedisGuard]) -> None:
    a, b = replica(make_guard, lease_ms=5000), replica(make_guard, lease_ms=5000)

    async def boom() -> bytes:
        await asyncio.sleep(0.02)
        raise RuntimeError("model failed")

    async def fine() -> bytes:
        await asyncio.sleep(0.01)
        return b"ok"

    started = time.perf_counter()
    first = asyncio.create_task(a.run("xz:k", boom))
    await asyncio.sleep(0.005)  # a takes the lease
    ra, rb = await asyncio.gather(first, b.run("xz:k", fine), return_exceptions=True)
    assert isinstance(ra, RuntimeError)  # a's own waiters see a's failure
    assert rb == b"ok" and b.stats.lease_takeovers == 1  # b computes as soon as a lets go
    assert time.perf_counter() - started < 0.5  # nowhere near the 5 s lease
