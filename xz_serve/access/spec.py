"""AccessSpec (API keys, per-key limits) and ApiSpec (request bounds and deadlines): pure pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from xz_serve.kernel.types import MAX_TOP_K


class AccessSpec(BaseModel):
    """Authentication, per-key limits and request deadlines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auth_enabled: bool = Field(
        True,
        description="Require `Authorization: Bearer <key>` on every /v1/* route. Off only for local "
        "development: every request is then anonymous and unlimited, and the replica logs a WARNING.",
    )
    key_cache_ttl_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a replica trusts a key record it read from the store. Bounds how late a "
        "revocation takes effect on other replicas; 0 reads the store on every request.",
    )
    key_stale_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="While the store is unreachable, keys verified within this many seconds keep "
        "working (others get 503): a store outage does not lock out every client at once.",
    )
    key_cache_max_entries: int = Field(
        10_000,
        ge=1,
        description="Key records kept per replica, and as many ids the store did not know, kept apart: "
        "made-up keys never evict real ones (which keep their `key_stale_s` grace). Bounds memory "
        "under key-guessing.",
    )
    default_requests_per_minute: int | None = Field(
        600,
        ge=1,
        description="Requests per minute for a key that sets no limit of its own; None: unlimited.",
    )
    default_texts_per_minute: int | None = Field(
        6000,
        ge=1,
        description="Texts per minute (summed over requests) for a key that sets no limit of its "
        "own: the model's real cost is per text, not per request; None: unlimited.",
    )
    limits_fail_mode: Literal["open", "closed"] = Field(
        "open",
        description="When the store Redis cannot answer a limit check: `open` lets the request through "
        "(availability first, counted in xz_access_store_errors_total{op='limit'}); `closed` answers 503.",
    )
    store_backoff_ms: float = Field(
        1000.0,
        gt=0,
        le=60_000,
        description="After a store failure, calls are not tried for this long (the next one probes): "
        "a dead Redis costs one timeout per window, not one per request.",
    )


class ApiSpec(BaseModel):
    """Input limits and response shaping; a request beyond a limit is a 4xx, never a model call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_texts: int = Field(64, ge=1, le=4096, description="Texts per request.")
    max_text_chars: int = Field(2000, ge=1, le=100_000, description="Characters per text.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body size.")
    top_k: int = Field(
        3,
        ge=1,
        le=MAX_TOP_K,
        description="Intent alternatives returned per text when the request sets no `top_k` (a "
        "request may ask for up to 20).",
    )
    oos_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Below this top-intent confidence a text is flagged out of scope even when the "
        "head picked an in-scope intent: an assistant should say it does not know.",
    )
    body_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds a request's body may take to arrive in full, from when the replica starts "
        "reading it; past it, or past the request's deadline if that comes first, the answer is 408 "
        "`body_timeout` and the connection is closed. A body trickled in byte by byte holds its "
        "admission slot no longer than this.",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Default deadline of a request: past it, the request is answered 504 and, if "
        "still queued, dropped before inference. Clients may ask for less or more with the "
        "`x-request-timeout-ms` header.",
    )
    max_request_timeout_s: float = Field(
        60.0, gt=0, description="Cap on `x-request-timeout-ms`: no client may hold a slot longer."
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="HTTP requests one replica works on at once; past it, 503 + Retry-After before "
        "the body is read. None derives it from the batch: `batch.queue_batches * "
        "batch.max_batch_size` (a request carries at least one text, so single-text traffic is "
        "bounded here and larger requests by the replica's text bound). Either way at most three "
        "quarters of the HTTP replica's `max_ongoing_requests` (`nlu` when fused, `ingress` when "
        "split), so this bound refuses (JSON 503) before Serve queues or refuses anything.",
    )
    max_in_flight_per_key: int | None = Field(
        None,
        ge=1,
        description="Requests one API key may have in flight on one replica (with auth off: one "
        "client address, as the ASGI server reports it); past it, 429 `too_many_in_flight` + "
        "Retry-After, after authentication and before the body is read. None: half the replica's "
        "admission bound (see `max_in_flight`), at least 1, so one caller's slow bodies, long chat "
        "turns or streams never take every slot. A value above the bound acts as the bound.",
    )
