"""The one Redis factory, and RedisGuard: a client behind a fail-open policy (deadline, errors, backoff).

xz_serve talks to two Redis servers with different jobs: the **cache** (evicting, no persistence:
losing it costs only misses) and the **store** (AOF, no eviction: API keys, sessions, rate limits).
Each process builds one client per role, here, and shares it with every user of that role.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["cache", "store"]


def connect(
    url: str | None,
    role: Role,
    *,
    timeout_ms: float,
    connect_timeout_ms: float | None = None,
    socket_timeout_ms: float | None = None,
    max_connections: int = 32,
) -> Redis | None:
    """A pooled async client for ``url``; None when no URL is configured.

    One immediate retry, for connection errors only: a pooled connection to a Redis that restarted
    is dead, and reconnecting costs well under a millisecond (or fails as fast when Redis is down).
    No retry on timeouts: that would spend the request's latency budget on a Redis that is already
    slow. The blocking pool makes a burst wait for a free connection (bounded by the caller's
    deadline) instead of failing with "too many connections". The client name carries the role and
    the pid, so ``CLIENT LIST`` tells which processes hold connections.
    """
    if not url:
        return None
    timeout = timeout_ms / 1000
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=max((socket_timeout_ms or timeout_ms) / 1000, 0.05),
        socket_connect_timeout=(connect_timeout_ms or timeout_ms) / 1000,
        retry=_reconnect_once(),
        health_check_interval=0,
        client_name=f"xz-{role}-{os.getpid()}",
    )
    return Redis(connection_pool=pool, retry=_reconnect_once())


STORE_FAILURES = (RedisError, OSError, TimeoutError)
"""What ``call_durable`` may raise when the store did not do the work: each caller maps it to its
own 503."""


async def call_durable(op: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """``op`` on the durable store within ``timeout_s``, once more when its pooled connection died
    with a restarted server. Unlike ``RedisGuard`` nothing fails open: the store's users (sessions,
    classifiers) must know the write happened, so a failure is raised as one of ``STORE_FAILURES``.
    """
    async with asyncio.timeout(timeout_s):
        try:
            return await op()
        except RedisConnectionError:
            return await op()


def _reconnect_once() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GuardCounters(Protocol):
    """Where a guard counts its failures (the cache's stats, or a plain ``RedisCounters``)."""

    redis_errors: int
    redis_timeouts: int
    redis_skipped: int


@dataclass
class RedisCounters:
    """A guard's failure counters when no one else keeps them."""

    redis_errors: int = 0
    redis_timeouts: int = 0
    redis_skipped: int = 0


class RedisGuard:
    """Runs Redis calls so that a slow or dead Redis only ever turns into cache misses.

    Every call gets a deadline of ``timeout_ms``. An error or a missed deadline is logged once per
    outage, counted, answered with the caller's default, and opens a backoff window of
    ``backoff_ms`` in which calls are not even tried. The first call after the window is the probe:
    success closes the outage, failure opens a new window. One guard per role and process: the
    exact cache, the coalescer and the reply cache share the cache's, so one outage is detected
    once for all three; the key store and the limiter share the store's.
    """

    def __init__(
        self,
        client: Redis | None,
        *,
        role: Role = "cache",
        timeout_ms: float = 50.0,
        backoff_ms: float = 1000.0,
        stats: GuardCounters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._factory: Callable[[], Redis | None] | None = None
        self.role = role
        self.timeout_s = timeout_ms / 1000
        self.backoff_s = backoff_ms / 1000
        self.stats: GuardCounters = stats if stats is not None else RedisCounters()
        self._clock = clock
        self._down_until = 0.0
        self._outage = False


    @classmethod
    def connect(
        cls,
        url: str | None,
        role: Role,
        *,
        timeout_ms: float,
        backoff_ms: float,
        connect_timeout_ms: float | None = None,
        socket_timeout_ms: float | None = None,
        max_connections: int = 32,
        stats: GuardCounters | None = None,
    ) -> RedisGuard:
        """A guard over a client for ``url`` (``connect``), made on first use; no client when unset.

        The client is made lazily so that its pool belongs to the event loop that serves with it,
        not to whichever thread composed the app.
        """
        guard = cls(None, role=role, timeout_ms=timeout_ms, backoff_ms=backoff_ms, stats=stats)
        if url:
            guard._factory = lambda: connect(
                url, role, timeout_ms=timeout_ms, connect_timeout_ms=connect_timeout_ms,
                socket_timeout_ms=socket_timeout_ms, max_connections=max_connections,
            )  # fmt: skip
        return guard

    @property
    def client(self) -> Redis | None:
        """The Redis client; None when no URL is configured."""
        if self._client is None and self._factory is not None:
            self._client, self._factory = self._factory(), None
        return self._client

    @property
    def configured(self) -> bool:
        """A Redis URL is set (whether or not its client exists yet)."""
        return self._client is not None or self._factory is not None

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
            log.warning("redis %s is back after an outage", self.role)
        return result

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.redis_errors += 1
        if isinstance(exc, TimeoutError):
            self.stats.redis_timeouts += 1
        self._down_until = self._clock() + self.backoff_s
        if not self._outage:
            self._outage = True
            log.warning(
                "redis %s: %s failed (%s: %s); retrying in %.1f s",
                self.role, what, type(exc).__name__, exc or "timeout", self.backoff_s,
            )  # fmt: skip
        else:
            log.debug("redis %s: %s failed again: %r", self.role, what, exc)

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
        client, self._client, self._factory = self._client, None, None
        if client is not None:
            await client.aclose(close_connection_pool=True)  # we built the pool, we close it
