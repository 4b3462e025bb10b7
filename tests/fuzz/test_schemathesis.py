"""Schemathesis against the real FastAPI app in process (fake NLU client, no Ray): every operation
of the OpenAPI schema, with auth off and with auth on (a minted key in the in-memory key store),
valid and schema-violating inputs. Checks: no 5xx, and every response matches the schema. Hand-made
hostile requests (oversized bodies, deep JSON, invalid UTF-8, huge batches) follow.

``XZ_FUZZ_EXAMPLES`` bounds the examples per operation and mode (default keeps the module < 1 min);
the counts are written to ``bench/results/fuzz.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.unit.fakes import FakeNluClient
from xz_serve.access.keys import SCOPES, mint
from xz_serve.http.app import create_api
from xz_serve.settings import XzSettings

EXAMPLES = int(os.environ.get("XZ_FUZZ_EXAMPLES", "40"))
RESULTS = Path(__file__).parents[2] / "bench" / "results" / "fuzz.json"
CHECKS = [not_a_server_error, response_schema_conformance]
API = {"max_texts": 64, "max_text_chars": 2000, "max_body_bytes": 100_000}
CASES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


def build(auth: bool) -> tuple[FastAPI, dict[str, str]]:
    """The app as Serve builds it, minus Ray: in-memory key store, no Redis, no upstream LLM."""
    settings_ = XzSettings(
        api=API,
        access={"auth_enabled": auth, "default_requests_per_minute": None, "default_texts_per_minute": None},
        store={"redis_url": None},
        cache={"redis_url": None},
    )
    app = create_api(FakeNluClient(), settings_)
    if not auth:
        return app, {}
    plain, record = mint("fuzz", scopes=SCOPES)
    asyncio.run(app.state.access.store.put(record))
    return app, {"Authorization": f"Bearer {plain}"}


APP_OPEN, _ = build(auth=False)
APP_AUTH, KEY = build(auth=True)


def load(app: FastAPI) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


SCHEMA_OPEN = load(APP_OPEN)
SCHEMA_AUTH = load(APP_AUTH)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # same cases every CI run: a failure reproduces
    suppress_health_check=list(HealthCheck),
    database=None,
)


def record(kind: str, status: int) -> None:
    CASES[kind] += 1
    STATUSES[f"{kind}:{status}"] += 1


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "examples_per_operation_and_mode": EXAMPLES,
        "cases": dict(CASES),
        "total_cases": sum(CASES.values()),
        "statuses": dict(sorted(STATUSES.items())),
    }
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")


@SCHEMA_OPEN.parametrize()
@FUZZ
def test_auth_off_no_server_error_and_schema_conformant(case: Any) -> None:
    response = case.call_and_validate(checks=CHECKS)
    record("auth_off", response.status_code)


@SCHEMA_AUTH.parametrize()
@FUZZ
def test_auth_on_no_server_error_and_schema_conformant(case: Any) -> None:
    response = case.call_and_validate(headers=KEY, checks=CHECKS)
    record("auth_on", response.status_code)


@SCHEMA_AUTH.parametrize()
@settings(max_examples=max(5, EXAMPLES // 4), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_auth_on_without_a_key_is_refused_in_json(case: Any) -> None:
    response = case.call_and_validate(checks=CHECKS)
    record("auth_on_no_key", response.status_code)


# Hand-made hostile requests: what a schema-driven generator rarely produces.

POSTS = ["/v1/analyze", "/v1/intent", "/v1/sentiment", "/v1/embeddings"]


def hostile() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    json_type = {"content-type": "application/json"}
    yield "oversized body", b'{"text": "' + b"a" * 200_000 + b'"}', json_type
    yield "oversized, no length", b"", json_type  # body streamed below with no content-length
    deep = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "deep JSON (100k nested arrays)", deep, json_type
    yield "deep JSON objects", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, json_type
    yield "invalid UTF-8", b'{"text": "caf\xc3\x28 \xff\xfe"}', json_type
    yield "lone surrogate escape", b'{"text": "\\ud800"}', json_type
    yield "NUL and control chars", b'{"text": "a\\u0000b\\u0007c"}', json_type
    yield "huge batch", json.dumps({"texts": ["hi"] * 10_000}).encode()[:99_000] + b'"]}', json_type
    yield "huge batch under the byte limit", json.dumps({"texts": ["x"] * 15_000}).encode(), json_type
    yield "65 texts", json.dumps({"texts": ["hi"] * 65, "input": ["hi"] * 65}).encode(), json_type
    yield "text too long", json.dumps({"text": "a" * 2001, "input": "a" * 2001}).encode(), json_type
    yield "huge number", b'{"text": "hi", "top_k": 1' + b"0" * 5000 + b"}", json_type
    yield "float top_k", b'{"text": "hi", "top_k": 1e309}', json_type
    yield "not JSON", b"\x00\x01\x02garbage", json_type
    yield "form body", b"text=hi", {"content-type": "application/x-www-form-urlencoded"}
    yield "no content type", b'{"text": "hi"}', {}
    yield "bad content-length", b'{"text": "hi"}', {**json_type, "content-length": "abc"}
    yield "bad timeout header", b'{"text": "hi"}', {**json_type, "x-request-timeout-ms": b"\xff\xfe"}
    yield "huge timeout header", b'{"text": "hi"}', {**json_type, "x-request-timeout-ms": "9" * 400}


@pytest.mark.parametrize("app", [APP_OPEN, APP_AUTH], ids=["auth_off", "auth_on"])
def test_hostile_bodies_get_json_4xx_never_5xx(app: FastAPI) -> None:
    headers = KEY if app is APP_AUTH else {}
    with TestClient(app, raise_server_exceptions=False) as http:
        for path in POSTS:
            for name, body, extra in hostile():
                if name == "oversized, no length":
                    chunks = (b'{"text": "' + b"a" * 50_000 for _ in range(4))
                    response = http.post(path, content=chunks, headers={**headers, **extra})
                else:
                    response = http.post(path, content=body, headers={**headers, **extra})
                record("hostile", response.status_code)
                assert response.status_code < 500, (path, name, response.status_code, response.text[:300])
                ok = response.status_code == 200 and name in {"NUL and control chars", "no content type"}
                if not ok:
                    assert 400 <= response.status_code < 500, (path, name, response.status_code)
                    error = response.json()["error"]
                    assert error["code"] and error["message"], (path, name, error)
