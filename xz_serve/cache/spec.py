"""CacheSpec: every knob of the exact, coalescing and semantic caches (to be nested in XzSettings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CacheSpec(BaseModel):
    """How the ingress caches predictions; Redis is optional and every Redis failure is a miss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True, description="Off: every text goes to the model (for A/B and debugging)."
    )
    redis_url: str | None = Field(
        default=None,
        description="redis:// or rediss:// URL of the shared cache, from env (XZ_CACHE__REDIS_URL) "
        "because it may carry a password. None: only the per-process L1 runs, nothing is shared.",
    )
    max_connections: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Pool size per process; a request holds one only for one round trip.",
    )
    timeout_ms: float = Field(
        default=50.0,
        gt=0,
        le=5000,
        description="Longest a cache round trip may add to a request; slower counts as an error and "
        "the keys are served as misses: a cache slower than the model pass it saves is no cache.",
    )
    connect_timeout_ms: float = Field(
        default=200.0,
        gt=0,
        le=10_000,
        description="Socket connect timeout; an unreachable Redis fails this fast.",
    )
    backoff_ms: float = Field(
        default=1000.0,
        ge=0,
        le=60_000,
        description="After a Redis error, skip Redis this long before trying again, so a dead Redis "
        "costs one timeout per window instead of one per request.",
    )
    ttl_s: int = Field(
        default=86_400,
        ge=1,
        description="Lifetime of an exact entry in Redis; the key already pins the model.",
    )
    l1_max_entries: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="Entries in the per-process LRU in front of Redis; 0 = off.",
    )
    l1_ttl_s: float = Field(
        default=300.0,
        gt=0,
        description="Lifetime of an L1 entry: bounds how long a flushed Redis key lives on.",
    )
    tenant: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Namespace of this deployment's entries, hashed into every key: apps sharing one "
        "Redis with different namespaces never share entries. The request's tenant (its API key's scope) "
        "is a key part of its own, so two tenants never read each other's entries either.",
    )
    lease_ms: int = Field(
        default=5000,
        ge=10,
        le=600_000,
        description="Cross-replica coalescing lease: how long other replicas wait on the holder before "
        "computing themselves. Longer than a slow model call, shorter than the request timeout.",
    )
    poll_ms: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="How often a replica waiting on another's lease looks for the value.",
    )
    semantic_enabled: bool = Field(
        default=False,
        description="Serve near-duplicate questions from the semantic cache. For answers to a curated "
        "set of questions (FAQ-style), not for model predictions of arbitrary text: even with the "
        "verifier, many hits on look-alike question pairs (QQP) are not duplicates "
        "(bench/results/semantic_threshold.md).",
    )
    semantic_threshold: float = Field(
        default=0.69,
        ge=0,
        le=1,
        description="Cosine similarity the nearest entry needs before the verifier is asked; with the "
        "verifier off, lower means more hits and more wrong ones. The default (with margin 0.1 and the "
        "verifier at 0.4) is the cell chosen in bench/results/semantic_threshold.md, made by "
        "bench/semantic_threshold.py; below it the verifier accepts nothing more.",
    )
    semantic_margin: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="The best entry must beat the best entry with another value by this much, so a "
        "query between two cached questions is a miss rather than a coin flip; it also cuts false hits "
        "for questions whose answer is not cached.",
    )
    semantic_verify: bool = Field(
        default=True,
        description="Check the nearest entry with the pair verifier (xz_serve/cache/verify.py: vetoes "
        "for a changed number, name, negation, opposite or word order, then a logistic regression on "
        "lexical statistics and the cosine; microseconds, no model pass). Needs the text on both sides: "
        "entries stored without text are not served. Off: cosine alone, less precise on look-alike "
        "pairs at every threshold.",
    )
    semantic_verify_min_probability: float = Field(
        default=0.4,
        ge=0,
        le=1,
        description="Probability of 'same question' the verifier's regression must give (fitted on QQP, "
        "5-fold cross-validated). Higher trades hits for precision; the default keeps the FAQ hit "
        "rate up (bench/results/semantic_threshold.md). 0 = vetoes only.",
    )
    semantic_max_entries: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Entries per namespace (one per tenant and cacheable rule); past it, the expired "
        "go first, then the least recently used.",
    )
    semantic_max_bytes: int = Field(
        default=64 * 2**20,
        ge=2**20,
        le=2**40,
        description="Memory one replica's semantic cache may hold in all its namespaces together: "
        "vectors, values and what the verifier reads of each question (not the question itself). Past "
        "it the least recently used entries go, whichever namespace holds them. Namespaces multiply "
        "with tenants, so the per-namespace bound alone does not bound a replica.",
    )
    semantic_ttl_s: int = Field(default=86_400, ge=1, description="Lifetime of a semantic entry.")
    semantic_refresh_ms: float = Field(
        default=250.0,
        gt=0,
        le=60_000,
        description="A replica pulls other replicas' semantic writes at most this often (visible < 1 s).",
    )

    @model_validator(mode="after")
    def _poll_below_lease(self) -> CacheSpec:
        if self.poll_ms >= self.lease_ms:
            raise ValueError("poll_ms must be below lease_ms, or a waiter never sees the value in time")
        return self
