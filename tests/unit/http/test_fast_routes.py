"""FastRoutes: valid NLU requests skip FastAPI; everything else gets FastAPI's own answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

import xz_serve.http.app as app_module
from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_api
from xz_serve.http.context import Ctx
from xz_serve.http.fast_routes import FastRoutes, fast_routes
from xz_serve.http.schemas import TextsRequest
from xz_serve.kernel.errors import OverloadedError
from xz_serve.settings import ApiSpec, XzSettings

SETTINGS = XzSettings(api=ApiSpec(max_texts=4, max_text_chars=50), access={"auth_enabled": False})


class Inner:
    """The app behind FastRoutes (FastAPI's stack in service): records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.seen.append((scope["path"], message.get("body", b"")))
        await JSONResponse({"from": "inner"}, 299)(scope, receive, send)


def table(handled: list[TextsRequest], fail: Exception | None = None) -> FastRoutes:
    router = APIRouter()

    @router.post("/v1/analyze")
    async def handler(request: TextsRequest, ctx: Ctx) -> Response:
        if fail is not None:
            raise fail
        handled.append(request)
        return JSONResponse({"from": "fast"})

    return FastRoutes(Inner(), fast_routes(router.routes, ["/v1/analyze"]))


async def post(
    app: Any, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        return await http.post(path, content=body, headers=headers)


async def test_a_valid_request_goes_straight_to_its_handler() -> None:
    handled: list[TextsRequest] = []
    fast = table(handled)
    response = await post(fast, "/v1/analyze", b'{"text": "hi", "top_k": 2}')
    assert response.json() == {"from": "fast"}
    assert handled == [TextsRequest(text="hi", top_k=2)]
    assert fast.app.seen == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/v1/analyze", b'{"text": 1', "application/json"),  # not JSON
        ("/v1/analyze", b'{"text": "hi", "colour": "red"}', "application/json"),  # fails validation
        ("/v1/analyze", b'{"text": NaN}', "application/json"),  # JSON only Python's parser takes
        ("/v1/analyze", b'{"text": "hi"}', "text/plain"),  # another content type
        ("/v1/other", b'{"text": "hi"}', "application/json"),  # another path
    ],
)
async def test_anything_else_reaches_the_app_behind_with_its_body(
    path: str, body: bytes, content_type: str
) -> None:
    handled: list[TextsRequest] = []
    fast = table(handled)
    response = await post(fast, path, body, content_type)
    assert response.status_code == 299
    assert fast.app.seen == [(path, body)]  # type: ignore[attr-defined]
    assert handled == []


async def test_a_client_gone_mid_body_is_left_to_the_app_behind() -> None:
    fast = table([])
    messages: list[Message] = [{"type": "http.disconnect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/analyze", "headers": []}
    await fast(scope, receive, send)
    assert fast.app.seen == [("/v1/analyze", b"")]  # type: ignore[attr-defined]


async def test_an_error_the_handler_raises_is_the_usual_json_error() -> None:
    fast = table([], fail=OverloadedError("the model queue is full", retry_after_s=2))
    response = await post(fast, "/v1/analyze", b'{"text": "hi"}')
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json() == {"error": {"code": "overloaded", "message": "the model queue is full"}}


def test_a_handler_without_a_post_route_is_refused() -> None:
    with pytest.raises(ValueError, match="/v1/missing"):
        fast_routes(APIRouter().routes, ["/v1/missing"])


def test_the_schema_keeps_each_routes_operation_id() -> None:
    # Client generators name their methods after these.
    paths = create_api(FakeNluClient(), SETTINGS).openapi()["paths"]
    ids = {path: paths[path]["post"]["operationId"] for path in ("/v1/analyze", "/v1/embeddings")}
    expected = {"/v1/analyze": "analyze_v1_analyze_post", "/v1/embeddings": "embeddings_v1_embeddings_post"}
    assert ids == expected


# The whole app, with and without the fast path: every answer the same, valid or not.
CASES: list[tuple[str, bytes, str | None]] = [
    ("/v1/analyze", json.dumps({"text": "what is my balance"}).encode(), "application/json"),
    (
        "/v1/analyze",
        json.dumps({"texts": ["a b", "c"], "top_k": 1}).encode(),
        "application/json; charset=utf-8",
    ),
    ("/v1/analyze", json.dumps({"text": "no content type"}).encode(), None),
    ("/v1/analyze", json.dumps({"text": "upper case"}).encode(), "Application/JSON"),
    ("/v1/intent", json.dumps({"text": "héllo 你好 😀"}).encode(), "application/json"),
    ("/v1/sentiment", json.dumps({"texts": ["i love it", "awful"]}).encode(), "application/json"),
    ("/v1/embeddings", json.dumps({"input": ["hello", "hi"]}).encode(), "application/json"),
    ("/v1/embeddings", json.dumps({"input": "x", "encoding_format": "base64"}).encode(), "application/json"),
    ("/v1/embeddings", json.dumps({"input": "x", "dimensions": 7}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"text": "a", "texts": ["b"]}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"texts": []}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"texts": ["a"] * 5}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"text": "x" * 51}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"text": "hi", "top_k": 0}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"text": "hi", "top_k": "2"}).encode(), "application/json"),
    ("/v1/analyze", json.dumps({"text": 5}).encode(), "application/json"),
    ("/v1/analyze", json.dumps(["a list"]).encode(), "application/json"),
    ("/v1/analyze", b'{"text": "hi", "text": "bye"}', "application/json"),
    ("/v1/analyze", b'{"text": "hi", "top_k": 99999999999999999999999}', "application/json"),
    ("/v1/analyze", b'{"text": Infinity}', "application/json"),
    ("/v1/analyze", b"\xff\xfe", "application/json"),
    ("/v1/analyze", b"", "application/json"),
    ("/v1/analyze", json.dumps({"text": "hi"}).encode("utf-16"), "application/json"),
    ("/v1/analyze", json.dumps({"text": "hi"}).encode(), "application/vnd.api+json"),
    ("/v1/analyze", json.dumps({"text": "hi"}).encode(), "text/plain"),
]


@pytest.fixture
async def both(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any]]:
    fast = create_api(FakeNluClient(), SETTINGS)

    def without(app: Any, routes: Any) -> Any:
        return app

    monkeypatch.setattr(app_module, "FastRoutes", without)
    yield fast, create_api(FakeNluClient(), SETTINGS)


@pytest.mark.parametrize(("path", "body", "content_type"), CASES)
async def test_the_app_answers_as_fastapi_alone_would(
    both: tuple[Any, Any], path: str, body: bytes, content_type: str | None
) -> None:
    fast, plain = both
    ours, theirs = await post(fast, path, body, content_type), await post(plain, path, body, content_type)
    assert ours.status_code == theirs.status_code
    assert ours.json() == theirs.json()
    assert ours.headers.get("retry-after") == theirs.headers.get("retry-after")
    assert ours.headers["content-type"] == theirs.headers["content-type"]
