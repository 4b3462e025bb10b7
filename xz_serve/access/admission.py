"""The admission stage: a replica works on a bounded number of HTTP requests; past it, 503 at once.

Counting requests at the ASGI entrance and refusing the excess before the body is read bounds the
work a replica holds however the requests are shaped (the replica's batcher separately bounds
pending texts), and a refusal costs no parsing, validation or model time. Health probes are exempt.
"""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.api.errors import error_response
from xz_serve.settings import XzSettings

EXEMPT = ("/healthz", "/readyz")


def max_in_flight(settings: XzSettings) -> int:
    """``api.max_in_flight``, else one request per text of ``batch.queue_batches`` full batches."""
    batch = settings.batch
    return settings.api.max_in_flight or math.ceil(batch.queue_batches * batch.max_batch_size)


class AdmissionMiddleware:
    """Counts requests in flight (released on answer, error or client disconnect); refuses the excess."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/").endswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            reason = f"{self.in_flight} requests in flight on this replica"
            await error_response(503, "overloaded", reason, retry_after_s=1)(scope, receive, send)
            return
        self.in_flight += 1
        try:  # a disconnect cancels the request task: `finally` still frees the slot
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
