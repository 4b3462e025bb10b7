"""Run-time classifiers end to end: an auth-on app with two replicas on the store Redis, real encoder.

A classifier on ten HWU64 intents is created over HTTP, used, updated and deleted; every replica must
serve the new version, and none the deleted one, within 1 s. Tenants are apart, scopes hold, and a
bad definition is a 400 that stores nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROOT, deployed
from tests.integration.test_access import auth_args, bearer, xz_keys
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = ROOT.parent / "shared" / "data" / "intent_hwu64"
INTENTS = (
    "alarm_set", "calendar_query", "cooking_recipe", "iot_hue_lightoff", "music_query",
    "news_query", "play_music", "takeaway_order", "transport_ticket", "weather_query",
)  # fmt: skip
SPREAD_S = 1.0  # the bound: every replica serves a new version, and no deleted head, after this
OUT_OF_DOMAIN = [
    "How can I send a Windows executable via Gmail?",
    "What is the difference between a list and a tuple in Python?",
    "Why do cats purr when they are happy?",
    "What is the best way to learn linear algebra on my own?",
    "How do I merge two branches in git without losing changes?",
    "Which is better for a beginner, guitar or piano?",
]


def rows(name: str, per_label: int) -> list[dict[str, str]]:
    out: dict[str, list[dict[str, str]]] = {label: [] for label in INTENTS}
    for line in (DATA / name).open(encoding="utf-8"):
        row = json.loads(line)
        if row["label"] in out and len(out[row["label"]]) < per_label:
            out[row["label"]].append({"text": row["text"], "label": row["label"]})
    return [r for label in INTENTS for r in out[label]]


@pytest.fixture(scope="module")
def app_url(serve_url: str) -> Iterator[str]:
    """Auth on, fused topology with two replicas behind HAProxy, classifiers in the store Redis."""
    args = auth_args(replicas=2)
    with deployed(serve_url, "clf", args | {"classifiers": {"refresh_s": 0.25}}) as url:
        yield url


@pytest.fixture(scope="module")
def keys(app_url: str, redis_store: RedisServer) -> dict[str, dict[str, str]]:
    def create(name: str, tenant: str, scopes: str) -> dict[str, Any]:
        argv = ("create", "--name", name, "--tenant", tenant, "--scopes", scopes, "--tpm", "100000")
        return xz_keys(redis_store, *argv)

    made = {
        "owner": create("clf-owner", "acme", "classifiers,nlu"),
        "reader": create("clf-reader", "acme", "nlu"),
        "stranger": create("clf-stranger", "other", "classifiers,nlu"),
    }
    return {name: bearer(key) for name, key in made.items()}


def classify(url: str, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    """One request on a fresh connection, so HAProxy spreads them over both replicas."""
    return httpx.post(f"{url}/v1/classify", json=body, headers=headers, timeout=30)


def spread(url: str, headers: dict[str, str], body: dict[str, Any], ok: Any, since: float) -> float:
    """Requests for ``SPREAD_S`` + 1 s after ``since``: every one sent after ``SPREAD_S`` must satisfy
    ``ok``, on both replicas. Returns when the last one that did not was sent (0: none)."""
    last_stale, replicas = 0.0, set()
    while (sent := time.monotonic() - since) < SPREAD_S + 1.0:
        response = classify(url, headers, body)
        if not ok(response):
            assert sent <= SPREAD_S, f"still stale {sent:.2f} s after the write: {response.text}"
            last_stale = sent
        elif sent > SPREAD_S:
            replicas.add(response.headers.get("x-replica"))
    named = len(replicas - {None})  # a 404 names no replica (no encoder call): HAProxy spreads them anyway
    print(f"last stale answer {last_stale:.2f} s after the write; fresh answers named {named} replica(s)")
    assert named == 2 or None in replicas
    return last_stale


def test_create_classify_update_delete_across_replicas(app_url: str, keys: dict[str, dict[str, str]]) -> None:
    owner = keys["owner"]
    definition = {"name": "home", "examples": rows("train.jsonl", 20), "description": "ten HWU64 intents"}
    created = httpx.post(f"{app_url}/v1/classifiers", json=definition, headers=owner, timeout=120)
    assert created.status_code == 201, created.text
    info = created.json()
    print(f"\ncreated: validation {info['validation']}, training {info['training_s']} s")
    assert info["version"] == 1 and sum(info["labels"].values()) == 200
    assert info["validation"]["accuracy"] >= 0.8 and info["model_id"].startswith("xz-minilm")

    val = rows("val.jsonl", 10)
    answer = classify(app_url, owner, {"classifier": "home", "texts": [r["text"] for r in val[:64]]})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    accuracy = sum(r["label"] == v["label"] for r, v in zip(results, val, strict=False)) / len(results)
    far = classify(app_url, owner, {"classifier": "home", "texts": OUT_OF_DOMAIN}).json()["results"]
    print(
        f"val accuracy {accuracy:.2f}; out of domain flagged {sum(r['out_of_scope'] for r in far)}/{len(far)}"
    )
    assert accuracy >= 0.8
    mean = sum(r["oos_score"] for r in results) / len(results)
    assert sum(r["oos_score"] for r in far) / len(far) > mean  # farther from the examples: higher score

    # A new version (one intent dropped): every replica serves it within the bound.
    update = {"name": "home", "examples": [r for r in definition["examples"] if r["label"] != "news_query"]}
    headers = {**owner, "if-match": '"1"'}
    put = httpx.put(f"{app_url}/v1/classifiers/{info['id']}", json=update, headers=headers, timeout=120)
    assert put.status_code == 200 and put.json()["version"] == 2, put.text
    body = {"classifier": "home", "text": "what is the latest news"}
    spread(app_url, owner, body, lambda r: r.json()["classifier"]["version"] == 2, time.monotonic())
    labels = {s["label"] for s in classify(app_url, owner, body).json()["results"][0]["top_k"]}
    assert "news_query" not in labels

    deleted = httpx.delete(f"{app_url}/v1/classifiers/{info['id']}", headers=owner, timeout=30)
    assert deleted.status_code == 200
    spread(app_url, owner, body, lambda r: r.status_code == 404, time.monotonic())


def test_tenants_scopes_and_bad_input(app_url: str, keys: dict[str, dict[str, str]]) -> None:
    owner, reader, stranger = keys["owner"], keys["reader"], keys["stranger"]
    definition = {"name": "mine", "examples": rows("train.jsonl", 4)}
    created = httpx.post(f"{app_url}/v1/classifiers", json=definition, headers=owner, timeout=120)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    try:
        assert classify(app_url, reader, {"classifier": "mine", "text": "wake me at 7"}).status_code == 200
        refused = httpx.delete(f"{app_url}/v1/classifiers/{cid}", headers=reader, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
        for response in (
            httpx.get(f"{app_url}/v1/classifiers/{cid}", headers=stranger, timeout=30),
            classify(app_url, stranger, {"classifier": cid, "text": "wake me at 7"}),
            classify(app_url, stranger, {"classifier": "mine", "text": "wake me at 7"}),
        ):
            assert response.status_code == 404, response.text
        assert httpx.get(f"{app_url}/v1/classifiers", headers=stranger, timeout=30).json() == {"data": []}
        assert httpx.post(f"{app_url}/v1/classifiers", json=definition, timeout=30).status_code == 401

        broken = [
            ([*definition["examples"], {"text": "only once", "label": "lonely"}], "too_few_examples"),
            ([*definition["examples"], {"text": "no label", "label": ""}], "empty_label"),
            ([*definition["examples"], {"text": definition["examples"][0]["text"], "label": "music_query"}],
             "conflicting_labels"),
            (definition["examples"][:4], "too_few_labels"),
        ]  # fmt: skip
        for examples, code in broken:
            response = httpx.post(f"{app_url}/v1/classifiers", json={"name": "broken", "examples": examples},
                                  headers=owner, timeout=30)  # fmt: skip
            assert response.status_code == 400 and response.json()["error"]["code"] == code, response.text
        surrogate = '{"name": "broken", "examples": [{"text": "bad \\ud800", "label": "a"}]}'
        response = httpx.post(f"{app_url}/v1/classifiers", content=surrogate, timeout=30,
                              headers={**owner, "content-type": "application/json"})  # fmt: skip
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_text"
        names = [
            c["name"]
            for c in httpx.get(f"{app_url}/v1/classifiers", headers=owner, timeout=30).json()["data"]
        ]
        assert "broken" not in names
    finally:
        httpx.delete(f"{app_url}/v1/classifiers/{cid}", headers=owner, timeout=30)
