"""OpenAI's chat completions, ``POST /v1/chat/completions``, over the dialog layer of ``/v1/chat``.

OpenAI's SDKs and chat UIs send the whole conversation each time; the assistant keeps it in a
session instead, so only the last message, the user's, is the turn, and everything else about the
turn (NLU, policy, reply cache, upstream, deadline, limits, the turn lock) is ``DialogService``'s,
exactly as for ``/v1/chat``. The session is the ``x-session-id`` header's (an existing one, else
404) or the one OpenAI's ``user`` field names (started on first use); without either a new session
starts, and every answer names its session in ``x-session-id``.

A streamed turn is ``chat.completion.chunk`` events: the role first, content deltas as the upstream
produces them, a chunk with ``finish_reason`` once the turn is saved, a ``usage`` chunk when
``stream_options.include_usage`` asks, then ``data: [DONE]``. A turn that fails once the stream
has begun ends with ``data: {"error": {"code", "message"}}`` (OpenAI's SDKs raise it as an
``APIError``) and ``[DONE]``, and was not saved, as on ``/v1/chat``. ``usage`` counts the upstream
LLM's tokens (0 for a template, cache or escalation reply); the policy's action, the intent and the
session travel in an extra ``xz`` field that OpenAI clients ignore.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from xz_serve.dialog.service import ChatTurn, DialogService
from xz_serve.dialog.sessions import SESSION_ID, session_for_user
from xz_serve.http.context import Ctx
from xz_serve.http.errors import ERRORS
from xz_serve.http.schemas import (
    ChatCompletionChoice,
    ChatCompletionExtra,
    ChatCompletionMessage,
    ChatCompletionReply,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionUsage,
    ErrorResponse,
)
from xz_serve.http.turn_stream import TurnStream, sse
from xz_serve.kernel.errors import InvalidInputError, XzError

DEFAULT_MODEL = "xz-dialog"  # the answer's `model` when the request names none
FinishReason = Literal["stop", "length", "content_filter"]
SSE_EVENT: dict[str, Any] = {  # one event of a streamed answer, as OpenAPI describes text/event-stream
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": 'A `chat.completion.chunk` JSON, `{"error": {...}}` after a failure, or `[DONE]`.',
        }
    },
}


def unsupported(request: ChatCompletionRequest, reply_tokens: int) -> str | None:
    """Why the request asks for something a turn cannot honour (None: nothing). A client that relies
    on several choices, tools or stop sequences should learn it now, not from a reply without them."""
    if (request.n or 1) > 1:
        return "n: one reply per turn; n must be 1"
    if request.tools or request.functions:
        return "tools: tool and function calls are not supported"
    for name, choice in (("tool_choice", request.tool_choice), ("function_call", request.function_call)):
        if choice not in (None, "none", "auto"):
            return f"{name}: only 'none' or 'auto' (there are no tools)"
    if request.logprobs or request.top_logprobs:
        return "logprobs: log probabilities are not available"
    if request.stop:
        return "stop: stop sequences are not supported"
    if request.logit_bias:
        return "logit_bias: not supported"
    if request.response_format and request.response_format.get("type", "text") != "text":
        return "response_format: only text replies (type 'text')"
    if request.modalities and set(request.modalities) != {"text"}:
        return "modalities: only text"
    asked = [t for t in (request.max_tokens, request.max_completion_tokens) if t is not None]
    if asked and min(asked) < reply_tokens:
        return (
            f"max_tokens: every reply may use up to {reply_tokens} tokens here; "
            f"ask for at least {reply_tokens} or leave it out"
        )
    return None


def turn_message(messages: list[ChatCompletionMessage]) -> str:
    """The turn's text: the last message, which must be the user's (text parts joined by lines)."""
    last = messages[-1]
    if last.role != "user":
        raise InvalidInputError(
            f"the last message must be the user's (role 'user'), not {last.role!r}: it is the turn "
            "answered; the session keeps the conversation before it",
            code="invalid_messages",
        )
    if last.content is None:
        raise InvalidInputError("the user's message has no content", code="invalid_messages")
    if isinstance(last.content, str):
        return last.content
    texts = []
    for i, part in enumerate(last.content):
        if part.type != "text":
            raise InvalidInputError(
                f"messages[-1].content[{i}]: only text parts are supported (got {part.type!r})",
                code="unsupported_content",
            )
        if part.text is None:
            raise InvalidInputError(f"messages[-1].content[{i}]: a text part needs `text`")
        texts.append(part.text)
    return "\n".join(texts)


def session_of(header: str | None, user: str | None) -> tuple[str | None, bool]:
    """The session id to continue and whether to start it when missing: the header's (it must
    exist), else the one ``user`` names (started on first use), else none (a new session)."""
    if header is not None:
        if not SESSION_ID.match(header):
            raise InvalidInputError(
                "x-session-id must be 8-64 characters of A-Z a-z 0-9 _ -", code="invalid_session_id"
            )
        return header, False
    if user is not None:
        return session_for_user(user), True
    return None, False


def _usage(turn: ChatTurn) -> ChatCompletionUsage:
    if turn.completion is None:
        return ChatCompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    u = turn.completion.usage
    return ChatCompletionUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total
    )


def _finish_reason(turn: ChatTurn) -> FinishReason:
    """The upstream's reason where OpenAI defines it (a reply cut at the token bound is `length`);
    every other reply, template, cache and fallback included, ended by itself."""
    reason = turn.completion.finish_reason if turn.completion is not None else None
    if reason == "length":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "stop"


def _extra(turn: ChatTurn) -> ChatCompletionExtra:
    body = turn.body()
    upstream = body["usage"]
    if upstream is not None:  # the token counts are in `usage`; here: who answered, what it cost
        upstream = {k: upstream[k] for k in ("upstream", "model", "estimated", "cost_usd")}
    return ChatCompletionExtra(
        action=turn.policy,
        session_id=turn.session.id,
        new_session=turn.new_session,
        intent=body["intent"],
        sentiment=body["sentiment"],
        escalated=body["escalated"],
        flags=list(turn.flags),
        upstream=upstream,
        cache=body["cache"],
    )


class CompletionChunks:
    """``chat.completion.chunk`` events of one streamed turn, sharing its id, time and model: the
    role (with ``xz``) first, content deltas, a chunk with ``finish_reason`` (and the final ``xz``),
    and a ``usage`` chunk when ``stream_options.include_usage`` asks; a failure is OpenAI's error
    event, which the SDKs raise as an ``APIError``."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage

    def chunk(
        self, delta: dict[str, str], finish_reason: str | None = None, xz: ChatCompletionExtra | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        event: dict[str, Any] = {**self.head, "choices": [choice]}
        if self.include_usage:  # OpenAI: null on every chunk but the last when usage is asked for
            event["usage"] = None
        if xz is not None:
            event["xz"] = xz.model_dump(mode="json")
        return sse(event)

    def opening(self, turn: ChatTurn) -> bytes:
        return self.chunk({"role": "assistant", "content": ""}, xz=_extra(turn))

    def delta(self, text: str) -> bytes:
        return self.chunk({"content": text})

    def closing(self, turn: ChatTurn) -> list[bytes]:
        events = [self.chunk({}, _finish_reason(turn), xz=_extra(turn))]
        if self.include_usage:
            events.append(sse({**self.head, "choices": [], "usage": _usage(turn).model_dump(mode="json")}))
        return events

    def error(self, exc: XzError) -> bytes:
        return sse({"error": {"code": exc.code, "message": exc.message}})


def openai_chat_router(service: DialogService) -> APIRouter:
    router = APIRouter(tags=["chat"], responses=ERRORS)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}},
        404: {"model": ErrorResponse, "description": "The `x-session-id` session does not exist"},
        409: {
            "model": ErrorResponse,
            "description": "The session is answering another message (`session_busy`), or this "
            "turn's lock expired before its save (`turn_lock_expired`; nothing was saved)",
        },
    }

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=responses)
    async def chat_completions(
        request: ChatCompletionRequest,
        ctx: Ctx,
        x_session_id: str | None = Header(
            None, description="The session to continue (from a previous answer's `x-session-id`)."
        ),
    ) -> Response:
        """OpenAI-compatible chat turn: the last (user) message is answered in its session, as on
        /v1/chat; JSON `chat.completion`, or `chat.completion.chunk` events with `stream: true`."""
        refusal = unsupported(request, service.spec.max_reply_tokens)
        if refusal is not None:
            raise InvalidInputError(refusal, code="unsupported_parameter")
        if request.stream_options is not None and not request.stream:
            raise InvalidInputError("stream_options: only with stream: true")
        message = turn_message(request.messages)
        session_id, start = session_of(x_session_id, request.user)
        model = request.model or DEFAULT_MODEL
        headers = {**ctx.response_headers, "x-request-id": ctx.request_id}
        if request.stream:
            turn = await service.begin(message, session_id, ctx, stream=True, start_missing=start)
            headers["x-session-id"] = turn.session.id
            headers["cache-control"] = "no-cache"
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            return TurnStream(turn, ctx, service, CompletionChunks(model, include_usage), headers)
        turn = await service.begin(message, session_id, ctx, start_missing=start)
        await service.finish(turn, ctx)
        headers["x-session-id"] = turn.session.id
        body = ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            choices=[
                ChatCompletionChoice(
                    message=ChatCompletionReply(content=turn.reply), finish_reason=_finish_reason(turn)
                )
            ],
            usage=_usage(turn),
            xz=_extra(turn),
        )
        return JSONResponse(body.model_dump(mode="json"), headers=headers)

    return router
