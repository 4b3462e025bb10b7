"""Every wire model: what clients send and receive (limits are checked in ``nlu.texts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xz_serve.access.keys import DEFAULT_SCOPES, TENANT_PATTERN, Scope
from xz_serve.kernel.types import MAX_TOP_K


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Wire):
    """Exactly one of ``text`` or ``texts``."""

    text: str | None = Field(None, description="One text to analyse.", examples=["what's my balance"])
    texts: list[str] | None = Field(None, description="Several texts, answered in order.")
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Intent alternatives per text (default: `api.top_k`)."
    )


class IntentScore(_Wire):
    label: str
    confidence: float


class IntentResult(_Wire):
    label: str = Field(description="Best intent; `oos` means out of scope.")
    confidence: float
    top_k: list[IntentScore]


class SentimentResult(_Wire):
    label: Literal["negative", "neutral", "positive"] | str
    scores: dict[str, float]


class AnalysisResult(_Wire):
    index: int = Field(description="Position of the text in the request.")
    intent: IntentResult | None = None
    sentiment: SentimentResult | None = None
    out_of_scope: bool | None = Field(
        None, description="True when the assistant should not act on the intent."
    )
    oos_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Out-of-scope score from the same encoder pass: higher means less like any known "
        "intent. `out_of_scope` applies the model's calibrated cut (`oos_threshold` in `/v1/models`); "
        "a caller may apply its own.",
    )


class AnalyzeResponse(_Wire):
    model: str
    results: list[AnalysisResult]


class EmbeddingRequest(_Wire):
    """OpenAI's embeddings request (token-array input is not supported)."""

    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = Field(None, description="Ignored beyond a check: one encoder is served.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's dimension.")
    user: str | None = None


class EmbeddingData(_Wire):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(_Wire):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Wire):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    tasks: list[str]
    intents: list[str] = Field(description="The intent labels this model can return.")
    oos_threshold: float = Field(
        description="The calibrated cut on `oos_score`: at or above it a text is out of scope."
    )


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(_Wire):
    code: str = Field(description="Stable machine-readable code, e.g. `payload_too_large`.")
    message: str


class ErrorResponse(_Wire):
    error: ErrorBody


class HealthResponse(_Wire):
    status: Literal["ok", "ready", "not_ready"]
    detail: str | None = None


# -- chat ---------------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="What the user said.", examples=["how do I jump start my car"])
    session_id: str | None = Field(
        None, description="The id of the session to continue; omit to start one (its id is in the response)."
    )
    stream: bool = Field(False, description="Reply as Server-Sent Events (`text/event-stream`).")


class ChatResponse(BaseModel):
    session_id: str
    new_session: bool
    reply: str
    intent: dict[str, Any]
    sentiment: dict[str, Any]
    policy: str = Field(description="template, cache, llm, escalate or fallback.")
    escalated: bool
    flags: list[str] = Field(description="e.g. no_upstream, upstream_failed, breaker_open, usage_estimated.")
    usage: dict[str, Any] | None = Field(None, description="Upstream tokens and cost when the LLM answered.")
    cache: dict[str, Any] | None = Field(
        None, description="Similarity of the reused question on a cache hit."
    )


# -- admin: API keys ------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    """A new key: who it is for, what it may call and how much."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="Who or what the key is for.")
    tenant: str = Field(
        "default", pattern=TENANT_PATTERN, description="Cache and limit partition of the caller."
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: list(DEFAULT_SCOPES), min_length=1, description="Routes the key may call."
    )
    requests_per_minute: int | None = Field(
        None, ge=1, le=10_000_000, description="Unset: access.default_requests_per_minute."
    )
    texts_per_minute: int | None = Field(
        None, ge=1, le=100_000_000, description="Unset: access.default_texts_per_minute."
    )
    expires_at: datetime | None = Field(None, description="ISO 8601; unset: never expires.")


class KeyInfo(BaseModel):
    id: str
    name: str
    tenant: str
    scopes: list[str]
    requests_per_minute: int | None
    texts_per_minute: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    status: str


class KeyCreated(KeyInfo):
    key: str = Field(description="The API key. Shown once: only its hash is stored.")


class KeyList(BaseModel):
    data: list[KeyInfo]
