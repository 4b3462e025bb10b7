"""NluClient: how the API reaches the model replicas (a DeploymentHandle in Serve, a fake in tests)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Protocol

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from xz_serve.access.deadline import remaining_s
from xz_serve.errors import DeadlineExceededError, ModelFailureError, NotReadyError, OverloadedError, XzError
from xz_serve.telemetry.propagation import client_span
from xz_serve.types import BatchStats, CallMeta, PredictResult


class NluClient(Protocol):
    """Predictions for texts, and what model answers them."""

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult: ...

    async def describe(self) -> dict[str, Any]: ...


def merge(parts: list[PredictResult]) -> PredictResult:
    """Join chunk results in order; stats report the slowest chunk and the largest batch."""
    return PredictResult(
        predictions=[p for part in parts for p in part.predictions],
        stats=BatchStats(
            queue_ms=max(p.stats.queue_ms for p in parts),
            inference_ms=max(p.stats.inference_ms for p in parts),
            batch_texts=max(p.stats.batch_texts for p in parts),
            batch_calls=max(p.stats.batch_calls for p in parts),
        ),
        model_id=parts[0].model_id,
    )


class ServeNluClient:
    """Calls ``NluReplica.predict`` through a handle, in chunks no larger than one batch."""

    def __init__(self, handle: DeploymentHandle, max_batch_size: int, timeout_s: float) -> None:
        self.handle = handle
        self.chunk = max_batch_size
        self.timeout_s = timeout_s

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        # A client span around the actor hop; its carrier travels with the calls to the replica.
        parent = meta.carrier if meta else None
        with client_span("xz.ingress.predict", parent, **{"xz.texts": len(texts)}) as carrier:
            return await self._predict(texts, replace(meta or CallMeta(), carrier=carrier))

    async def _predict(self, texts: list[str], meta: CallMeta) -> PredictResult:
        deadline = meta.deadline if meta is not None else None
        timeout_s = remaining_s(deadline) or self.timeout_s  # raises once the deadline passed
        chunks = [texts[i : i + self.chunk] for i in range(0, len(texts), self.chunk)]
        calls = [self.handle.predict.remote(chunk, meta) for chunk in chunks]
        try:
            async with asyncio.timeout(timeout_s):
                parts = await asyncio.gather(*calls)
        except (TimeoutError, asyncio.CancelledError) as exc:
            # Past the deadline, or the client went away: free the calls' replica slots too.
            for call in calls:
                call.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if deadline is not None:
                raise DeadlineExceededError("the models did not answer before the deadline") from None
            raise OverloadedError("the models did not answer in time", retry_after_s=1) from None
        except BaseException as exc:
            raise translate(exc) from exc
        return merge(list(parts))

    async def describe(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(2.0):
                info: dict[str, Any] = await self.handle.describe.remote()
                return info
        except TimeoutError:
            raise NotReadyError("no model replica answered", retry_after_s=2) from None
        except BaseException as exc:
            raise translate(exc) from exc


def translate(exc: BaseException) -> BaseException:
    """Ray and Serve failures as XzErrors; anything else passes through unchanged."""
    if isinstance(exc, XzError):
        return exc
    if isinstance(exc, BackPressureError):
        return OverloadedError("the model queue is full", retry_after_s=1)
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError | ActorDiedError):
        return NotReadyError("no model replica is available", retry_after_s=2)
    if isinstance(exc, ActorUnavailableError):
        return NotReadyError("a model replica is unavailable", retry_after_s=1)
    if isinstance(exc, RayTaskError):
        cause = exc.cause if hasattr(exc, "cause") else None
        if isinstance(cause, XzError):
            return cause
        return ModelFailureError("the model replica failed")
    return exc
