"""The access gate: who is calling (API key), may they call this route (scope), and how much (limits).

``AccessMiddleware`` (pure ASGI) runs it on every ``/v1/*`` path, including routes added later, before
the body is read; health routes and the OpenAPI schema stay open. It fills the request's
``RequestContext`` (tenant, key_id, a text meter) and adds the ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from xz_serve.access import metrics
from xz_serve.access.keys import ApiKey, KeyStore, MemoryKeyStore, RedisKeyStore, parse_key
from xz_serve.access.ratelimit import Decision, Kind, Limiter, MemoryLimiter, RedisLimiter
from xz_serve.access.spec import AccessSpec
from xz_serve.api.context import RequestContext, context_of
from xz_serve.api.errors import error_response
from xz_serve.cache.guard import RedisGuard
from xz_serve.errors import NotReadyError, PayloadTooLargeError, RateLimitedError, XzError
from xz_serve.settings import StoreSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

ROUTE_SCOPES: tuple[tuple[str, str | None], ...] = (
    ("/v1/admin/", "admin"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/chat", "chat"),
    ("/v1/sessions", "chat"),  # a chat's session state
    ("/v1/analyze", "nlu"),
    ("/v1/intent", "nlu"),
    ("/v1/sentiment", "nlu"),
    ("/v1/", None),  # any other /v1 route (e.g. /v1/models): any valid key
)
"""Path prefix -> scope a key needs, first match wins. A new /v1 route needs a line here to be
scoped; without one it is open to every valid key (never to anonymous callers)."""

METERED = ("/v1/analyze", "/v1/intent", "/v1/sentiment", "/v1/embeddings")
"""Routes that call ``ctx.charge_texts`` once they know their text count: the request and its texts
are charged there together, in one atomic step (a request refused for its texts uses no request
budget). Every other /v1 route is charged one request before it runs."""

STORE_DOWN = object()  # the guard's answer when the store did not answer


def scope_for(path: str) -> str | None:
    """The scope ``path`` needs (None: any valid key)."""
    for prefix, scope in ROUTE_SCOPES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return scope
    return None


def connect_store(spec: StoreSpec) -> Redis | None:
    """A pooled client for the durable store; no retries inside redis-py (the guard backs off).

    The client name carries the pid, so ``CLIENT LIST`` tells which processes enforce limits.
    """
    if not spec.redis_url:
        return None
    timeout = spec.timeout_ms / 1000
    pool = BlockingConnectionPool.from_url(
        spec.redis_url,
        max_connections=32,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=f"xz-access-{os.getpid()}",
    )
    return Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


@dataclass
class _Cached:
    record: ApiKey | None
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
        client: Redis | None = None,
        *,
        timeout_ms: float = 200.0,
        clock: Callable[[], float] = time.monotonic,
        store: KeyStore | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.spec = spec
        self.client = client
        self.guard = RedisGuard(client, timeout_ms=timeout_ms, backoff_ms=spec.store_backoff_ms)
        self.store: KeyStore = store or (RedisKeyStore(client) if client is not None else MemoryKeyStore())
        self.limiter: Limiter = limiter or (RedisLimiter(client) if client is not None else MemoryLimiter())
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @classmethod
    def from_settings(cls, spec: AccessSpec, store: StoreSpec) -> AccessGate:
        return cls(spec, connect_store(store), timeout_ms=store.timeout_ms)

    async def stored(self, op: Callable[[], Awaitable[T]], what: str) -> T | object:
        """``await op()`` through the guard when the store is Redis; ``STORE_DOWN`` when it failed."""
        if self.client is None:
            return await op()
        result = await self.guard.call(lambda _client: op(), STORE_DOWN, f"store {what}")
        if result is STORE_DOWN:
            metrics.STORE_ERRORS.inc(1, tags={"op": what})
        return result

    def forget(self, key_id: str) -> None:
        """Drop a cached record (this replica revoked it)."""
        self._cache.pop(key_id, None)

    async def lookup(self, key_id: str) -> ApiKey | object | None:
        """The key's record (cached up to ``key_cache_ttl_s``), None if unknown, ``STORE_DOWN`` if the store
        is unreachable and no record verified within ``key_stale_s`` is at hand."""
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit.at < self.spec.key_cache_ttl_s:
            return hit.record
        record = await self.stored(lambda: self.store.get(key_id), "key_lookup")
        if record is STORE_DOWN:
            if hit is not None and now - hit.at < self.spec.key_stale_s:
                return hit.record
            return STORE_DOWN
        self._cache[key_id] = _Cached(record, now)  # type: ignore[arg-type]
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.spec.key_cache_max_entries:
            self._cache.popitem(last=False)
        return record

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

    def limit_of(self, key: ApiKey, kind: Kind) -> int | None:
        if kind == "requests":
            return key.requests_per_minute or self.spec.default_requests_per_minute
        return key.texts_per_minute or self.spec.default_texts_per_minute

    async def check(self, key: ApiKey, costs: dict[Kind, int]) -> dict[Kind, Decision]:
        """Charge ``costs`` to the key's limits in one atomic step: all are admitted or none.

        Returns a decision per limited kind (empty: no limits apply, or the store failed and limits
        fail open). Raises XzError for a cost that can never fit (413) and for a store failure when
        limits fail closed (503).
        """
        charges: list[tuple[Kind, int, int]] = []
        for kind, cost in costs.items():
            limit = self.limit_of(key, kind)
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
        buckets = [(f"{key.id}:{kind}", limit, cost) for kind, limit, cost in charges]
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

    async def charge(self, key: ApiKey, costs: dict[Kind, int], ctx: RequestContext) -> None:
        """``check``, with the x-ratelimit-* headers put on ``ctx``; raises 429 when refused."""
        decisions = await self.check(key, costs)
        for kind, decision in decisions.items():
            ctx.response_headers.update(decision.headers(kind))
        for kind, decision in decisions.items():
            if not decision.allowed:
                metrics.RATE_LIMITED.inc(1, tags={"kind": kind})
                raise RateLimitedError(
                    f"{kind} per minute limit of {decision.limit} reached for this key",
                    retry_after_s=max(decision.retry_after_s or 1.0, 0.001),
                )

    async def close(self) -> None:
        await self.guard.close()


def _route_path(scope: Scope) -> str:
    """The path the app routes on: Serve mounts an app under its route prefix (``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class AccessMiddleware:
    """Authenticate, authorize and rate-limit every ``/v1/*`` request; everything else passes.

    Headers the stages put in ``ctx.response_headers`` are added to whatever response leaves,
    errors included, unless the response already carries them.
    """

    def __init__(self, app: ASGIApp, gate: AccessGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] in ("http", "websocket") else ""
        if not path.startswith("/v1/") or not self.gate.spec.auth_enabled:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none today; a future one must not bypass keys
            verdict = await self.gate.authenticate(HTTPConnection(scope).headers.get("authorization"), path)
            if verdict.key is None:
                await WebSocketClose(code=1008, reason=verdict.code)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        ctx = context_of(request)
        verdict = await self.gate.authenticate(request.headers.get("authorization"), path)
        if verdict.key is None:
            await self._respond(scope, receive, send, verdict.status, verdict.code, verdict.message,
                                verdict.retry_after_s, verdict.headers)  # fmt: skip
            return
        key = verdict.key
        ctx.tenant, ctx.key_id = key.tenant, key.id
        meter = _TextMeter(self.gate, key, ctx, with_request=path.startswith(METERED))
        if not meter.with_request:  # no text count will come: charge the request now
            try:
                await self.gate.charge(key, {"requests": 1}, ctx)
            except XzError as exc:
                await self._respond(scope, receive, send, exc.status, exc.code, exc.message,
                                    exc.retry_after_s, ctx.response_headers)  # fmt: skip
                return
        ctx.text_meter = meter
        await self.app(scope, receive, _with_headers(send, ctx, meter))

    @staticmethod
    async def _respond(
        scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
        retry_after_s: float | None, headers: dict[str, str] | None,
    ) -> None:  # fmt: skip
        response = error_response(status, code, message, retry_after_s)
        response.headers.update(headers or {})
        await response(scope, receive, send)


class _TextMeter:
    """``ctx.text_meter``: charges texts, and on metered routes the request with them, in one step."""

    def __init__(self, gate: AccessGate, key: ApiKey, ctx: RequestContext, with_request: bool) -> None:
        self.gate, self.key, self.ctx = gate, key, ctx
        self.with_request = with_request  # the request is charged with its texts, not up front
        self.request_charged = not with_request

    async def __call__(self, count: int) -> None:
        costs: dict[Kind, int] = {"texts": count}
        if not self.request_charged:
            costs["requests"] = 1
        try:
            await self.gate.charge(self.key, costs, self.ctx)
        except PayloadTooLargeError:
            raise  # never reached the limiter: settle() counts the request
        except BaseException:
            self.request_charged = True  # refused (429) or failed closed: not counted again
            raise
        self.request_charged = True

    async def settle(self) -> None:
        """A metered route that answered without counting texts (bad input): count the request
        anyway, so floods of invalid requests use up the key's budget. Never raises."""
        if self.request_charged:
            return
        self.request_charged = True
        try:
            decisions = await self.gate.check(self.key, {"requests": 1})
        except XzError:
            return
        if "requests" in decisions:
            self.ctx.response_headers.update(decisions["requests"].headers("requests"))


def _with_headers(send: Send, ctx: RequestContext, meter: _TextMeter) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            await meter.settle()
        if message["type"] == "http.response.start" and ctx.response_headers:
            raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
            present = {name.lower() for name, _ in raw}
            for name, value in ctx.response_headers.items():
                if name.lower().encode() not in present and _HEADER_NAME.match(name):
                    raw.append((name.lower().encode(), value.encode("latin-1", "replace")))
            message = {**message, "headers": raw}
        await send(message)

    return sending


def install_access(app: Any, settings: Any) -> AccessGate:
    """Add the access middleware and the admin routes to ``app`` (called by ``create_api``)."""
    from xz_serve.access.admin import admin_router

    spec: AccessSpec = settings.access
    gate = AccessGate.from_settings(spec, settings.store)
    if not spec.auth_enabled:
        log.warning(
            "AUTH IS OFF (access.auth_enabled=false): every /v1 request, admin routes included, is "
            "unauthenticated and unlimited. Local development only."
        )
    elif settings.store.redis_url is None:
        log.warning(
            "auth is on but store.redis_url is unset: API keys and rate limits live in this replica's "
            "memory only (lost on restart, limits per replica). Set XZ_STORE__REDIS_URL in production."
        )
    app.add_middleware(AccessMiddleware, gate=gate)
    _document(app, spec)
    app.state.access = gate  # tests add keys to an in-memory store through it
    app.include_router(admin_router(gate))
    return gate


_REFUSALS = {
    "401": "Missing, unknown, revoked or expired API key",
    "403": "The API key lacks the scope this route needs",
    "429": "A per-key limit is used up; see Retry-After and x-ratelimit-*",
}


def _document(app: Any, spec: AccessSpec) -> None:
    """Put the bearer scheme and the 401/403/429 answers of every /v1 operation in the OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = build()
        if spec.auth_enabled:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "`xz_<id>_<secret>`"}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/v1/") or not spec.auth_enabled:
                continue
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
                responses = operation.setdefault("responses", {})
                for status, text in _REFUSALS.items():
                    responses.setdefault(status, {"description": text, "content": error})
        return schema

    app.openapi = openapi
