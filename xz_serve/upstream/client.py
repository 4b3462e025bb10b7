"""Upstream and UpstreamPool: OpenAI-compatible chat completions with retries, breakers and fallback.

One ``httpx.AsyncClient`` per upstream (its own connection pool and timeouts). A request tries the
upstreams in order: first a weighted random pick, then the configured fallback order. On each
upstream, 429/5xx/timeouts/connection errors are retried with full-jitter exponential backoff (a
``Retry-After`` is honoured up to ``backoff_max_s``), every failure feeds that upstream's circuit
breaker, and a breaker that is open skips the upstream without a network call.

Two clocks bound a call. One attempt, a stream's whole body included, takes at most the upstream's
``timeout_s`` (httpx's own timeouts only bound the wait between two bytes, which a slow drip never
trips); running out of it is the upstream's failure. The caller's deadline (epoch seconds) bounds
everything, retries and backoff included; reaching it is ``DeadlineExceededError``, which is not
the upstream's fault and never feeds a breaker. A retry whose backoff alone would end past the
deadline is not attempted: the next upstream is tried at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from xz_serve.kernel.errors import DeadlineExceededError
from xz_serve.upstream.breaker import BreakerState, CircuitBreaker
from xz_serve.upstream.spec import PriceSpec, UpstreamSpec
from xz_serve.upstream.tokens import estimate_prompt_tokens, estimate_text_tokens

log = logging.getLogger(__name__)
T = TypeVar("T")

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class Usage:
    """Tokens one call used; ``estimated`` when the upstream sent no ``usage`` and we counted."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """One finished reply and what it cost."""

    text: str
    usage: Usage
    upstream: str
    model: str
    cost_usd: float
    attempts: int
    finish_reason: str | None = None


class UpstreamError(Exception):
    """One upstream could not answer (after its retries, or at once when not retryable)."""

    def __init__(
        self,
        upstream: str,
        reason: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = retryable


class NoUpstreamError(Exception):
    """No upstream answered: none configured, all breakers open, or all failed."""

    def __init__(self, errors: list[UpstreamError]) -> None:
        reasons = "; ".join(str(e) for e in errors) or "no upstream is configured"
        super().__init__(reasons)
        self.errors = errors

    @property
    def breaker_open(self) -> bool:
        return bool(self.errors) and all(e.reason == "circuit breaker open" for e in self.errors)


def _loop_time(deadline: float | None) -> float | None:
    """An epoch-seconds deadline on the running loop's clock (what ``asyncio.timeout_at`` takes)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.time())


def _is_deadline(until: float, deadline: float | None) -> bool:
    """Whether the bound ``until`` that ran out was the caller's deadline, not the attempt's time."""
    return deadline is not None and deadline <= until


def _late() -> DeadlineExceededError:
    return DeadlineExceededError("the request's deadline passed before the upstream answered")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass
class ReplyStream:
    """Deltas of a streamed reply as they arrive; ``completion`` is set once the stream has ended.

    ``until`` (loop clock) is when the attempt's time is up, ``deadline`` (loop clock) the caller's;
    every read of the body is bounded by the earlier of the two.
    """

    upstream: Upstream
    response: httpx.Response
    prompt_tokens_estimate: int
    attempts: int
    until: float
    deadline: float | None = None
    completion: Completion | None = None
    _parts: list[str] = field(default_factory=list)

    async def _line(self, lines: AsyncIterator[str]) -> str | None:
        """The next line of the body within the bounds; None at its end."""
        try:
            async with asyncio.timeout_at(self.until):
                return await anext(lines)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            self.upstream.breaker.abandon()
            raise
        except TimeoutError:
            if _is_deadline(self.until, self.deadline):
                self.upstream.breaker.abandon()
                raise _late() from None
            self.upstream.breaker.failure()
            raise UpstreamError(
                self.upstream.spec.name,
                f"the stream took longer than {self.upstream.spec.timeout_s:g} s",
                retryable=False,
            ) from None

    async def deltas(self) -> AsyncIterator[str]:
        """Text deltas; reads the SSE lines ``data: {...}`` up to ``data: [DONE]``."""
        usage: dict[str, Any] | None = None
        finish: str | None = None
        lines = self.response.aiter_lines()
        try:
            while (line := await self._line(lines)) is not None:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        self._parts.append(text)
                        yield text
        except (httpx.HTTPError, json.JSONDecodeError, AttributeError) as exc:
            self.upstream.breaker.failure()
            raise UpstreamError(self.upstream.spec.name, f"stream broke: {exc!r}", retryable=False) from exc
        finally:
            await self.response.aclose()
        self.upstream.breaker.success()
        text = "".join(self._parts)
        self.completion = self.upstream.finish(
            text, usage, self.prompt_tokens_estimate, self.attempts, finish
        )

    async def close(self) -> None:
        """Give the upstream connection back, read or not (idempotent): a reader that stops early."""
        if self.completion is None:
            self.upstream.breaker.abandon()
        await self.response.aclose()


class Upstream:
    """One OpenAI-compatible endpoint: its pooled client, retry policy and circuit breaker."""

    def __init__(
        self,
        spec: UpstreamSpec,
        price: PriceSpec | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self.price = price or PriceSpec()
        self.breaker = CircuitBreaker(spec.breaker_failures, spec.breaker_reset_s)
        self._rng = rng or random.Random()
        self._sleep = sleep
        headers = {"content-type": "application/json"}
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=spec.max_connections, max_keepalive_connections=spec.max_connections
            ),
            transport=transport,
        )

    def backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Full jitter: uniform in [0, base * 2**attempt], at least Retry-After; capped."""
        jitter = self._rng.uniform(0, self.spec.backoff_base_s * (2**attempt))
        return min(self.spec.backoff_max_s, max(jitter, retry_after_s or 0.0))

    async def _send(
        self, payload: dict[str, Any], deadline: float | None
    ) -> tuple[httpx.Response, int, float]:
        """A 200 response with its body unread (for streaming), its attempt count, and when that
        attempt's time is up (loop clock), after retries; raises UpstreamError or, at the caller's
        ``deadline`` (loop clock), DeadlineExceededError."""
        name, loop = self.spec.name, asyncio.get_running_loop()
        last: UpstreamError | None = None
        for attempt in range(self.spec.retries + 1):
            if not self.breaker.allow():
                raise UpstreamError(
                    name, "circuit breaker open", retryable=False, retry_after_s=self.breaker.retry_in()
                )
            until = loop.time() + self.spec.timeout_s
            if deadline is not None:
                until = min(until, deadline)
            try:
                request = self.client.build_request("POST", "chat/completions", json=payload)
                async with asyncio.timeout_at(until):
                    response = await self.client.send(request, stream=True)
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise
            except TimeoutError:
                if _is_deadline(until, deadline):
                    self.breaker.abandon()
                    raise _late() from None
                last = UpstreamError(name, f"timeout (no answer within {self.spec.timeout_s:g} s)")
            except httpx.TimeoutException as exc:
                last = UpstreamError(name, f"timeout ({type(exc).__name__})")
            except httpx.TransportError as exc:
                last = UpstreamError(name, f"connection failed ({type(exc).__name__})")
            else:
                if response.status_code == 200:
                    return response, attempt + 1, until
                await response.aread()
                await response.aclose()
                status = response.status_code
                if status != 429 and status < 500:  # our request is wrong (or the key): retrying won't help
                    raise UpstreamError(
                        name, f"HTTP {status}: {response.text[:200]}", status=status, retryable=False
                    )
                last = UpstreamError(
                    name, f"HTTP {status}", status=status, retry_after_s=_retry_after(response)
                )
            self.breaker.failure()
            if attempt < self.spec.retries:
                delay = self.backoff(attempt, last.retry_after_s)
                if deadline is not None and loop.time() + delay >= deadline:
                    break  # the retry could not answer in time: let the next upstream try now
                log.debug("%s; retry %d in %.2f s", last, attempt + 1, delay)
                await self._sleep(delay)
        assert last is not None
        raise last

    def _payload(self, messages: Messages, max_tokens: int | None, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.spec.model, "messages": [dict(m) for m in messages]}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def finish(
        self,
        text: str,
        usage: Mapping[str, Any] | None,
        prompt_estimate: int,
        attempts: int,
        finish_reason: str | None,
    ) -> Completion:
        """The Completion with the upstream's usage, or an estimate (flagged) when it sent none."""
        if usage and "prompt_tokens" in usage and "completion_tokens" in usage:
            counted = Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:
            counted = Usage(prompt_estimate, estimate_text_tokens(text), estimated=True)
        cost = self.price.cost(counted.prompt_tokens, counted.completion_tokens)
        return Completion(text, counted, self.spec.name, self.spec.model, cost, attempts, finish_reason)

    async def complete(
        self, messages: Messages, max_tokens: int | None = None, *, deadline: float | None = None
    ) -> Completion:
        """One reply, non-streamed, by ``deadline`` (epoch seconds) if one is given."""
        loop_deadline = _loop_time(deadline)
        response, attempts, until = await self._send(
            self._payload(messages, max_tokens, stream=False), loop_deadline
        )
        try:
            async with asyncio.timeout_at(until):
                await response.aread()
            body = response.json()
            choice = body["choices"][0]
            text = str(choice["message"].get("content") or "")
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        except TimeoutError:
            if _is_deadline(until, loop_deadline):
                self.breaker.abandon()
                raise _late() from None
            self.breaker.failure()
            raise UpstreamError(
                self.spec.name, f"the reply took longer than {self.spec.timeout_s:g} s", retryable=False
            ) from None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            self.breaker.failure()
            raise UpstreamError(self.spec.name, f"bad response: {exc!r}", retryable=False) from exc
        finally:
            await response.aclose()
        self.breaker.success()
        return self.finish(
            text, body.get("usage"), estimate_prompt_tokens(messages), attempts, choice.get("finish_reason")
        )

    async def stream(
        self, messages: Messages, max_tokens: int | None = None, *, deadline: float | None = None
    ) -> ReplyStream:
        """A reply as a stream; retries happen before the first byte only (after that, bytes are out).
        The stream's reads stay within this attempt's ``timeout_s`` and the ``deadline``."""
        loop_deadline = _loop_time(deadline)
        response, attempts, until = await self._send(
            self._payload(messages, max_tokens, stream=True), loop_deadline
        )
        return ReplyStream(self, response, estimate_prompt_tokens(messages), attempts, until, loop_deadline)

    async def close(self) -> None:
        await self.client.aclose()


class UpstreamPool:
    """All configured upstreams: weighted first choice, then the fallback order."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        fallback_order: Sequence[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.upstreams = list(upstreams)
        by_name = {u.spec.name: u for u in self.upstreams}
        unknown = [n for n in fallback_order if n not in by_name]
        if unknown:
            raise ValueError(f"fallback_order names unknown upstreams: {unknown}")
        rest = [u.spec.name for u in self.upstreams if u.spec.name not in fallback_order]
        self._fallback = [by_name[n] for n in [*fallback_order, *rest]]
        self._rng = rng or random.Random()

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[UpstreamSpec],
        prices: Mapping[str, PriceSpec],
        fallback_order: Sequence[str] = (),
    ) -> UpstreamPool:
        return cls([Upstream(s, prices.get(s.model)) for s in specs], fallback_order)

    def __bool__(self) -> bool:
        return bool(self.upstreams)

    def order(self) -> list[Upstream]:
        """Upstreams to try, in order: a weighted pick among those not broken, then the fallbacks."""
        live = [u for u in self.upstreams if u.spec.weight > 0 and u.breaker.state is not BreakerState.OPEN]
        first: list[Upstream] = []
        if live:
            first = self._rng.choices(live, weights=[u.spec.weight for u in live], k=1)
        return first + [u for u in self._fallback if u not in first]

    def breaker_states(self) -> dict[str, BreakerState]:
        return {u.spec.name: u.breaker.state for u in self.upstreams}

    async def complete(
        self, messages: Messages, max_tokens: int | None = None, *, deadline: float | None = None
    ) -> Completion:
        return await self._failover(lambda u: u.complete(messages, max_tokens, deadline=deadline))

    async def stream(
        self, messages: Messages, max_tokens: int | None = None, *, deadline: float | None = None
    ) -> ReplyStream:
        return await self._failover(lambda u: u.stream(messages, max_tokens, deadline=deadline))

    async def _failover(self, call: Callable[[Upstream], Awaitable[T]]) -> T:
        """The first answer in ``order()``; every upstream's failure when none answers."""
        errors: list[UpstreamError] = []
        for upstream in self.order():
            try:
                return await call(upstream)
            except UpstreamError as exc:
                log.warning("upstream failed: %s", exc)
                errors.append(exc)
        raise NoUpstreamError(errors)

    async def close(self) -> None:
        await asyncio.gather(*(u.close() for u in self.upstreams), return_exceptions=True)
