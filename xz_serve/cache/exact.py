"""ExactCache: an in-process LRU+TTL layer in front of Redis, one MGET per read, one pipeline per write."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from redis.asyncio import Redis

from xz_serve.cache.guard import RedisGuard
from xz_serve.cache.lru import LruTtlCache
from xz_serve.cache.spec import CacheSpec

Layer = Literal["l1", "redis"]
_tracer = trace.get_tracer("xz_serve.cache")


@dataclass(frozen=True)
class Lookup:
    """One read: a value (or None) per key, the layer that answered it, and how Redis fared.

    ``redis_ok`` is None when Redis was not needed (all L1 hits) or not configured, False when it
    failed, timed out or was skipped in a backoff window, True when it answered.
    """

    values: list[bytes | None]
    layers: list[Layer | None]
    redis_ok: bool | None


class ExactCache:
    """Values by exact key, shared by every replica through Redis, never a source of errors.

    Values are opaque bytes (``codec.encode_prediction`` for predictions). Keys come from
    ``keys.cache_key`` and already pin model, tenant and options, so entries are immutable: L1 can
    keep a value for ``l1_ttl_s`` without ever serving a stale one. Redis is expected to run with
    ``maxmemory`` and ``allkeys-lru`` (see ``RedisGuard.memory_policy``), which bounds it; every key
    also carries a TTL so entries for retired models age out.
    """

    def __init__(
        self,
        guard: RedisGuard,
        *,
        ttl_s: int = 86_400,
        l1_max_entries: int = 10_000,
        l1_ttl_s: float = 300.0,
    ) -> None:
        self.guard = guard
        self.stats = guard.stats
        self.ttl_s = ttl_s
        self.l1 = LruTtlCache(l1_max_entries, l1_ttl_s, self.stats)
        self._background: set[asyncio.Task[bool]] = set()

    @classmethod
    def from_spec(cls, spec: CacheSpec, guard: RedisGuard | None = None) -> ExactCache:
        """Cache configured by ``spec``; pass ``guard`` to share one Redis client and outage state."""
        return cls(
            guard or RedisGuard.from_spec(spec),
            ttl_s=spec.ttl_s,
            l1_max_entries=spec.l1_max_entries,
            l1_ttl_s=spec.l1_ttl_s,
        )

    async def lookup(self, keys: Sequence[str]) -> Lookup:
        """Values in the order of ``keys`` with the layer that answered each: L1 first, then one MGET.

        Redis hits are copied into L1. A Redis failure, timeout or backoff makes the remaining keys
        misses (``redis_ok`` False); this method does not raise for cache trouble.
        """
        found: dict[str, bytes | None] = {}
        layer: dict[str, Layer] = {}
        for key in keys:
            if key not in found:
                found[key] = self.l1.get(key)
                if found[key] is not None:
                    layer[key] = "l1"
        missing = [key for key, value in found.items() if value is None]
        redis_ok: bool | None = None
        if missing and self.guard.client is not None:

            async def mget(client: Redis) -> list[bytes | None] | None:
                values = await client.mget(missing)
                return values  # type: ignore[return-value]  # bytes: decode_responses is off

            with _tracer.start_as_current_span("xz.cache.redis.mget") as span:
                span.set_attribute("xz.cache.keys", len(missing))
                values = await self.guard.call(mget, None, "mget")  # None: failed, counted by the guard
            redis_ok = values is not None
            if values is not None:
                for key, value in zip(missing, values, strict=True):
                    if value is None:
                        self.stats.redis_misses += 1
                    else:
                        self.stats.redis_hits += 1
                        self.l1.put(key, value)
                        found[key] = value
                        layer[key] = "redis"
        return Lookup([found[key] for key in keys], [layer.get(key) for key in keys], redis_ok)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values in the order of ``keys`` (None = miss); same layers and failure rules as ``lookup``."""
        return (await self.lookup(keys)).values

    async def get(self, key: str) -> bytes | None:
        """One value, or None; same layers and failure rules as ``get_many``."""
        return (await self.get_many([key]))[0]

    async def set_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_s: int | None = None
    ) -> bool:
        """Store values in L1 and, in one pipelined round trip of ``SET key value EX ttl``, in Redis.

        Returns:
            True when Redis took every write; False when it failed or was skipped (L1 still has them).
        """
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        if not pairs:
            return True
        ttl = ttl_s or self.ttl_s
        for key, value in pairs:
            self.l1.put(key, value, ttl)

        async def write(client: Redis) -> bool:
            pipe = client.pipeline(transaction=False)  # no MULTI: independent keys, one round trip
            for key, value in pairs:
                pipe.set(key, value, ex=ttl)
            await pipe.execute()
            return True

        with _tracer.start_as_current_span("xz.cache.store") as span:
            span.set_attribute("xz.cache.keys", len(pairs))
            written = await self.guard.call(write, False, "set pipeline")
            span.set_attribute("xz.cache.written", written)
        if written:
            self.stats.redis_writes += len(pairs)
        return written

    def schedule_set_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_s: int | None = None
    ) -> asyncio.Task[bool]:
        """``set_many`` as a background task, so a response never waits for the write-back.

        The task is referenced until it finishes (the loop only keeps weak references) and
        ``drain()`` awaits the ones still running at shutdown.
        """
        task = asyncio.create_task(self.set_many(dict(items), ttl_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for scheduled writes (graceful shutdown, tests)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
