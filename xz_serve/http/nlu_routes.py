"""NLU routes: ``/v1/analyze``, ``/v1/intent``, ``/v1/sentiment`` and ``/v1/embeddings``.

Each validates, charges its texts to the caller's limits, calls the (cached) NLU client once and
shapes JSON; the batch stats go out as ``x-*`` headers (``x-request-id`` is the context stage's).
Each is served twice over: as a FastAPI route (the schema, and every request the fast path passes
on) and, for a valid request, straight from ``FastRoutes`` (``http/fast_routes.py``).
"""

from __future__ import annotations

import base64
import time
from typing import Any, NamedTuple

import numpy as np
from fastapi import APIRouter, Response

from xz_serve.access.gate import AccessGate
from xz_serve.access.spec import ApiSpec
from xz_serve.http import schemas
from xz_serve.http.context import Ctx
from xz_serve.http.errors import ERRORS
from xz_serve.http.fast_routes import FastRoute, fast_routes
from xz_serve.http.json_response import FastJSONResponse
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import InvalidInputError
from xz_serve.kernel.types import PredictResult
from xz_serve.nlu.cached import ContextPredictor
from xz_serve.nlu.shapes import intent_json, sentiment_json
from xz_serve.nlu.texts import request_texts


def _headers(result: PredictResult, started: float) -> dict[str, str]:
    return {
        "x-model": result.model_id,
        "x-queue-time-ms": f"{result.stats.queue_ms:.2f}",
        "x-inference-time-ms": f"{result.stats.inference_ms:.2f}",
        "x-batch-size": str(result.stats.batch_texts),
        "x-total-time-ms": f"{(time.perf_counter() - started) * 1000:.2f}",
    }


class NluRoutes(NamedTuple):
    router: APIRouter
    fast: dict[str, FastRoute]


def nlu_routes(nlu: ContextPredictor, api: ApiSpec, gate: AccessGate) -> NluRoutes:
    """The NLU routes over ``nlu``; ``gate`` charges texts (anonymous requests are not charged)."""
    router = APIRouter(responses=ERRORS)

    async def predict(texts: list[str], ctx: RequestContext) -> PredictResult:
        await gate.charge_texts(ctx, len(texts))  # the key's texts-per-minute limit (429)
        return await nlu.predict_for(texts, ctx)

    async def run(request: schemas.TextsRequest, ctx: RequestContext) -> tuple[PredictResult, int, float]:
        started = time.perf_counter()
        texts = request_texts(request.text, request.texts, api)
        return await predict(texts, ctx), request.top_k or api.top_k, started

    def answer(body: dict[str, Any], result: PredictResult, started: float) -> Response:
        return FastJSONResponse(body, headers=_headers(result, started))

    @router.post("/v1/analyze", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def analyze(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Intent, sentiment, out-of-scope flag and score per text, from one encoder pass."""
        result, top_k, started = await run(request, ctx)
        results = [
            {
                "index": i,
                "intent": intent_json(p, top_k, oos := p.out_of_scope_at(api.oos_threshold)),
                "sentiment": sentiment_json(p.sentiment),
                "out_of_scope": oos,
                "oos_score": round(p.oos_score, 6),
            }
            for i, p in enumerate(result.predictions)
        ]
        return answer({"model": result.model_id, "results": results}, result, started)

    @router.post("/v1/intent", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def intent(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Intent, out-of-scope flag and score per text."""
        result, top_k, started = await run(request, ctx)
        results = [
            {"index": i, "intent": intent_json(p, top_k, oos := p.out_of_scope_at(api.oos_threshold)),
             "out_of_scope": oos, "oos_score": round(p.oos_score, 6)}
            for i, p in enumerate(result.predictions)
        ]  # fmt: skip
        return answer({"model": result.model_id, "results": results}, result, started)

    @router.post("/v1/sentiment", response_model=schemas.AnalyzeResponse, tags=["nlu"])
    async def sentiment(request: schemas.TextsRequest, ctx: Ctx) -> Response:
        """Sentiment label and scores per text."""
        result, _, started = await run(request, ctx)
        results = [
            {"index": i, "sentiment": sentiment_json(p.sentiment)} for i, p in enumerate(result.predictions)
        ]
        return answer({"model": result.model_id, "results": results}, result, started)

    @router.post("/v1/embeddings", response_model=schemas.EmbeddingResponse, tags=["embeddings"])
    async def embeddings(request: schemas.EmbeddingRequest, ctx: Ctx) -> Response:
        """OpenAI-compatible embeddings (L2-normalised, 384 dimensions)."""
        started = time.perf_counter()
        if isinstance(request.input, str):
            texts = request_texts(request.input, None, api)
        else:
            texts = request_texts(None, request.input, api)
        result = await predict(texts, ctx)
        dim = int(result.predictions[0].embedding.shape[0])
        if request.dimensions is not None and request.dimensions != dim:
            raise InvalidInputError(f"dimensions must be {dim} for this model", code="unsupported_dimensions")
        data = []
        for i, pred in enumerate(result.predictions):
            vector = np.ascontiguousarray(pred.embedding, dtype=np.float32)
            encoded: np.ndarray | str = (
                base64.b64encode(vector.tobytes()).decode() if request.encoding_format == "base64" else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(p.tokens for p in result.predictions)
        body = {
            "object": "list",
            "data": data,
            "model": result.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return answer(body, result, started)

    fast = fast_routes(router.routes, ["/v1/analyze", "/v1/intent", "/v1/sentiment", "/v1/embeddings"])
    return NluRoutes(router, fast)
