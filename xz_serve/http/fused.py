"""FusedServer: HTTP ingress and NLU batching in one replica, for the lowest per-request cost.

The split topology (Ingress -> NluReplica) lets HTTP and model replicas scale apart, at the price of
one actor hop per request. Fused, each replica parses HTTP, batches and runs the model in-process;
HAProxy balances across replicas. Same API, same batcher, same settings.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.types import ASGIApp

from xz_serve.http.app import create_app
from xz_serve.nlu.local import LocalNluClient
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import XzSettings
from xz_serve.telemetry import configure_telemetry


@serve.ingress()
class FusedServer:
    """One Serve replica = FastAPI app + @serve.batch + ONNX model."""

    def __init__(self, settings: XzSettings) -> None:
        configure_telemetry(settings.telemetry, component="fused")  # each replica is its own process
        self.replica = NluReplica(settings.model, settings.batch, settings.api.top_k)
        # Serve's HTTP server answers x-request-id (the id it put on the request): the app adds none.
        client = LocalNluClient(self.replica, settings.batch.max_batch_size)
        self._app = create_app(client, settings, echo_request_id=False)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch knobs from ``user_config``, applied without a restart."""
        self.replica.reconfigure(user_config)

    async def check_health(self) -> None:
        """Unhealthy when the model no longer reproduces its reference output."""
        await self.replica.check_health()
