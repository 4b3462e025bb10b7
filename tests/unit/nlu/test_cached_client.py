"""CachedNluClient without Redis (or with a Redis that is not there): keys, layers, flags, headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.unit.fakes import FakeNluClient
from xz_serve.cache.spec import CacheSpec
from xz_serve.http.app import create_api
from xz_serve.http.cache_control import cache_rules
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import DeadlineExceededError
from xz_serve.kernel.redis import RedisGuard
from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.nlu.cached import CachedNluClient, UncachedPredictor, predictor
from xz_serve.nlu.client import predict_chunked
from xz_serve.settings import XzSettings

OPTIONS = {"top_k": 3, "max_tokens": 128}


class CountingClient(FakeNluClient):
    """FakeNluClient that can be slow, fail, or answer as another model version."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.fail: Exception | None = None

    @property
    def texts_computed(self) -> int:
        return sum(len(call) for call in self.calls)

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        self.calls.append(list(texts))
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        result = await super().predict(texts, meta)
        self.calls.pop()  # super() recorded it again
        return result

    async def describe(self) -> dict[str, Any]:
        return {"model_id": self.model.model_id}


@pytest.fixture
def bert_tokenizer(tmp_path: Path) -> Path:
    """A tokenizer.json declaring MiniLM's uncased BERT normalisation (all norm_for_tokenizer reads)."""
    path = tmp_path / "tokenizer.json"
    path.write_text(
        json.dumps(
            {
                "normalizer": {"type": "BertNormalizer", "lowercase": True, "strip_accents": None},
                "pre_tokenizer": {"type": "BertPreTokenizer"},
            }
        )
    )
    return path


def cached(inner: CountingClient, tokenizer: Path | None = None, **spec: Any) -> CachedNluClient:
    return CachedNluClient(inner, CacheSpec(**spec), options=OPTIONS, tokenizer_json=tokenizer)


def ctx(**fields: Any) -> RequestContext:
    return RequestContext(**fields)


async def test_second_request_is_an_l1_hit_with_identical_values() -> None:
    inner = CountingClient()
    client = cached(inner)
    first, second = ctx(), ctx()
    a = await client.predict_for(["what is my balance", "hi"], first)
    b = await client.predict_for(["what is my balance", "hi"], second)
    assert inner.calls == [["what is my balance", "hi"]]
    assert first.response_headers["x-cache"] == "miss" and first.response_headers["x-cache-computed"] == "2"
    assert second.response_headers["x-cache"] == "hit" and second.response_headers["x-cache-hits"] == "2"
    for x, y in zip(a.predictions, b.predictions, strict=True):
        assert x.intents == y.intents and x.sentiment == y.sentiment and x.tokens == y.tokens
        np.testing.assert_array_equal(x.embedding, y.embedding)
    assert b.model_id == "fake@0" and b.stats.batch_texts == 0  # nothing was batched for a hit
    assert client.stats.l1_hits == 2


async def test_partial_request_computes_only_the_misses_in_one_call() -> None:
    inner = CountingClient()
    client = cached(inner)
    await client.predict_for(["a", "b"], ctx())
    c = ctx()
    result = await client.predict_for(["b", "c", "a", "c"], c)
    assert inner.calls == [["a", "b"], ["c"]]  # "c" twice in the request, computed once
    assert c.response_headers["x-cache"] == "partial"
    assert (c.response_headers["x-cache-hits"], c.response_headers["x-cache-computed"]) == ("2", "2")
    direct = await FakeNluClient().predict(["b", "c", "a", "c"])
    assert [p.intents for p in result.predictions] == [p.intents for p in direct.predictions]


async def test_case_and_whitespace_variants_share_a_key_only_for_an_uncased_tokenizer(
    bert_tokenizer: Path,
) -> None:
    inner = CountingClient()
    client = cached(inner, bert_tokenizer)
    await client.predict_for(["What is my  balance"], ctx())
    variant = ctx()
    await client.predict_for(["  what IS my balance\n"], variant)
    assert variant.response_headers["x-cache"] == "hit" and len(inner.calls) == 1

    exact = cached(CountingClient(), tokenizer=None)  # unknown tokenizer: hash the text as sent
    await exact.predict_for(["What is my balance"], ctx())
    other = ctx()
    await exact.predict_for(["what is my balance"], other)
    assert other.response_headers["x-cache"] == "miss"


async def test_tenants_never_read_each_others_entries() -> None:
    inner = CountingClient()
    client = cached(inner)
    await client.predict_for(["same text"], ctx(tenant="acme"))
    other = ctx(tenant="globex")
    await client.predict_for(["same text"], other)
    assert other.response_headers["x-cache"] == "miss" and len(inner.calls) == 2
    weird = ctx(tenant="key scope/with spaces")  # outside the key alphabet: hashed, still isolated
    await client.predict_for(["same text"], weird)
    assert weird.response_headers["x-cache"] == "miss" and len(inner.calls) == 3
    again = ctx(tenant="acme")
    await client.predict_for(["same text"], again)
    assert again.response_headers["x-cache"] == "hit"


async def test_namespace_and_options_are_part_of_the_key() -> None:
    inner = CountingClient()
    one = CachedNluClient(inner, CacheSpec(tenant="one"), options=OPTIONS)
    two = CachedNluClient(inner, CacheSpec(tenant="two"), options=OPTIONS)
    assert one._backend_now().cache is not two._backend_now().cache
    k1 = await one._model_id()
    assert k1 == "fake@0"
    from xz_serve.cache.keys import cache_key

    assert cache_key("nlu", "x", k1, "t", options=one.options) != cache_key(
        "nlu", "x", k1, "t", options=two.options
    )
    other_top_k = CachedNluClient(inner, CacheSpec(), options={**OPTIONS, "top_k": 5})
    assert other_top_k.options != one.options


async def test_a_new_model_version_never_serves_old_results() -> None:
    inner = CountingClient()
    client = cached(inner)
    await client.predict_for(["old text"], ctx())
    inner.model.model_id = "fake@1"  # the replicas were upgraded behind the ingress

    # The next miss reveals the new model: nothing is stored under the old id, the answer is the new one.
    reveal = ctx()
    result = await client.predict_for(["new text"], reveal)
    assert result.model_id == "fake@1" and client.model_id == "fake@1"
    old = ctx()
    result = await client.predict_for(["old text"], old)
    assert old.response_headers["x-cache"] == "miss" and result.model_id == "fake@1"

    # And without a miss: describe() is asked again once the id is older than model_recheck_s.
    client.model_recheck_s = 0.0
    inner.model.model_id = "fake@2"
    stale = ctx()
    result = await client.predict_for(["old text"], stale)
    assert stale.response_headers["x-cache"] == "miss" and result.model_id == "fake@2"


async def test_no_cache_recomputes_and_refreshes_no_store_reads_but_never_writes() -> None:
    inner = CountingClient()
    client = cached(inner)
    await client.predict_for(["t"], ctx())
    fresh = ctx(cache_read=False)
    await client.predict_for(["t"], fresh)
    assert fresh.response_headers["x-cache"] == "bypass" and len(inner.calls) == 2

    store_less = ctx(cache_write=False)
    await client.predict_for(["t", "u"], store_less)  # "t" may be read, "u" is computed but not kept
    assert store_less.response_headers["x-cache"] == "partial" and inner.calls[-1] == ["u"]
    again = ctx()
    await client.predict_for(["u"], again)
    assert again.response_headers["x-cache"] == "miss"

    neither = ctx(cache_read=False, cache_write=False)
    await client.predict_for(["v"], neither)
    later = ctx()
    await client.predict_for(["v"], later)
    assert neither.response_headers["x-cache"] == "bypass" and later.response_headers["x-cache"] == "miss"


async def test_fifty_identical_concurrent_requests_compute_once() -> None:
    inner = CountingClient(delay_s=0.05)
    client = cached(inner)
    contexts = [ctx() for _ in range(50)]
    results = await asyncio.gather(*(client.predict_for(["book a table"], c) for c in contexts))
    assert inner.calls == [["book a table"]]
    labels = [c.response_headers["x-cache"] for c in contexts]
    assert labels.count("miss") == 1 and labels.count("coalesced") == 49
    first = results[0].predictions[0]
    assert all(r.predictions[0].intents == first.intents for r in results)
    assert all(np.array_equal(r.predictions[0].embedding, first.embedding) for r in results)


async def test_a_failed_computation_reaches_every_waiter_and_is_not_cached() -> None:
    inner = CountingClient(delay_s=0.02)
    inner.fail = RuntimeError("model down")
    client = cached(inner)
    results = await asyncio.gather(
        *(client.predict_for(["x"], ctx()) for _ in range(10)), return_exceptions=True
    )
    assert len(inner.calls) == 1 and all(isinstance(r, RuntimeError) for r in results)
    inner.fail = None
    c = ctx()
    await client.predict_for(["x"], c)
    assert c.response_headers["x-cache"] == "miss"


async def test_redis_down_is_served_without_cache_and_says_so() -> None:
    inner = CountingClient()
    client = cached(inner, redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=100, backoff_ms=1000)
    try:
        down = ctx()
        result = await client.predict_for(["hello there"], down)
        assert down.response_headers["x-cache"] == "unavailable" and len(result.predictions) == 1
        assert client.stats.redis_errors >= 1
        other = ctx()
        await client.predict_for(["something else"], other)  # inside the backoff window: not even tried
        assert other.response_headers["x-cache"] == "unavailable" and client.stats.redis_skipped >= 1
        l1 = ctx()
        await client.predict_for(["hello there"], l1)  # still answered from this process's L1
        assert l1.response_headers["x-cache"] == "hit" and len(inner.calls) == 2
    finally:
        await client.close()


async def test_describe_failure_serves_uncached_and_learns_the_id() -> None:
    inner = CountingClient()

    async def broken() -> dict[str, Any]:
        raise RuntimeError("no replica yet")

    inner.describe = broken  # type: ignore[method-assign]
    client = cached(inner)
    c = ctx()
    result = await client.predict_for(["a"], c)
    assert c.response_headers["x-cache"] == "bypass" and client.model_id == result.model_id == "fake@0"
    hit = ctx()
    await client.predict_for(["a"], hit)  # the answer taught the id; describe() keeps failing
    assert hit.response_headers["x-cache"] == "miss"


def test_cache_control_rules() -> None:
    assert cache_rules(None) == (True, True)
    assert cache_rules("no-cache") == (False, True)
    assert cache_rules("No-Store") == (True, False)
    assert cache_rules("no-cache, no-store") == (False, False)
    assert cache_rules("max-age=0") == (False, True)
    assert cache_rules("max-age=60, private") == (True, True)


def test_cache_disabled_is_a_plain_pass_through() -> None:
    spec = CacheSpec(enabled=False)
    made = predictor(FakeNluClient(), spec, RedisGuard(None), {}, Path("artifacts/tokenizer.json"))
    assert isinstance(made, UncachedPredictor)


async def test_http_headers_and_cache_control_through_the_app() -> None:
    inner = CountingClient()
    app = create_api(inner, XzSettings(cache=CacheSpec(redis_url=None), access={"auth_enabled": False}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        first = await http.post("/v1/analyze", json={"text": "transfer money"})
        second = await http.post("/v1/intent", json={"text": "transfer money"})
        refreshed = await http.post(
            "/v1/analyze", json={"text": "transfer money"}, headers={"Cache-Control": "no-cache"}
        )
        embedded = await http.post("/v1/embeddings", json={"input": "transfer money"})
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert refreshed.headers["x-cache"] == "bypass" and embedded.headers["x-cache"] == "hit"
    assert first.json()["results"][0]["intent"] == second.json()["results"][0]["intent"]
    assert len(inner.calls) == 2  # the first request and the no-cache one


async def test_metrics_publish_counter_deltas() -> None:
    client = cached(CountingClient())
    metrics = client._backend_now().metrics
    metrics.every_s = 3600  # only explicit publishes
    await client.predict_for(["a"], ctx())
    assert metrics.publish() == {"l1_misses": 1}
    await client.predict_for(["a"], ctx())
    assert metrics.publish() == {"l1_hits": 1}
    assert metrics.publish() == {}  # nothing new since


class DeadlineClient(CountingClient):
    """Waits for the model like the real clients do: until the call's deadline, then 504."""

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        return await predict_chunked(texts, meta, 64, lambda piece: CountingClient.predict(self, piece, meta))


async def timed(work: Awaitable[PredictResult]) -> tuple[PredictResult | BaseException, float]:
    started = time.perf_counter()
    try:
        return await work, time.perf_counter() - started
    except Exception as exc:
        return exc, time.perf_counter() - started


async def test_a_short_deadline_does_not_fail_a_longer_identical_request() -> None:
    inner = DeadlineClient(delay_s=0.3)
    client = cached(inner)
    now = time.time()
    first = asyncio.create_task(timed(client.predict_for(["jump start"], ctx(deadline=now + 0.1))))
    await asyncio.sleep(0.02)  # the first request's computation is under way when the second joins it
    second = asyncio.create_task(timed(client.predict_for(["jump start"], ctx(deadline=now + 10))))
    (short, short_s), (long, long_s) = await asyncio.gather(first, second)
    assert isinstance(short, DeadlineExceededError) and short_s < 0.2
    assert isinstance(long, PredictResult), long  # served, under its own deadline
    assert long_s < 0.1 + 0.3 + 0.2
    assert 1 <= len(inner.calls) <= 2  # computed again only because the first run's deadline ended it


async def test_each_waiter_stops_waiting_at_its_own_deadline() -> None:
    inner = DeadlineClient(delay_s=0.5)
    client = cached(inner)
    now = time.time()
    first = asyncio.create_task(timed(client.predict_for(["jump start"], ctx(deadline=now + 5))))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(timed(client.predict_for(["jump start"], ctx(deadline=now + 0.15))))
    (long, long_s), (short, short_s) = await asyncio.gather(first, second)
    assert isinstance(short, DeadlineExceededError) and short_s < 0.15 + 0.1  # not after the 0.5 s run
    assert isinstance(long, PredictResult) and 0.45 < long_s < 0.5 + 0.2
    assert len(inner.calls) == 1


async def test_the_computation_runs_under_the_longest_deadline_or_none() -> None:
    inner = DeadlineClient(delay_s=0.3)
    client = cached(inner)
    started = time.time()
    (short, short_s), (unbounded, _) = await asyncio.gather(  # both join before the computation starts
        timed(client.predict_for(["jump start"], ctx(deadline=started + 0.1))),
        timed(client.predict_for(["jump start"], ctx())),
    )
    assert isinstance(short, DeadlineExceededError) and short_s < 0.2
    assert isinstance(unbounded, PredictResult), unbounded
    assert len(inner.calls) == 1  # one run, with no deadline: one of its waiters has none
