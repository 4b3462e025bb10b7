"""/v1/chat/completions over HTTP: the in-process app, fake NLU, the real OpenAI stand-in upstream.

FakeModel routes "hello there" to an llm rule and "hi" to a template under the shipped policy
(tests/unit/dialog/live.py), so each reply path is reached on purpose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.redis_server import RedisServer, redis_or_skip
from tests.standin import StandinServer
from tests.unit.dialog.live import LLM, TEMPLATE
from tests.unit.fakes import FakeNluClient
from tests.unit.leaving_client import leave_stream
from tests.unit.leaving_client import sse_events as chunks
from xz_serve.access.keys import mint
from xz_serve.access.scopes import scope_for
from xz_serve.dialog.policy import load_policy
from xz_serve.dialog.sessions import session_for_user
from xz_serve.http.app import create_api
from xz_serve.settings import StoreSpec, XzSettings

PATH = "/v1/chat/completions"
TOOL = {"type": "function", "function": {"name": "f"}}
PREFILL = {"role": "assistant", "content": "Hel"}  # a reply to continue: not a turn
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def settings(standin: StandinServer | None, *, auth: bool = False, **dialog: Any) -> XzSettings:
    upstreams = []
    if standin is not None:
        upstreams = [{"name": "standin", "model": "standin-chat-1", "base_url": standin.base_url,
                      "backoff_base_s": 0.01}]  # fmt: skip
    return XzSettings(access={"auth_enabled": auth}, dialog={"upstreams": upstreams, **dialog})


@pytest.fixture
async def http(standin: StandinServer) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(standin)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def user(text: str) -> dict[str, Any]:
    return {"model": "xz", "messages": [{"role": "user", "content": text}]}


def template_reply(label: str) -> str:
    policy = load_policy(XzSettings().dialog.policy_path, None)
    reply = policy.rule_for(label).reply
    assert reply
    return reply


async def session_of(http: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    response = await http.get(f"/v1/sessions/{sid}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_llm_reply_is_a_chat_completion_with_upstream_usage(http: httpx.AsyncClient) -> None:
    response = await http.post(PATH, json=user(LLM))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "xz" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    xz = body["xz"]
    assert xz["action"] == "llm" and xz["new_session"] and xz["upstream"]["upstream"] == "standin"
    assert response.headers["x-session-id"] == xz["session_id"]
    session = await session_of(http, xz["session_id"])
    assert session["turns"][-1]["text"] == choice["message"]["content"] != ""
    usage = body["usage"]
    assert usage["prompt_tokens"] == session["usage"]["prompt_tokens"] > 0
    assert usage["completion_tokens"] == session["usage"]["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_template_reply_uses_no_tokens(http: httpx.AsyncClient, standin: StandinServer) -> None:
    response = await http.post(PATH, json=user(TEMPLATE))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["xz"]["action"] == "template" and body["xz"]["upstream"] is None
    assert body["choices"][0]["message"]["content"] == template_reply(body["xz"]["intent"]["label"])
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert standin.stats()["requests"] == 0


async def test_the_session_header_round_trips(http: httpx.AsyncClient) -> None:
    """Only the last message is the turn: the session, named by x-session-id, keeps the rest."""
    first = await http.post(PATH, json=user(TEMPLATE))
    sid = first.headers["x-session-id"]
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": TEMPLATE},
        {"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]},
    ]
    second = await http.post(PATH, json={"messages": history}, headers={"x-session-id": sid})
    assert second.status_code == 200, second.text
    assert second.headers["x-session-id"] == sid and not second.json()["xz"]["new_session"]
    assert second.json()["model"] == "xz-dialog"  # none asked for
    turns = (await session_of(http, sid))["turns"]
    assert [t["text"] for t in turns if t["role"] == "user"] == [TEMPLATE, "hello\nthere"]


async def test_the_user_field_names_a_session_started_on_first_use(http: httpx.AsyncClient) -> None:
    name = "ada@example.com"
    first = await http.post(PATH, json={**user(TEMPLATE), "user": name})
    assert first.status_code == 200, first.text
    sid = first.headers["x-session-id"]
    assert sid == session_for_user(name) and first.json()["xz"]["new_session"]
    again = await http.post(PATH, json={**user(LLM), "user": name})
    assert again.headers["x-session-id"] == sid and not again.json()["xz"]["new_session"]
    other = await http.post(PATH, json={**user(TEMPLATE), "user": "grace@example.com"})
    assert other.headers["x-session-id"] not in {sid, session_for_user(name)}
    # The header, when sent, wins over the user field.
    named = {"x-session-id": other.headers["x-session-id"]}
    header = await http.post(PATH, json={**user(TEMPLATE), "user": name}, headers=named)
    assert header.headers["x-session-id"] == other.headers["x-session-id"]
    assert len((await session_of(http, sid))["turns"]) == 4


@pytest.mark.parametrize(
    ("payload", "headers", "status", "code"),
    [
        ({**user("hi"), "n": 2}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "tools": [TOOL]}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "tool_choice": "required"}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "logprobs": True}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "stop": ["\n"]}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "response_format": {"type": "json_object"}}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "max_tokens": 16}, {}, 400, "unsupported_parameter"),
        ({**user("hi"), "stream_options": {"include_usage": True}}, {}, 400, "invalid_request"),
        ({**user("hi"), "temperature": 3}, {}, 400, "invalid_request"),
        ({**user("hi"), "frobnicate": 1}, {}, 400, "invalid_request"),
        ({"messages": []}, {}, 400, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, {}, 400, "invalid_request"),
        ({"messages": [*user("hi")["messages"], PREFILL]}, {}, 400, "invalid_messages"),
        ({"messages": [{"role": "user"}]}, {}, 400, "invalid_messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, {}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": [IMAGE]}]}, {}, 400, "unsupported_content"),
        (user("   "), {}, 400, "empty_message"),
        (user("x" * 2500), {}, 413, "payload_too_large"),
        (user("hi"), {"x-session-id": "bad id!"}, 400, "invalid_session_id"),
        (user("hi"), {"x-session-id": "never-existed-123"}, 404, "session_not_found"),
        ({**user("hi"), "user": ""}, {}, 400, "invalid_request"),
    ],
)
async def test_what_cannot_be_honoured_is_a_clear_4xx(
    http: httpx.AsyncClient, standin: StandinServer, payload: dict[str, Any], headers: dict[str, str],
    status: int, code: str,
) -> None:  # fmt: skip
    for stream in (False, True):
        body = {**payload, "stream": True} if stream and "stream_options" not in payload else payload
        response = await http.post(PATH, json=body, headers=headers)
        assert response.status_code == status, (stream, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["message"], error
    assert standin.stats()["requests"] == 0  # refused before any upstream call


async def test_harmless_openai_fields_are_accepted(http: httpx.AsyncClient) -> None:
    reply_tokens = XzSettings().dialog.max_reply_tokens
    payload = {
        **user(TEMPLATE), "temperature": 0.2, "top_p": 0.9, "seed": 7, "n": 1, "presence_penalty": 0.5,
        "max_tokens": reply_tokens, "max_completion_tokens": 10 * reply_tokens, "stop": [],
        "tool_choice": "none", "parallel_tool_calls": False, "response_format": {"type": "text"},
        "metadata": {"app": "test"}, "store": False, "logprobs": False, "modalities": ["text"],
    }  # fmt: skip
    response = await http.post(PATH, json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["xz"]["action"] == "template"


async def test_a_reply_cut_by_the_reply_bound_finishes_with_length(standin: StandinServer) -> None:
    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(standin, max_reply_tokens=8)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(PATH, json={**user(LLM), "max_tokens": 8})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert 0 < body["usage"]["completion_tokens"] <= 8


async def test_without_an_upstream_the_fallback_is_a_completion_without_usage() -> None:
    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(None)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post(PATH, json=user(LLM))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["xz"]["action"] == "fallback" and body["xz"]["flags"] == ["no_upstream"]
        assert body["choices"][0]["message"]["content"] and body["usage"]["total_tokens"] == 0


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_streamed_llm_reply_is_openai_chunks(http: httpx.AsyncClient, include_usage: bool) -> None:
    payload = {**user(LLM), "stream": True, "stream_options": {"include_usage": include_usage}}
    response = await http.post(PATH, json=payload)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    *events, end = chunks(response.text)
    assert end == "[DONE]"
    usage_chunk = events.pop() if include_usage else None
    first, *deltas, last = events
    assert {e["id"] for e in events} == {first["id"]} and all(
        e["object"] == "chat.completion.chunk" for e in events
    )
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["xz"]["action"] == "llm" and first["xz"]["session_id"] == response.headers["x-session-id"]
    assert len(deltas) > 1 and all(d["choices"][0]["finish_reason"] is None for d in deltas)
    content = "".join(d["choices"][0]["delta"]["content"] for d in deltas)
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    session = await session_of(http, response.headers["x-session-id"])
    assert session["turns"][-1]["text"] == content != ""  # the streamed reply was saved whole
    assert ("usage" in first) is include_usage and all(e.get("usage") is None for e in events)
    if usage_chunk is not None:
        assert usage_chunk["choices"] == [] and usage_chunk["id"] == first["id"]
        assert usage_chunk["usage"]["completion_tokens"] == session["usage"]["completion_tokens"] > 0
        assert usage_chunk["usage"]["prompt_tokens"] == session["usage"]["prompt_tokens"] > 0


async def test_a_streamed_template_reply_has_zero_usage(http: httpx.AsyncClient) -> None:
    payload = {**user(TEMPLATE), "stream": True, "stream_options": {"include_usage": True}}
    events = chunks((await http.post(PATH, json=payload)).text)
    first, delta, last, usage, end = events
    assert first["xz"]["action"] == "template" and end == "[DONE]"
    assert delta["choices"][0]["delta"]["content"] == template_reply(first["xz"]["intent"]["label"])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert usage["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def test_a_stream_past_its_deadline_ends_with_an_error_event(
    http: httpx.AsyncClient, standin: StandinServer
) -> None:
    """The status line is out when the deadline passes: an error event in OpenAI's shape (its SDKs
    raise it), then [DONE]; the turn is not saved, and its session is free for the next message."""
    sid = (await http.post(PATH, json=user(TEMPLATE))).headers["x-session-id"]
    standin.faults(chunk_delay_ms=150)
    headers = {"x-session-id": sid, "x-request-timeout-ms": "1000"}
    response = await http.post(PATH, json={**user(LLM), "stream": True}, headers=headers)
    standin.faults(chunk_delay_ms=0)
    events = chunks(response.text)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert set(events[-2]) == {"error"} and events[-2]["error"]["code"] == "deadline_exceeded"
    assert events[-2]["error"]["message"]
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])  # no finished turn
    assert len((await session_of(http, sid))["turns"]) == 2
    after = await http.post(PATH, json=user(TEMPLATE), headers={"x-session-id": sid})
    assert after.status_code == 200, after.text


@pytest.fixture
def store_redis() -> Iterator[RedisServer]:
    """A real redis-server as the durable store: freeing the lock is real I/O."""
    yield from redis_or_skip()


@pytest.mark.parametrize("after_chunks", [0, 1])
async def test_a_client_that_leaves_a_stream_frees_its_session(
    standin: StandinServer, store_redis: RedisServer, after_chunks: int
) -> None:
    config = settings(standin).model_copy(update={"store": StoreSpec(redis_url=store_redis.url)})
    app = create_api(FakeNluClient(), config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        sid = (await http.post(PATH, json=user(TEMPLATE))).headers["x-session-id"]
        standin.faults(chunk_delay_ms=300)  # the reply streams slowly: the client leaves during it
        read = await leave_stream(
            app, PATH, {**user(LLM), "stream": True}, after_chunks, {"x-session-id": sid}
        )
        assert not any(b"[DONE]" in c for c in read)
        standin.faults(chunk_delay_ms=0)
        after = await http.post(PATH, json=user(TEMPLATE), headers={"x-session-id": sid})
        assert after.status_code == 200, after.text


async def test_the_route_needs_the_chat_scope(standin: StandinServer) -> None:
    """/v1/chat/completions is a chat turn: the "/v1/chat" prefix gives it the chat scope on purpose."""
    assert scope_for(PATH) == "chat" == scope_for("/v1/chat")
    app = create_api(FakeNluClient(), settings(standin, auth=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        results = {}
        for scopes in (["chat"], ["nlu", "embeddings"]):
            plain, record = mint("t", scopes=scopes)
            await app.state.access.store.put(record)
            response = await http.post(
                PATH, json=user(TEMPLATE), headers={"Authorization": f"Bearer {plain}"}
            )
            results[scopes[0]] = (response.status_code, response.json().get("error", {}).get("code"))
        anonymous = await http.post(PATH, json=user(TEMPLATE))
        await app.state.access.close()
    assert results == {"chat": (200, None), "nlu": (403, results["nlu"][1])} and results["nlu"][1]
    assert anonymous.status_code == 401


async def test_the_schema_documents_json_and_event_stream(http: httpx.AsyncClient) -> None:
    operation = (await http.get("/openapi.json")).json()["paths"][PATH]["post"]
    content = operation["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(content)
    assert {p["name"] for p in operation.get("parameters", [])} == {"x-session-id"}


async def test_the_openai_sdk_reads_both_shapes_and_the_refusal(standin: StandinServer) -> None:
    """OpenAI's own client, over the ASGI app: it parses the completion, the chunks and the 400."""
    import openai

    transport = httpx.ASGITransport(app=create_api(FakeNluClient(), settings(standin)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http)
        messages: Any = [{"role": "user", "content": LLM}]
        completion = await client.chat.completions.create(model="xz", messages=messages)
        extra = completion.model_extra or {}
        assert completion.choices[0].message.content and extra["xz"]["action"] == "llm"
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        stream = await client.chat.completions.create(
            model="xz", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        async for chunk in stream:
            parts += [c.delta.content or "" for c in chunk.choices]
            usage = chunk.usage or usage
        assert "".join(parts) and usage is not None and usage.completion_tokens > 0
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="xz", messages=messages, n=2)
        assert refused.value.code == "unsupported_parameter" and "n must be 1" in refused.value.message
        standin.faults(chunk_delay_ms=150)
        cut = await client.chat.completions.create(
            model="xz", messages=messages, stream=True, extra_headers={"x-request-timeout-ms": "1000"}
        )
        with pytest.raises(openai.APIError) as late:
            async for _ in cut:
                pass
        standin.faults(chunk_delay_ms=0)
        assert late.value.code == "deadline_exceeded"
