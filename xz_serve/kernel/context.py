"""RequestContext: what one request carries through the stages (who, until when, cache rules, trace).

The HTTP layer creates it when a request arrives and its middlewares fill it in (the access stage
sets the caller, the context stage the deadline and cache rules, telemetry the trace carrier). The
services receive it as a plain object and may add response headers to it; the HTTP layer merges
those into whatever response leaves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from xz_serve.kernel.types import CallMeta


@dataclass(frozen=True)
class KeyLimits:
    """The per-minute limits that apply to the calling key (None: unlimited)."""

    requests_per_minute: int | None
    texts_per_minute: int | None


@dataclass
class RequestContext:
    """Per-request facts shared by the stages of one request."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"  # cache and limits partition: the API key's tenant
    key_id: str | None = None  # the API key that authenticated the request, if any
    limits: KeyLimits | None = None  # that key's limits; None when auth is off
    # A metered route charges its request together with its texts; until then this is False.
    request_charged: bool = True
    deadline: float | None = None  # wall-clock epoch seconds: comparable across processes
    cache_read: bool = True  # False for `Cache-Control: no-cache` (compute, may still store)
    cache_write: bool = True  # False for `Cache-Control: no-store`
    carrier: dict[str, str] = field(default_factory=dict)  # W3C trace context to propagate
    response_headers: dict[str, str] = field(default_factory=dict)  # added by any stage

    def call_meta(self) -> CallMeta:
        """What crosses the actor boundary to a model replica with each call."""
        return CallMeta(deadline=self.deadline, carrier=dict(self.carrier))
