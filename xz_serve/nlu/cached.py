"""CachedNluClient: the exact cache and request coalescing between the routes and the model replicas.

Per request: one key per text (``keys.cache_key``: normalised text, task, model id, tenant, options),
one lookup (L1, then one Redis round trip that also leases the misses), the misses coalesced with
identical texts in flight here or on another replica (``Coalescer``), and whatever is left computed in
ONE call to the inner client. The write-back runs after the waiters have their values, so no response
waits for it. Redis trouble is only ever a miss (``RedisGuard``), and the outcome is reported in
``X-Cache`` response headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import trace

from xz_serve.cache.coalesce import Coalescer
from xz_serve.cache.codec import CodecError, decode_prediction, encode_prediction, is_prediction
from xz_serve.cache.exact import Claim, ExactCache
from xz_serve.cache.guard import cache_guard
from xz_serve.cache.keys import TextNorm, cache_key, norm_for_tokenizer
from xz_serve.cache.metrics import CacheMetrics
from xz_serve.cache.spec import CacheSpec
from xz_serve.cache.stats import CacheStats
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.redis import RedisGuard
from xz_serve.kernel.types import BatchStats, CallMeta, PredictResult, TextPrediction
from xz_serve.nlu.client import NluClient

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("xz_serve.cache")
_TENANT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
REPLICA = f"{socket.gethostname()}-{os.getpid()}"
"""Names the process that answered (``X-Replica``): shows which replica computed and which hit."""
EVICTION_POLL_S = 15.0  # how often a replica reads the cache Redis's evicted_keys for the gauge
MODEL_RECHECK_S = 5.0  # how stale the model id in the keys may get before describe() is asked again


class ContextPredictor(Protocol):
    """What routes call: predictions for a request's texts under that request's context."""

    async def predict_for(self, texts: list[str], ctx: RequestContext) -> PredictResult: ...

    async def close(self) -> None: ...


class UncachedPredictor:
    """``settings.cache.enabled`` off: every text goes to the model, nothing is reported."""

    def __init__(self, client: NluClient) -> None:
        self.client = client

    async def predict_for(self, texts: list[str], ctx: RequestContext) -> PredictResult:
        return await self.client.predict(texts, ctx.call_meta())

    async def close(self) -> None:
        return None


def predictor(
    client: NluClient, spec: CacheSpec, guard: RedisGuard, options: Mapping[str, Any], tokenizer_json: Path
) -> ContextPredictor:
    """The routes' way to the model: through the cache unless ``spec.enabled`` is off."""
    if not spec.enabled:
        return UncachedPredictor(client)
    return CachedNluClient(client, spec, guard=guard, options=options, tokenizer_json=tokenizer_json)


class _ModelChanged(Exception):
    """The replicas answered with another model than the keys name: nothing is stored, retry."""


@dataclass
class _Backend:
    """Redis client, cache layers and metrics; built on first use, inside the serving event loop."""

    guard: RedisGuard
    cache: ExactCache
    coalescer: Coalescer
    metrics: CacheMetrics


@dataclass
class _Outcome:
    """How one request's texts were answered, counted per text."""

    hits: int = 0
    computed: int = 0
    coalesced: int = 0
    lookup_ms: float | None = None
    redis_down: bool = False


def _key_tenant(tenant: str) -> str:
    # An API-key scope outside the key alphabet is hashed rather than refused: keys stay unambiguous.
    if _TENANT.match(tenant):
        return tenant
    return "h" + hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class CachedNluClient:
    """An NluClient in front of another: cached texts are not computed, identical ones only once.

    The model id in every key is learnt from the inner client's ``describe()`` on first use and
    checked against every answer: when the replicas start answering with another model, nothing
    computed for the old id is stored and the request is answered under the new id, so a new model
    version never serves old results. The text normalisation follows the artifacts' tokenizer
    (``norm_for_tokenizer``), ``exact`` when it cannot be read.
    """

    def __init__(
        self,
        inner: NluClient,
        spec: CacheSpec,
        *,
        guard: RedisGuard | None = None,
        options: Mapping[str, Any] | None = None,
        tokenizer_json: Path | None = None,
        task: str = "nlu",
    ) -> None:
        self.inner = inner
        self.spec = spec
        self.task = task
        # spec.tenant namespaces one deployment's keys; the request's tenant is a key part of its own.
        self.options = {**(options or {}), "ns": spec.tenant}
        self.tokenizer_json = tokenizer_json
        self.model_id: str | None = None
        self.model_recheck_s = MODEL_RECHECK_S
        self._described_at = 0.0
        self.norm: TextNorm | None = None
        # The cache Redis's guard, shared with the reply cache; its own when none is given (tests).
        self.guard = guard
        shared = guard.stats if guard is not None else None
        self.stats = shared if isinstance(shared, CacheStats) else CacheStats()
        self._owns_guard = guard is None
        self._backend: _Backend | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._evictions_read = 0.0

    # -- NluClient ---------------------------------------------------------------------------------

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        """``NluClient.predict`` for callers without a request: default tenant, cache on."""
        meta = meta or CallMeta()
        return await self.predict_for(
            texts, RequestContext(deadline=meta.deadline, carrier=dict(meta.carrier))
        )

    async def describe(self) -> dict[str, Any]:
        return await self.inner.describe()

    # -- the request path --------------------------------------------------------------------------

    async def predict_for(self, texts: list[str], ctx: RequestContext) -> PredictResult:
        """Predictions for ``texts`` in order, from the cache where ``ctx`` allows; headers in ``ctx``.

        Raises:
            Exception: what the inner client raised for a text this request needed (every request
                waiting on the same computation gets the same error).
        """
        if not (ctx.cache_read or ctx.cache_write):
            return await self._uncached(texts, ctx)
        backend = self._backend_now()
        for _ in range(2):
            model_id = await self._model_id()
            if model_id is None:
                break
            try:
                return await self._serve(texts, ctx, backend, model_id)
            except _ModelChanged:
                continue  # self.model_id now names the new model: key again
        return await self._uncached(texts, ctx)

    async def _uncached(self, texts: list[str], ctx: RequestContext) -> PredictResult:
        result = await self.inner.predict(texts, ctx.call_meta())
        if self.model_id is None and result.model_id:
            self.model_id = result.model_id
        self._report(ctx, "bypass", _Outcome(computed=len(texts)))
        return result

    async def _serve(
        self, texts: list[str], ctx: RequestContext, backend: _Backend, model_id: str
    ) -> PredictResult:
        tenant = _key_tenant(ctx.tenant)
        norm = self.norm or "exact"
        keys = [cache_key(self.task, t, model_id, tenant, options=self.options, norm=norm) for t in texts]
        text_of: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            text_of.setdefault(key, text)
        unique = list(text_of)
        outcome = _Outcome()
        found: dict[str, TextPrediction] = {}
        claim: Claim | None = None
        if ctx.cache_read:
            started = time.perf_counter()
            with _tracer.start_as_current_span("xz.cache.lookup") as span:
                # Storing too: the same round trip leases the misses for the coalescer.
                lease = backend.coalescer.new_lease() if ctx.cache_write else None
                lookup = await backend.cache.lookup(unique, lease)
                for key, value in zip(unique, lookup.values, strict=True):
                    if value is not None:  # the cache has checked it (is_prediction)
                        try:
                            found[key] = decode_prediction(value)
                        except CodecError as exc:  # computed below, and the write replaces it
                            log.warning("undecodable cache entry %s: %s", key, exc)
                span.set_attribute("xz.cache.keys", len(unique))
                span.set_attribute("xz.cache.hits", len(found))
                span.set_attribute("xz.cache.l1_hits", sum(layer == "l1" for layer in lookup.layers))
            outcome.lookup_ms = (time.perf_counter() - started) * 1000
            outcome.redis_down = lookup.redis_ok is False
            claim = lookup.claim
        hit_keys = set(found)
        missing = [key for key in unique if key not in found]
        fresh: dict[str, TextPrediction] = {}
        parts: list[BatchStats] = []
        if missing:
            carrier = ctx.call_meta().carrier

            async def compute(batch: list[str], deadline: float | None) -> list[bytes]:
                # Under the deadline of every request waiting on it (the coalescer's), not only ours.
                meta = CallMeta(deadline=deadline, carrier=carrier)
                result = await self.inner.predict([text_of[k] for k in batch], meta)
                if result.model_id and result.model_id != model_id:
                    self._model_changed(model_id, result.model_id)
                    raise _ModelChanged(result.model_id)
                parts.append(result.stats)
                fresh.update(zip(batch, result.predictions, strict=True))
                return [encode_prediction(p) for p in result.predictions]

            if ctx.cache_read and ctx.cache_write:
                values = await backend.coalescer.run_many(missing, compute, claim, deadline=ctx.deadline)
                corrupt = []
                for key, value in zip(missing, values, strict=True):
                    if key not in fresh:  # computed by another request, here or on another replica
                        try:
                            found[key] = decode_prediction(value)
                        except CodecError:  # the coalescer checks what it reads; never kept as is
                            corrupt.append(key)
                if corrupt:
                    again = await compute(corrupt, ctx.deadline)
                    backend.cache.schedule_set_many(zip(corrupt, again, strict=True))
            else:  # no-cache: a fresh answer, stored unless no-store; no-store: nothing written
                values = await compute(missing, ctx.deadline)
                if ctx.cache_write:
                    backend.cache.schedule_set_many(zip(missing, values, strict=True))
        found.update(fresh)
        for key in keys:
            if key in hit_keys:
                outcome.hits += 1
            elif key in fresh:
                outcome.computed += 1
            else:
                outcome.coalesced += 1
        if backend.guard.client is not None and not backend.guard.available:
            outcome.redis_down = True
        self._report(ctx, self._label(ctx, outcome, len(texts)), outcome)
        return PredictResult([found[key] for key in keys], BatchStats.slowest(parts), model_id)

    @staticmethod
    def _label(ctx: RequestContext, outcome: _Outcome, n: int) -> str:
        if not ctx.cache_read:
            return "bypass"
        if outcome.hits == n:
            return "hit"
        if outcome.redis_down:
            return "unavailable"  # served, but without the shared layer for the texts not in L1
        if outcome.computed == n:
            return "miss"
        if outcome.computed == 0:
            return "coalesced"
        return "partial"

    def _report(self, ctx: RequestContext, label: str, outcome: _Outcome) -> None:
        ctx.response_headers.update(
            {
                "x-cache": label,
                "x-cache-hits": str(outcome.hits),
                "x-cache-coalesced": str(outcome.coalesced),
                "x-cache-computed": str(outcome.computed),
                "x-replica": REPLICA,
            }
        )
        if outcome.lookup_ms is not None:
            ctx.response_headers["x-cache-lookup-ms"] = f"{outcome.lookup_ms:.2f}"
        if self._backend is not None:
            self._backend.metrics.request(label, outcome.computed, outcome.lookup_ms)
            self._poll_evictions(self._backend)

    # -- set-up and housekeeping -------------------------------------------------------------------

    def _backend_now(self) -> _Backend:
        """Redis client and layers, created in the running loop that will use them."""
        if self._backend is None:
            guard = self.guard or cache_guard(self.spec, self.stats)
            cache = ExactCache.from_spec(self.spec, guard, check=is_prediction)
            self._backend = _Backend(
                guard, cache, Coalescer.from_spec(self.spec, cache), CacheMetrics(self.stats)
            )
            if guard.client is not None:
                self._spawn(self._check_memory_policy(guard))
        return self._backend

    async def _model_id(self) -> str | None:
        """The model the replicas serve now; asked again every ``model_recheck_s`` (split topology:
        the model replicas may be replaced under a long-lived ingress)."""
        if self.model_id is None or time.monotonic() - self._described_at >= self.model_recheck_s:
            self._described_at = time.monotonic()
            try:
                info = await self.inner.describe()
                if self.model_id is not None and str(info["model_id"]) != self.model_id:
                    log.warning(
                        "cache: replicas now serve %s (keys named %s)", info["model_id"], self.model_id
                    )
                self.model_id = str(info["model_id"])
            except Exception as exc:  # not ready yet: keep the last id, or serve uncached without one
                if self.model_id is None:
                    log.warning("cache: no model id yet (%s); serving uncached", exc)
                    return None
        if self.norm is None:
            self.norm = self._read_norm()
        return self.model_id

    def _read_norm(self) -> TextNorm:
        if self.tokenizer_json is None:
            return "exact"
        try:
            return norm_for_tokenizer(self.tokenizer_json)
        except (OSError, ValueError) as exc:
            log.warning("cache: cannot read %s (%s); keys hash texts exactly", self.tokenizer_json, exc)
            return "exact"

    def _model_changed(self, old: str, new: str) -> None:
        if self.model_id == old:
            log.warning("cache: replicas now serve %s (keys named %s); re-keying", new, old)
            self.model_id = new

    async def _check_memory_policy(self, guard: RedisGuard) -> None:
        policy = await guard.memory_policy()
        if policy is not None and (policy[0] <= 0 or not policy[1].startswith("allkeys-")):
            log.warning("cache redis is unbounded or never evicts (maxmemory=%s, policy=%s)", *policy)

    def _poll_evictions(self, backend: _Backend) -> None:
        now = time.monotonic()
        if now - self._evictions_read < EVICTION_POLL_S or not backend.guard.available:
            return
        self._evictions_read = now

        async def read() -> None:
            async def info(client: Any) -> int:
                return int((await client.info("stats")).get("evicted_keys", 0))

            evicted = await backend.guard.call(info, None, "info stats")
            if evicted is not None:
                backend.metrics.redis_evictions(evicted)

        self._spawn(read())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Finish pending writes and close the Redis pool (app shutdown)."""
        backend, self._backend = self._backend, None
        if backend is None:
            return
        await backend.cache.drain()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        backend.metrics.publish()
        if self._owns_guard:
            await backend.guard.close()
