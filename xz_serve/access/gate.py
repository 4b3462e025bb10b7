"""The access gate: who is calling (API key), may they call this route (scope), and how much (limits).

The HTTP layer asks it once per ``/v1/*`` request (``authenticate``) and fills the request's
context from the answer; metered routes then charge their texts through ``charge_texts``. Key
records and counters live in the durable store Redis, shared by every replica.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from xz_serve.access import metrics
from xz_serve.access.keys import ApiKey, KeyStore, MemoryKeyStore, RedisKeyStore, parse_key
from xz_serve.access.ratelimit import Decision, Kind, Limiter, MemoryLimiter, RedisLimiter
from xz_serve.access.scopes import scope_for
from xz_serve.access.spec import AccessSpec
from xz_serve.kernel.context import KeyLimits, RequestContext
from xz_serve.kernel.errors import NotReadyError, PayloadTooLargeError, RateLimitedError, XzError
from xz_serve.kernel.redis import RedisGuard

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_DOWN = object()  # the guard's answer when the store did not answer


@dataclass
class _Cached:
    record: ApiKey
    at: float


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one request: a key, or the HTTP refusal to send."""

    key: ApiKey | None = None
    status: int = 200
    code: str = ""
    message: str = ""
    retry_after_s: float | None = None
    headers: dict[str, str] | None = None


class AccessGate:
    """Key verification (with a short per-replica cache) and limit checks against one store.

    With a store client, records and counters are in the durable Redis (shared by all replicas);
    without one, both live in this process (development only: per replica).
    """

    def __init__(
        self,
        spec: AccessSpec,
        guard: RedisGuard | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        store: KeyStore | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.spec = spec
        self.guard = guard or RedisGuard(None, role="store")
        client = self.guard.client
        self.client = client
        self.store: KeyStore = store or (RedisKeyStore(client) if client is not None else MemoryKeyStore())
        self.limiter: Limiter = limiter or (RedisLimiter(client) if client is not None else MemoryLimiter())
        self._clock = clock
        # Records the store returned, and apart from them the ids it did not know (with when it
        # said so): guessed keys only ever push out other guesses, never a real key, which keeps
        # its stale-grace window through a store outage. Each is bounded by key_cache_max_entries.
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()

    async def stored(self, op: Callable[[], Awaitable[T]], what: str) -> T | object:
        """``await op()`` through the guard when the store is Redis; ``STORE_DOWN`` when it failed."""
        if self.client is None:
            return await op()
        result = await self.guard.call(lambda _client: op(), STORE_DOWN, what)
        if result is STORE_DOWN:
            metrics.STORE_ERRORS.inc(1, tags={"op": what})
        return result

    def forget(self, key_id: str) -> None:
        """Drop a cached record (this replica revoked it)."""
        self._cache.pop(key_id, None)
        self._unknown.pop(key_id, None)

    def cached_keys(self) -> int:
        """Entries held by the key cache: records plus remembered unknown ids."""
        return len(self._cache) + len(self._unknown)

    async def lookup(self, key_id: str) -> ApiKey | object | None:
        """The key's record (cached up to ``key_cache_ttl_s``), None if unknown (also remembered for
        that long), ``STORE_DOWN`` if the store is unreachable and no record verified within
        ``key_stale_s`` is at hand."""
        now = self._clock()
        ttl = self.spec.key_cache_ttl_s
        hit = self._cache.get(key_id)
        if hit is not None and now - hit.at < ttl:
            return hit.record
        told_unknown = self._unknown.get(key_id)
        if hit is None and told_unknown is not None and now - told_unknown < ttl:
            return None
        record = await self.stored(lambda: self.store.get(key_id), "key_lookup")
        if record is STORE_DOWN:
            if hit is not None and now - hit.at < self.spec.key_stale_s:
                return hit.record
            return STORE_DOWN
        if not isinstance(record, ApiKey):
            self._cache.pop(key_id, None)  # gone from the store: no stale grace for it either
            self._remember(self._unknown, key_id, now)
            return None
        self._unknown.pop(key_id, None)
        self._remember(self._cache, key_id, _Cached(record, now))
        return record

    def _remember(self, cache: OrderedDict[str, Any], key_id: str, value: Any) -> None:
        cache[key_id] = value
        cache.move_to_end(key_id)
        while len(cache) > self.spec.key_cache_max_entries:
            cache.popitem(last=False)

    async def authenticate(self, authorization: str | None, path: str) -> Verdict:
        """Bearer key -> record, then scope; a refusal carries its status and stable code."""
        if not authorization:
            return self._refuse(401, "missing_api_key", "send `Authorization: Bearer <api key>`", "missing")
        scheme, _, token = authorization.partition(" ")
        parsed = parse_key(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            return self._refuse(401, "invalid_api_key", "the API key is malformed", "malformed")
        key_id, secret = parsed
        record = await self.lookup(key_id)
        if record is STORE_DOWN:
            return self._refuse(
                503, "auth_unavailable", "the key store is unreachable; retry shortly", "unavailable",
                retry_after_s=self.spec.store_backoff_ms / 1000,
            )  # fmt: skip
        if not isinstance(record, ApiKey) or not record.matches(secret):
            return self._refuse(401, "invalid_api_key", "the API key is not valid", "unknown")
        status = record.status(time.time())
        if status != "active":
            return self._refuse(401, f"{status}_api_key", f"the API key is {status}", status)
        needed = scope_for(path)
        if needed is not None and needed not in record.scopes:
            return self._refuse(
                403, "insufficient_scope", f"this key lacks the `{needed}` scope this route needs", "scope"
            )
        return Verdict(key=record)

    def _refuse(
        self, status: int, code: str, message: str, reason: str, retry_after_s: float | None = None
    ) -> Verdict:
        metrics.AUTH_FAILURES.inc(1, tags={"reason": reason})
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return Verdict(None, status, code, message, retry_after_s, headers)

    async def close(self) -> None:
        """Close the store guard (its owner calls this; an app's guards close with the app)."""
        await self.guard.close()

    def limits_of(self, key: ApiKey) -> KeyLimits:
        """The key's own limits, else the deployment's defaults."""
        return KeyLimits(
            requests_per_minute=key.requests_per_minute or self.spec.default_requests_per_minute,
            texts_per_minute=key.texts_per_minute or self.spec.default_texts_per_minute,
        )

    def admit(self, key: ApiKey, ctx: RequestContext, metered: bool) -> None:
        """Put an authenticated key on the request's context; a metered route's request is charged
        later, with its texts (``charge_texts``), or at the answer (``settle``) if it never counts any."""
        ctx.tenant, ctx.key_id, ctx.limits = key.tenant, key.id, self.limits_of(key)
        ctx.request_charged = not metered

    async def check(self, key_id: str, limits: KeyLimits, costs: dict[Kind, int]) -> dict[Kind, Decision]:
        """Charge ``costs`` to the key's limits in one atomic step: all are admitted or none.

        Returns a decision per limited kind (empty: no limits apply, or the store failed and limits
        fail open).

        Raises:
            PayloadTooLargeError: a cost that can never fit the limit (413).
            NotReadyError: the store failed and limits fail closed (503).
        """
        charges: list[tuple[Kind, int, int]] = []
        for kind, cost in costs.items():
            limit = limits.requests_per_minute if kind == "requests" else limits.texts_per_minute
            if limit is None:
                continue
            if cost > limit:
                raise PayloadTooLargeError(
                    f"this request's {cost} {kind} exceed the key's limit of {limit} per minute; split it",
                    code=f"{kind}_exceed_rate_limit",
                )
            charges.append((kind, limit, cost))
        if not charges:
            return {}
        buckets = [(f"{key_id}:{kind}", limit, cost) for kind, limit, cost in charges]
        decisions = await self.stored(lambda: self.limiter.hit_all(buckets), "limit")
        if not isinstance(decisions, list):
            if self.spec.limits_fail_mode == "closed":
                raise NotReadyError(
                    "the rate limiter is unreachable; retry shortly",
                    code="rate_limiter_unavailable",
                    retry_after_s=self.spec.store_backoff_ms / 1000,
                )
            return {}
        return {kind: decision for (kind, _, _), decision in zip(charges, decisions, strict=True)}

    async def charge(self, ctx: RequestContext, costs: dict[Kind, int]) -> None:
        """``check`` for the request's key, with the x-ratelimit-* headers put on ``ctx``.

        Raises:
            RateLimitedError: a limit is used up (429, with ``Retry-After``).
            PayloadTooLargeError, NotReadyError: as ``check``.
        """
        if ctx.key_id is None or ctx.limits is None:
            return
        decisions = await self.check(ctx.key_id, ctx.limits, costs)
        for kind, decision in decisions.items():
            ctx.response_headers.update(decision.headers(kind))
        for kind, decision in decisions.items():
            if not decision.allowed:
                metrics.RATE_LIMITED.inc(1, tags={"kind": kind})
                raise RateLimitedError(
                    f"{kind} per minute limit of {decision.limit} reached for this key",
                    retry_after_s=max(decision.retry_after_s or 1.0, 0.001),
                )

    async def charge_texts(self, ctx: RequestContext, count: int) -> None:
        """Count ``count`` texts (and, on a metered route, its request) against the caller's limits.

        Call once the count is known, before any model work; a no-op for anonymous requests.

        Raises:
            RateLimitedError, PayloadTooLargeError, NotReadyError: as ``charge``.
        """
        costs: dict[Kind, int] = {"texts": count}
        if not ctx.request_charged:
            costs["requests"] = 1
        try:
            await self.charge(ctx, costs)
        except PayloadTooLargeError:
            raise  # never reached the limiter: settle() counts the request
        except BaseException:
            ctx.request_charged = True  # refused (429) or failed closed: not counted again
            raise
        ctx.request_charged = True

    async def settle(self, ctx: RequestContext) -> None:
        """A metered route that answered without counting texts (bad input): count the request
        anyway, so floods of invalid requests use up the key's budget. Never raises."""
        if ctx.request_charged or ctx.key_id is None or ctx.limits is None:
            return
        ctx.request_charged = True
        try:
            decisions = await self.check(ctx.key_id, ctx.limits, {"requests": 1})
        except XzError:
            return
        if "requests" in decisions:
            ctx.response_headers.update(decisions["requests"].headers("requests"))
