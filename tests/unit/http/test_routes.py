"""The HTTP app with a fake NLU client: shapes, headers and every bad-input path."""

from __future__ import annotations

import base64
import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_api
from xz_serve.settings import ApiSpec, XzSettings

API = ApiSpec(max_texts=4, max_text_chars=50, max_body_bytes=2048)
SETTINGS = XzSettings(api=API, access={"auth_enabled": False})  # auth: tests/unit/access


@pytest.fixture
def fake() -> FakeNluClient:
    return FakeNluClient()


@pytest.fixture
async def client(fake: FakeNluClient) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(fake, SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_analyze_one_text(client: httpx.AsyncClient, fake: FakeNluClient) -> None:
    response = await client.post("/v1/analyze", json={"text": "what is my balance"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "fake@0"
    (result,) = body["results"]
    expected = fake.model.predict(["what is my balance"])
    best = fake.model.labels.intents[int(np.argmax(expected.intent_probs[0]))]
    assert result["intent"]["label"] == best
    assert len(result["intent"]["top_k"]) == 3
    assert result["out_of_scope"] == (best == "oos")
    assert set(result["sentiment"]["scores"]) == {"negative", "neutral", "positive"}
    assert abs(sum(result["sentiment"]["scores"].values()) - 1) < 1e-4
    for header in ("x-request-id", "x-queue-time-ms", "x-inference-time-ms", "x-batch-size"):
        assert header in response.headers


@pytest.mark.parametrize("route", ["/v1/analyze", "/v1/intent"])
async def test_each_text_carries_its_out_of_scope_score(
    client: httpx.AsyncClient, fake: FakeNluClient, route: str
) -> None:
    texts = ["what is my balance", "hello there", "zzz qqq"]
    results = (await client.post(route, json={"texts": texts})).json()["results"]
    probs = fake.model.predict(texts).intent_probs
    in_scope = [i for i, name in enumerate(fake.model.labels.intents) if name != "oos"]
    expected = 1.0 - probs[:, in_scope].max(axis=1)  # no detector: one minus the top in-scope probability
    assert [r["oos_score"] for r in results] == pytest.approx(expected.tolist(), abs=1e-6)


async def test_analyze_many_texts_keeps_order_and_one_call(
    client: httpx.AsyncClient, fake: FakeNluClient
) -> None:
    texts = ["a b", "c d e", "f"]
    response = await client.post("/v1/analyze", json={"texts": texts, "top_k": 1})
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert all(len(r["intent"]["top_k"]) == 1 for r in results)
    assert fake.calls == [texts]


async def test_subset_routes(client: httpx.AsyncClient) -> None:
    intent = (await client.post("/v1/intent", json={"text": "hi"})).json()["results"][0]
    sentiment = (await client.post("/v1/sentiment", json={"text": "hi"})).json()["results"][0]
    assert "intent" in intent and "sentiment" not in intent
    assert "sentiment" in sentiment and "intent" not in sentiment


async def test_embeddings_openai_shape(client: httpx.AsyncClient, fake: FakeNluClient) -> None:
    response = await client.post("/v1/embeddings", json={"input": ["one two", "three"]})
    body = response.json()
    assert body["object"] == "list" and len(body["data"]) == 2
    assert body["data"][1]["index"] == 1 and body["data"][1]["object"] == "embedding"
    np.testing.assert_allclose(
        body["data"][0]["embedding"], fake.model.predict(["one two"]).embeddings[0], rtol=1e-6
    )
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_embedding_floats_read_back_as_the_same_float32(
    client: httpx.AsyncClient, fake: FakeNluClient
) -> None:
    # The body is written from the float32 array itself (orjson): the shortest decimal of each
    # value, which must parse back to the very same float32, and no longer than it needs to be.
    response = await client.post("/v1/embeddings", json={"input": "exact"})
    assert response.headers["content-type"] == "application/json"
    sent = np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32)
    assert np.array_equal(sent, fake.model.predict(["exact"]).embeddings[0].astype(np.float32))
    assert len(response.content) < 24 * len(sent)  # float64 reprs of 17 digits would not fit


async def test_embeddings_base64(client: httpx.AsyncClient, fake: FakeNluClient) -> None:
    body = (await client.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64"})).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype=np.float32)
    np.testing.assert_allclose(vector, fake.model.predict(["x"]).embeddings[0])


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"text": ""}, 400, "empty_text"),
        ({"text": "   "}, 400, "empty_text"),
        ({"texts": []}, 400, "empty_input"),
        ({"texts": ["a"] * 5}, 413, "too_many_texts"),
        ({"text": "x" * 51}, 413, "text_too_long"),
        ({"text": 5}, 400, "invalid_request"),
        ({"texts": "not a list"}, 400, "invalid_request"),
        ({"texts": ["ok", None]}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"text": "a", "texts": ["b"]}, 400, "invalid_request"),
        ({"text": "a", "unknown": 1}, 400, "invalid_request"),
        ({"text": "a", "top_k": 0}, 400, "invalid_request"),
        ([1, 2], 400, "invalid_request"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient, fake: FakeNluClient, payload: object, status: int, code: str
) -> None:
    response = await client.post("/v1/analyze", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"{not json", "invalid_json"), (b'{"text": "\xff\xfe"}', "invalid_json"), (b"", "invalid_json")],
)
async def test_invalid_json_and_utf8(client: httpx.AsyncClient, content: bytes, code: str) -> None:
    response = await client.post("/v1/analyze", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {code, "invalid_request"}


async def test_deeply_nested_json_is_a_4xx(client: httpx.AsyncClient) -> None:
    deep = "[" * 900 + "]" * 900
    response = await client.post(
        "/v1/analyze", content=deep.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/analyze",
        content=json.dumps({"text": "x" * 5000}).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 500

    response = await client.post(
        "/v1/analyze", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_embeddings_wrong_dimensions(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 3})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_dimensions"


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await client.get("/v1/analyze")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_health_models_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json()["status"] == "ok"
    assert (await client.get("/readyz")).json()["status"] == "ready"
    models = (await client.get("/v1/models")).json()
    assert models["data"][0]["id"] == "fake@0"
    assert models["data"][0]["intents"] == ["balance", "greeting", "oos", "transfer"]
    assert models["data"][0]["oos_threshold"] == 1.0  # the fake has no detector and no confidence floor
    paths = (await client.get("/openapi.json")).json()["paths"]
    for route in (
        "/v1/analyze",
        "/v1/intent",
        "/v1/sentiment",
        "/v1/embeddings",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert route in paths


def test_no_route_or_dependency_runs_in_a_thread_pool(fake: FakeNluClient) -> None:
    """FastAPI runs a plain ``def`` route or dependency in a thread pool: a hop per request that
    costs more than a cache hit itself. Everything on the request path must be ``async``."""
    from fastapi.routing import APIRoute

    def sync_calls(dependant: Any) -> list[str]:
        found = (
            []
            if dependant.call is None or inspect.iscoroutinefunction(dependant.call)
            else [getattr(dependant.call, "__qualname__", repr(dependant.call))]
        )
        return found + [name for sub in dependant.dependencies for name in sync_calls(sub)]

    app = create_api(fake, SETTINGS)
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert len(routes) > 5
    offenders = {r.path: sync_calls(r.dependant) for r in routes}
    assert {path: calls for path, calls in offenders.items() if calls} == {}
