"""In-process coalescing: identical keys in flight are computed once; a failure reaches every waiter;
each waiter keeps its own deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from xz_serve.cache.coalesce import Coalescer
from xz_serve.cache.exact import ExactCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.errors import DeadlineExceededError
from xz_serve.kernel.redis import RedisGuard


def coalescer() -> Coalescer:
    return Coalescer.from_spec(CacheSpec(), ExactCache(RedisGuard(None)))


async def test_fifty_identical_calls_compute_once() -> None:
    co = coalescer()
    calls = 0

    async def compute(_deadline: float | None) -> bytes:
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

    async def compute(_deadline: float | None) -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("model down")

    results = await asyncio.gather(*(co.run("k", compute) for _ in range(50)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len({id(r) for r in results}) == 1  # the same exception object

    async def ok(_deadline: float | None) -> bytes:
        return b"v"

    assert await co.run("k", ok) == b"v"  # the failure is not remembered


async def test_run_many_batches_only_new_keys() -> None:
    co = coalescer()
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def compute(keys: list[str], _deadline: float | None) -> list[bytes]:
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

    async def compute(_deadline: float | None) -> bytes:
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

    async def compute(keys: list[str], _deadline: float | None) -> list[bytes]:
        return []

    with pytest.raises(ValueError, match="0 values for 2 keys"):
        await co.run_many(["a", "b"], compute)


async def test_the_computation_runs_under_the_longest_deadline_of_its_waiters_or_none() -> None:
    co = coalescer()
    seen: list[float | None] = []
    gate = asyncio.Event()

    async def compute(keys: list[str], deadline: float | None) -> list[bytes]:
        seen.append(deadline)
        await gate.wait()
        return [b"v"] * len(keys)

    now = time.time()
    waiters = [asyncio.create_task(co.run_many(["k"], compute, deadline=now + s)) for s in (1, 3, 2)]
    unbounded = [asyncio.create_task(co.run_many(["j"], compute, deadline=now + 1)),
                 asyncio.create_task(co.run_many(["j"], compute))]  # fmt: skip
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.gather(*waiters, *unbounded) == [[b"v"]] * 5
    assert seen == [now + 3, None]


async def test_a_waiter_stops_at_its_deadline_and_the_others_still_get_the_value() -> None:
    co = coalescer()
    calls = 0

    async def compute(_deadline: float | None) -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return b"v"

    started = time.perf_counter()
    patient = asyncio.create_task(co.run("k", compute))
    with pytest.raises(DeadlineExceededError):
        await co.run("k", compute, deadline=time.time() + 0.05)
    assert time.perf_counter() - started < 0.15
    assert await patient == b"v" and calls == 1
    with pytest.raises(DeadlineExceededError):  # already past: not even a computation
        await co.run("x", compute, deadline=time.time() - 1)
    assert calls == 1


async def test_a_run_cut_short_by_its_deadline_runs_again_for_a_waiter_with_time_left() -> None:
    co = coalescer()
    runs: list[float | None] = []

    async def compute(deadline: float | None) -> bytes:
        runs.append(deadline)
        left = 0.2 if deadline is None else min(0.2, deadline - time.time())
        await asyncio.sleep(max(left, 0))
        if left < 0.2:
            raise DeadlineExceededError("the models did not answer before the deadline")
        return b"v"

    now = time.time()
    first = asyncio.create_task(co.run("k", compute, deadline=now + 0.05))
    await asyncio.sleep(0.01)  # running under the first waiter's 50 ms when the second joins
    second = asyncio.create_task(co.run("k", compute, deadline=now + 5))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], DeadlineExceededError) and results[1] == b"v"
    assert runs == [now + 0.05, now + 5]
