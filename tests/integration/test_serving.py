"""The real app over HTTP: concurrency, correctness against the in-process model, errors."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest

from xz_serve.models.loading import load_onnx_model as load_model
from xz_serve.models.postprocess import label_outputs
from xz_serve.settings import ModelSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DATA = Path(__file__).parents[2].parent / "shared" / "data"


def sample(task: str, n: int, seed: int = 7) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (DATA / task / "val.jsonl").open()]
    return random.Random(seed).sample(rows, n)


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    """The same INT8 model in process: what the service must agree with."""
    spec = ModelSpec(artifacts_dir=Path(__file__).parents[2] / "artifacts", build_if_missing=False)
    return load_model(spec)  # the app under test has already built or checked the artifacts


async def test_200_concurrent_mixed_requests_all_correct(serve_url: str, reference) -> None:  # type: ignore[no-untyped-def]
    texts = [r["text"] for r in sample("intent_clinc150", 150)]
    texts += [r["text"] for r in sample("sentiment_tweeteval", 50)]
    routes = ["/v1/analyze", "/v1/intent", "/v1/sentiment", "/v1/embeddings"]
    rng = random.Random(1)
    plan = [(routes[i % 4], rng.sample(texts, rng.choice([1, 1, 1, 3, 8]))) for i in range(200)]
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=serve_url, timeout=60, limits=limits) as client:

        async def send(route: str, batch: list[str]) -> httpx.Response:
            body = {"input": batch} if route == "/v1/embeddings" else {"texts": batch}
            return await client.post(route, json=body)

        responses = await asyncio.gather(*(send(r, b) for r, b in plan))
    failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not failed, failed
    all_texts = sorted({t for _, b in plan for t in b})
    expected = dict(zip(all_texts, _predict(reference, all_texts), strict=True))
    # INT8 activations are quantized per pass (one scale for the whole tensor), so a text's
    # probabilities shift slightly with its batch-mates: only near-ties (top-2 margin < 0.25 in
    # the reference) may flip, and rarely.
    checked = flipped = 0
    for (route, batch), response in zip(plan, responses, strict=True):
        body = response.json()
        items = body["data"] if route == "/v1/embeddings" else body["results"]
        assert len(items) == len(batch)
        for text, item in zip(batch, items, strict=True):
            emb, intent, margin, sentiment, sentiment_margin = expected[text]
            if route == "/v1/embeddings":
                assert float(np.dot(item["embedding"], emb)) > 0.98
            if "intent" in item:
                checked += 1
                if item["intent"]["label"] != intent:
                    # A near-tie, or a text near the out-of-scope detector's threshold: both move
                    # with the batch-mates' quantization scale.
                    near_oos = "oos" in (item["intent"]["label"], intent)
                    assert margin < 0.25 or near_oos, (text, item["intent"], intent)
                    flipped += 1
            if "sentiment" in item:
                checked += 1
                if item["sentiment"]["label"] != sentiment:
                    assert sentiment_margin < 0.25, (text, item["sentiment"], sentiment)
                    flipped += 1
    # Measured: 14 and 21 of 666 labels (2.1%, 3.2%) flipped between batch compositions in two
    # runs, all near-ties; the rate varies with how concurrent requests happen to be batched.
    assert flipped <= 0.05 * checked, (flipped, checked)


def _predict(model, texts):  # type: ignore[no-untyped-def]
    out = []
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        o = model.predict(chunk)
        labelled = label_outputs(o, model.labels, o.token_counts, 1)  # the service's own rule
        for i in range(len(chunk)):
            top2 = np.sort(o.intent_probs[i])[-2:]
            s2 = np.sort(o.sentiment_probs[i])[-2:]
            label = "oos" if labelled[i].out_of_scope else labelled[i].intents[0][0]
            out.append(
                (
                    o.embeddings[i],
                    label,
                    float(top2[1] - top2[0]),
                    model.labels.sentiments[int(np.argmax(o.sentiment_probs[i]))],
                    float(s2[1] - s2[0]),
                )
            )
    return out


async def test_accuracy_on_validation_samples(serve_url: str) -> None:
    intent_rows = sample("intent_clinc150", 400, seed=11)
    sentiment_rows = sample("sentiment_tweeteval", 300, seed=11)
    async with httpx.AsyncClient(base_url=serve_url, timeout=60) as client:
        intents = await _labels(client, "/v1/intent", [r["text"] for r in intent_rows], "intent")
        sentiments = await _labels(
            client, "/v1/sentiment", [r["text"] for r in sentiment_rows], "sentiment"
        )
    intent_acc = np.mean([p == r["label"] for p, r in zip(intents, intent_rows, strict=True)])
    sentiment_acc = np.mean([p == r["label"] for p, r in zip(sentiments, sentiment_rows, strict=True)])
    assert intent_acc >= 0.90, intent_acc
    assert sentiment_acc >= 0.60, sentiment_acc


async def _labels(client: httpx.AsyncClient, route: str, texts: list[str], field: str) -> list[str]:
    chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    responses = await asyncio.gather(*(client.post(route, json={"texts": c}) for c in chunks))
    return [r[field]["label"] for resp in responses for r in resp.json()["results"]]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b'{"text": ""}', 400, "empty_text"),
        (b'{"texts": []}', 400, "empty_input"),
        (json.dumps({"texts": ["a"] * 65}).encode(), 413, "too_many_texts"),
        (json.dumps({"text": "x" * 2001}).encode(), 413, "text_too_long"),
        (b'{"text": 12}', 400, "invalid_request"),
        (b"{oops", 400, "invalid_json"),
        (b'{"text": "\xff"}', 400, "invalid_json"),
        (b'{"text": "' + b"x" * 1_100_000 + b'"}', 413, "payload_too_large"),
    ],
)
def test_error_cases_over_http(serve_url: str, content: bytes, status: int, code: str) -> None:
    response = httpx.post(
        f"{serve_url}/v1/analyze", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_models_and_health(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{serve_url}/readyz").json()
    assert ready["status"] == "ready" and ready["detail"].endswith(":int8")
    models = httpx.get(f"{serve_url}/v1/models").json()
    assert models["data"][0]["id"].startswith("xz-minilm-nlu@")
