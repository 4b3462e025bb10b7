"""RequestContext: what one request carries through the stages (who, until when, cache rules, trace).

Middlewares and dependencies fill it in (auth sets the tenant, the deadline stage the deadline,
telemetry the trace carrier); routes hand it to the NLU client and the dialog layer, and every
stage may add response headers to it. One object per request, kept on ``request.state``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from xz_serve.types import CallMeta


@dataclass
class RequestContext:
    """Per-request facts shared by the stages of one request."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"  # cache and limits partition: the API key's tenant
    key_id: str | None = None  # the API key that authenticated the request, if any
    deadline: float | None = None  # wall-clock epoch seconds: comparable across processes
    cache_read: bool = True  # False for `Cache-Control: no-cache` (compute, may still store)
    cache_write: bool = True  # False for `Cache-Control: no-store`
    carrier: dict[str, str] = field(default_factory=dict)  # W3C trace context to propagate
    response_headers: dict[str, str] = field(default_factory=dict)  # added by any stage
    # Set by the access layer: charges texts to the key's texts-per-minute limit (raises 429/413).
    text_meter: Callable[[int], Awaitable[None]] | None = None

    async def charge_texts(self, count: int) -> None:
        """Count ``count`` texts against the caller's limit; call once the count is known, before
        any model work. A no-op when auth is off."""
        if self.text_meter is not None:
            await self.text_meter(count)

    def call_meta(self) -> CallMeta:
        """What crosses the actor boundary to a model replica with each call."""
        return CallMeta(deadline=self.deadline, carrier=dict(self.carrier))


def context_of(request: Request) -> RequestContext:
    """This request's context, created on first use (by a middleware or the route)."""
    ctx: RequestContext | None = getattr(request.state, "xz", None)
    if ctx is None:
        ctx = RequestContext()
        request.state.xz = ctx
    return ctx


async def get_context(request: Request) -> RequestContext:
    """FastAPI dependency for ``context_of``.

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in a thread pool,
    and with that hop a cache hit took 1.30 ms end to end instead of 0.85 ms.
    """
    return context_of(request)


Ctx = Annotated[RequestContext, Depends(get_context)]
"""Route parameter type: ``ctx: Ctx`` injects the request's context."""
