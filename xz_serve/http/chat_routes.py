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

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from xz_serve.dialog.service import ChatTurn, DialogService
from xz_serve.dialog.sessions import SESSION_ID
from xz_serve.http.context import Ctx
from xz_serve.http.schemas import ChatRequest, ChatResponse, ErrorResponse
from xz_serve.http.turn_stream import TurnStream, sse
from xz_serve.kernel.errors import InvalidInputError, XzError


def _check_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise InvalidInputError(
            "session_id must be 8-64 characters of A-Z a-z 0-9 _ -", code="invalid_session_id"
        )
    return session_id


class ChatEvents:
    """``/v1/chat``'s events: ``meta``, ``delta``s, ``done`` with the saved reply, or ``error``."""

    def opening(self, turn: ChatTurn) -> bytes:
        return sse({"type": "meta", **turn.meta()})

    def delta(self, text: str) -> bytes:
        return sse({"type": "delta", "content": text})

    def closing(self, turn: ChatTurn) -> list[bytes]:
        done = turn.body()
        return [sse({"type": "done", **{k: done[k] for k in ("reply", "policy", "flags", "usage", "cache")}})]

    def error(self, exc: XzError) -> bytes:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.retry_after_s:
            error["retry_after_s"] = exc.retry_after_s
        return sse({"type": "error", "error": error})


def chat_router(service: DialogService) -> APIRouter:
    router = APIRouter(tags=["chat"])

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
            return TurnStream(turn, ctx, service, ChatEvents(), headers)
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
