"""FusedServer: HTTP ingress and NLU batching in one replica, for the lowest per-request cost.

The split topology (Ingress -> NluReplica) lets HTTP and model replicas scale apart, at the price of
one actor hop per request. Fused, each replica parses HTTP, batches and runs the model in-process;
HAProxy balances across replicas. Same API, same batcher, same settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from starlette.types import ASGIApp

from xz_serve.access.deadline import remaining_s
from xz_serve.api.client import merge
from xz_serve.api.routes import create_app
from xz_serve.batching.replica import NluReplica
from xz_serve.errors import DeadlineExceededError
from xz_serve.settings import XzSettings
from xz_serve.telemetry import configure_telemetry
from xz_serve.types import CallMeta, PredictResult


class LocalNluClient:
    """NluClient over an in-process NluReplica: chunks like the remote client, no hop."""

    def __init__(self, replica: NluReplica, max_batch_size: int) -> None:
        self.replica = replica
        self.chunk = max_batch_size

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        chunks = [texts[i : i + self.chunk] for i in range(0, len(texts), self.chunk)]
        try:
            # No answer after the deadline: the replica drops the calls still queued at it.
            async with asyncio.timeout(remaining_s(meta.deadline if meta is not None else None)):
                if len(chunks) == 1:
                    return await self.replica.predict(chunks[0], meta)
                parts = await asyncio.gather(*(self.replica.predict(c, meta) for c in chunks))
        except TimeoutError:
            raise DeadlineExceededError("the model did not answer before the deadline") from None
        return merge(list(parts))

    async def describe(self) -> dict[str, Any]:
        return self.replica.describe()


@serve.ingress()
class FusedServer:
    """One Serve replica = FastAPI app + @serve.batch + ONNX model."""

    def __init__(self, settings: XzSettings) -> None:
        configure_telemetry(settings.telemetry, component="fused")  # each replica is its own process
        self.replica = NluReplica(settings.model, settings.batch, settings.api.top_k)
        self._app = create_app(LocalNluClient(self.replica, settings.batch.max_batch_size), settings)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch knobs from ``user_config``, applied without a restart."""
        self.replica.reconfigure(user_config)

    async def check_health(self) -> None:
        """Unhealthy when the model no longer reproduces its reference output."""
        await self.replica.check_health()
