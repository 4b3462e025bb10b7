"""One table from errors to HTTP: every failure leaves as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from xz_serve.http.schemas import ErrorResponse
from xz_serve.kernel.errors import XzError

log = logging.getLogger(__name__)

STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
    504: "deadline_exceeded",
}


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "Malformed request"),
        (413, "Too many texts, a text too long, or a body too large"),
        (424, "The model failed on this input"),
        (503, "Overloaded or not ready; see Retry-After"),
        (504, "The deadline (default or `x-request-timeout-ms`) passed before an answer"),
    ]
}


def error_response(status: int, code: str, message: str, retry_after_s: float | None = None) -> JSONResponse:
    """The JSON error body; overload errors carry ``Retry-After`` so clients back off."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _describe(exc: RequestValidationError) -> tuple[str, str]:
    errors = exc.errors()
    if not errors:
        return "invalid_request", "the request is invalid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "invalid_json", "the body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return "invalid_request", f"{where}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    """Map validation, HTTP and XzError exceptions, and anything unforeseen, to JSON errors."""

    @app.exception_handler(XzError)
    async def _xz(_: Request, exc: XzError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = _describe(exc)
        return error_response(400, code, message)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            code, message = "invalid_json", "the body is not valid JSON (or not UTF-8)"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", "an unexpected error occurred")
