"""/v1/chat on the real Serve app (INT8 model, real Redis for cache and sessions) with an upstream that
speaks OpenAI's protocol over HTTP (bench/openai_standin.py): sessions across turns and a store
restart, GET/DELETE, the reply cache, and SSE streaming through Serve's ingress."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import chat_args, deployed
from tests.redis_server import RedisServer
from tests.standin import StandinServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat_url(serve_url: str, standin: StandinServer) -> Iterator[str]:
    args = chat_args(standin)
    with deployed(serve_url, "chat", args) as url:
        yield url


def chat(url: str, message: str, session_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"message": message}
    if session_id:
        payload["session_id"] = session_id
    response = httpx.post(f"{url}/v1/chat", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_multi_turn_session_survives_a_store_restart(chat_url: str, redis_store: RedisServer) -> None:
    first = chat(chat_url, "hi there")
    sid = first["session_id"]
    assert first["new_session"] and first["intent"]["label"] == "greeting" and first["policy"] == "template"
    second = chat(chat_url, "how do i jump start my car", sid)
    assert second["session_id"] == sid and second["policy"] == "llm"
    assert second["usage"]["upstream"] == "standin" and second["usage"]["cost_usd"] > 0

    redis_store.restart()  # SIGKILL, then back from its AOF
    third = chat(chat_url, "thank you so much", sid)
    assert third["session_id"] == sid and not third["new_session"]
    session = httpx.get(f"{chat_url}/v1/sessions/{sid}", timeout=10).json()
    assert [t["text"] for t in session["turns"][::2]] == [
        "hi there",
        "how do i jump start my car",
        "thank you so much",
    ]
    assert session["usage"]["llm_calls"] == 1
    assert session["last_intent"] == third["intent"]["label"]

    assert httpx.delete(f"{chat_url}/v1/sessions/{sid}", timeout=10).status_code == 200
    gone = httpx.get(f"{chat_url}/v1/sessions/{sid}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    unknown = httpx.post(f"{chat_url}/v1/chat", json={"message": "hi", "session_id": sid}, timeout=10)
    assert unknown.status_code == 404


def test_reply_cache_serves_a_repeated_how_to_question(chat_url: str, standin: StandinServer) -> None:
    question = "how do i change the oil in my car"
    first = chat(chat_url, question)
    assert first["intent"]["label"] == "oil_change_how"  # a cacheable how-to rule
    assert first["policy"] in {"llm", "cache"}
    sent = standin.stats()["requests"]
    time.sleep(0.5)  # beyond the semantic cache's refresh interval
    again = chat(chat_url, question)
    assert again["policy"] == "cache" and again["reply"] == first["reply"]
    assert standin.stats()["requests"] == sent  # no upstream call


def test_out_of_scope_replies_are_never_cached(chat_url: str, standin: StandinServer) -> None:
    """Out of scope receives any text no intent recognised: its replies are never reused."""
    question = "what is the capital of mongolia"
    sent = standin.stats()["requests"]
    first = chat(chat_url, question)
    assert first["intent"]["out_of_scope"] and first["policy"] == "llm"
    time.sleep(0.5)
    again = chat(chat_url, question)
    assert again["policy"] == "llm" and again["cache"] is None
    assert standin.stats()["requests"] == sent + 2


def test_the_deadline_bounds_a_turn_through_serve(chat_url: str, standin: StandinServer) -> None:
    """A 500 ms deadline with a 3 s upstream: 504 at the deadline through Serve's ingress, and a
    stream past its 1 s deadline ends with an error event; neither turn is saved."""
    first = chat(chat_url, "hi there")
    sid = first["session_id"]
    payload = {"message": "please transfer 40 dollars to my landlord", "session_id": sid}
    standin.faults(latency_ms=3000)
    try:
        started = time.monotonic()
        late = httpx.post(
            f"{chat_url}/v1/chat", json=payload, headers={"x-request-timeout-ms": "500"}, timeout=30
        )
        elapsed = time.monotonic() - started
    finally:
        standin.faults(latency_ms=0)
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded", late.text
    assert elapsed < 1.5, elapsed
    standin.faults(chunk_delay_ms=150)
    try:
        events: list[Any] = []
        started = time.monotonic()
        headers = {"x-request-timeout-ms": "1000"}
        with httpx.stream(
            "POST", f"{chat_url}/v1/chat", json={**payload, "stream": True}, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[len("data: ") :]
                    events.append(data if data == "[DONE]" else json.loads(data))
        elapsed = time.monotonic() - started
    finally:
        standin.faults(chunk_delay_ms=0)
    assert events[-1] == "[DONE]" and events[-2]["type"] == "error", events[-3:]
    assert events[-2]["error"]["code"] == "deadline_exceeded" and elapsed < 2.0, elapsed
    session = httpx.get(f"{chat_url}/v1/sessions/{sid}", timeout=10).json()
    assert len(session["turns"]) == 2  # only the first turn was saved


def test_streaming_over_http(chat_url: str, standin: StandinServer) -> None:
    standin.faults(chunk_delay_ms=40)
    try:
        events: list[tuple[float, Any]] = []
        started = time.monotonic()
        payload = {"message": "can you help me move money from savings to checking", "stream": True}
        with httpx.stream("POST", f"{chat_url}/v1/chat", json=payload, timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[len("data: ") :]
                    events.append(
                        (time.monotonic() - started, data if data == "[DONE]" else json.loads(data))
                    )
    finally:
        standin.faults(chunk_delay_ms=0)
    meta, *deltas, done, end = (e for _, e in events)
    assert meta["type"] == "meta" and meta["policy"] == "llm"
    assert end == "[DONE]" and done["type"] == "done"
    assert len(deltas) > 5 and "".join(d["content"] for d in deltas) == done["reply"]
    assert events[1][0] < events[-1][0] - 0.2  # deltas reached us while the upstream was still writing
    assert done["usage"]["completion_tokens"] > 0
    session = httpx.get(f"{chat_url}/v1/sessions/{meta['session_id']}", timeout=10).json()
    assert session["turns"][-1]["text"] == done["reply"]


def test_upstream_outage_is_an_honest_fallback(chat_url: str, standin: StandinServer) -> None:
    standin.faults(fail_status=500, retry_after_s=None)
    try:
        body = chat(chat_url, "please transfer 40 dollars to my landlord")
    finally:
        standin.faults(fail_status=None)
    assert body["policy"] == "fallback" and body["flags"] in (["upstream_failed"], ["breaker_open"])
    assert body["reply"]
