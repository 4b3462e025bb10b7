"""/v1/classifiers and /v1/classify over HTTP with a fake encoder whose embeddings cluster by topic."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tests.redis_server import RedisServer, redis_or_skip
from tests.unit.fakes import FakeNluClient
from xz_serve.access.gate import AccessGate
from xz_serve.access.keys import mint
from xz_serve.http.app import create_api
from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.settings import XzSettings


def _vector(seed_text: str, dim: int = 16) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim)


class TopicNluClient(FakeNluClient):
    """FakeModel's answers, with embeddings near a centre chosen by the text's first word."""

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        result = await super().predict(texts, meta)
        predictions = []
        for text, pred in zip(texts, result.predictions, strict=True):
            vector = 3 * _vector(text.split()[0]) / 4 + _vector(text) * 0.15  # topic plus a little text
            vector /= np.linalg.norm(vector)
            predictions.append(dataclasses.replace(pred, embedding=vector.astype(np.float32)))
        return dataclasses.replace(result, predictions=predictions)


def examples(
    per_label: int = 6, topics: tuple[str, ...] = ("lights", "music", "weather")
) -> list[dict[str, str]]:
    return [{"text": f"{topic} example {i}", "label": topic} for topic in topics for i in range(per_label)]


Make = Callable[..., Awaitable[tuple[httpx.AsyncClient, TopicNluClient, FastAPI]]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    opened: list[tuple[httpx.AsyncClient, AccessGate]] = []

    async def build(**settings: Any) -> tuple[httpx.AsyncClient, TopicNluClient, FastAPI]:
        fake = TopicNluClient()
        args: dict[str, Any] = {"access": {"auth_enabled": False}, **settings}
        args["classifiers"] = {"embed_window": 8, "refresh_s": 0.2, **args.get("classifiers", {})}
        app: FastAPI = create_api(fake, XzSettings(**args))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        opened.append((http, app.state.access))
        return http, fake, app

    yield build
    for http, gate in opened:
        await http.aclose()
        await gate.close()


async def test_create_classify_update_delete(make: Make) -> None:
    http, fake, _ = await make()
    body = {"name": "home", "examples": examples(), "description": "three topics"}
    created = await http.post("/v1/classifiers", json=body)
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["id"].startswith("clf_") and info["version"] == 1 and info["name"] == "home"
    assert info["labels"] == {"lights": 6, "music": 6, "weather": 6}
    assert info["validation"]["accuracy"] >= 0.9 and info["validation"]["held_out"] == 18
    assert created.headers["etag"] == '"1"'
    # The examples went through the NLU client, in windows of `embed_window` texts.
    assert sorted(t for call in fake.calls for t in call) == sorted(e["text"] for e in body["examples"])
    assert max(len(call) for call in fake.calls) <= 8

    fake.calls.clear()
    answer = await http.post(
        "/v1/classify", json={"classifier": "home", "texts": ["music please", "lights dim"]}
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["label"] for r in results] == ["music", "lights"]
    assert all(not r["out_of_scope"] and 0 < r["oos_score"] < 1 for r in results)
    assert len(results[0]["top_k"]) == 3 and results[0]["top_k"][0]["label"] == "music"
    assert answer.json()["classifier"] == {"id": info["id"], "name": "home", "version": 1}
    assert answer.headers["x-classifier-version"] == "1"
    assert fake.calls == [["music please", "lights dim"]]  # one encoder call for the request's texts

    # A text the examples already embedded comes from the exact cache: no encoder call.
    fake.calls.clear()
    by_id = await http.post(
        "/v1/classify", json={"classifier": info["id"], "text": "lights example 0", "top_k": 1}
    )
    assert by_id.json()["results"][0]["label"] == "lights" and len(by_id.json()["results"][0]["top_k"]) == 1
    assert fake.calls == [] and by_id.headers["x-cache"] == "hit"

    far = await http.post(
        "/v1/classify", json={"classifier": "home", "texts": [f"zebra{i} x" for i in range(20)]}
    )
    flagged = [r["out_of_scope"] for r in far.json()["results"]]
    assert sum(flagged) >= 15  # topics no example had

    listed = (await http.get("/v1/classifiers")).json()["data"]
    assert [c["id"] for c in listed] == [info["id"]]

    update = {"name": "home", "examples": examples(topics=("lights", "music", "weather", "timer"))}
    updated = await http.put(f"/v1/classifiers/{info['id']}", json=update, headers={"if-match": '"1"'})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    stale = await http.put(f"/v1/classifiers/{info['id']}", json=update, headers={"if-match": '"1"'})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "version_mismatch"
    timer = await http.post("/v1/classify", json={"classifier": "home", "text": "timer for ten"})
    assert timer.json()["results"][0]["label"] == "timer" and timer.json()["classifier"]["version"] == 2
    got = await http.get("/v1/classifiers/home")
    assert got.json()["version"] == 2 and got.headers["etag"] == '"2"'

    deleted = await http.delete(f"/v1/classifiers/{info['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    for response in (
        await http.get(f"/v1/classifiers/{info['id']}"),
        await http.post("/v1/classify", json={"classifier": "home", "text": "lights"}),
        await http.delete(f"/v1/classifiers/{info['id']}"),
        await http.put(f"/v1/classifiers/{info['id']}", json=update),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "classifier_not_found"


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        (lambda ex: [*ex, {"text": "solo", "label": "single"}], "too_few_examples", "examples[18]"),
        (lambda ex: [*ex, {"text": "x", "label": ""}], "empty_label", "examples[18].label is empty"),
        (
            lambda ex: [*ex, {"text": "lights example 0", "label": "music"}],
            "conflicting_labels",
            "examples[0]",
        ),
        (lambda ex: [*ex, {"text": "bad \ud800", "label": "music"}], "invalid_text", "examples[18].text"),
        (lambda ex: ex[:6], "too_few_labels", "at least 2"),
    ],
)
async def test_bad_definitions_are_400s_and_store_nothing(
    make: Make, change: Callable[[list[dict[str, str]]], list[dict[str, str]]], code: str, words: str
) -> None:
    http, fake, _ = await make()
    body = json.dumps({"name": "bad", "examples": change(examples())})  # ASCII: a lone surrogate escaped
    response = await http.post("/v1/classifiers", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code and words in response.json()["error"]["message"]
    assert (await http.get("/v1/classifiers")).json() == {"data": []}
    assert fake.calls == []  # nothing was embedded


async def test_too_many_labels_and_duplicate_names(make: Make) -> None:
    http, _, _ = await make(classifiers={"max_labels": 2, "max_per_tenant": 1})
    many = await http.post("/v1/classifiers", json={"name": "x", "examples": examples()})
    assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_labels"
    two = examples(topics=("lights", "music"))
    assert (await http.post("/v1/classifiers", json={"name": "x", "examples": two})).status_code == 201
    again = await http.post("/v1/classifiers", json={"name": "x", "examples": two})
    assert again.status_code == 409 and again.json()["error"]["code"] == "classifier_exists"
    full = await http.post("/v1/classifiers", json={"name": "y", "examples": two})
    assert full.status_code == 409 and full.json()["error"]["code"] == "too_many_classifiers"
    bad_match = await http.put(
        "/v1/classifiers/x", json={"name": "x", "examples": two}, headers={"if-match": "v1"}
    )
    assert bad_match.status_code == 400 and bad_match.json()["error"]["code"] == "invalid_if_match"
    missing = await http.post("/v1/classify", json={"classifier": "nope", "text": "hi"})
    assert missing.status_code == 404
    empty = await http.post("/v1/classify", json={"classifier": "x", "texts": []})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_input"


async def test_a_large_set_trains_in_the_background(make: Make) -> None:
    http, _, _ = await make(classifiers={"async_examples": 10})
    accepted = await http.post("/v1/classifiers", json={"name": "big", "examples": examples()})
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "training" and accepted.headers["location"] == job["status_url"]
    for _ in range(200):
        status = (await http.get(job["status_url"])).json()
        if status["status"] != "training":
            break
        await asyncio.sleep(0.02)
    assert status["status"] == "ready", status
    assert status["classifier"]["name"] == "big" and status["classifier"]["version"] == 1
    answer = await http.post("/v1/classify", json={"classifier": "big", "text": "weather today"})
    assert answer.json()["results"][0]["label"] == "weather"
    assert (await http.get("/v1/classifiers/jobs/job_nope")).status_code == 404


async def test_tenants_and_scopes_with_keys_on(make: Make) -> None:
    http, _, app = await make(access={"auth_enabled": True})
    gate: AccessGate = app.state.access

    async def key(tenant: str, *scopes: str) -> dict[str, str]:
        plain, record = mint("k", tenant=tenant, scopes=scopes)
        await gate.store.put(record)
        return {"Authorization": f"Bearer {plain}"}

    owner, reader = await key("acme", "classifiers", "nlu"), await key("acme", "nlu")
    stranger = await key("other", "classifiers", "nlu")
    created = await http.post("/v1/classifiers", json={"name": "home", "examples": examples()}, headers=owner)
    assert created.status_code == 201
    cid = created.json()["id"]
    # The nlu scope classifies with the tenant's classifiers, but cannot manage them.
    assert (
        await http.post("/v1/classify", json={"classifier": "home", "text": "music"}, headers=reader)
    ).status_code == 200
    refused = await http.post(
        "/v1/classifiers", json={"name": "mine", "examples": examples()}, headers=reader
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert (await http.delete(f"/v1/classifiers/{cid}", headers=reader)).status_code == 403
    # Another tenant sees none of it, by id or by name.
    for response in (
        await http.get(f"/v1/classifiers/{cid}", headers=stranger),
        await http.post("/v1/classify", json={"classifier": cid, "text": "music"}, headers=stranger),
        await http.post("/v1/classify", json={"classifier": "home", "text": "music"}, headers=stranger),
        await http.delete(f"/v1/classifiers/{cid}", headers=stranger),
    ):
        assert response.status_code == 404
    assert (await http.get("/v1/classifiers", headers=stranger)).json() == {"data": []}
    # ... and may use the same name for its own.
    mine = await http.post("/v1/classifiers", json={"name": "home", "examples": examples()}, headers=stranger)
    assert mine.status_code == 201 and mine.json()["id"] != cid


@pytest.fixture
def store_server() -> Any:
    yield from redis_or_skip()


async def test_a_store_outage(make: Make, store_server: RedisServer) -> None:
    """Classify keeps serving the heads held; create and delete answer 503 with Retry-After."""
    http, _, _ = await make(store={"redis_url": store_server.url}, classifiers={"store_timeout_ms": 200})
    created = await http.post("/v1/classifiers", json={"name": "home", "examples": examples()})
    assert created.status_code == 201
    store_server.pause()
    try:
        await asyncio.sleep(0.3)  # past refresh_s: the next classify checks the store, and fails
        answer = await http.post("/v1/classify", json={"classifier": "home", "text": "music now"})
        assert answer.status_code == 200 and answer.json()["results"][0]["label"] == "music"
        for response in (
            await http.post("/v1/classifiers", json={"name": "new", "examples": examples()}),
            await http.delete(f"/v1/classifiers/{created.json()['id']}"),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "store_unavailable" and response.headers["retry-after"]
    finally:
        store_server.resume()
    assert (await http.delete(f"/v1/classifiers/{created.json()['id']}")).status_code == 200
