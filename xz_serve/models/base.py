"""The NLU model contract shared by the ONNX model, the FP32 baseline and the test fake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from xz_serve.models.detector import OosDetector


@dataclass(frozen=True)
class NluOutputs:
    """One encoder pass over a batch: row ``i`` of each array belongs to text ``i``."""

    embeddings: np.ndarray  # [n, dim] float32, L2-normalised
    intent_probs: np.ndarray  # [n, n_intents]
    sentiment_probs: np.ndarray  # [n, n_sentiments]
    token_counts: list[int]  # real (unpadded) tokens per text


@dataclass(frozen=True)
class Labels:
    """Label names in head order; ``oos`` is the intent that means out of scope.

    ``detector`` decides out of scope where the build fitted one; without it (older builds, the
    test fake) a top confidence under ``oos_threshold`` does.
    """

    intents: tuple[str, ...]
    sentiments: tuple[str, ...]
    oos: str = "oos"
    oos_threshold: float = 0.0  # without a detector: below this top confidence, out of scope
    detector: OosDetector | None = field(default=None, compare=False, repr=False)


class NluModel(Protocol):
    """Anything that turns texts into embeddings and intent/sentiment probabilities in one pass."""

    labels: Labels
    model_id: str

    def predict(self, texts: list[str]) -> NluOutputs:
        """Run one forward pass over ``texts`` (any length; callers bound it)."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
