"""Coalescer: a key being computed anywhere (this process or another replica) is computed only once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from xz_serve.cache.exact import Claim, ExactCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.deadline import remaining_s
from xz_serve.kernel.errors import DeadlineExceededError

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("xz_serve.cache")

ComputeMany = Callable[[list[str], float | None], Awaitable[Sequence[bytes]]]
"""Values for keys, computed under a deadline (epoch seconds; None: no bound)."""

# Delete each lease only if it still holds our token: a lease that lapsed and was taken by another
# replica must stay with that replica.
_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""


def lease_key(key: str) -> str:
    """Where the lease of ``key`` lives: next to it, so both share TTL-driven fate and a hash slot."""
    return f"{key}:lease"


@dataclass
class _Lead:
    """One leader task's share of the work: its futures, its compute call and its lease token,
    and the deadline it computes under: the latest of its waiters', None as soon as one has none."""

    futures: dict[str, asyncio.Future[bytes]]
    compute: ComputeMany
    token: str
    deadline: float | None = None
    bounded: bool = True  # False once a waiter without a deadline joined

    def join(self, deadline: float | None) -> None:
        if deadline is None:
            self.bounded = False
        elif self.deadline is None or deadline > self.deadline:
            self.deadline = deadline

    @property
    def until(self) -> float | None:
        return self.deadline if self.bounded else None

    def outlives(self, deadline: float | None) -> bool:
        """True when a waiter that joined after a run began has time beyond that run's ``deadline``."""
        until = self.until
        if deadline is None:
            return False
        return until is None or (until > deadline and until > time.time())


def _retrieve(future: asyncio.Future[bytes]) -> None:
    # Mark a failure as seen: a waiter that was cancelled must not make asyncio log it as lost.
    if not future.cancelled():
        future.exception()


class Coalescer:
    """Computes each missing key once: one leader per key in the process, one lease per key in Redis.

    In process, the first request for a key starts a leader task and later requests await the same
    future, so every waiter gets the same bytes or the same exception, and a waiter that gives up
    (client gone) does not cancel the work for the others. Each waiter keeps its own deadline: it
    stops waiting at it (504), while the computation runs under the latest deadline of all its
    waiters, or none when one has none; a run that its deadline cut short is run again for waiters
    that joined later with time left, so a short deadline never fails a longer one.

    Across replicas, the leader first takes ``SET {key}:lease token NX PX lease_ms``; a replica that
    finds the lease taken polls for the value every ``poll_ms`` and computes itself when the lease
    disappears without a value (holder died or failed) or after ``lease_ms``. Polling, not pub/sub:
    no listener connection per replica, no lost-message window, and the added wait (<= poll_ms) is
    small next to a model call. A value that ``ExactCache.readable`` refuses counts as no value.
    With no Redis, or Redis failing, it coalesces in process only.
    """

    def __init__(self, cache: ExactCache, *, lease_ms: int = 5000, poll_ms: float = 10.0) -> None:
        self.cache = cache
        self.guard = cache.guard
        self.stats = cache.stats
        self.lease_ms = lease_ms
        self.poll_s = poll_ms / 1000
        self._inflight: dict[str, tuple[asyncio.Future[bytes], _Lead]] = {}
        self._leaders: set[asyncio.Task[None]] = set()
        self._release = self.guard.client.register_script(_RELEASE) if self.guard.client else None

    @classmethod
    def from_spec(cls, spec: CacheSpec, cache: ExactCache) -> Coalescer:
        """Coalescer over ``cache`` (and its Redis client) with the lease settings of ``spec``."""
        return cls(cache, lease_ms=spec.lease_ms, poll_ms=spec.poll_ms)

    async def run(
        self, key: str, compute: Callable[[float | None], Awaitable[bytes]], *, deadline: float | None = None
    ) -> bytes:
        """The value of ``key``, computed by ``compute(deadline)`` here only if no one else is
        computing it; ``deadline`` is this caller's (epoch seconds), as in ``run_many``.

        Raises:
            DeadlineExceededError: ``deadline`` passed before the value came.
            Exception: whatever ``compute`` raised, for every waiter of this computation.
        """

        async def one(_: list[str], until: float | None) -> list[bytes]:
            return [await compute(until)]

        return (await self.run_many([key], one, deadline=deadline))[0]

    def new_lease(self) -> tuple[str, int]:
        """A fresh lease token and the lease's life in ms: for ``ExactCache.lookup(..., lease=...)``."""
        return uuid.uuid4().hex, self.lease_ms

    async def run_many(
        self,
        keys: Sequence[str],
        compute: ComputeMany,
        claim: Claim | None = None,
        *,
        deadline: float | None = None,
    ) -> list[bytes]:
        """Values for ``keys`` in order; ``compute`` gets, in one call, only the keys this process leads.

        This keeps the ingress's one-model-call-per-request shape: keys already in flight here or on
        another replica are awaited, the rest go to ``compute`` together.

        Args:
            keys: cache keys (duplicates allowed).
            compute: maps a list of keys and a deadline to their values, same order and length.
            claim: the leases the caller's lookup already took (or found held) on these keys:
                those keys skip the lease round trip. Leases it took on keys that turn out to be
                in flight here already are released.
            deadline: this caller's (epoch seconds; None: it waits as long as it takes). It stops
                waiting then; a computation in this process that it waits on runs at least as long.

        Raises:
            DeadlineExceededError: ``deadline`` passed before every value came.
            Exception: what ``compute`` raised for a key this call needs.
        """
        remaining_s(deadline)  # past it already: start nothing
        loop = asyncio.get_running_loop()
        token = claim.token if claim is not None else uuid.uuid4().hex
        lead = _Lead({}, compute, token)
        lead.join(deadline)
        unused: list[str] = []
        futures: dict[str, asyncio.Future[bytes]] = {}
        for key in keys:
            if key in futures:
                continue
            flight = self._inflight.get(key)
            if flight is None:
                future = loop.create_future()
                future.add_done_callback(_retrieve)
                self._inflight[key] = (future, lead)
                lead.futures[key] = future
            else:
                future, other = flight
                other.join(deadline)
                self.stats.coalesced_local += 1
                if claim is not None and key in claim.leased:
                    unused.append(key)
            futures[key] = future
        if lead.futures:
            self._background(self._lead(lead, claim))
        if unused and claim is not None:
            self._background(self._release_leases(unused, claim.token))
        if deadline is None:
            return [await asyncio.shield(futures[key]) for key in keys]
        waiting = asyncio.timeout(remaining_s(deadline))
        try:
            async with waiting:
                return [await asyncio.shield(futures[key]) for key in keys]
        except TimeoutError:
            if waiting.expired():  # this caller's deadline, not a TimeoutError from the computation
                raise DeadlineExceededError("the deadline passed while the value was computed") from None
            raise

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._leaders.add(task)
        task.add_done_callback(self._leaders.discard)

    async def _claimed(
        self, lead: _Lead, keys: list[str], claim: Claim | None
    ) -> tuple[list[str], list[str]]:
        """(ours, someone else's): from the lookup's claim where it covers a key, else a lease round trip."""
        if claim is None:
            return await self._acquire(lead, keys)
        rest = [key for key in keys if key not in claim.examined]
        acquired, waiting = await self._acquire(lead, rest)
        for key in keys:
            if key in claim.examined:
                (acquired if key in claim.leased else waiting).append(key)
        return acquired, waiting

    async def _lead(self, lead: _Lead, claim: Claim | None = None) -> None:
        keys = list(lead.futures)
        try:
            acquired, waiting = await self._claimed(lead, keys, claim)
            await asyncio.gather(self._compute(lead, acquired), self._follow(lead, waiting))
        except Exception as exc:  # a bug here must not strand the waiters
            for key in keys:
                self._settle(lead, key, exc=exc)
        except BaseException:  # loop shutdown: waiters see a cancellation, not a hang
            for key in keys:
                self._settle(lead, key, cancel=True)
            raise
        finally:
            for key in keys:  # anything left unsettled (should not happen) fails loudly, not silently
                self._settle(lead, key, exc=RuntimeError("coalesced computation ended without a value"))

    def _settle(
        self,
        lead: _Lead,
        key: str,
        value: bytes | None = None,
        exc: BaseException | None = None,
        cancel: bool = False,
    ) -> None:
        future = lead.futures[key]
        if future.done():
            return
        flight = self._inflight.get(key)
        if flight is not None and flight[0] is future:  # from now on a new request starts anew
            del self._inflight[key]
        if cancel:
            future.cancel()
        elif exc is not None:
            future.set_exception(exc)
        else:
            assert value is not None
            future.set_result(value)

    async def _acquire(self, lead: _Lead, keys: list[str]) -> tuple[list[str], list[str]]:
        """Take free leases; settle keys whose value already landed. Returns (ours, someone else's)."""
        if not keys:
            return [], []
        px, token = self.lease_ms, lead.token

        async def attempt(client: Redis) -> list[object]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(lease_key(key), token, nx=True, px=px)
                pipe.get(key)  # a value that landed since the caller's MGET: no compute needed
            return list(await pipe.execute())

        replies = await self.guard.call(attempt, None, "lease")
        if replies is None:  # no Redis or failing: everything is ours, computed locally
            return list(keys), []
        acquired, waiting, landed = [], [], []
        for i, key in enumerate(keys):
            got, value = replies[2 * i], replies[2 * i + 1]
            if isinstance(value, bytes) and self.cache.readable(value):
                self.cache.l1.put(key, value)
                self._settle(lead, key, value)
                self.stats.coalesced_remote += 1
                if got:
                    landed.append(key)
            elif got:
                acquired.append(key)
            else:
                waiting.append(key)
        if landed:
            await self._release_leases(landed, token)
        return acquired, waiting

    async def _compute(self, lead: _Lead, keys: list[str]) -> None:
        if not keys:
            return
        try:
            while True:
                until = lead.until
                try:
                    values = list(await lead.compute(keys, until))
                    break
                except DeadlineExceededError:
                    if not lead.outlives(until):
                        raise
                    # A waiter that joined during the run has time left: run again, under its deadline.
            if len(values) != len(keys):
                raise ValueError(f"compute returned {len(values)} values for {len(keys)} keys")
        except Exception as exc:
            for key in keys:
                self._settle(lead, key, exc=exc)
            await self._release_leases(keys, lead.token)  # others take over now, not after lease_ms
            return
        for key, value in zip(keys, values, strict=True):
            self._settle(lead, key, value)
        await self._publish(dict(zip(keys, values, strict=True)), lead.token)

    async def _publish(self, values: dict[str, bytes], token: str) -> None:
        """Values into L1 and Redis, leases released, in one round trip.

        The release goes into the pipeline as ``EVAL`` with the script's text, not as redis-py's
        Script: a pipeline holding a Script first asks ``SCRIPT EXISTS`` in a round trip of its own
        on every execute, which cost each miss a command and a wait. The text is 150 bytes, Redis
        compiles it once and keeps it by digest, and ``EVAL`` cannot fail with ``NOSCRIPT`` after
        the server restarted.
        """

        async def release_leases(pipe: Pipeline) -> object:
            leases = [lease_key(k) for k in values]
            return pipe.eval(_RELEASE, len(leases), *leases, token)

        also = release_leases if self._release is not None else None
        await self.cache.write(list(values.items()), self.cache.ttl_s, "publish", also)

    async def _release_leases(self, keys: list[str], token: str) -> None:
        if self._release is None or not keys:
            return
        release = self._release

        async def drop(client: Redis) -> object:
            return await release(keys=[lease_key(k) for k in keys], args=[token], client=client)

        await self.guard.call(drop, None, "lease release")

    async def _follow(self, lead: _Lead, keys: list[str]) -> None:
        """Wait for other replicas' values; take over keys whose lease lapsed without one."""
        deadline = time.monotonic() + self.lease_ms / 1000
        pending = list(keys)
        while pending:
            await asyncio.sleep(self.poll_s)
            state = await self.guard.call(self._poll(pending), None, "lease poll")
            if state is None or time.monotonic() >= deadline:  # Redis gone, or holder too slow
                self.stats.lease_takeovers += len(pending)
                await self._compute(lead, pending)
                return
            values, leases = state
            orphaned, still = [], []
            for key, value, lease in zip(pending, values, leases, strict=True):
                if value is not None and self.cache.readable(value):
                    self.cache.l1.put(key, value)
                    self._settle(lead, key, value)
                    self.stats.coalesced_remote += 1
                elif lease is None:
                    orphaned.append(key)
                else:
                    still.append(key)
            if orphaned:
                ours, theirs = await self._acquire(lead, orphaned)
                self.stats.lease_takeovers += len(ours)
                await self._compute(lead, ours)
                still.extend(theirs)
            pending = still

    @staticmethod
    def _poll(keys: list[str]) -> Callable[[Redis], Awaitable[tuple[list[bytes | None], list[bytes | None]]]]:
        async def poll(client: Redis) -> tuple[list[bytes | None], list[bytes | None]]:
            pipe = client.pipeline(transaction=False)
            pipe.mget(keys)
            pipe.mget([lease_key(k) for k in keys])
            values, leases = await pipe.execute()
            return values, leases

        return poll
