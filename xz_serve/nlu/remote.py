"""ServeNluClient: the NluClient of the split topology, over a Serve handle to the NLU replicas."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from xz_serve.kernel.errors import ModelFailureError, NotReadyError, OverloadedError, XzError
from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.nlu.client import predict_chunked
from xz_serve.telemetry.propagation import client_span


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
        try:
            return await predict_chunked(
                texts, meta, self.chunk, lambda piece: self.handle.predict.remote(piece, meta),
                timeout_s=self.timeout_s,
            )  # fmt: skip
        except XzError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

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
