"""DialogSpec: sessions, policy file and LLM upstreams. Pure pydantic, nested in XzSettings as ``dialog``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xz_serve.upstream.spec import PriceSpec, UpstreamSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class DialogSpec(BaseModel):
    """How /v1/chat keeps sessions and chooses replies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="Off: /v1/chat, /v1/chat/completions and /v1/sessions are not mounted."
    )
    policy_path: Path = Field(
        Path("deployments/dialog/policy.yaml"),
        validate_default=True,
        description="YAML policy (reply per intent), validated at start: a bad file stops the replica "
        "from starting rather than answering wrongly. A relative path is resolved when settings are built "
        "(the driver): against the working directory, else the project root (replicas run elsewhere).",
    )
    session_ttl_s: int = Field(
        7 * 86_400,
        ge=60,
        description="A session untouched this long is deleted by Redis (privacy: no conversation is kept "
        "forever); every turn renews it.",
    )
    max_turns: int = Field(
        40, ge=2, le=1000, description="Turns (user + assistant) kept per session; older ones are dropped."
    )
    history_turns: int = Field(
        6,
        ge=0,
        le=100,
        description="Latest turns sent to the LLM as context for intents that need context; cacheable "
        "intents are context-free by definition and get none.",
    )
    escalate_after_negative: int = Field(
        3,
        ge=1,
        le=100,
        description="Hand the conversation to a human once this many user turns in a row are negative.",
    )
    max_message_chars: int = Field(2000, ge=1, le=100_000, description="Characters per user message.")
    max_reply_tokens: int = Field(
        400, ge=1, le=32_000, description="`max_tokens` sent upstream: bounds cost and latency per reply."
    )
    upstreams: list[UpstreamSpec] = Field(
        default_factory=list,
        description="OpenAI-compatible endpoints. Empty: intents whose rule asks the LLM get the policy's "
        "honest fallback reply (never an error).",
    )
    fallback_order: list[str] = Field(
        default_factory=list,
        description="Upstream names tried, in order, after the weighted first pick fails; upstreams not "
        "named follow in list order.",
    )
    prices: dict[str, PriceSpec] = Field(
        default_factory=dict, description="Price per upstream model name; a model not listed costs 0."
    )
    reply_cache: bool = Field(
        True,
        description="Serve LLM replies of intents the policy marks cacheable from the semantic cache "
        "(threshold and margin from `cache`), partitioned by intent, tenant and NLU model.",
    )
    reply_cache_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Cosine a cached reply's question needs; None: the semantic cache's threshold "
        "(`cache.semantic_threshold`). Lower saves more tokens and serves more wrong replies "
        "(bench/chat_replay.py measures the trade-off).",
    )
    reply_cache_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Margin rule of the reply cache (the cache's own `semantic_margin` is for curated "
        "answers). Every LLM reply is a distinct value, so a margin makes paraphrases of one question "
        "veto each other: 0 serves far more rephrasings for a slightly higher wrong-reply rate "
        "(bench/results/chat_replay.md).",
    )
    reply_cache_ttl_s: int = Field(
        86_400, ge=1, description="Lifetime of a cached reply (at most the semantic cache's TTL)."
    )
    turn_lock_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="A session takes one turn at a time: a turn holds the session's lock (in the "
        "store Redis, so across replicas) from reading the session to saving it, and a concurrent "
        "turn gets 409 `session_busy` + Retry-After instead of silently overwriting it. The lock "
        "expires after this long if its holder died; keep it above the longest turn (upstream "
        "timeouts and retries included).",
    )

    @field_validator("policy_path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if path.is_absolute():
            return path
        here = path.resolve()  # the working directory (`serve run` from the project root, the image's /app)
        return here if here.exists() else (PROJECT_ROOT / path).resolve()

    @model_validator(mode="after")
    def _upstreams_consistent(self) -> DialogSpec:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        unknown = [n for n in self.fallback_order if n not in names]
        if unknown:
            raise ValueError(f"fallback_order names unknown upstreams: {unknown}")
        return self
