"""A scripted NLU for dialog unit tests: each message has a chosen intent, confidence, sentiment and
topic; messages on one topic get near-identical embeddings (cosine > 0.95), other topics near-orthogonal
ones. The model itself is tested elsewhere; here we test what the dialog does with its output."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.types import BatchStats, PredictResult, TextPrediction

DIM = 64
MODEL_ID = "scripted@test:int8"


@dataclass(frozen=True)
class Said:
    intent: str
    confidence: float = 0.95
    sentiment: str = "neutral"
    topic: str = ""


def _vector(seed_text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


class ScriptedNlu:
    def __init__(self, script: dict[str, Said]) -> None:
        self.script = script
        self.calls: list[list[str]] = []

    def embedding(self, text: str) -> np.ndarray:
        said = self.script[text]
        vector = _vector(said.topic or text) + 0.05 * _vector(text)
        return vector / np.linalg.norm(vector)

    async def __call__(self, texts: list[str], ctx: RequestContext) -> PredictResult:
        self.calls.append(list(texts))
        predictions = []
        for text in texts:
            said = self.script[text]
            rest = (1 - said.confidence) / 2
            sentiment = {label: rest for label in ("negative", "neutral", "positive")}
            sentiment[said.sentiment] = said.confidence
            predictions.append(
                TextPrediction(
                    intents=[(said.intent, said.confidence), ("oos", 1 - said.confidence)],
                    sentiment=sentiment,
                    embedding=self.embedding(text),
                    tokens=len(text.split()),
                    out_of_scope=said.intent == "oos",
                    oos_score=1 - said.confidence if said.intent != "oos" else said.confidence,
                )
            )
        return PredictResult(predictions, BatchStats(0.0, 1.0, len(texts), 1), MODEL_ID)
