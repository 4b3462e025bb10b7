"""Upstream client against a real HTTP server speaking OpenAI's protocol (bench/openai_standin.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import free_port
from tests.standin import StandinServer
from xz_serve.kernel.errors import DeadlineExceededError
from xz_serve.upstream.breaker import BreakerState
from xz_serve.upstream.client import NoUpstreamError, Upstream, UpstreamError, UpstreamPool
from xz_serve.upstream.spec import PriceSpec, UpstreamSpec

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How can I send an executable file via gmail?"},
]


def spec(base_url: str, name: str = "a", **kw: Any) -> UpstreamSpec:
    values: dict[str, Any] = {"name": name, "base_url": base_url, "model": "standin-chat-1",
                              "backoff_base_s": 0.01, "backoff_max_s": 1.0, **kw}  # fmt: skip
    return UpstreamSpec(**values)


class Sleeps:
    """Records backoff sleeps (and really sleeps them, they are short)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay)


async def test_completion_with_usage_and_cost(standin: StandinServer) -> None:
    price = PriceSpec(input_per_mtok=1000.0, output_per_mtok=2000.0)
    up = Upstream(spec(standin.base_url), price)
    try:
        done = await up.complete(MESSAGES, max_tokens=400)
    finally:
        await up.close()
    stats = standin.stats()
    assert done.text and done.attempts == 1 and not done.usage.estimated
    assert done.usage.prompt_tokens == stats["prompt_tokens"]
    assert done.usage.completion_tokens == stats["completion_tokens"]
    expected = (done.usage.prompt_tokens * 1000 + done.usage.completion_tokens * 2000) / 1e6
    assert done.cost_usd == pytest.approx(expected)
    assert up.breaker.state is BreakerState.CLOSED


async def test_retries_429_and_500_honouring_retry_after(standin: StandinServer) -> None:
    standin.faults(fail_next=[429, 500], retry_after_s=0.15)
    sleeps = Sleeps()
    up = Upstream(spec(standin.base_url, retries=2), sleep=sleeps)
    try:
        done = await up.complete(MESSAGES)
    finally:
        await up.close()
    assert done.attempts == 3
    assert standin.stats()["requests"] == 3
    assert len(sleeps.delays) == 2
    assert sleeps.delays[0] >= 0.15  # the 429's Retry-After wins over the small jittered backoff
    assert sleeps.delays[1] <= 0.01 * 2  # the 500 sent no Retry-After: full jitter in [0, base * 2]


async def test_backoff_is_full_jitter_and_capped(standin: StandinServer) -> None:
    up = Upstream(spec(standin.base_url, backoff_base_s=0.5, backoff_max_s=2.0))
    try:
        delays = [up.backoff(1, None) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= 1.0  # uniform in [0, 0.5 * 2**1]
        assert len(set(delays)) == 200  # jittered, not a fixed schedule
        assert max(up.backoff(5, None) for _ in range(50)) == 2.0  # [0, 16] capped at backoff_max_s
        assert up.backoff(0, 30.0) == 2.0  # a huge Retry-After is capped
    finally:
        await up.close()


async def test_gives_up_after_retries(standin: StandinServer) -> None:
    standin.faults(fail_status=500)
    up = Upstream(spec(standin.base_url, retries=2, breaker_failures=10))
    try:
        with pytest.raises(UpstreamError) as err:
            await up.complete(MESSAGES)
    finally:
        await up.close()
    assert err.value.status == 500
    assert standin.stats()["requests"] == 3


async def test_client_errors_are_not_retried() -> None:
    server = StandinServer("--api-key", "right-key")
    server.start()
    try:
        up = Upstream(spec(server.base_url, retries=3))  # no key sent
        try:
            with pytest.raises(UpstreamError) as err:
                await up.complete(MESSAGES)
        finally:
            await up.close()
        assert err.value.status == 401 and not err.value.retryable
        assert server.stats()["requests"] == 1
        assert up.breaker.state is BreakerState.CLOSED  # our mistake, not the upstream's health
    finally:
        server.stop()


async def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    server = StandinServer("--api-key", "sk-test-123")
    server.start()
    monkeypatch.setenv("XZ_TEST_LLM_KEY", "sk-test-123")
    try:
        up = Upstream(spec(server.base_url, api_key_env="XZ_TEST_LLM_KEY"))
        try:
            assert (await up.complete(MESSAGES)).text
        finally:
            await up.close()
    finally:
        server.stop()


async def test_breaker_opens_then_half_opens(standin: StandinServer) -> None:
    standin.faults(fail_status=500)
    up = Upstream(spec(standin.base_url, retries=0, breaker_failures=2, breaker_reset_s=0.3))
    try:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await up.complete(MESSAGES)
        assert up.breaker.state is BreakerState.OPEN
        sent = standin.stats()["requests"]
        with pytest.raises(UpstreamError, match="circuit breaker open"):
            await up.complete(MESSAGES)
        assert standin.stats()["requests"] == sent  # refused without a network call

        await asyncio.sleep(0.35)
        assert up.breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(UpstreamError):  # the probe fails: open again
            await up.complete(MESSAGES)
        assert up.breaker.state is BreakerState.OPEN
        assert standin.stats()["requests"] == sent + 1

        await asyncio.sleep(0.35)
        standin.faults(fail_status=None)
        assert (await up.complete(MESSAGES)).text  # the probe succeeds: closed
        assert up.breaker.state is BreakerState.CLOSED
    finally:
        await up.close()


async def test_half_open_lets_one_probe_through(standin: StandinServer) -> None:
    standin.faults(fail_status=500)
    up = Upstream(spec(standin.base_url, retries=0, breaker_failures=1, breaker_reset_s=0.2))
    try:
        with pytest.raises(UpstreamError):
            await up.complete(MESSAGES)
        await asyncio.sleep(0.25)
        standin.faults(fail_status=None, latency_ms=200)
        sent = standin.stats()["requests"]
        results = await asyncio.gather(*(up.complete(MESSAGES) for _ in range(5)), return_exceptions=True)
        assert sum(not isinstance(r, Exception) for r in results) == 1
        assert standin.stats()["requests"] == sent + 1
    finally:
        await up.close()


async def test_timeout_is_retried_then_fails_fast(standin: StandinServer) -> None:
    standin.faults(latency_ms=2000)
    up = Upstream(spec(standin.base_url, timeout_s=0.2, retries=1))
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError, match="timeout"):
            await up.complete(MESSAGES)
    finally:
        await up.close()
    assert time.monotonic() - started < 1.5
    assert standin.stats()["requests"] == 2


async def test_pool_falls_back_in_order(standin: StandinServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    pool = UpstreamPool(
        [
            Upstream(spec(dead, "primary", weight=1, retries=1)),
            Upstream(spec(dead, "second", weight=0, retries=0)),
            Upstream(spec(standin.base_url, "third", weight=0)),
        ],
        fallback_order=["second", "third"],
    )
    try:
        done = await pool.complete(MESSAGES)
        assert done.upstream == "third"
        assert [u.spec.name for u in pool.order()] == ["primary", "second", "third"]
    finally:
        await pool.close()


async def test_pool_skips_open_breakers_and_reports_all_failed(standin: StandinServer) -> None:
    standin.faults(fail_status=503, retry_after_s=None)
    pool = UpstreamPool([Upstream(spec(standin.base_url, "only", retries=0, breaker_failures=1))])
    try:
        with pytest.raises(NoUpstreamError) as first:
            await pool.complete(MESSAGES)
        assert not first.value.breaker_open
        with pytest.raises(NoUpstreamError) as second:
            await pool.complete(MESSAGES)
        assert second.value.breaker_open
    finally:
        await pool.close()
    assert not UpstreamPool([])  # empty pool is falsy: the dialog falls back without trying


async def test_weighted_choice_spreads_first_attempts(standin: StandinServer) -> None:
    import random

    pool = UpstreamPool(
        [
            Upstream(spec(standin.base_url, "heavy", weight=3)),
            Upstream(spec(standin.base_url, "light", weight=1)),
        ],
        rng=random.Random(7),
    )
    firsts = [pool.order()[0].spec.name for _ in range(2000)]
    await pool.close()
    assert 0.70 < firsts.count("heavy") / len(firsts) < 0.80


async def test_streaming_passes_deltas_through(standin: StandinServer) -> None:
    up = Upstream(spec(standin.base_url))
    try:
        whole = await up.complete(MESSAGES)
        standin.faults(chunk_delay_ms=30)
        stream = await up.stream(MESSAGES)
        started = time.monotonic()
        arrivals: list[float] = []
        parts: list[str] = []
        async for delta in stream.deltas():
            arrivals.append(time.monotonic() - started)
            parts.append(delta)
    finally:
        await up.close()
    assert "".join(parts) == whole.text
    assert len(parts) > 5
    assert arrivals[0] < arrivals[-1] - 0.1  # deltas arrive as produced, not all at the end
    assert stream.completion is not None
    assert stream.completion.usage == whole.usage  # from the stream's usage chunk
    assert standin.stats()["streamed"] == 1


async def test_stream_retries_before_first_byte(standin: StandinServer) -> None:
    standin.faults(fail_next=[500], retry_after_s=None)
    up = Upstream(spec(standin.base_url, retries=1))
    try:
        stream = await up.stream(MESSAGES)
        text = "".join([d async for d in stream.deltas()])
    finally:
        await up.close()
    assert text and stream.attempts == 2


@pytest.mark.parametrize("streamed", [False, True])
async def test_usage_estimated_when_absent(standin: StandinServer, streamed: bool) -> None:
    up = Upstream(spec(standin.base_url))
    try:
        reported = await up.complete(MESSAGES)
        standin.faults(omit_usage=True)
        if streamed:
            stream = await up.stream(MESSAGES)
            _ = [d async for d in stream.deltas()]
            assert stream.completion is not None
            estimated = stream.completion
        else:
            estimated = await up.complete(MESSAGES)
    finally:
        await up.close()
    assert estimated.text == reported.text
    assert estimated.usage.estimated and not reported.usage.estimated
    for got, truth in [
        (estimated.usage.prompt_tokens, reported.usage.prompt_tokens),
        (estimated.usage.completion_tokens, reported.usage.completion_tokens),
    ]:
        assert abs(got - truth) <= 0.35 * truth, (got, truth)


async def test_the_deadline_bounds_a_call_and_is_no_upstream_failure(standin: StandinServer) -> None:
    """A 3 s upstream under a 0.5 s deadline: DeadlineExceededError at the deadline; the caller's
    short deadline says nothing about the upstream's health, so the breaker counts no failure."""
    standin.faults(latency_ms=3000)
    pool = UpstreamPool([Upstream(spec(standin.base_url, breaker_failures=1))])
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceededError):
            await pool.complete(MESSAGES, deadline=time.time() + 0.5)
    finally:
        await pool.close()
    assert time.monotonic() - started < 0.8
    assert pool.breaker_states() == {"a": BreakerState.CLOSED}


async def test_no_backoff_sleeps_past_the_deadline(standin: StandinServer) -> None:
    """A 503 asking for Retry-After: 5 under a 0.5 s deadline: the retry could not answer in time, so
    the next upstream is tried at once (here there is none: the pool reports the failure)."""
    standin.faults(fail_status=503, retry_after_s=5)
    sleeps = Sleeps()
    pool = UpstreamPool([Upstream(spec(standin.base_url, retries=2, backoff_max_s=5), sleep=sleeps)])
    started = time.monotonic()
    try:
        with pytest.raises(NoUpstreamError):
            await pool.complete(MESSAGES, deadline=time.time() + 0.5)
    finally:
        await pool.close()
    assert time.monotonic() - started < 0.4 and sleeps.delays == []
    assert standin.stats()["requests"] == 1


async def test_a_stream_is_bounded_in_total_not_only_between_bytes(standin: StandinServer) -> None:
    """Chunks 100 ms apart never trip a 0.5 s read timeout, yet one attempt, stream included, may
    take at most ``timeout_s``: the stream ends with an UpstreamError at about 0.5 s."""
    standin.faults(chunk_delay_ms=100)
    up = Upstream(spec(standin.base_url, timeout_s=0.5))
    started = time.monotonic()
    parts: list[str] = []
    try:
        stream = await up.stream(MESSAGES)
        with pytest.raises(UpstreamError, match="longer than"):
            async for delta in stream.deltas():
                parts.append(delta)
    finally:
        await up.close()
    assert time.monotonic() - started < 0.9 and parts  # some deltas came, then the bound
    assert stream.completion is None


async def test_the_deadline_bounds_a_stream(standin: StandinServer) -> None:
    standin.faults(chunk_delay_ms=100)
    pool = UpstreamPool([Upstream(spec(standin.base_url, breaker_failures=1))])
    started = time.monotonic()
    try:
        stream = await pool.stream(MESSAGES, deadline=time.time() + 0.6)
        with pytest.raises(DeadlineExceededError):
            async for _ in stream.deltas():
                pass
    finally:
        await pool.close()
    assert time.monotonic() - started < 0.9
    assert pool.breaker_states() == {"a": BreakerState.CLOSED}


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_probe_cut_by_the_deadline_lets_the_next_probe_go(
    standin: StandinServer, streamed: bool
) -> None:
    """A half-open breaker's one probe, cut by its caller's deadline, gave no verdict on the upstream:
    the next call is the probe, not refused as if the breaker were open until the process restarts."""
    standin.faults(fail_status=500, retry_after_s=None)
    up = Upstream(spec(standin.base_url, retries=0, breaker_failures=1, breaker_reset_s=0.2))
    try:
        with pytest.raises(UpstreamError):
            await up.complete(MESSAGES)
        await asyncio.sleep(0.25)
        assert up.breaker.state is BreakerState.HALF_OPEN
        standin.faults(fail_status=None, **({"chunk_delay_ms": 100} if streamed else {"latency_ms": 1000}))
        with pytest.raises(DeadlineExceededError):
            if streamed:
                stream = await up.stream(MESSAGES, deadline=time.time() + 0.3)
                _ = [d async for d in stream.deltas()]
            else:
                await up.complete(MESSAGES, deadline=time.time() + 0.3)
        standin.faults(latency_ms=0, chunk_delay_ms=0)
        assert (await up.complete(MESSAGES)).text  # the next probe went, and closed the breaker
        assert up.breaker.state is BreakerState.CLOSED
    finally:
        await up.close()
