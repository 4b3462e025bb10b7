"""UpstreamSpec and PriceSpec: where an LLM lives and what its tokens cost. Pure pydantic."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class UpstreamSpec(BaseModel):
    """One OpenAI-compatible chat-completions endpoint (the API key comes from an env var, never YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="Label in metrics and replies.")
    base_url: str = Field(description="Up to and including /v1, e.g. https://api.openai.com/v1.")
    model: str = Field(description="The `model` sent upstream; also the key of the price table.")
    api_key_env: str | None = Field(
        None, description="Name of the env var holding the bearer key (None: no Authorization header)."
    )
    weight: float = Field(
        1.0, ge=0, description="Share of first attempts; 0 = only used as a fallback when others fail."
    )
    timeout_s: float = Field(
        20.0, gt=0, le=600, description="Longest one attempt may take (read timeout between bytes too)."
    )
    connect_timeout_s: float = Field(2.0, gt=0, le=60, description="TCP/TLS connect timeout.")
    retries: int = Field(
        2, ge=0, le=10, description="Extra attempts on 429/5xx/timeouts before trying the next upstream."
    )
    backoff_base_s: float = Field(
        0.2, ge=0, le=30, description="Backoff before retry n is uniform in [0, base * 2**n] (full jitter)."
    )
    backoff_max_s: float = Field(
        5.0, ge=0, le=120, description="Cap of one backoff sleep, also of an honoured Retry-After."
    )
    max_connections: int = Field(32, ge=1, le=1024, description="Connection pool size for this upstream.")
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="Consecutive failed requests that open the circuit breaker."
    )
    breaker_reset_s: float = Field(
        30.0, gt=0, le=3600, description="How long an open breaker rejects calls before one probe goes."
    )


class PriceSpec(BaseModel):
    """What one model's tokens cost, in USD per million tokens (the providers' usual unit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float = Field(0.0, ge=0, description="USD per 1M prompt tokens.")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per 1M completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one call."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6
