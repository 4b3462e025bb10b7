"""ClassifierService: define, train, store and apply run-time classifiers for one replica.

The encoder is reached through ``embed`` (the routes' cached NLU client, handed in by the HTTP
layer, so the examples ride the same ``@serve.batch`` passes and exact cache as every route). A
definition is checked first (``examples.py``), the tenant's store state next (name, count, version:
a 4xx or 503 before any encoder work), the texts charged to the caller's limits, then embedded in
windows of ``embed_window`` texts, fitted in a worker thread (``fit.py``; at most
``max_concurrent_trainings`` at once), and written in one step (``store.py``). A definition larger
than ``async_examples`` is answered at once with a job whose status any replica can read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from xz_serve.classifiers.errors import (
    ClassifierExistsError,
    ClassifierLimitError,
    ClassifierNotFoundError,
    ModelMismatchError,
    VersionMismatchError,
)
from xz_serve.classifiers.examples import Definition, check_definition
from xz_serve.classifiers.fit import Trained, train
from xz_serve.classifiers.metrics import ClassifierMetrics
from xz_serve.classifiers.registry import ClassifierRegistry
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.classifiers.store import ClassifierStore, Loaded, Record, open_store
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import ConflictError, XzError
from xz_serve.kernel.types import PredictResult

log = logging.getLogger(__name__)

Embed = Callable[[list[str], RequestContext], Awaitable[PredictResult]]
Operation = Literal["create", "update"]


class TextMeter(Protocol):
    """Charges a request's texts to its caller's limits (the access gate)."""

    async def charge_texts(self, ctx: RequestContext, count: int) -> None: ...


@dataclass(frozen=True)
class Job:
    """A training answered 202: where to read its outcome."""

    id: str
    operation: Operation
    examples: int


@dataclass(frozen=True)
class Classified:
    """One text through a head."""

    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    out_of_scope: bool
    oos_score: float


class ClassifierService:
    """The classifiers of every tenant this replica serves."""

    def __init__(
        self,
        spec: ClassifierSpec,
        store: ClassifierStore,
        embed: Embed,
        *,
        meter: TextMeter | None = None,
        registry: ClassifierRegistry | None = None,
        metrics: ClassifierMetrics | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.embed = embed
        self.meter = meter
        self.registry = registry or ClassifierRegistry(store, spec.refresh_s, spec.registry_max_bytes)
        self.metrics = metrics or ClassifierMetrics()
        self._training = asyncio.Semaphore(spec.max_concurrent_trainings)
        self._jobs: set[asyncio.Task[None]] = set()

    # -- reading --------------------------------------------------------------------------------------

    async def record(self, tenant: str, ref: str) -> Record:
        record = await self.store.record(tenant, ref)
        if record is None:
            raise ClassifierNotFoundError(f"no classifier {ref!r}")
        return record

    async def records(self, tenant: str) -> list[Record]:
        return await self.store.records(tenant)

    async def job(self, tenant: str, job_id: str) -> dict[str, Any]:
        status = await self.store.job(tenant, job_id)
        if status is None:
            raise ClassifierNotFoundError(f"no training job {job_id!r} (it may have expired)")
        return status

    async def head(self, tenant: str, ref: str) -> Loaded:
        """The classifier a classify request names, as this replica holds it (``registry``)."""
        loaded = await self.registry.get(tenant, ref)
        self.metrics.held(self.registry.heads, self.registry.bytes)
        return loaded

    def classify(self, loaded: Loaded, result: PredictResult, top_k: int) -> list[Classified]:
        """The head applied to one request's encoder results.

        Raises:
            ModelMismatchError: the head was trained on another encoder (409).
        """
        record, head = loaded.record, loaded.head
        if result.model_id and record.model_id and result.model_id != record.model_id:
            raise ModelMismatchError(
                f"classifier {record.name!r} was trained on {record.model_id} and the encoder is now "
                f"{result.model_id}; PUT its examples again to retrain it"
            )
        started = time.perf_counter()
        scores = head.score(np.stack([p.embedding for p in result.predictions]))
        order = np.argsort(-scores.probs, axis=1)[:, :top_k]
        out = [
            Classified(
                label=head.labels[int(best[0])],
                confidence=float(probs[best[0]]),
                top_k=[(head.labels[int(i)], float(probs[i])) for i in best],
                out_of_scope=bool(flag),
                oos_score=float(oos),
            )
            for probs, best, flag, oos in zip(scores.probs, order, scores.flagged, scores.oos, strict=True)
        ]
        self.metrics.classify_ms.observe((time.perf_counter() - started) * 1000)
        return out

    async def route(self, tenant: str, name: str, embedding: np.ndarray, model_id: str) -> Classified | None:
        """One embedding (a chat turn's) through the named classifier, for routing: None when the
        classifier does not exist, cannot be read now, was trained on another encoder, or flags the
        text out of scope; a turn then falls through to the next rule, never to an error."""
        try:
            loaded = await self.head(tenant, name)
        except XzError as exc:
            log.info("policy classifier %r not applied: %s", name, exc.message)
            return None
        if model_id and loaded.record.model_id and model_id != loaded.record.model_id:
            log.warning("policy classifier %r was trained on another encoder; not applied", name)
            return None
        scores = loaded.head.score(np.asarray(embedding, dtype=np.float32)[None, :])
        best = int(scores.probs[0].argmax())
        if scores.flagged[0]:
            return None
        label, confidence = loaded.head.labels[best], float(scores.probs[0, best])
        return Classified(label, confidence, [(label, confidence)], False, float(scores.oos[0]))

    # -- writing --------------------------------------------------------------------------------------

    async def create(
        self, ctx: RequestContext, name: str, examples: list[tuple[str, str]], description: str | None
    ) -> Record | Job:
        """A new classifier: its record (201), or a job when it trains in the background (202).

        Raises:
            InvalidInputError, PayloadTooLargeError: the definition (``check_definition``).
            ClassifierExistsError, ClassifierLimitError: the name is taken, the tenant is full (409).
            ClassifierStoreError: the store is unreachable (503); RateLimitedError (429).
        """
        definition = check_definition(name, examples, description, self.spec)
        if await self.store.record(ctx.tenant, name) is not None:
            raise ClassifierExistsError(f"a classifier named {name!r} exists; update it with PUT")
        if await self.store.count(ctx.tenant) >= self.spec.max_per_tenant:
            raise ClassifierLimitError(
                f"this tenant holds {self.spec.max_per_tenant} classifiers, the most it may; delete one"
            )
        return await self._start(ctx, definition, "create", "clf_" + secrets.token_hex(8), None)

    async def update(
        self,
        ctx: RequestContext,
        ref: str,
        name: str,
        examples: list[tuple[str, str]],
        description: str | None,
        expected: int | None,
    ) -> Record | Job:
        """A new version of a classifier: its record (200), or a job (202).

        Raises:
            As ``create``, and ClassifierNotFoundError (404), VersionMismatchError (412).
        """
        definition = check_definition(name, examples, description, self.spec)
        current = await self.record(ctx.tenant, ref)
        if expected is not None and current.version != expected:
            raise VersionMismatchError(
                f"If-Match names version {expected}; the current one is {current.version}; "
                "nothing was written"
            )
        owner = await self.store.record(ctx.tenant, name)
        if owner is not None and owner.id != current.id:
            raise ClassifierExistsError(f"another classifier is named {name!r}")
        return await self._start(ctx, definition, "update", current.id, expected)

    async def delete(self, ctx: RequestContext, ref: str) -> Record:
        record = await self.record(ctx.tenant, ref)
        if not await self.store.delete(ctx.tenant, record.id):
            raise ClassifierNotFoundError(f"no classifier {ref!r}")
        self.registry.drop(ctx.tenant, record.id)
        return record

    async def _start(
        self,
        ctx: RequestContext,
        definition: Definition,
        op: Operation,
        classifier_id: str,
        expected: int | None,
    ) -> Record | Job:
        if self.meter is not None:
            await self.meter.charge_texts(ctx, len(definition.texts))  # the examples, like any texts
        if len(definition.texts) <= self.spec.async_examples:
            return await self._build(ctx, definition, op, classifier_id, expected)
        job = Job("job_" + secrets.token_hex(8), op, len(definition.texts))
        background = dataclasses.replace(
            ctx, deadline=time.time() + self.spec.training_timeout_s, response_headers={}
        )
        await self._put_job(ctx.tenant, job, "training", classifier_id=classifier_id)
        task = asyncio.create_task(self._run_job(background, job, definition, classifier_id, expected))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return job

    async def _run_job(
        self, ctx: RequestContext, job: Job, definition: Definition, classifier_id: str, expected: int | None
    ) -> None:
        try:
            record = await self._build(ctx, definition, job.operation, classifier_id, expected)
        except XzError as exc:
            await self._put_job(ctx.tenant, job, "failed", error={"code": exc.code, "message": exc.message})
            return
        except Exception as exc:  # unforeseen: the job says so rather than staying "training"
            log.exception("classifier training failed", exc_info=exc)
            error = {"code": "internal_error", "message": "training failed unexpectedly"}
            await self._put_job(ctx.tenant, job, "failed", error=error)
            return
        await self._put_job(ctx.tenant, job, "ready", classifier=dataclasses.asdict(record))

    async def _put_job(self, tenant: str, job: Job, status: str, **extra: Any) -> None:
        body = {"id": job.id, "operation": job.operation, "examples": job.examples, "status": status,
                "updated_at": time.time(), **extra}  # fmt: skip
        try:
            await self.store.put_job(tenant, job.id, body, self.spec.job_ttl_s)
        except XzError:
            if status == "training":
                raise  # the caller gets the 503 before any work starts
            log.warning("could not record training job %s as %s", job.id, status)

    async def _build(
        self,
        ctx: RequestContext,
        definition: Definition,
        op: Operation,
        classifier_id: str,
        expected: int | None,
    ) -> Record:
        outcome = "failed"
        try:
            embeddings, model_id = await self._embed(definition.texts, ctx)
            async with self._training:
                trained = await asyncio.to_thread(self._fit, embeddings, definition)
            self.metrics.training_s.observe(trained.seconds)
            now = time.time()
            record = Record(
                id=classifier_id, name=definition.name, version=1, labels=definition.counts(),
                validation=trained.validation.as_dict(), model_id=model_id,
                description=definition.description, created_at=now, updated_at=now,
                training_s=round(trained.seconds, 3), head_bytes=len(trained.head.to_bytes()),
            )  # fmt: skip
            if op == "create":
                record = await self.store.create(ctx.tenant, record, trained.head, self.spec.max_per_tenant)
            else:
                record = await self.store.update(ctx.tenant, record, trained.head, expected)
            self.registry.put(ctx.tenant, Loaded(record, trained.head))
            self.metrics.held(self.registry.heads, self.registry.bytes)
            outcome = "ok"
            return record
        finally:
            self.metrics.trainings.inc(tags={"operation": op, "outcome": outcome})

    def _fit(self, embeddings: np.ndarray, definition: Definition) -> Trained:
        """The fit, in a worker thread, on at most ``training_threads`` BLAS threads."""
        with threadpool_limits(limits=self.spec.training_threads, user_api="blas"):
            return train(embeddings, definition.y, definition.labels, self.spec)

    async def _embed(self, texts: list[str], ctx: RequestContext) -> tuple[np.ndarray, str]:
        """Embeddings of ``texts`` in order (each distinct text once), and the encoder's id.

        The distinct texts go to the encoder shortest first: a batch pads each pass to its longest
        text and splits where padding would waste too much, so texts of like length make fewer,
        fuller passes than the order the caller wrote them in.
        """
        unique = sorted(dict.fromkeys(texts), key=len)
        rows: dict[str, np.ndarray] = {}
        model_id = ""
        window = self.spec.embed_window
        for start in range(0, len(unique), window):
            piece = unique[start : start + window]
            result = await self.embed(piece, ctx)
            if model_id and result.model_id and result.model_id != model_id:
                raise ConflictError(
                    "the encoder changed while the examples were embedded; send the request again",
                    code="model_changed", retry_after_s=1,
                )  # fmt: skip
            model_id = model_id or result.model_id
            rows.update(zip(piece, (p.embedding for p in result.predictions), strict=True))
        return np.stack([rows[t] for t in texts]).astype(np.float32), model_id

    async def close(self) -> None:
        """Cancel background trainings (their jobs stay ``training`` until they expire)."""
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)


def build_classifiers(
    spec: ClassifierSpec, store_client: Any, embed: Embed, *, meter: TextMeter | None = None
) -> ClassifierService:
    """The service on the durable store's client (``kernel.redis``), or process memory without one."""
    store = open_store(store_client, spec.store_timeout_ms / 1000)
    if store_client is None:
        log.warning("classifiers live in process memory (no store.redis_url): per replica, lost on restart")
    return ClassifierService(spec, store, embed, meter=meter)
