"""RedisGuard: one Redis client behind a fail-open policy (deadline, error count, backoff window)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from xz_serve.cache.spec import CacheSpec
from xz_serve.cache.stats import CacheStats

log = logging.getLogger(__name__)

T = TypeVar("T")


def connect(spec: CacheSpec) -> Redis | None:
    """A pooled async client for ``spec.redis_url``; None when no URL is configured.

    One immediate retry, for connection errors only: a pooled connection to a Redis that restarted
    is dead, and reconnecting costs well under a millisecond (or fails as fast when Redis is down).
    No retry on timeouts: that would spend the request's latency budget on a Redis that is already
    slow. The blocking pool makes a burst wait for a free connection (bounded by the guard's
    deadline) instead of failing with "too many connections".
    """
    if not spec.redis_url:
        return None
    pool = BlockingConnectionPool.from_url(
        spec.redis_url,
        max_connections=spec.max_connections,
        timeout=spec.timeout_ms / 1000,
        socket_timeout=max(spec.timeout_ms / 1000, 0.05),
        socket_connect_timeout=spec.connect_timeout_ms / 1000,
        retry=_reconnect_once(),
        health_check_interval=0,
        client_name="xz_serve",
    )
    return Redis(connection_pool=pool, retry=_reconnect_once())


def _reconnect_once() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisGuard:
    """Runs Redis calls so that a slow or dead Redis only ever turns into cache misses.

    Every call gets a deadline of ``timeout_ms``. An error or a missed deadline is logged once per
    outage, counted, answered with the caller's default, and opens a backoff window of
    ``backoff_ms`` in which calls are not even tried. The first call after the window is the probe:
    success closes the outage, failure opens a new window. Shared by the exact cache, the
    coalescer and the semantic cache, so one outage is detected once for all three.
    """

    def __init__(
        self,
        client: Redis | None,
        *,
        timeout_ms: float = 50.0,
        backoff_ms: float = 1000.0,
        stats: CacheStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_ms / 1000
        self.backoff_s = backoff_ms / 1000
        self.stats = stats if stats is not None else CacheStats()
        self._clock = clock
        self._down_until = 0.0
        self._outage = False

    @classmethod
    def from_spec(cls, spec: CacheSpec, stats: CacheStats | None = None) -> RedisGuard:
        """Client and policy from one CacheSpec."""
        return cls(connect(spec), timeout_ms=spec.timeout_ms, backoff_ms=spec.backoff_ms, stats=stats)

    @property
    def available(self) -> bool:
        """A client exists and no backoff window is open: a call would be tried now."""
        return self.client is not None and self._clock() >= self._down_until

    async def call(self, op: Callable[[Redis], Awaitable[T]], default: T, what: str = "call") -> T:
        """``await op(client)`` within the deadline, or ``default`` on any failure; never raises.

        Cancellation of the caller still propagates (only ``Exception`` is caught), and redis-py
        drops a connection interrupted mid-command, so the pool never hands out a confused one.
        """
        client = self.client
        if client is None:
            return default
        if self._clock() < self._down_until:
            self.stats.redis_skipped += 1
            return default
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await op(client)
        except Exception as exc:
            self._failed(what, exc)
            if isinstance(exc, RedisConnectionError | OSError):
                await self._drop_idle(client)
            return default
        if self._outage:
            self._outage = False
            log.warning("redis cache is back after an outage")
        return result

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.redis_errors += 1
        if isinstance(exc, TimeoutError):
            self.stats.redis_timeouts += 1
        self._down_until = self._clock() + self.backoff_s
        if not self._outage:
            self._outage = True
            log.warning(
                "redis cache %s failed (%s: %s); serving misses, retrying in %.1f s",
                what, type(exc).__name__, exc or "timeout", self.backoff_s,
            )  # fmt: skip
        else:
            log.debug("redis cache %s failed again: %r", what, exc)

    async def _drop_idle(self, client: Redis) -> None:
        """Close the pool's idle connections after a connection error: they are most likely dead too
        (Redis restarted), and each would otherwise fail one probe and open another backoff window, so
        recovery would take one window per pooled connection instead of one."""
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except Exception as exc:  # closing dead sockets may itself fail; nothing more to do
            log.debug("closing idle redis connections failed: %r", exc)

    async def memory_policy(self) -> tuple[int, str] | None:
        """``(maxmemory, maxmemory-policy)`` of the server, or None when CONFIG is not allowed.

        The cache relies on Redis being bounded (``maxmemory`` > 0) with an ``allkeys-*`` eviction
        policy: keys are never deleted by xz_serve, only aged out. Call once at startup and warn.
        """

        async def read(client: Redis) -> tuple[int, str]:
            config = {_text(k): _text(v) for k, v in (await client.config_get("maxmemory*")).items()}
            return int(config["maxmemory"]), config["maxmemory-policy"]

        return await self.call(read, None, "config get")

    async def close(self) -> None:
        """Close the client and its pool (replica shutdown)."""
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)  # we built the pool, we close it
