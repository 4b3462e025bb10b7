"""Wire models: what clients send and receive. Validation of limits lives in ``validation.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Wire):
    """Exactly one of ``text`` or ``texts``."""

    text: str | None = Field(None, description="One text to analyse.", examples=["what's my balance"])
    texts: list[str] | None = Field(None, description="Several texts, answered in order.")
    top_k: int | None = Field(None, ge=1, le=20, description="Intent alternatives per text.")


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
