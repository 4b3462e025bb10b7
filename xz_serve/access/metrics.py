"""Access metrics (Prometheus via Ray; no-ops outside Ray): who was refused, and why."""

from __future__ import annotations

from ray.util.metrics import Counter

AUTH_FAILURES = Counter(
    "xz_access_auth_failures_total",
    description="Requests refused by authentication or authorization, by reason "
    "(missing, malformed, unknown, revoked, expired, scope, unavailable).",
    tag_keys=("reason",),
)
RATE_LIMITED = Counter(
    "xz_access_rate_limited_total",
    description="Requests refused with 429 by a per-key limit, by kind (requests, texts).",
    tag_keys=("kind",),
)
STORE_ERRORS = Counter(
    "xz_access_store_errors_total",
    description="Store Redis calls of the access layer that failed or were skipped during an outage, "
    "by operation (key_lookup, limit); limits then fail open or closed per access.limits_fail_mode.",
    tag_keys=("op",),
)
