"""create_api: the FastAPI app; each route validates, calls the NLU client once and shapes JSON.

create_app puts it behind the admission gate: that pair is what a replica serves.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import Scope

from xz_serve import __version__
from xz_serve.access.admission import AdmissionMiddleware, admission_gate
from xz_serve.access.auth import install_access
from xz_serve.access.deadline import DeadlineMiddleware
from xz_serve.api import schemas
from xz_serve.api.cache_control import apply_cache_control
from xz_serve.api.cached_client import predictor
from xz_serve.api.chat import chat_router
from xz_serve.api.client import NluClient
from xz_serve.api.context import Ctx, RequestContext, context_of
from xz_serve.api.errors import BodyLimitMiddleware, install_error_handlers
from xz_serve.api.validation import request_texts
from xz_serve.dialog.service import build_dialog
from xz_serve.errors import InvalidInputError, XzError
from xz_serve.settings import XzSettings
from xz_serve.telemetry.middleware import TelemetryMiddleware
from xz_serve.types import PredictResult, TextPrediction

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorResponse, "description": text}
    for status, text in [
        (400, "Malformed request"),
        (413, "Too many texts, a text too long, or a body too large"),
        (424, "The model failed on this input"),
        (503, "Overloaded or not ready; see Retry-After"),
        (504, "The deadline (default or `x-request-timeout-ms`) passed before an answer"),
    ]
}


def _headers(result: PredictResult, started: float, ctx: RequestContext) -> dict[str, str]:
    return {
        **ctx.response_headers,
        "x-request-id": ctx.request_id,
        "x-model": result.model_id,
        "x-queue-time-ms": f"{result.stats.queue_ms:.2f}",
        "x-inference-time-ms": f"{result.stats.inference_ms:.2f}",
        "x-batch-size": str(result.stats.batch_texts),
        "x-total-time-ms": f"{(time.perf_counter() - started) * 1000:.2f}",
    }


def _intent(pred: TextPrediction, top_k: int, out_of_scope: bool) -> dict[str, Any]:
    label, confidence = pred.intents[0]
    return {
        "label": "oos" if out_of_scope else label,
        "confidence": round(confidence, 6),
        "top_k": [{"label": lab, "confidence": round(p, 6)} for lab, p in pred.intents[:top_k]],
    }


def _sentiment(pred: TextPrediction) -> dict[str, Any]:
    scores = {k: round(v, 6) for k, v in pred.sentiment.items()}
    return {"label": max(scores, key=scores.__getitem__), "scores": scores}


def _bind_trace(scope: Scope, carrier: dict[str, str]) -> None:
    """The request's server span becomes the parent of everything downstream (cache, replicas)."""
    context_of(Request(scope)).carrier = carrier


def create_api(client: NluClient, settings: XzSettings) -> FastAPI:
    """Build the HTTP app around ``client``; Serve wraps it, tests drive it directly.

    Stages run in one direction: middlewares (outermost first) fill the request's
    ``RequestContext``; routes validate, call the (cached) NLU client with it and shape JSON.
    """
    api = settings.api
    app = FastAPI(
        title="xz_serve",
        version=__version__,
        description="Intent, sentiment and embeddings for XiaoZhua, served on Ray Serve.",
        responses=ERRORS,
        # FastAPI's own OpenTelemetry would open a second server span per request beside
        # TelemetryMiddleware's (which names it by route template and feeds Ray's metrics): off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes)
    app.router.dependencies.append(Depends(apply_cache_control))  # before the routes: they inherit it
    nlu = predictor(client, settings)  # exact cache + coalescing unless settings.cache.enabled is off
    app.router.on_shutdown.append(nlu.close)
    install_access(app, settings)  # API keys, scopes, per-key limits on /v1/*; admin key routes
    app.add_middleware(DeadlineMiddleware, api=api)  # the deadline counts from arrival

    if settings.telemetry.enabled:  # added last = outermost: traces and measures every response
        app.add_middleware(TelemetryMiddleware, on_context=_bind_trace)

    def out_of_scope(pred: TextPrediction) -> bool:
        return pred.out_of_scope or pred.intents[0][1] < api.oos_threshold

    async def run(request: schemas.TextsRequest, ctx: RequestContext) -> tuple[PredictResult, int, float]:
        started = time.perf_counter()
        texts = request_texts(request.text, request.texts, api)
        await ctx.charge_texts(len(texts))  # the key's texts-per-minute limit (429)
        return await nlu.predict_for(texts, ctx), request.top_k or api.top_k, started

    @app.post("/v1/analyze", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def analyze(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Intent, sentiment and out-of-scope flag per text, from one encoder pass."""
        result, top_k, started = await run(request, ctx)
        results = [
            {
                "index": i,
                "intent": _intent(p, top_k, oos := out_of_scope(p)),
                "sentiment": _sentiment(p),
                "out_of_scope": oos,
            }
            for i, p in enumerate(result.predictions)
        ]
        body = {"model": result.model_id, "results": results}
        return JSONResponse(body, headers=_headers(result, started, ctx))

    @app.post("/v1/intent", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def intent(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Intent and out-of-scope flag per text."""
        result, top_k, started = await run(request, ctx)
        results = [
            {"index": i, "intent": _intent(p, top_k, oos := out_of_scope(p)), "out_of_scope": oos}
            for i, p in enumerate(result.predictions)
        ]
        return JSONResponse(
            {"model": result.model_id, "results": results}, headers=_headers(result, started, ctx)
        )

    @app.post("/v1/sentiment", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def sentiment(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Sentiment label and scores per text."""
        result, _, started = await run(request, ctx)
        results = [{"index": i, "sentiment": _sentiment(p)} for i, p in enumerate(result.predictions)]
        return JSONResponse(
            {"model": result.model_id, "results": results}, headers=_headers(result, started, ctx)
        )

    @app.post("/v1/embeddings", response_model=schemas.EmbeddingResponse, tags=["embeddings"])
    async def embeddings(request: schemas.EmbeddingRequest, ctx: Ctx) -> Response:
        """OpenAI-compatible embeddings (L2-normalised, 384 dimensions)."""
        started = time.perf_counter()
        if isinstance(request.input, str):
            texts = request_texts(request.input, None, api)
        else:
            texts = request_texts(None, request.input, api)
        await ctx.charge_texts(len(texts))
        result = await nlu.predict_for(texts, ctx)
        dim = int(result.predictions[0].embedding.shape[0])
        if request.dimensions is not None and request.dimensions != dim:
            raise InvalidInputError(f"dimensions must be {dim} for this model", code="unsupported_dimensions")
        data = []
        for i, pred in enumerate(result.predictions):
            vector = np.asarray(pred.embedding, dtype=np.float32)
            encoded: list[float] | str = (
                base64.b64encode(vector.tobytes()).decode()
                if request.encoding_format == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(p.tokens for p in result.predictions)
        body = {
            "object": "list",
            "data": data,
            "model": result.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(body, headers=_headers(result, started, ctx))

    @app.get("/v1/models", response_model=schemas.ModelList, tags=["meta"])
    async def models() -> dict[str, Any]:
        """The served model, its revision and tasks."""
        info = await client.describe()
        card = {
            "id": info["model_id"],
            "object": "model",
            "created": int(info.get("created", 0)),
            "owned_by": "xz_serve",
            "tasks": ["intent", "sentiment", "embeddings"],
        }
        return {"object": "list", "data": [card]}

    @app.get("/healthz", response_model=schemas.HealthResponse, tags=["meta"])
    async def healthz() -> dict[str, str]:
        """Liveness: the ingress process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.HealthResponse, tags=["meta"])
    async def readyz() -> Response:
        """Readiness: a model replica has loaded and warmed its model."""
        try:
            info = await client.describe()
        except XzError as exc:
            body = {"status": "not_ready", "detail": exc.message}
            return JSONResponse(body, 503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ready", "detail": info["model_id"]})

    if settings.dialog.enabled:  # /v1/chat, /v1/sessions: same cached NLU client, one encoder pass
        dialog = build_dialog(nlu.predict_for, settings)
        app.include_router(chat_router(dialog))
        app.router.on_shutdown.append(dialog.close)

    return app


def create_app(client: NluClient, settings: XzSettings) -> AdmissionMiddleware:
    """What a replica serves: ``create_api`` behind the admission gate (outermost: cheap refusals)."""
    api = create_api(client, settings)
    paths = [path for route in api.routes if isinstance(path := getattr(route, "path", None), str)]
    return admission_gate(api, settings, paths)
