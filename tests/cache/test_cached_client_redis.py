"""CachedNluClient over a real redis-server: two clients stand for two replicas sharing one Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.redis_server import RedisServer
from tests.unit.nlu.test_cached_client import OPTIONS, CountingClient
from xz_serve.cache.codec import decode_prediction
from xz_serve.cache.keys import cache_key
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.context import RequestContext
from xz_serve.nlu.cached import CachedNluClient

Replicas = Callable[..., tuple[CachedNluClient, CachedNluClient, CountingClient]]


@pytest.fixture
async def replicas(make_spec: Callable[..., CacheSpec]) -> AsyncIterator[Replicas]:
    """Two cached clients (own L1, own Redis pool) over one counting model: two ingress replicas."""
    made: list[CachedNluClient] = []

    def make(delay_s: float = 0.0, **spec: object) -> tuple[CachedNluClient, CachedNluClient, CountingClient]:
        model = CountingClient(delay_s)
        a, b = (CachedNluClient(model, make_spec(**spec), options=OPTIONS) for _ in range(2))
        made.extend((a, b))
        return a, b, model

    yield make
    for client in made:
        await client.close()


async def test_a_result_computed_on_one_replica_is_a_hit_on_the_other(replicas: Replicas) -> None:
    a, b, model = replicas()
    first, second = RequestContext(), RequestContext()
    computed = await a.predict_for(["what is my balance"], first)
    served = await b.predict_for(["what is my balance"], second)
    assert first.response_headers["x-cache"] == "miss" and second.response_headers["x-cache"] == "hit"
    assert len(model.calls) == 1 and b.stats.redis_hits == 1 and b.stats.l1_hits == 0
    assert served.predictions[0].intents == computed.predictions[0].intents
    assert (served.predictions[0].embedding == computed.predictions[0].embedding).all()


async def test_fifty_identical_requests_across_two_replicas_compute_once(replicas: Replicas) -> None:
    a, b, model = replicas(delay_s=0.1)
    contexts = [RequestContext() for _ in range(50)]
    results = await asyncio.gather(
        *((a if i % 2 else b).predict_for(["book a table for two"], c) for i, c in enumerate(contexts))
    )
    assert model.calls == [["book a table for two"]]
    labels = [c.response_headers["x-cache"] for c in contexts]
    assert labels.count("miss") == 1 and labels.count("coalesced") == 49
    assert a.stats.coalesced_remote + b.stats.coalesced_remote == 1  # the other replica's leader waited
    intents = {tuple(r.predictions[0].intents) for r in results}
    assert len(intents) == 1


async def test_redis_killed_under_load_serves_without_cache_then_resumes(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    a, b, _ = replicas(backoff_ms=200)
    await a.predict_for(["cached before the outage"], RequestContext())
    redis_server.stop()
    labels: list[str] = []
    slowest = 0.0
    for i in range(40):
        c = RequestContext()
        started = time.perf_counter()
        result = await b.predict_for([f"text {i} during the outage"], c)
        slowest = max(slowest, time.perf_counter() - started)
        assert len(result.predictions) == 1
        labels.append(c.response_headers["x-cache"])
        await asyncio.sleep(0.01)
    assert set(labels) == {"unavailable"}
    assert slowest < 0.1 + 0.05  # one cache timeout at most (100 ms), no retries piling up
    assert b.stats.redis_errors >= 1 and b.stats.redis_skipped >= 1

    redis_server.start()  # empty: the outage lost the shared layer, not the service
    await asyncio.sleep(0.25)  # past the backoff window
    for _ in range(2):  # the first call after the window probes Redis and recomputes
        await a.predict_for(["after the restart"], RequestContext())
    await asyncio.sleep(0.05)
    back = RequestContext()
    await b.predict_for(["after the restart"], back)
    assert back.response_headers["x-cache"] == "hit" and b.stats.redis_hits >= 1


async def test_a_hung_redis_costs_at_most_the_timeout(replicas: Replicas, redis_server: RedisServer) -> None:
    a, _, _ = replicas(timeout_ms=50, backoff_ms=500)
    redis_server.pause()  # SIGSTOP: connections open, nothing answers
    try:
        c = RequestContext()
        started = time.perf_counter()
        await a.predict_for(["while redis hangs"], c)
        assert time.perf_counter() - started < 0.05 + 0.08
        assert c.response_headers["x-cache"] == "unavailable" and a.stats.redis_timeouts >= 1
    finally:
        redis_server.resume()


async def test_the_first_call_after_a_restart_succeeds_on_a_pool_of_dead_connections(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    a, _, _ = replicas()
    guard = a._backend_now().guard
    assert guard.client is not None
    await asyncio.gather(*(guard.client.ping() for _ in range(10)))  # ten pooled connections
    redis_server.restart()  # every pooled connection is now dead
    first = RequestContext()
    await a.predict_for(["first after the restart"], first)
    assert first.response_headers["x-cache"] == "miss" and a.stats.redis_errors == 0
    assert a.stats.redis_misses == 1  # Redis answered the lookup, on a fresh connection


async def test_a_corrupt_value_is_replaced_by_the_first_request_and_never_reaches_l1(
    replicas: Replicas,
) -> None:
    a, b, model = replicas()
    text = "what is my balance"
    assert await a._model_id() == "fake@0"
    key = cache_key("nlu", text, "fake@0", RequestContext().tenant, options=a.options, norm="exact")
    client = a._backend_now().guard.client
    assert client is not None
    await client.set(key, b"XZ\x01" + b"\xff" * 40, ex=3600)  # the right magic, then garbage

    first = RequestContext()
    await a.predict_for([text], first)
    assert first.response_headers["x-cache"] == "miss" and len(model.calls) == 1
    await asyncio.gather(*a._backend_now().coalescer._leaders)  # the write-back
    stored = await client.get(key)
    assert stored is not None and decode_prediction(stored).intents  # the fresh value replaced it
    assert await client.ttl(key) > 3600  # written with the cache's TTL, not left to age out
    held = a._backend_now().cache.l1.get(key)
    assert held is not None and decode_prediction(held).intents
    assert a.stats.redis_corrupt == 1

    again, other = RequestContext(), RequestContext()
    await a.predict_for([text], again)
    await b.predict_for([text], other)
    assert again.response_headers["x-cache"] == "hit" and other.response_headers["x-cache"] == "hit"
    assert len(model.calls) == 1  # recomputed once, then served from the cache everywhere
