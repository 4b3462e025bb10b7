"""The admission gate: a replica works on a bounded number of HTTP requests; past it, 503 at once.

Counting requests at the very entrance of the replica's ASGI app and refusing the excess there
bounds the work a replica holds however the requests are shaped (the replica's batcher separately
bounds pending texts). The gate wraps the whole app, outside telemetry, routing and error handling,
because under overload most requests are refusals: each one costs only a counter and a prebuilt
JSON 503 (no span, no parsing, no validation, no model time). Refusals still reach the HTTP
metrics (by route, status 503, code ``overloaded``). The two health probes are exempt, by their
exact paths under the app's route prefix: any other path pays for a slot, whatever it ends with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.http.errors import error_response
from xz_serve.http.middleware.access import route_path
from xz_serve.http.middleware.slot import AnswerSlot
from xz_serve.http.middleware.telemetry import UNMATCHED
from xz_serve.settings import XzSettings
from xz_serve.telemetry.metrics import HttpMetrics, http_metrics

EXEMPT = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_S = 1
# The share of the HTTP replica's Serve slots (max_ongoing_requests) left free for refusals in
# progress: Serve counts a request against its slots before the gate sees it, and a refusal holds
# one for the ~0.1 ms its 503 takes.
REFUSAL_SHARE = 0.25


def max_in_flight(settings: XzSettings) -> int:
    """``api.max_in_flight``, else one request per text of ``batch.queue_batches`` full batches;
    at most three quarters of the HTTP replica's ``max_ongoing_requests``.

    Serve admits a request to its slots before the gate sees it. With no slot free it holds the
    request in its own queue and, past ``max_queued_requests``, refuses it with a plain-text 503.
    The gate must therefore bind below Serve's bound, with room left for the refusals in flight,
    so that every refusal is our JSON error and no request waits in a queue we do not bound.
    """
    batch = settings.batch
    derived = settings.api.max_in_flight or math.ceil(batch.queue_batches * batch.max_batch_size)
    return min(derived, serve_slots_bound(settings))


def serve_slots_bound(settings: XzSettings) -> int:
    """Requests the gate lets into the app at once, answered or not: three quarters of the HTTP
    replica's ``max_ongoing_requests`` (the rest is for refusals in progress)."""
    slots = (settings.nlu if settings.topology == "fused" else settings.ingress).max_ongoing_requests
    return max(1, math.floor(slots * (1 - REFUSAL_SHARE)))


class AdmissionMiddleware:
    """Refuses a request past either of two counts, kept apart because they end at different times.

    ``in_flight`` counts the work: a request from arrival to its answer's last body message (an
    ``AnswerSlot``; an error or a client disconnect ends it too), at most ``limit``. A client that
    sends its next request as soon as it has an answer must find that slot free, while the layers
    inside still end spans and record metrics. ``inside`` counts requests until the app returns,
    which is how long Serve counts them against the replica's slots, at most ``inside_limit``
    (``serve_slots_bound``; by default ``limit``): so the gate never lets Serve's own bound, and
    its plain-text 503, be reached.

    ``routes`` (the app's static paths) label refusals in the metrics the way the telemetry
    middleware labels answers; any other path counts as ``unmatched``.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        routes: Iterable[str] = (),
        metrics: HttpMetrics | None = None,
        inside_limit: int | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.inside_limit = max(limit, inside_limit or limit)
        self.in_flight = 0
        self.inside = 0
        self.routes = frozenset(routes)
        self.metrics = metrics
        message = f"this replica is at its bound of {limit} requests in flight; retry later"
        refusal = error_response(503, "overloaded", message, retry_after_s=RETRY_AFTER_S)  # rendered once
        self._body = bytes(refusal.body)
        self._headers = tuple(refusal.raw_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit or self.inside >= self.inside_limit:
            await self._refuse(scope, send)
            return
        self.in_flight += 1
        self.inside += 1
        slot = AnswerSlot(self._answered)
        try:  # a disconnect cancels the request task: `finally` still frees both counts
            await self.app(scope, receive, slot.sending(send))
        finally:
            slot.free()
            self.inside -= 1

    def _answered(self) -> None:
        self.in_flight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        # A fresh message and header list each time: outer layers (Serve's request-id middleware)
        # append to the headers in place, so a shared list would grow with every refusal.
        await send({"type": "http.response.start", "status": 503, "headers": list(self._headers)})
        await send({"type": "http.response.body", "body": self._body})
        if self.metrics is not None:
            path = scope["path"]
            route = path if path in self.routes else UNMATCHED
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.metrics.record(route, scope.get("method", "GET"), 503, elapsed_ms, "overloaded")


def admission_gate(app: ASGIApp, settings: XzSettings, routes: Iterable[str] = ()) -> AdmissionMiddleware:
    """``app`` behind the admission bound the settings derive (the outermost layer of a replica)."""
    metrics = http_metrics() if settings.telemetry.enabled else None
    return AdmissionMiddleware(app, max_in_flight(settings), routes, metrics, serve_slots_bound(settings))
