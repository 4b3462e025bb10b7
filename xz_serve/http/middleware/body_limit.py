"""BodyLimitMiddleware: the body is read in full before the route runs, bounded in size and time.

A body over ``api.max_body_bytes`` is refused with 413 before it is buffered (at once when its
``content-length`` says so). A body that has not arrived in full within ``api.body_timeout_s``, or
by the request's deadline if that comes first, is refused with 408 ``body_timeout`` and the
connection is closed: the request holds its admission slot (and its caller's share) no longer,
however slowly the client sends. The route then reads the buffered body at once; later
``receive`` calls (disconnect detection) go to the server as before.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import error_response


class BodyLimitMiddleware:
    """Buffer the body before the app runs: 413 past ``max_bytes``, 408 past ``timeout_s``."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 5.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        now = time.time()
        read_by = now + self.timeout_s
        deadline = context_of_scope(scope).deadline
        by_deadline = deadline is not None and deadline < read_by
        if deadline is not None and by_deadline:
            read_by = deadline
        chunks: list[bytes] = []
        seen = 0
        last: Message | None = None
        try:
            async with asyncio.timeout(max(0.0, read_by - now)):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client left: the app sees it as before
                        last = message
                        break
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_bytes:
                        break
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._too_slow(by_deadline, scope, receive, send)
            return
        if seen > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # What came, as one message; a client that left mid-body still reads as one that left.
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": last is not None}
        pending = [body]
        if last is not None:
            pending.append(last)
        await self.app(scope, replaying(pending, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"the body exceeds {self.max_bytes} bytes")
        await response(scope, receive, send)

    async def _too_slow(self, by_deadline: bool, scope: Scope, receive: Receive, send: Send) -> None:
        if by_deadline:
            message = "the request's deadline passed before its body arrived in full"
        else:
            message = f"the body did not arrive in full within {self.timeout_s:g} s"
        response = error_response(408, "body_timeout", message)
        response.headers["connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``messages`` (already read) first, then the server's own."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
