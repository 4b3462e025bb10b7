"""In-process coalescing: identical keys in flight are computed once; a failure reaches every waiter."""

from __future__ import annotations

import asyncio

import pytest

from xz_serve.cache.coalesce import Coalescer
from xz_serve.cache.exact import ExactCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.redis import RedisGuard


def coalescer() -> Coalescer:
    return Coalescer.from_spec(CacheSpec(), ExactCache(RedisGuard(None)))


async def test_fifty_identical_calls_compute_once() -> None:
    co = coalescer()
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return b"value"

    results = await asyncio.gather(*(co.run("k", compute) for _ in range(50)))
    assert calls == 1 and results == [b"value"] * 50
    assert co.stats.coalesced_local == 49
    assert co.cache.l1.get("k") == b"value"  # the leader also fills L1


async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    co = coalescer()
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("model down")

    results = await asyncio.gather(*(co.run("k", compute) for _ in range(50)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len({id(r) for r in results}) == 1  # the same exception object

    async def ok() -> bytes:
        return b"v"

    assert await co.run("k", ok) == b"v"  # the failure is not remembered


async def test_run_many_batches_only_new_keys() -> None:
    co = coalescer()
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def compute(keys: list[str]) -> list[bytes]:
        batches.append(keys)
        await gate.wait()
        return [k.encode() for k in keys]

    first = asyncio.create_task(co.run_many(["a", "b"], compute))
    await asyncio.sleep(0)
    second = asyncio.create_task(co.run_many(["b", "c", "a", "c"], compute))
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == [b"a", b"b"]
    assert await second == [b"b", b"c", b"a", b"c"]
    assert batches == [["a", "b"], ["c"]]


async def test_cancelled_waiter_does_not_cancel_the_others() -> None:
    co = coalescer()

    async def compute() -> bytes:
        await asyncio.sleep(0.02)
        return b"v"

    impatient = asyncio.create_task(co.run("k", compute))
    patient = asyncio.create_task(co.run("k", compute))
    await asyncio.sleep(0.005)
    impatient.cancel()
    assert await patient == b"v"
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_wrong_number_of_values_is_an_error() -> None:
    co = coalescer()

    async def compute(keys: list[str]) -> list[bytes]:
        return []

    with pytest.raises(ValueError, match="0 values for 2 keys"):
        await co.run_many(["a", "b"], compute)
