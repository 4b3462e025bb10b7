"""One request id per request: the client's (or, under Serve, the one Serve put on the request),
answered once in ``x-request-id`` and the same on the request's server span."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ray.serve._private.http_util import RequestIdMiddleware
from starlette.types import ASGIApp

from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_app
from xz_serve.http.context import Ctx
from xz_serve.settings import XzSettings

SETTINGS = XzSettings(access={"auth_enabled": False}, cache={"enabled": False})


def api_of(app: Any) -> FastAPI:
    """The FastAPI app inside create_app's admission gate."""
    inner: FastAPI = app.app
    return inner


def with_echo_route(app: ASGIApp) -> ASGIApp:
    """A route that reports the context's id and sets its own x-request-id, as a route might."""

    @api_of(app).get("/v1/echo-id")
    async def echo(ctx: Ctx) -> JSONResponse:
        return JSONResponse({"request_id": ctx.request_id}, headers={"x-request-id": "set-by-a-route"})

    return app


async def get(app: ASGIApp, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        if path == "/v1/analyze":
            return await http.post(path, json={"text": "what is my balance"}, headers=headers)
        return await http.get(path, headers=headers)


def server_span_ids(spans: InMemorySpanExporter) -> list[Any]:
    posts = [s for s in spans.get_finished_spans() if s.name.startswith("POST")]
    return [s.attributes.get("xz.request_id") for s in posts if s.attributes is not None]


async def test_the_clients_id_is_answered_once_and_traced(spans: InMemorySpanExporter) -> None:
    app = create_app(FakeNluClient(), SETTINGS)
    response = await get(app, "/v1/analyze", **{"x-request-id": "client-id-42"})
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["client-id-42"]
    assert server_span_ids(spans) == ["client-id-42"]


async def test_without_one_a_fresh_id_is_answered_once(spans: InMemorySpanExporter) -> None:
    app = create_app(FakeNluClient(), SETTINGS)
    response = await get(app, "/v1/analyze")
    (request_id,) = response.headers.get_list("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert server_span_ids(spans) == [request_id]
    error = await get(app, "/v1/nope")  # errors carry it too
    assert len(error.headers.get_list("x-request-id")) == 1


async def test_a_route_cannot_answer_a_second_id() -> None:
    app = with_echo_route(create_app(FakeNluClient(), SETTINGS))
    response = await get(app, "/v1/echo-id", **{"x-request-id": "abc"})
    assert response.headers.get_list("x-request-id") == ["abc"]
    assert response.json() == {"request_id": "abc"}


async def test_an_unusable_client_id_is_replaced() -> None:
    app = with_echo_route(create_app(FakeNluClient(), SETTINGS))
    response = await get(app, "/v1/echo-id", **{"x-request-id": "x" * 300})
    (answered,) = response.headers.get_list("x-request-id")
    assert answered == response.json()["request_id"] and re.fullmatch(r"[0-9a-f]{32}", answered)


@pytest.mark.parametrize("client_id", [None, "client-id-7"])
async def test_behind_serve_its_id_is_the_only_one(
    client_id: str | None, spans: InMemorySpanExporter
) -> None:
    """Serve's HTTP server wraps every app in RequestIdMiddleware: it puts an id on the request
    (the client's, else a fresh one) and answers it. The app then uses that id and adds none."""
    app = RequestIdMiddleware(with_echo_route(create_app(FakeNluClient(), SETTINGS, echo_request_id=False)))
    headers = {} if client_id is None else {"x-request-id": client_id}
    response = await get(app, "/v1/echo-id", **headers)
    (answered,) = response.headers.get_list("x-request-id")
    assert response.json() == {"request_id": answered}
    if client_id is not None:
        assert answered == client_id
    analyzed = await get(app, "/v1/analyze", **headers)
    (answered,) = analyzed.headers.get_list("x-request-id")
    assert server_span_ids(spans) == [answered]
