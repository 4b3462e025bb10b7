"""Ingress: the Serve deployment that owns the HTTP app and the handle to the model replicas."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from xz_serve.http.app import create_app
from xz_serve.nlu.remote import ServeNluClient
from xz_serve.settings import XzSettings
from xz_serve.telemetry import configure_telemetry

log = logging.getLogger(__name__)


@serve.ingress()
class Ingress:
    """Validates, calls the NLU replicas once per request (in batch-sized chunks), shapes JSON."""

    def __init__(self, nlu: DeploymentHandle, settings: XzSettings) -> None:
        configure_telemetry(settings.telemetry, component="ingress")  # each replica is its own process
        client = ServeNluClient(nlu, settings.batch.max_batch_size, settings.api.request_timeout_s)
        # Serve's HTTP server answers x-request-id (the id it put on the request): the app adds none.
        self._app = create_app(client, settings, echo_request_id=False)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app
