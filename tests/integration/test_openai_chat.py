"""/v1/chat/completions on the real Serve app (INT8 model, real Redis for cache and sessions), with
OpenAI's own Python SDK as the client and the OpenAI-protocol stand-in (bench/openai_standin.py)
as the upstream: both shapes, a session over two turns, usage, the extra field, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import chat_args, deployed
from tests.standin import StandinServer

pytestmark = pytest.mark.integration

TEMPLATE = "hi there"  # greeting: a template rule
LLM = "please transfer 40 dollars to my landlord"  # transfer: personal, so the LLM answers every time
STREAMED_LLM = "can you help me move money from savings to checking"


@pytest.fixture(scope="module")
def app_url(serve_url: str, standin: StandinServer) -> Iterator[str]:
    args = chat_args(standin)
    with deployed(serve_url, "openai", args) as url:
        yield url


@pytest.fixture
def client(app_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0, timeout=30) as sdk:
        yield sdk


def said(text: str) -> Any:
    return [{"role": "user", "content": text}]


def session(app_url: str, sid: str) -> dict[str, Any]:
    response = httpx.get(f"{app_url}/v1/sessions/{sid}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_two_turns_in_one_session(client: openai.OpenAI, app_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model="xz", messages=said(TEMPLATE))
    first = raw.parse()
    sid = raw.headers["x-session-id"]
    xz = (first.model_extra or {})["xz"]
    assert xz["action"] == "template" and xz["intent"]["label"] == "greeting" and xz["session_id"] == sid
    assert first.object == "chat.completion" and first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason == "stop" and first.choices[0].message.content
    assert first.usage is not None and first.usage.total_tokens == 0

    history = [*said(TEMPLATE), {"role": "assistant", "content": first.choices[0].message.content}]
    raw = client.chat.completions.with_raw_response.create(
        model="xz", messages=[*history, *said(LLM)], extra_headers={"x-session-id": sid}
    )
    second = raw.parse()
    xz = (second.model_extra or {})["xz"]
    assert raw.headers["x-session-id"] == sid and xz["session_id"] == sid and not xz["new_session"]
    assert xz["action"] == "llm" and xz["upstream"]["upstream"] == "standin"
    assert second.usage is not None and second.usage.prompt_tokens > 0 and second.usage.completion_tokens > 0

    state = session(app_url, sid)
    assert [t["text"] for t in state["turns"] if t["role"] == "user"] == [TEMPLATE, LLM]
    assert state["turns"][-1]["text"] == second.choices[0].message.content
    assert state["usage"]["completion_tokens"] == second.usage.completion_tokens
    assert state["usage"]["prompt_tokens"] == second.usage.prompt_tokens


def test_the_user_field_keeps_a_session(client: openai.OpenAI) -> None:
    name = f"integration-{id(client)}@example.com"
    first = client.chat.completions.create(model="xz", messages=said(TEMPLATE), user=name)
    second = client.chat.completions.create(model="xz", messages=said(LLM), user=name)
    one, two = (first.model_extra or {})["xz"], (second.model_extra or {})["xz"]
    assert one["new_session"] and not two["new_session"] and one["session_id"] == two["session_id"]


def read_stream(stream: Any) -> tuple[list[Any], str]:
    chunks = list(stream)
    return chunks, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streamed_llm_and_template_replies(client: openai.OpenAI, app_url: str) -> None:
    stream = client.chat.completions.create(
        model="xz", messages=said(STREAMED_LLM), stream=True, stream_options={"include_usage": True}
    )
    chunks, content = read_stream(stream)
    xz = (chunks[0].model_extra or {})["xz"]
    assert xz["action"] == "llm" and chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 5 and chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens > 0
    state = session(app_url, xz["session_id"])
    assert state["turns"][-1]["text"] == content != ""
    assert state["usage"]["completion_tokens"] == usage.completion_tokens

    stream = client.chat.completions.create(
        model="xz",
        messages=said(TEMPLATE),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-session-id": xz["session_id"]},
    )
    chunks, content = read_stream(stream)
    again = (chunks[0].model_extra or {})["xz"]
    assert again["action"] == "template" and again["session_id"] == xz["session_id"]
    assert content == session(app_url, xz["session_id"])["turns"][-1]["text"] != ""
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"n": 2}, "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "lookup"}}]}, "unsupported_parameter"),
        ({"messages": [*said("hi"), {"role": "assistant", "content": "Hel"}]}, "invalid_messages"),
        ({"messages": []}, "invalid_request"),
    ],
)
def test_a_bad_request_is_a_bad_request_error(
    client: openai.OpenAI, kwargs: dict[str, Any], code: str
) -> None:
    request: dict[str, Any] = {"model": "xz", "messages": said(TEMPLATE), **kwargs}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**request, stream=stream)
        assert refused.value.status_code == 400 and refused.value.code == code
        assert refused.value.message


def test_an_unknown_session_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="xz", messages=said(TEMPLATE), extra_headers={"x-session-id": "never-existed-42"}
        )
    assert missing.value.code == "session_not_found"


def test_a_stream_cut_by_its_deadline_raises_in_the_sdk(
    client: openai.OpenAI, standin: StandinServer
) -> None:
    """The error event after the stream began reaches OpenAI's SDK as an APIError with our code."""
    standin.faults(chunk_delay_ms=150)
    try:
        stream = client.chat.completions.create(
            model="xz", messages=said(LLM), stream=True, extra_headers={"x-request-timeout-ms": "1000"}
        )
        with pytest.raises(openai.APIError) as cut:
            read_stream(stream)
    finally:
        standin.faults(chunk_delay_ms=0)
    assert cut.value.code == "deadline_exceeded" and cut.value.message
