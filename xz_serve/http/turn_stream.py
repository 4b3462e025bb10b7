"""A streamed chat turn as Server-Sent Events, for every chat protocol the service speaks.

``/v1/chat`` and ``/v1/chat/completions`` differ only in how an event looks; what a streamed turn
does is one sequence, kept here so the two cannot drift: relay the upstream's deltas (or the whole
reply of a template or cached turn), save the turn, then the closing events. A turn that fails once
the status line is out says so in the stream itself (an error event, then ``data: [DONE]``) and was
not saved. ``TurnStream`` frees the session's turn however the response ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from xz_serve.dialog.service import ChatTurn, DialogService
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import XzError
from xz_serve.upstream.client import UpstreamError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"  # OpenAI's terminator, the last event of every stream


def sse(data: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class EventFormat(Protocol):
    """How one protocol spells the events of a streamed turn."""

    def opening(self, turn: ChatTurn) -> bytes:
        """Before the first byte of the reply (what the turn is: session, intent, policy)."""
        ...

    def delta(self, text: str) -> bytes:
        """A piece of the reply."""
        ...

    def closing(self, turn: ChatTurn) -> list[bytes]:
        """After the turn is saved, before ``[DONE]``."""
        ...

    def error(self, exc: XzError) -> bytes:
        """The turn failed after the stream began; it was not saved."""
        ...


async def turn_events(
    turn: ChatTurn, ctx: RequestContext, service: DialogService, spell: EventFormat
) -> AsyncIterator[bytes]:
    """The events of one streamed turn, spelled by ``spell``.

    No cleanup here: a generator may be cancelled before it starts, or at an await where a second
    cancellation hits its cleanup. ``TurnStream`` frees the turn, shielded.
    """
    yield spell.opening(turn)
    failure: XzError | None = None
    try:
        if turn.stream is None:
            if turn.reply:
                yield spell.delta(turn.reply)
        else:
            parts: list[str] = []
            try:
                async for delta in turn.stream.deltas():
                    parts.append(delta)
                    yield spell.delta(delta)
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
        yield spell.error(failure)
        yield DONE
        return
    for event in spell.closing(turn):
        yield event
    yield DONE


class TurnStream(StreamingResponse):
    """The SSE response of one streamed turn, which frees the turn however the response ends.

    A client that leaves cancels the response, sometimes while the first message is still being
    written (a slow client), before the body generator ever starts. So the generator does no cleanup
    of its own: the release runs here in every case, shielded from the cancellation that ended the
    response (after a finished turn it finds nothing left to free).
    """

    def __init__(
        self,
        turn: ChatTurn,
        ctx: RequestContext,
        service: DialogService,
        spell: EventFormat,
        headers: dict[str, str],
    ) -> None:
        super().__init__(
            turn_events(turn, ctx, service, spell), media_type="text/event-stream", headers=headers
        )
        self.turn = turn
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.service.release(self.turn)
