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


# -- OpenAI chat completions (/v1/chat/completions) ------------------------------------------------


class ChatContentPart(BaseModel):
    """One part of a message's content. Only ``text`` parts are answered; the route refuses any
    other type by name (400), so the model keeps their fields (``image_url``, ...) to get there."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`text`; other OpenAI part types are refused.")
    text: str | None = Field(None, description="The text of a `text` part.")


class ChatCompletionMessage(_Wire):
    """One message of OpenAI's ``messages``. Only the last one, the user's, is the turn: the
    session keeps the conversation, so earlier messages are accepted and not re-read."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ChatContentPart] | None = Field(
        None, description='A string, or a list of `{"type": "text", "text": ...}` parts.'
    )
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="Accepted in history only.")
    tool_call_id: str | None = None
    refusal: str | None = None


class ChatStreamOptions(_Wire):
    include_usage: bool = Field(False, description="Send a last chunk with the turn's `usage`.")


class ChatCompletionRequest(_Wire):
    """OpenAI's chat-completions request. Sampling knobs are accepted and left to the policy and
    the upstream's defaults; what cannot be honoured (several choices, tools, logprobs, stop
    sequences, JSON modes, a `max_tokens` below the service's reply bound) is a 400
    `unsupported_parameter` rather than silently dropped."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "xz-dialog",
                    "messages": [{"role": "user", "content": "how do I jump start my car"}],
                },
                {
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "user": "ada@example.com",
                },
            ]
        },
    )

    model: str | None = Field(
        None, max_length=256, description="Echoed back; the dialog policy picks who answers."
    )
    messages: list[ChatCompletionMessage] = Field(
        min_length=1, description="The conversation; the last message must be the user's."
    )
    stream: bool = Field(False, description="Reply as `chat.completion.chunk` Server-Sent Events.")
    stream_options: ChatStreamOptions | None = Field(None, description="Only with `stream: true`.")
    user: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A stable name for the conversation: its session, started on first use. The "
        "`x-session-id` header, when sent, wins.",
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted; not forwarded.")
    top_p: float | None = Field(None, ge=0, le=1, description="Accepted; not forwarded.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted; not forwarded.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted; not forwarded.")
    seed: int | None = Field(None, description="Accepted; not forwarded.")
    n: int | None = Field(None, ge=1, le=128, description="Only 1: one reply per turn.")
    max_tokens: int | None = Field(
        None, ge=1, description="At least `dialog.max_reply_tokens`, which bounds every reply."
    )
    max_completion_tokens: int | None = Field(None, ge=1, description="As `max_tokens`.")
    stop: str | list[str] | None = Field(None, description="Unsupported unless empty.")
    logit_bias: dict[str, float] | None = Field(None, description="Unsupported unless empty.")
    logprobs: bool | None = Field(None, description="Unsupported when true.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Unsupported when set.")
    tools: list[dict[str, Any]] | None = Field(None, description="Unsupported unless empty.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only `none` or `auto`.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted; there are no tools.")
    functions: list[dict[str, Any]] | None = Field(None, description="Unsupported unless empty.")
    function_call: str | dict[str, Any] | None = Field(None, description="Only `none` or `auto`.")
    response_format: dict[str, Any] | None = Field(None, description='Only `{"type": "text"}`.')
    modalities: list[str] | None = Field(None, description='Only `["text"]`.')
    metadata: dict[str, str] | None = Field(None, description="Accepted; not stored.")
    store: bool | None = Field(None, description="Accepted; the session keeps the conversation anyway.")
    service_tier: str | None = Field(None, max_length=64, description="Accepted; one tier is served.")


class ChatCompletionUsage(_Wire):
    """The upstream LLM's tokens for this turn: 0 for template, cache and escalation replies."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionReply(_Wire):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatCompletionChoice(_Wire):
    index: int = 0
    message: ChatCompletionReply
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class ChatCompletionExtra(_Wire):
    """What OpenAI's shape has no place for (clients ignore unknown fields)."""

    action: str = Field(description="How the reply was made: template, cache, llm, escalate or fallback.")
    session_id: str = Field(description="The session; send it as `x-session-id` to continue.")
    new_session: bool
    intent: dict[str, Any] = Field(description="label, confidence, out_of_scope.")
    sentiment: dict[str, Any]
    escalated: bool
    flags: list[str] = Field(description="e.g. no_upstream, upstream_failed, stream_interrupted.")
    upstream: dict[str, Any] | None = Field(
        None, description="Which upstream and model answered, and the cost, when the LLM did."
    )
    cache: dict[str, Any] | None = Field(
        None, description="Similarity of the reused question on a cache hit."
    )


class ChatCompletionResponse(_Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Epoch seconds.")
    model: str
    choices: list[ChatCompletionChoice]
    usage: ChatCompletionUsage
    system_fingerprint: str | None = None
    xz: ChatCompletionExtra


# -- classifiers defined at run time ----------------------------------------------------------------


class ClassifierExample(_Wire):
    text: str = Field(description="An example text.", examples=["turn the lights off in the kitchen"])
    label: str = Field(description="Its label (at least 2 examples per label, at least 2 labels).")


class ClassifierDefinition(_Wire):
    """A classifier from labelled examples; a head is trained on their embeddings (no model build)."""

    name: str = Field(
        description="Unique in the tenant: 1-64 of A-Z a-z 0-9 _ . - (used by /v1/classify and policies)."
    )
    examples: list[ClassifierExample] = Field(description="Labelled example texts.")
    description: str | None = Field(None, description="Free text for people.")


class ClassifierInfo(_Wire):
    id: str
    name: str
    version: int = Field(description="Starts at 1; every PUT makes the next one.")
    labels: dict[str, int] = Field(description="Examples per label.")
    validation: dict[str, Any] = Field(
        description="Stratified k-fold estimate on the examples: `accuracy`, `held_out`, `folds`, "
        "`folds_scored`, and the share of held-out examples flagged out of scope as they are "
        "(`in_scope_flagged`) and with their own label removed (`unseen_label_flagged`)."
    )
    model_id: str = Field(description="The encoder whose embeddings trained the head.")
    description: str
    created_at: float
    updated_at: float
    training_s: float = Field(description="Seconds the fit took (encoder time excluded).")
    head_bytes: int


class ClassifierList(_Wire):
    data: list[ClassifierInfo]


class ClassifierJob(_Wire):
    """A training running in the background: poll `status_url` until `status` is ready or failed."""

    id: str
    operation: Literal["create", "update"]
    examples: int
    status: Literal["training", "ready", "failed"]
    status_url: str | None = None
    classifier_id: str | None = None
    classifier: ClassifierInfo | None = None
    error: ErrorBody | None = None
    updated_at: float | None = None


class ClassifyRequest(_Wire):
    """A classifier (id or name) and exactly one of ``text`` or ``texts``."""

    classifier: str = Field(description="The classifier's id or name.")
    text: str | None = Field(None, description="One text.", examples=["dim the lights"])
    texts: list[str] | None = Field(None, description="Several texts, answered in order.")
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Alternatives per text (default: `api.top_k`)."
    )


class ClassifyResult(_Wire):
    index: int
    label: str = Field(description="The most likely label (even when out of scope: see the flag).")
    confidence: float
    top_k: list[IntentScore]
    out_of_scope: bool = Field(description="True when the text is like none of the labels' examples.")
    oos_score: float = Field(description="Out-of-scope score in (0, 1); flagged at the head's threshold.")


class ClassifierRef(_Wire):
    id: str
    name: str
    version: int


class ClassifyResponse(_Wire):
    classifier: ClassifierRef
    model: str
    results: list[ClassifyResult]
