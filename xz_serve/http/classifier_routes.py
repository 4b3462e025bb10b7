"""Run-time classifiers: ``/v1/classifiers`` (define, read, version, delete) and ``/v1/classify``.

Both reach the encoder through the same cached NLU client as ``/v1/intent``: the examples of a
definition and the texts to classify ride the same batches and the same exact cache; the head is
applied after the encoder pass. The classifier service owns the rest (``classifiers/service.py``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from xz_serve.access.gate import AccessGate
from xz_serve.access.spec import ApiSpec
from xz_serve.classifiers.service import ClassifierService, Job
from xz_serve.classifiers.store import Record
from xz_serve.http import schemas
from xz_serve.http.context import Ctx
from xz_serve.http.errors import ERRORS
from xz_serve.kernel.errors import InvalidInputError
from xz_serve.nlu.cached import ContextPredictor
from xz_serve.nlu.texts import request_texts

_IF_MATCH = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')
_BACKGROUND = {202: {"model": schemas.ClassifierJob, "description": "Training in the background"}}
_STALE = {412: {"model": schemas.ErrorResponse, "description": "If-Match names an old version"}}
_MANAGE = {
    **ERRORS,
    404: {"model": schemas.ErrorResponse, "description": "No such classifier for this tenant"},
    409: {"model": schemas.ErrorResponse, "description": "Name taken, tenant full, or encoder changed"},
}


def _etag(record: Record) -> dict[str, str]:
    return {"etag": f'"{record.version}"'}


def _expected(if_match: str | None) -> int | None:
    """The version ``If-Match`` names (None: absent or ``*``); a 400 for anything else."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _IF_MATCH.match(if_match.strip())
    if match is None:
        raise InvalidInputError(
            f'If-Match must name one version, e.g. "3"; got {if_match!r}', code="invalid_if_match"
        )
    return int(match.group(1))


def classifier_router(
    service: ClassifierService, nlu: ContextPredictor, api: ApiSpec, gate: AccessGate
) -> APIRouter:
    """The classifier routes over ``service``, embedding through ``nlu``; ``gate`` charges texts."""
    router = APIRouter(responses=ERRORS)

    def written(request: Request, outcome: Record | Job, created: bool) -> Response:
        if isinstance(outcome, Job):
            url = f"{request.scope.get('root_path', '')}/v1/classifiers/jobs/{outcome.id}"
            body = {"id": outcome.id, "operation": outcome.operation, "examples": outcome.examples,
                    "status": "training", "status_url": url}  # fmt: skip
            return JSONResponse(body, status_code=202, headers={"location": url})
        return JSONResponse(
            dataclasses.asdict(outcome), status_code=201 if created else 200, headers=_etag(outcome)
        )

    def pairs(body: schemas.ClassifierDefinition) -> list[tuple[str, str]]:
        return [(example.text, example.label) for example in body.examples]

    @router.post(
        "/v1/classifiers", status_code=201, response_model=schemas.ClassifierInfo, tags=["classifiers"],
        responses={**_MANAGE, **_BACKGROUND},
    )  # fmt: skip
    async def create(body: schemas.ClassifierDefinition, request: Request, ctx: Ctx) -> Response:
        """Define a classifier from labelled examples: embedded by the shared encoder, a head trained
        on them (201 with a cross-validated estimate), or 202 with a status URL for a large set."""
        outcome = await service.create(ctx, body.name, pairs(body), body.description)
        return written(request, outcome, created=True)

    @router.get("/v1/classifiers", response_model=schemas.ClassifierList, tags=["classifiers"])
    async def list_classifiers(ctx: Ctx) -> Response:
        """The tenant's classifiers, oldest first."""
        records = await service.records(ctx.tenant)
        return JSONResponse({"data": [dataclasses.asdict(r) for r in records]})

    @router.get("/v1/classifiers/jobs/{job_id}", response_model=schemas.ClassifierJob, tags=["classifiers"])
    async def job(job_id: str, request: Request, ctx: Ctx) -> Response:
        """A background training: `training`, then `ready` (with the classifier) or `failed`."""
        status: dict[str, Any] = await service.job(ctx.tenant, job_id)
        status["status_url"] = f"{request.scope.get('root_path', '')}/v1/classifiers/jobs/{job_id}"
        return JSONResponse(status)

    @router.get("/v1/classifiers/{ref}", response_model=schemas.ClassifierInfo, tags=["classifiers"],
                responses=_MANAGE)  # fmt: skip
    async def get(ref: str, ctx: Ctx) -> Response:
        """One classifier (by id or name): labels, version (also as ETag), validation estimate."""
        record = await service.record(ctx.tenant, ref)
        return JSONResponse(dataclasses.asdict(record), headers=_etag(record))

    @router.put(
        "/v1/classifiers/{ref}", response_model=schemas.ClassifierInfo, tags=["classifiers"],
        responses={**_MANAGE, **_BACKGROUND, **_STALE},
    )  # fmt: skip
    async def update(
        ref: str,
        body: schemas.ClassifierDefinition,
        request: Request,
        ctx: Ctx,
        if_match: str | None = Header(None, description='Only if the current version is this one, e.g. "3".'),
    ) -> Response:
        """A new version from a new set of examples (the version goes up by one; the old head is
        replaced on every replica within `classifiers.refresh_s`)."""
        expected = _expected(if_match)
        outcome = await service.update(ctx, ref, body.name, pairs(body), body.description, expected)
        return written(request, outcome, created=False)

    @router.delete("/v1/classifiers/{ref}", tags=["classifiers"], responses=_MANAGE)
    async def delete(ref: str, ctx: Ctx) -> Response:
        """Delete the classifier; no replica serves it after `classifiers.refresh_s`."""
        record = await service.delete(ctx, ref)
        return JSONResponse({"id": record.id, "name": record.name, "deleted": True})

    @router.post("/v1/classify", response_model=schemas.ClassifyResponse, tags=["nlu"], responses=_MANAGE)
    async def classify(request: schemas.ClassifyRequest, ctx: Ctx) -> Response:
        """Label texts with a classifier: one encoder pass per text (cached as for /v1/intent), then
        the classifier's head: label, confidence, alternatives, out-of-scope flag and score."""
        started = time.perf_counter()
        texts = request_texts(request.text, request.texts, api)
        loaded = await service.head(ctx.tenant, request.classifier)  # 404 before any charge
        await gate.charge_texts(ctx, len(texts))
        result = await nlu.predict_for(texts, ctx)
        items = service.classify(loaded, result, request.top_k or api.top_k)
        record = loaded.record
        body = {
            "classifier": {"id": record.id, "name": record.name, "version": record.version},
            "model": result.model_id,
            "results": [
                {"index": i, "label": c.label, "confidence": round(c.confidence, 6),
                 "top_k": [{"label": lab, "confidence": round(p, 6)} for lab, p in c.top_k],
                 "out_of_scope": c.out_of_scope, "oos_score": round(c.oos_score, 6)}
                for i, c in enumerate(items)
            ],
        }  # fmt: skip
        headers = {
            "x-model": result.model_id,
            "x-classifier-version": str(record.version),
            "x-queue-time-ms": f"{result.stats.queue_ms:.2f}",
            "x-inference-time-ms": f"{result.stats.inference_ms:.2f}",
            "x-batch-size": str(result.stats.batch_texts),
            "x-total-time-ms": f"{(time.perf_counter() - started) * 1000:.2f}",
        }
        return JSONResponse(body, headers=headers)

    return router
