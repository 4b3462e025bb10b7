"""Coalescing across replicas through Redis leases: one compute for everyone, takeover when a holder dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from xz_serve.cache.coalesce import Coalescer, lease_key
from xz_serve.cache.exact import ExactCache
from xz_serve.kernel.redis import RedisGuard


def replica(make_guard: Callable[..., RedisGuard], **kw: int) -> Coalescer:
    return Coalescer(ExactCache(make_guard()), poll_ms=5, **kw)


async def test_fifty_requests_over_two_replicas_compute_once(make_guard: Callable[..., RedisGuard]) -> None:
    replicas = [replica(make_guard), replica(make_guard)]
    calls = 0

    async def compute(_deadline: float | None) -> bytes:
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

    async def compute(keys: list[str], _deadline: float | None) -> list[bytes]:
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

    async def compute(_deadline: float | None) -> bytes:
        return b"mine"

    started = time.perf_counter()
    assert await live.run("xz:k", compute) == b"mine"
    assert 0.15 < time.perf_counter() - started < 0.6  # waited for the lease to lapse, not longer
    assert live.stats.lease_takeovers == 1


async def test_failing_holder_releases_at_once(make_guard: Callable[..., RedisGuard]) -> None:
    a, b = replica(make_guard, lease_ms=5000), replica(make_guard, lease_ms=5000)

    async def boom(_deadline: float | None) -> bytes:
        await asyncio.sleep(0.02)
        raise RuntimeError("model failed")

    async def fine(_deadline: float | None) -> bytes:
        await asyncio.sleep(0.01)
        return b"ok"

    started = time.perf_counter()
    first = asyncio.create_task(a.run("xz:k", boom))
    await asyncio.sleep(0.005)  # a takes the lease
    ra, rb = await asyncio.gather(first, b.run("xz:k", fine), return_exceptions=True)
    assert isinstance(ra, RuntimeError)  # a's own waiters see a's failure
    assert rb == b"ok" and b.stats.lease_takeovers == 1  # b computes as soon as a lets go
    assert time.perf_counter() - started < 0.5  # nowhere near the 5 s lease


async def test_a_lookup_leases_its_misses_in_one_round_trip(make_guard: Callable[..., RedisGuard]) -> None:
    """lookup(lease=...) answers hits and leases misses in one step; run_many then computes the
    leased keys without another lease round trip, follows keys leased elsewhere, and releases a
    lease it took on a key already in flight in this process."""
    a, b = replica(make_guard), replica(make_guard)
    assert a.guard.client is not None
    await a.cache.set_many({"xz:hit": b"cached"})
    a.cache.l1.clear()
    await b.guard.client.set(lease_key("xz:other"), "b-token", px=5000)  # type: ignore[union-attr]

    token, ms = a.new_lease()
    lookup = await a.cache.lookup(["xz:hit", "xz:new", "xz:other"], (token, ms))
    assert lookup.values == [b"cached", None, None] and lookup.layers == ["redis", None, None]
    assert lookup.claim is not None and lookup.claim.token == token
    assert lookup.claim.leased == {"xz:new"} and lookup.claim.examined == {"xz:new", "xz:other"}
    assert await a.guard.client.get(lease_key("xz:new")) == token.encode()

    acquired: list[list[str]] = []
    real_acquire = a._acquire

    async def spy(lead: Any, keys: list[str]) -> tuple[list[str], list[str]]:
        acquired.append(keys)
        return await real_acquire(lead, keys)

    a._acquire = spy  # type: ignore[method-assign]
    computed: list[list[str]] = []

    async def compute(keys: list[str], _deadline: float | None) -> list[bytes]:
        computed.append(keys)
        return [k.encode() for k in keys]

    async def other_replica_answers() -> None:
        await asyncio.sleep(0.05)
        await b.cache.set_many({"xz:other": b"from b"})
        await b.guard.client.delete(lease_key("xz:other"))  # type: ignore[union-attr]

    values, _ = await asyncio.gather(
        a.run_many(["xz:new", "xz:other"], compute, lookup.claim), other_replica_answers()
    )
    assert values == [b"xz:new", b"from b"]
    assert computed == [["xz:new"]] and acquired == [[]]  # no second lease round trip
    await asyncio.sleep(0.05)  # the write-back and lease release run after the waiters have values
    assert await a.guard.client.get("xz:new") == b"xz:new"
    assert await a.guard.client.exists(lease_key("xz:new")) == 0

    # A key this process already computes: the lease the lookup took on it goes back at once.
    gate = asyncio.Event()

    async def slow(keys: list[str], _deadline: float | None) -> list[bytes]:
        await gate.wait()
        return [b"slow"] * len(keys)

    first = asyncio.create_task(a.run_many(["xz:busy"], slow))  # no claim: leases by round trip
    await asyncio.sleep(0.05)
    await a.guard.client.delete(lease_key("xz:busy"))  # as if the first request had run without Redis
    token2, _ = a.new_lease()
    second = await a.cache.lookup(["xz:busy"], (token2, ms))
    assert second.claim is not None and second.claim.leased == {"xz:busy"}
    waiter = asyncio.create_task(a.run_many(["xz:busy"], slow, second.claim))
    await asyncio.sleep(0.05)
    assert await a.guard.client.exists(lease_key("xz:busy")) == 0  # released, not held for lease_ms
    gate.set()
    assert await first == [b"slow"] and await waiter == [b"slow"]


async def test_an_unreadable_value_is_computed_replaced_and_kept_out_of_l1(
    make_guard: Callable[..., RedisGuard],
) -> None:
    def readable(value: bytes) -> bool:
        return value.startswith(b"ok:")

    a = Coalescer(ExactCache(make_guard(), check=readable), poll_ms=5)
    b = Coalescer(ExactCache(make_guard(), check=readable), poll_ms=5, lease_ms=1000)
    client = a.guard.client
    assert client is not None
    await client.set("xz:bad", b"garbage", ex=3600)
    calls: list[list[str]] = []

    async def compute(keys: list[str], _deadline: float | None) -> list[bytes]:
        calls.append(keys)
        return [b"ok:" + k.encode() for k in keys]

    token, ms = a.new_lease()
    lookup = await a.cache.lookup(["xz:bad"], (token, ms))
    assert lookup.values == [None] and a.cache.l1.get("xz:bad") is None
    assert a.stats.redis_corrupt == 1
    assert await a.run_many(["xz:bad"], compute, lookup.claim) == [b"ok:xz:bad"]
    await asyncio.gather(*a._leaders)  # the write-back
    assert await client.get("xz:bad") == b"ok:xz:bad"  # replaced, not left for its TTL
    assert calls == [["xz:bad"]]

    # Found while following another replica's lease: never copied into L1 or served.
    await client.set("xz:follow", b"garbage", ex=3600)
    await client.set(lease_key("xz:follow"), "dead-token", px=100)

    async def one(deadline: float | None) -> bytes:
        return (await compute(["xz:follow"], deadline))[0]

    assert await b.run("xz:follow", one) == b"ok:xz:follow"
    await asyncio.gather(*b._leaders)
    assert b.cache.l1.get("xz:follow") == b"ok:xz:follow" and b.stats.lease_takeovers == 1
    assert await client.get("xz:follow") == b"ok:xz:follow"
