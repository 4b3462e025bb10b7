"""The admission stage: a replica works on a bounded number of HTTP requests; past it, 503 at once.

Counting requests at the ASGI entrance and refusing the excess before the body is read bounds the
work a replica holds however the requests are shaped (the replica's batcher separately bounds
pending texts), and a refusal costs no parsing, validation or model time. Health probes are exempt.

That count only sees requests the event loop has reached. When the loop itself is the bottleneck,
requests wait unseen in front of it, so the stage also refuses while the loop's standing lag
(`loop_lag.LoopLag`) is over ``api.max_loop_lag_ms``: refusals are cheap, so shedding them lets
the loop catch up and keeps admitted requests' latency bounded.
"""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.access.loop_lag import LoopLag
from xz_serve.access.metrics import SHED
from xz_serve.api.errors import error_response
from xz_serve.settings import XzSettings

EXEMPT = ("/healthz", "/readyz")


def max_in_flight(settings: XzSettings) -> int:
    """``api.max_in_flight``, else one request per text of ``batch.queue_batches`` full batches."""
    batch = settings.batch
    return settings.api.max_in_flight or math.ceil(batch.queue_batches * batch.max_batch_size)


class AdmissionMiddleware:
    """Counts requests in flight (released on answer, error or client disconnect); refuses the excess,
    and refuses while the event loop lags more than ``max_loop_lag_ms`` (None: no lag bound)."""

    def __init__(self, app: ASGIApp, limit: int, max_loop_lag_ms: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.max_loop_lag_ms = max_loop_lag_ms
        self.lag = LoopLag() if max_loop_lag_ms is not None else None

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

    def _refusal(self) -> str | None:
        """Why this request is refused now, or None to admit it."""
        if self.in_flight >= self.limit:
            SHED.inc(tags={"reason": "in_flight"})
            return f"{self.in_flight} requests in flight on this replica"
        if self.lag is not None and self.max_loop_lag_ms is not None:
            self.lag.ensure_running()
            lag_ms = self.lag.standing_ms()
            if lag_ms > self.max_loop_lag_ms:
                SHED.inc(tags={"reason": "loop_lag"})
                return f"this replica runs {lag_ms:.0f} ms behind its arrivals"
        return None
