"""ExactCache: an in-process LRU+TTL layer in front of Redis; one round trip per read, one per write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from xz_serve.cache.guard import cache_guard, cache_stats
from xz_serve.cache.lru import LruTtlCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.redis import RedisGuard

Layer = Literal["l1", "redis"]
log = logging.getLogger(__name__)
_tracer = trace.get_tracer("xz_serve.cache")


# GET each key; where it has no value, try to take its lease (SET key:lease token NX PX) in the same
# step. Returns per key: the value, 1 (no value, lease taken) or 0 (no value, lease held elsewhere).
# A miss that will be computed thus costs the same single round trip as a hit.
_GET_OR_LEASE = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then
    out[i] = value
  elseif redis.call('SET', key .. ':lease', ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""


@dataclass(frozen=True)
class Claim:
    """Leases a lookup took on the keys it found missing in Redis: ``token`` holds ``leased``;
    ``examined`` are all the keys whose lease state Redis reported (leased or held elsewhere)."""

    token: str
    leased: frozenset[str]
    examined: frozenset[str]


@dataclass(frozen=True)
class Lookup:
    """One read: a value (or None) per key, the layer that answered it, and how Redis fared.

    ``redis_ok`` is None when Redis was not needed (all L1 hits) or not configured, False when it
    failed, timed out or was skipped in a backoff window, True when it answered. ``claim`` is set
    when the read also took leases on the misses (``lookup(..., lease=...)``).
    """

    values: list[bytes | None]
    layers: list[Layer | None]
    redis_ok: bool | None
    claim: Claim | None = None


class ExactCache:
    """Values by exact key, shared by every replica through Redis, never a source of errors.

    Values are opaque bytes (``codec.encode_prediction`` for predictions). Keys come from
    ``keys.cache_key`` and already pin model, tenant and options, so entries are immutable: L1 can
    keep a value for ``l1_ttl_s`` without ever serving a stale one. Redis is expected to run with
    ``maxmemory`` and ``allkeys-lru`` (see ``RedisGuard.memory_policy``), which bounds it; every key
    also carries a TTL so entries for retired models age out.

    With ``check``, a Redis value it refuses (corrupt, or written in another format) is a miss
    that is neither served nor copied into L1, so the caller computes the key and its write
    replaces the bad value at once instead of leaving it for its whole TTL.
    """

    def __init__(
        self,
        guard: RedisGuard,
        *,
        ttl_s: int = 86_400,
        l1_max_entries: int = 10_000,
        l1_ttl_s: float = 300.0,
        check: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.guard = guard
        self.stats = cache_stats(guard)
        self.ttl_s = ttl_s
        self.l1 = LruTtlCache(l1_max_entries, l1_ttl_s, self.stats)
        self.check = check
        self._background: set[asyncio.Task[bool]] = set()
        self._get_or_lease_script: AsyncScript | None = None  # registered on first use

    @classmethod
    def from_spec(
        cls, spec: CacheSpec, guard: RedisGuard | None = None, check: Callable[[bytes], bool] | None = None
    ) -> ExactCache:
        """Cache configured by ``spec``; pass ``guard`` to share one Redis client and outage state."""
        sizes = {"ttl_s": spec.ttl_s, "l1_max_entries": spec.l1_max_entries, "l1_ttl_s": spec.l1_ttl_s}
        return cls(guard or cache_guard(spec), check=check, **sizes)

    def readable(self, value: bytes) -> bool:
        """False for a value read from Redis that ``check`` refuses: never served, never in L1."""
        return self.check is None or self.check(value)

    async def lookup(self, keys: Sequence[str], lease: tuple[str, int] | None = None) -> Lookup:
        """Values in the order of ``keys`` with the layer that answered each: L1 first, then one
        round trip to Redis.

        With ``lease=(token, ms)`` that round trip also takes the lease of every key Redis lacks
        (one Lua step, ``_GET_OR_LEASE``), so the coalescer can start computing without a second
        round trip; the result's ``claim`` says which. Without it, a plain MGET.
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
        claim: Claim | None = None
        if missing and self.guard.client is not None:
            if lease is None:
                read, name = self._mget(missing), "mget"
            else:
                read, name = self._get_or_lease(missing, *lease), "get_or_lease"
            with _tracer.start_as_current_span(f"xz.cache.redis.{name}") as span:
                span.set_attribute("xz.cache.keys", len(missing))
                replies = await self.guard.call(read, None, name)  # None: failed, counted by the guard
            redis_ok = replies is not None
            if replies is not None:
                absent: set[str] = set()
                leased: set[str] = set()
                for key, reply in zip(missing, replies, strict=True):
                    if isinstance(reply, bytes):
                        if self.readable(reply):
                            self.stats.redis_hits += 1
                            self.l1.put(key, reply)
                            found[key] = reply
                            layer[key] = "redis"
                        else:  # a miss with no lease taken: the coalescer leases, computes, replaces
                            self.stats.redis_corrupt += 1
                            log.warning("unreadable cache value at %s: replacing it", key)
                    else:
                        self.stats.redis_misses += 1
                        absent.add(key)
                        if reply == 1:
                            leased.add(key)
                if lease is not None:
                    claim = Claim(lease[0], frozenset(leased), frozenset(absent))
        return Lookup([found[key] for key in keys], [layer.get(key) for key in keys], redis_ok, claim)

    @staticmethod
    def _mget(keys: list[str]) -> Callable[[Redis], Awaitable[list[bytes | None]]]:
        async def mget(client: Redis) -> list[bytes | None]:
            values = await client.mget(keys)
            return values  # type: ignore[return-value]  # bytes: decode_responses is off

        return mget

    def _get_or_lease(
        self, keys: list[str], token: str, lease_ms: int
    ) -> Callable[[Redis], Awaitable[list[bytes | int]]]:
        if self._get_or_lease_script is None:
            assert self.guard.client is not None  # lookup reads Redis only when there is a client
            self._get_or_lease_script = self.guard.client.register_script(_GET_OR_LEASE)
        script = self._get_or_lease_script

        async def get_or_lease(client: Redis) -> list[bytes | int]:
            replies = await script(keys=keys, args=[token, lease_ms], client=client)
            return list(replies)

        return get_or_lease

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
        return await self.write(pairs, ttl_s or self.ttl_s, "set pipeline")

    async def write(
        self,
        pairs: list[tuple[str, bytes]],
        ttl_s: int,
        what: str,
        also: Callable[[Pipeline], Awaitable[object]] | None = None,
    ) -> bool:
        """Values into L1, then into Redis in one pipelined round trip (``also`` may add commands to
        that pipeline: the coalescer releases its leases with the values). True when Redis took them."""
        for key, value in pairs:
            self.l1.put(key, value, ttl_s)

        async def write(client: Redis) -> bool:
            pipe = client.pipeline(transaction=False)  # no MULTI: independent keys, one round trip
            for key, value in pairs:
                pipe.set(key, value, ex=ttl_s)
            if also is not None:
                await also(pipe)
            await pipe.execute()
            return True

        with _tracer.start_as_current_span("xz.cache.store") as span:
            span.set_attribute("xz.cache.keys", len(pairs))
            written = await self.guard.call(write, False, what)
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
