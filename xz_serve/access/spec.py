"""AccessSpec: API keys, rate limits, deadlines. Pure pydantic, nested in XzSettings as ``access``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
        10_000, ge=1, description="Key records kept per replica; bounds memory under key-guessing."
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
        "(availability first, counted in xz_access_limiter_errors_total); `closed` answers 503.",
    )
    store_backoff_ms: float = Field(
        1000.0,
        gt=0,
        le=60_000,
        description="After a store failure, calls are not tried for this long (the next one probes): "
        "a dead Redis costs one timeout per window, not one per request.",
    )
