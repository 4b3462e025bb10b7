"""SemanticCache across replicas: a store on one is found by another within a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from tests.cache.conftest import RedisServer
from xz_serve.cache.semantic import SemanticCache
from xz_serve.cache.verify import PairVerifier
from xz_serve.kernel.redis import RedisGuard


def semantic(guard: RedisGuard, **kw: object) -> SemanticCache:
    args: dict[str, object] = {"threshold": 0.9, "refresh_ms": 100, **kw}
    return SemanticCache(guard, **args)  # type: ignore[arg-type]


async def test_store_on_one_replica_is_visible_on_another_within_1s(
    make_guard: Callable[..., RedisGuard],
) -> None:
    a, b = semantic(make_guard()), semantic(make_guard())
    rng = np.random.default_rng(1)
    vector = rng.normal(size=384).astype(np.float32)
    assert await b.lookup("ns", vector) is None  # b has loaded the (empty) namespace already
    await a.store("ns", vector, b"answer", ttl_s=60)
    started = time.perf_counter()
    while (hit := await b.lookup("ns", vector + 0.01)) is None:
        assert time.perf_counter() - started < 1.0, "write not visible on the other replica in 1 s"
        await asyncio.sleep(0.02)
    assert hit.value == b"answer" and hit.similarity > 0.99


async def test_new_replica_loads_namespace_and_bounds_hold(make_guard: Callable[..., RedisGuard]) -> None:
    a = semantic(make_guard(), max_entries=50)
    vectors = np.eye(64, dtype=np.float32)
    for i in range(60):
        await a.store("ns", vectors[i], str(i).encode())
    client = a.guard.client
    assert client is not None
    assert await client.xlen(SemanticCache.stream_key("ns")) == 50  # Redis keeps the newest 50
    assert await client.ttl(SemanticCache.stream_key("ns")) > 0
    b = semantic(make_guard(), max_entries=50, page=16)  # paged first load
    assert await b.warm("ns") == 50
    assert await b.lookup("ns", vectors[5]) is None  # among the 10 oldest: evicted everywhere
    hit = await b.lookup("ns", vectors[59])
    assert hit is not None and hit.value == b"59"


async def test_expired_entries_are_not_served_elsewhere(make_guard: Callable[..., RedisGuard]) -> None:
    a, b = semantic(make_guard()), semantic(make_guard())
    await a.store("ns", np.ones(8, np.float32), b"short", ttl_s=1)
    assert await b.lookup("ns", np.ones(8, np.float32)) is not None
    await asyncio.sleep(1.05)
    assert await b.lookup("ns", np.ones(8, np.float32)) is None


async def test_redis_down_keeps_local_entries(
    redis_server: RedisServer, make_guard: Callable[..., RedisGuard]
) -> None:
    a = semantic(make_guard())
    await a.store("ns", np.ones(8, np.float32), b"kept")
    redis_server.stop()
    await a.store("ns", -np.ones(8, np.float32), b"local only")  # no exception
    hit = await a.lookup("ns", -np.ones(8, np.float32))
    assert hit is not None and hit.value == b"local only"
    assert a.stats.redis_errors >= 1


async def test_text_travels_with_the_entry_so_other_replicas_verify(
    make_guard: Callable[..., RedisGuard],
) -> None:
    a = semantic(make_guard(), verifier=PairVerifier(0.5))
    b = semantic(make_guard(), verifier=PairVerifier(0.5))
    vector = np.random.default_rng(2).normal(size=384).astype(np.float32)
    await a.store("ns", vector, b"diet plan", key="k", text="How to lose weight in 2016?")
    client = a.guard.client
    assert client is not None
    [(_, fields)] = await client.xrange(SemanticCache.stream_key("ns"))
    assert fields[b"t"] == b"How to lose weight in 2016?"
    await b.warm("ns")
    assert await b.lookup("ns", vector, text="How to lose weight in 2017?") is None  # year changed
    hit = await b.lookup("ns", vector + 0.01, text="How to lose weight in 2016?")
    assert hit is not None and hit.value == b"diet plan" and hit.key == "k"


async def test_a_replica_loading_other_replicas_writes_keeps_to_its_byte_budget(
    make_guard: Callable[..., RedisGuard],
) -> None:
    a = semantic(make_guard())
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(400, 384)).astype(np.float32)
    for i in range(400):  # ~20 KiB each, in 40 namespaces: ~8 MiB in all
        await a.store(f"ns{i % 40}", vectors[i], str(i).encode() * 2000, key=str(i), text="x " * 2000)
    b = semantic(make_guard(), max_bytes=2**20, page=16)
    for n in range(40):
        await b.warm(f"ns{n}")
        assert b.nbytes <= 2**20
    assert b.stats.semantic_budget_evictions > 300
    hit = await b.lookup("ns39", vectors[399], text="x " * 2000)  # the namespace loaded last
    assert hit is not None and hit.key == "399"
    assert await b.lookup("ns0", vectors[0], text="x " * 2000) is None  # loaded first, evicted since
