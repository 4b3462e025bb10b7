"""Meta routes: ``/v1/models``, and the ``/healthz`` (alive) and ``/readyz`` (a model is warm) probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from xz_serve.http import schemas
from xz_serve.http.errors import ERRORS
from xz_serve.kernel.errors import XzError
from xz_serve.nlu.client import NluClient


def meta_router(client: NluClient) -> APIRouter:
    """Routes that describe the served model and the replica's health."""
    router = APIRouter(tags=["meta"], responses=ERRORS)

    @router.get("/v1/models", response_model=schemas.ModelList)
    async def models() -> dict[str, Any]:
        """The served model, its revision, tasks, intent labels and out-of-scope cut."""
        info = await client.describe()
        card = {
            "id": info["model_id"],
            "object": "model",
            "created": int(info.get("created", 0)),
            "owned_by": "xz_serve",
            "tasks": ["intent", "sentiment", "embeddings"],
            "intents": info["intents"],
            "oos_threshold": info["oos_threshold"],
        }
        return {"object": "list", "data": [card]}

    @router.get("/healthz", response_model=schemas.HealthResponse)
    async def healthz() -> dict[str, str]:
        """Liveness: the ingress process answers."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=schemas.HealthResponse)
    async def readyz() -> Response:
        """Readiness: a model replica has loaded and warmed its model."""
        try:
            info = await client.describe()
        except XzError as exc:
            body = {"status": "not_ready", "detail": exc.message}
            return JSONResponse(body, 503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ready", "detail": info["model_id"]})

    return router
