"""CallerCapMiddleware: one caller's requests in flight on this replica are capped (429 past it).

It runs right after the access stage, which has named the caller (its API key), and before the
body is read: a key that trickles bodies, or holds long chat turns and streams, keeps at most its
cap of the replica's admission slots, and every other caller still finds the rest free. With auth
off the caller is the client address the ASGI server reports (uvicorn takes it from
``X-Forwarded-For`` only when the peer is one of its trusted proxies, ``FORWARDED_ALLOW_IPS``).
Only ``/v1/*`` paths count, as for access; the counting is ``access.inflight``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from xz_serve.access import metrics
from xz_serve.access.inflight import InFlight, caller_of
from xz_serve.http.context import context_of_scope
from xz_serve.http.errors import error_response
from xz_serve.http.middleware.access import route_path
from xz_serve.http.middleware.admission import max_in_flight
from xz_serve.http.middleware.slot import AnswerSlot
from xz_serve.settings import XzSettings

RETRY_AFTER_S = 1


def max_in_flight_per_key(settings: XzSettings) -> int:
    """``api.max_in_flight_per_key``, else half the replica's admission bound; at most the bound."""
    bound = max_in_flight(settings)
    cap = settings.api.max_in_flight_per_key or bound // 2
    return max(1, min(cap, bound))


class CallerCapMiddleware:
    """Count each caller's ``/v1/*`` requests until their answer's last byte; refuse past the cap."""

    def __init__(self, app: ASGIApp, cap: int) -> None:
        self.app = app
        self.table = InFlight(cap)
        self._message = (
            f"this key already has {cap} requests in flight on this replica (its share of the "
            "replica); retry when one has finished"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not route_path(scope).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        caller = caller_of(context_of_scope(scope).key_id, client[0] if client else None)
        if not self.table.acquire(caller):
            metrics.RATE_LIMITED.inc(1, tags={"kind": "in_flight"})
            response = error_response(429, "too_many_in_flight", self._message, RETRY_AFTER_S)
            await response(scope, receive, send)
            return
        slot = AnswerSlot(lambda: self.table.release(caller))
        try:  # the answer's last byte, an error or a cancelled (disconnected) request frees it
            await self.app(scope, receive, slot.sending(send))
        finally:
            slot.free()
