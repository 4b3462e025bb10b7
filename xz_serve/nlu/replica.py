"""NluReplica: one encoder per replica; ``@serve.batch`` turns concurrent calls into one pass."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from ray import serve

from xz_serve.kernel.errors import DeadlineExceededError, ModelFailureError, OverloadedError
from xz_serve.kernel.types import MAX_TOP_K, BatchStats, CallMeta, PredictResult, TextPrediction
from xz_serve.models.base import NluModel
from xz_serve.models.postprocess import label_outputs, oos_cut
from xz_serve.models.spec import ModelSpec
from xz_serve.nlu.passes import PassQueue
from xz_serve.nlu.spec import BatchSpec
from xz_serve.telemetry import configure_telemetry
from xz_serve.telemetry.batch import BatchTrace, CallTrace

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec) -> NluModel:
    """The model ``spec`` names, building its artifacts first when they are missing.

    Serving imports the build only here, lazily: a replica that finds its artifacts never loads
    torch, and ``models/`` stays free of the training code.

    Raises:
        FileNotFoundError: the artifacts are missing and ``build_if_missing`` is off.
    """
    from xz_serve.artifacts.build import ensure_artifacts
    from xz_serve.models.loading import load_onnx_model

    if spec.build_if_missing:
        ensure_artifacts(spec)
    return load_onnx_model(spec)


HEALTH_TEXT = "what is the balance of my checking account"
Call = tuple[list[str], float, CallMeta | None]  # (texts, enqueue time, caller's request facts)


def count_texts(calls: list[Call]) -> int:
    """Batch size in texts, not calls: a 20-text request weighs 20 in the batch."""
    return sum(len(call[0]) for call in calls)


class NluReplica:
    """Runs intent, sentiment and embedding for a batch of calls with one forward pass.

    Identical texts across the batch are computed once. If the pass fails, each call is retried
    alone, so only the call that breaks the model gets an error.

    Each prediction keeps at least ``MAX_TOP_K`` intent alternatives, whatever ``top_k`` (the
    deployment's default) says: a request may ask for any ``top_k`` up to that bound, and the
    route keeps as many as it asked for. A cached prediction serves every ``top_k`` alike.
    """

    def __init__(
        self,
        model: ModelSpec,
        batch: BatchSpec,
        top_k: int = 3,
        model_factory: Callable[[], NluModel] | None = None,
    ) -> None:
        configure_telemetry(component="nlu")  # no-op when the process already has it (fused)
        self.model: NluModel = model_factory() if model_factory is not None else load_model(model)
        self.top_k = max(top_k, MAX_TOP_K)
        # One inference thread: ONNX Runtime already uses the replica's cores for one batch, and
        # running the pass off the event loop lets the next batch form while this one computes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xz-infer")
        self._reference = self.model.predict([HEALTH_TEXT]).embeddings[0]
        self._wait_s = batch.batch_wait_timeout_s
        self._busy_until = 0.0  # when the pass now running is expected to end
        self._text_s = 0.002  # moving average of a pass's seconds per text, for that estimate
        self._pending_texts = 0  # texts admitted and not yet answered (or cancelled)
        self._held: set[int] = set()  # ids of the calls in Serve's batch queue, not yet passed on
        self._max_pending_texts = batch.max_batch_size
        self._passes: PassQueue[Call, PredictResult | Exception] = PassQueue(
            self._run_live, lambda call: len(call[0]), batch.max_batch_size
        )
        self.reconfigure(batch.model_dump())
        log.info("replica ready: %s", self.model.model_id)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batch knobs from ``user_config`` without restarting the replica."""
        spec = BatchSpec(**user_config)
        self._wait_s = spec.batch_wait_timeout_s
        self._max_pending_texts = math.ceil(spec.queue_batches * spec.max_batch_size)
        self._passes.max_texts = spec.max_batch_size
        self._batched.set_max_batch_size(spec.max_batch_size)
        self._batched.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        """Predictions for ``texts`` (at most ``max_batch_size`` of them), in order.

        Raises:
            ModelFailureError: the model failed on these texts.
            OverloadedError: more than ``queue_batches`` full batches of texts are pending (503).
            DeadlineExceededError: the caller's deadline passed before the pass (504).
        """
        # The call's request span; its carrier replaces the caller's so the batch can link to it.
        with CallTrace(meta.carrier if meta else None, len(texts)) as call:
            traced = replace(meta or CallMeta(), carrier=call.carrier)
            return call.answered(await self._predict(texts, traced))

    async def _predict(self, texts: list[str], meta: CallMeta) -> PredictResult:
        # Admission: refuse at once rather than queue behind an overload (a lone call always fits).
        if self._pending_texts and self._pending_texts + len(texts) > self._max_pending_texts:
            raise OverloadedError(
                f"the model queue is full ({self._pending_texts} texts pending)", retry_after_s=1
            )
        self._pending_texts += len(texts)
        try:  # `finally` frees the slot on an answer, an error and a cancelled (disconnected) call
            return await self._admitted(texts, meta)
        finally:
            self._pending_texts -= len(texts)

    async def _admitted(self, texts: list[str], meta: CallMeta | None) -> PredictResult:
        now = time.perf_counter()
        call = (texts, now, meta)
        if not self._passes.busy and not self._held:
            # The model is idle, so there is no batch to form: the call goes straight to the pass
            # queue, whose next pass takes it with every call arriving in the same moment. Serve's
            # batch queue would only add its own hops (about 0.4 ms of a lone call's event-loop
            # time, measured in process). Not while Serve still holds calls (a pass that ended
            # before its estimate), which this one would otherwise overtake.
            outcome = await self._passes.enqueue([call])[0]
        else:
            # Serve forms the next batch while the current pass runs and reads the wait when a
            # batch opens. So wait exactly as long as the model stays busy (capped): the calls
            # that arrive meanwhile gather into one batch, and the pass queue merges what waits.
            self._batched.set_batch_wait_timeout_s(min(max(self._busy_until - now, 0.0), self._wait_s))
            self._held.add(id(call))
            try:
                outcome = await (await self._batched(call))
            finally:
                self._held.discard(id(call))  # a caller that left while held
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def describe(self) -> dict[str, Any]:
        """Model id and label sets, for ``/v1/models`` and readiness."""
        return {
            "model_id": self.model.model_id,
            "intents": list(self.model.labels.intents),
            "sentiments": list(self.model.labels.sentiments),
            "oos_threshold": oos_cut(self.model.labels),
            "embedding_dim": int(self._reference.shape[0]),
        }

    async def check_health(self) -> None:
        """Fail when the model no longer reproduces its warm-up embedding (or cannot run)."""
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, self.model.predict, [HEALTH_TEXT])
        embedding = outputs.embeddings[0]
        if not np.all(np.isfinite(embedding)) or float(embedding @ self._reference) < 0.99:
            raise RuntimeError("model output drifted from its warm-up reference")

    # Size and wait come from BatchSpec in reconfigure(), which __init__ calls before any batch.
    @serve.batch(batch_size_fn=count_texts)
    async def _batched(self, calls: list[Call]) -> list[asyncio.Future[PredictResult | Exception]]:
        # Returns at once, so Serve cuts the next batch freely; the PassQueue merges what waits.
        self._held.difference_update(id(call) for call in calls)
        return self._passes.enqueue(calls)

    async def _run_live(self, calls: list[Call]) -> list[PredictResult | Exception]:
        # Calls whose deadline passed while queued get a 504 without taking model time.
        now = time.time()
        late = [bool(meta and meta.deadline is not None and meta.deadline <= now) for _, _, meta in calls]
        live = iter(await self._run([c for c, is_late in zip(calls, late, strict=True) if not is_late]))
        gone = "the deadline passed while queued; dropped before inference"
        return [DeadlineExceededError(gone) if is_late else next(live) for is_late in late]

    async def _run(self, calls: list[Call]) -> list[PredictResult | Exception]:
        if not calls:
            return []
        carriers = [meta.carrier if meta else None for _, _, meta in calls]
        with BatchTrace(carriers, count_texts(calls), self.model.model_id):
            return await self._pass(calls)

    async def _pass(self, calls: list[Call]) -> list[PredictResult | Exception]:
        started = time.perf_counter()
        unique = list(dict.fromkeys(t for texts, _, _ in calls for t in texts))
        try:
            by_text = await self._infer(unique)
        except Exception:
            log.exception("batch of %d calls failed; retrying each alone", len(calls))
            return [await self._alone(call, started) for call in calls]
        inference_ms = (time.perf_counter() - started) * 1000
        return [
            PredictResult(
                predictions=[by_text[t] for t in texts],
                stats=BatchStats((started - enqueued) * 1000, inference_ms, len(unique), len(calls)),
                model_id=self.model.model_id,
            )
            for texts, enqueued, _ in calls
        ]

    async def _alone(self, call: Call, started: float) -> PredictResult | Exception:
        texts, enqueued, _ = call
        try:
            by_text = await self._infer(list(dict.fromkeys(texts)))
        except Exception as exc:
            return ModelFailureError(f"the model failed on this input: {type(exc).__name__}")
        elapsed = (time.perf_counter() - started) * 1000
        return PredictResult(
            predictions=[by_text[t] for t in texts],
            stats=BatchStats((started - enqueued) * 1000, elapsed, len(texts), 1),
            model_id=self.model.model_id,
        )

    async def _infer(self, texts: list[str]) -> dict[str, TextPrediction]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Per text, so a large pass is not taken for a short one. A small pass costs more per text
        # than the average says, so the estimate errs short: a batch cut early merges in the
        # PassQueue, while one cut late would leave the model idle.
        self._busy_until = started + self._text_s * len(texts)
        try:
            predictions = await loop.run_in_executor(self._executor, self._labelled, texts)
        finally:
            self._busy_until = 0.0
            self._text_s = 0.8 * self._text_s + 0.2 * (time.perf_counter() - started) / max(1, len(texts))
        return dict(zip(texts, predictions, strict=True))

    def _labelled(self, texts: list[str]) -> list[TextPrediction]:
        # Labelling (the out-of-scope detector's distances, top-k) runs in the inference thread,
        # straight after the pass: off the event loop, which under load is the replica's other
        # bottleneck, with one thread hop per pass as before.
        outputs = self.model.predict(texts)
        return label_outputs(outputs, self.model.labels, outputs.token_counts, self.top_k)
