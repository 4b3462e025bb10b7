"""Chat routes: ``POST /v1/chat`` (JSON or SSE), ``GET``/``DELETE /v1/sessions/{id}``.

Thin HTTP layer over ``DialogService``: validates the body, maps ids to 400/404, and turns a
streamed turn into Server-Sent Events: one ``meta`` event (session, intent, sentiment, policy)
before the first byte of the reply, ``delta`` events as the upstream produces text, a ``done``
event with the whole reply and its usage once the turn is saved, then ``data: [DONE]`` (OpenAI's
terminator). A turn that fails once the response has begun (the deadline, a store that does not
take the save, a session deleted meanwhile) ends with an ``error`` event carrying the same code and
message as the JSON error would, then ``data: [DONE]``; it has no ``done`` event and was not saved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from xz_serve.dialog.service import ChatTurn, DialogService
from xz_serve.dialog.sessions import SESSION_ID
from xz_serve.http.context import Ctx
from xz_serve.http.schemas import ChatRequest, ChatResponse, ErrorResponse
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import InvalidInputError, XzError
from xz_serve.upstream.client import UpstreamError

log = logging.getLogger(__name__)


def _check_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise InvalidInputError(
            "session_id must be 8-64 characters of A-Z a-z 0-9 _ -", code="invalid_session_id"
        )
    return session_id


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def _error_event(exc: XzError) -> bytes:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.retry_after_s:
        error["retry_after_s"] = exc.retry_after_s
    return _sse({"type": "error", "error": error})


class TurnStream(StreamingResponse):
    """The SSE response of one streamed turn, which frees the turn however the response ends.

    A client that leaves cancels the response, sometimes while the first message is still being
    written (a slow client), before the body generator ever starts. So the generator does no cleanup
    of its own: the release runs here in every case, shielded from the cancellation that ended the
    response (after a finished turn it finds nothing left to free).
    """

    def __init__(
        self, content: AsyncIterator[bytes], turn: ChatTurn, service: DialogService, headers: dict[str, str]
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.turn = turn
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.service.release(self.turn)


def chat_router(service: DialogService) -> APIRouter:
    router = APIRouter(tags=["chat"])

    async def events(turn: ChatTurn, ctx: RequestContext) -> AsyncIterator[bytes]:
        # No cleanup here: a generator may be cancelled before it starts, or at an await where a
        # second cancellation hits its cleanup. TurnStream frees the turn, shielded.
        yield _sse({"type": "meta", **turn.meta()})
        failure: XzError | None = None
        try:
            if turn.stream is None:
                yield _sse({"type": "delta", "content": turn.reply})
            else:
                parts: list[str] = []
                try:
                    async for delta in turn.stream.deltas():
                        parts.append(delta)
                        yield _sse({"type": "delta", "content": delta})
                except UpstreamError as exc:
                    log.warning("stream interrupted: %s", exc)
                    turn.flags.append("stream_interrupted")
                turn.reply = "".join(parts)
            await service.finish(turn, ctx)
        except XzError as exc:  # the status line is out: the stream itself says what went wrong
            failure = exc
        except Exception:
            log.exception("streamed turn of session %s failed", turn.session.id)
            failure = XzError("the turn failed and was not saved")
        if failure is not None:
            log.warning("streamed turn of session %s ended with %s", turn.session.id, failure.code)
            yield _error_event(failure)
            yield _sse("[DONE]")
            return
        done = turn.body()
        yield _sse({"type": "done", **{k: done[k] for k in ("reply", "policy", "flags", "usage", "cache")}})
        yield _sse("[DONE]")

    busy = {
        "model": ErrorResponse,
        "description": "The session is answering another message (`session_busy`), or this turn's "
        "lock expired before its save (`turn_lock_expired`; nothing was saved)",
    }

    @router.post("/v1/chat", response_model=ChatResponse, responses={409: busy})
    async def chat(request: ChatRequest, ctx: Ctx) -> Response:
        """One conversation turn: NLU (one encoder pass), policy decision, reply; the session is updated."""
        session_id = None if request.session_id is None else _check_id(request.session_id)
        headers = {**ctx.response_headers, "x-request-id": ctx.request_id}
        if request.stream:
            turn = await service.begin(request.message, session_id, ctx, stream=True)
            headers["x-session-id"] = turn.session.id
            headers["cache-control"] = "no-cache"
            return TurnStream(events(turn, ctx), turn, service, headers)
        turn = await service.chat(request.message, session_id, ctx)
        headers["x-session-id"] = turn.session.id
        return JSONResponse(turn.body(), headers=headers)

    @router.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str, ctx: Ctx) -> Response:
        """The session: turns, slots, last intent, sentiment trend, escalation and LLM usage."""
        session = await service.get_session(ctx.tenant, _check_id(session_id))
        return JSONResponse(session.model_dump(mode="json"))

    @router.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str, ctx: Ctx) -> Response:
        """Delete the session now (privacy); 404 if it does not exist."""
        await service.delete_session(ctx.tenant, _check_id(session_id))
        return JSONResponse({"id": session_id, "deleted": True})

    return router
