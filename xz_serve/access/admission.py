"""The admission stage: a replica works on a bounded number of HTTP requests; past it, 503 at once.

When the per-request HTTP work (parsing, middlewares, JSON) is what saturates a small node, the
backlog forms in the replica's event loop before any model queue sees it, and every request slows
down together. Counting requests at the ASGI entrance, and watching how late the event loop runs a 10 ms
timer (requests waiting to be read make it late), and refusing new requests before any parsing
while either is past its bound keeps admitted requests fast at little cost. Probes are exempt.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.api.errors import error_response
from xz_serve.settings import XzSettings

EXEMPT = ("/healthz", "/readyz")
LAG_TICK_S = 0.01


def max_in_flight(settings: XzSettings) -> int:
    """``api.max_in_flight``, else one request per text of ``batch.queue_batches`` full batches."""
    batch = settings.batch
    return settings.api.max_in_flight or math.ceil(batch.queue_batches * batch.max_batch_size)


class AdmissionMiddleware:
    """Counts requests in flight (released on answer, error or client disconnect) and watches the
    event loop's lag; refuses new requests while either is past its bound."""

    def __init__(self, app: ASGIApp, limit: int, max_lag_s: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.max_lag_s = max_lag_s
        self.lag_s = 0.0  # smoothed lateness of a 10 ms timer on this loop
        self._watcher: asyncio.Task[None] | None = None

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.lag_s = 0.5 * self.lag_s + 0.5 * max(0.0, loop.time() - started - LAG_TICK_S)

    def _refusal(self) -> str | None:
        if self.in_flight >= self.limit:
            return f"{self.in_flight} requests in flight on this replica"
        if self.max_lag_s is not None:
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.get_running_loop().create_task(self._watch_lag())
            if self.lag_s > self.max_lag_s:
                return f"this replica is {self.lag_s * 1000:.0f} ms behind on its work"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        reason = self._refusal()
        if reason is not None:
            await error_response(503, "overloaded", reason, retry_after_s=1)(scope, receive, send)
            return
        self.in_flight += 1
        try:  # a disconnect cancels the request task: `finally` still frees the slot
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
