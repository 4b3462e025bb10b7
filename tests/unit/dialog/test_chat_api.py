"""/v1/chat and /v1/sessions over HTTP (in-process app, fake NLU, real stand-in upstream)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.redis_server import RedisServer, redis_or_skip
from tests.standin import StandinServer
from tests.unit.fakes import FakeNluClient
from tests.unit.leaving_client import leave_stream
from tests.unit.leaving_client import sse_events as sse
from xz_serve.http.app import create_api
from xz_serve.settings import StoreSpec, XzSettings

# The fake model's intents are balance/greeting/oos/transfer with random-ish confidences: a confidence
# floor of 0 keeps its labels; every reply path here goes through the LLM or the template.
UPSTREAM = {"name": "standin", "model": "standin-chat-1", "backoff_base_s": 0.01}


def settings(standin: StandinServer | None) -> XzSettings:
    dialog: dict[str, Any] = {"upstreams": [{**UPSTREAM, "base_url": standin.base_url}] if standin else []}
    dialog["prices"] = {"standin-chat-1": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    return XzSettings(access={"auth_enabled": False}, dialog=dialog)


@pytest.fixture
async def http(standin: StandinServer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(standin)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_multi_turn_session_get_and_delete(http: httpx.AsyncClient) -> None:
    first = await http.post("/v1/chat", json={"message": "what is my balance"})
    assert first.status_code == 200, first.text
    body = first.json()
    sid = body["session_id"]
    assert body["new_session"] and first.headers["x-session-id"] == sid
    assert body["policy"] in {"template", "llm", "cache", "escalate", "fallback"}
    assert {"label", "confidence", "out_of_scope"} <= set(body["intent"])
    assert body["sentiment"]["label"] in {"negative", "neutral", "positive"}
    second = await http.post("/v1/chat", json={"message": "and my savings?", "session_id": sid})
    assert second.status_code == 200 and second.json()["session_id"] == sid
    assert not second.json()["new_session"]

    session = (await http.get(f"/v1/sessions/{sid}")).json()
    assert [t["role"] for t in session["turns"]] == ["user", "assistant"] * 2
    assert session["turns"][2]["text"] == "and my savings?"
    assert len(session["sentiment_trend"]) == 2

    assert (await http.delete(f"/v1/sessions/{sid}")).json() == {"id": sid, "deleted": True}
    gone = await http.get(f"/v1/sessions/{sid}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


async def test_llm_turn_reports_usage_and_cost(http: httpx.AsyncClient, standin: StandinServer) -> None:
    body = (await http.post("/v1/chat", json={"message": "please send 20 dollars to my brother"})).json()
    assert body["policy"] == "llm", body  # the fake model labels it `balance` or `transfer`: llm rules
    usage = body["usage"]
    assert usage["upstream"] == "standin" and not usage["estimated"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6)
    session = (await http.get(f"/v1/sessions/{body['session_id']}")).json()
    assert session["usage"]["completion_tokens"] == usage["completion_tokens"]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"message": ""}, 400, "empty_message"),
        ({"message": "hi", "session_id": "bad id!"}, 400, "invalid_session_id"),
        ({"message": "hi", "session_id": "unknown-session-1"}, 404, "session_not_found"),
        ({"message": "x" * 2500}, 413, "payload_too_large"),
        ({"text": "hi"}, 400, "invalid_request"),
        ({"message": 3}, 400, "invalid_request"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    http: httpx.AsyncClient, payload: dict[str, Any], status: int, code: str
) -> None:
    response = await http.post("/v1/chat", json=payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("stream", [False, True])
async def test_a_message_that_is_not_valid_unicode_is_a_400(http: httpx.AsyncClient, stream: bool) -> None:
    """JSON may escape a lone surrogate, which no encoder or hash can take: refused like the NLU
    routes refuse such a text, before any model or store work."""
    body = '{"message": "\\ud800 hi", "stream": %s}' % ("true" if stream else "false")
    response = await http.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_text"


async def test_session_routes_validate_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/sessions/bad%20id")).status_code == 400
    assert (await http.delete("/v1/sessions/never-existed-123")).status_code == 404


async def test_streaming_reply_as_sse(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat", json={"message": "what is my balance", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    meta, *deltas, done, end = events
    assert meta["type"] == "meta" and meta["session_id"] == response.headers["x-session-id"]
    assert end == "[DONE]" and done["type"] == "done"
    assert "".join(d["content"] for d in deltas) == done["reply"]
    assert done["reply"]
    session = (await http.get(f"/v1/sessions/{meta['session_id']}")).json()
    assert session["turns"][-1]["text"] == done["reply"]  # the streamed reply was saved whole


async def test_without_upstream_llm_intents_fall_back_not_500() -> None:
    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(None)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        seen = set()
        for text in ["what is my balance", "move money", "tell me about mars", "hello there", "how are you"]:
            for stream in (False, True):
                response = await http.post("/v1/chat", json={"message": text, "stream": stream})
                assert response.status_code == 200, response.text
                policy = sse(response.text)[-2]["policy"] if stream else response.json()["policy"]
                seen.add(policy)
        assert "llm" not in seen and seen & {"fallback", "template", "escalate"}


@pytest.fixture
def store_redis() -> Iterator[RedisServer]:
    """A real redis-server as the durable store: its lock calls suspend, as in production."""
    yield from redis_or_skip()


@pytest.mark.parametrize("after_chunks", [0, 1])
async def test_a_client_that_leaves_a_stream_frees_its_session(
    standin: StandinServer, store_redis: RedisServer, after_chunks: int
) -> None:
    """Leaving a streamed reply, while its first message is written or after the first event: the
    next message on the session is answered at once, not refused as session_busy until the turn
    lock's TTL. The store is a real Redis, so freeing the lock is real I/O that a cancelled response
    must still complete."""
    config = settings(standin).model_copy(update={"store": StoreSpec(redis_url=store_redis.url)})
    app = create_api(FakeNluClient(), config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        first = await http.post("/v1/chat", json={"message": "hello there"})
        sid = first.json()["session_id"]
        standin.faults(chunk_delay_ms=300)  # the reply streams slowly: the client leaves during it
        message = {"message": "please send 20 dollars to my brother", "session_id": sid, "stream": True}
        chunks = await leave_stream(app, "/v1/chat", message, after_chunks)
        assert not any(b"[DONE]" in c for c in chunks)  # it left before the end
        standin.faults(chunk_delay_ms=0)
        after = await http.post("/v1/chat", json={"message": "what is my balance", "session_id": sid})
        assert after.status_code == 200, after.text
