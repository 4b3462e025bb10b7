"""The OpenAPI schema's security: the bearer scheme and the 401/403/429 answers of every /v1 route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_REFUSALS = {
    "401": "Missing, unknown, revoked or expired API key",
    "403": "The API key lacks the scope this route needs",
    "429": "A per-key limit is used up; see Retry-After and x-ratelimit-*",
}


def document_auth(app: FastAPI) -> None:
    """Patch ``app.openapi`` so that every /v1 operation names the key scheme and its refusals."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "`xz_<id>_<secret>`"}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/v1/"):
                continue
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
                responses = operation.setdefault("responses", {})
                for status, text in _REFUSALS.items():
                    responses.setdefault(status, {"description": text, "content": error})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
