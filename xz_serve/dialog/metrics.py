"""DialogMetrics: turns by policy, escalations, LLM tokens/cost by upstream and key, breaker state.

Ray metrics (Prometheus through Ray's exporter); no-ops outside a Ray worker. Key-level labels use
the API key id (few, operator-issued), never the session id (unbounded): per-session counts live in
the session itself (``GET /v1/sessions/{id}`` -> ``usage``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.util.metrics import Counter, Gauge, Histogram

from xz_serve.upstream.breaker import BreakerState

_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class DialogMetrics:
    def __init__(self) -> None:
        self.turns = Counter(
            "xz_dialog_turns_total",
            description="Chat turns by the policy that produced the reply.",
            tag_keys=("policy",),
        )
        self.escalations = Counter(
            "xz_dialog_escalations_total",
            description="Conversations handed to a human, by reason (intent or negative sentiment).",
            tag_keys=("reason",),
        )
        self.reply_latency = Histogram(
            "xz_dialog_reply_latency_ms",
            description="Time to produce a whole reply, by policy.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("policy",),
        )
        self.llm_calls = Counter(
            "xz_llm_requests_total",
            description="Upstream chat-completion requests by upstream and outcome.",
            tag_keys=("upstream", "outcome"),
        )
        self.tokens = Counter(
            "xz_llm_tokens_total",
            description="Upstream tokens by upstream, direction (prompt/completion) and API key.",
            tag_keys=("upstream", "kind", "key"),
        )
        self.cost = Counter(
            "xz_llm_cost_usd_total",
            description="Upstream spend in USD (price table in config) by upstream and API key.",
            tag_keys=("upstream", "key"),
        )
        self.saved_tokens = Counter(
            "xz_llm_cache_saved_tokens_total",
            description="Upstream tokens not spent because a cached reply was served, by API key.",
            tag_keys=("key",),
        )
        self.breaker = Gauge(
            "xz_llm_breaker_state",
            description="Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.",
            tag_keys=("upstream",),
        )

    def breakers(self, states: Mapping[str, BreakerState]) -> None:
        for name, state in states.items():
            self.breaker.set(_BREAKER_VALUE[state], tags={"upstream": name})
