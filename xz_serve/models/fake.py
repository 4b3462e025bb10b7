"""FakeModel: a deterministic NluModel for tests that must not need built artifacts."""

from __future__ import annotations

import hashlib

import numpy as np

from xz_serve.models.base import Labels, NluOutputs, softmax

FAIL_MARKER = "\x00fail"


class FakeModel:
    """Hash-seeded embeddings and logits: the same text always gets the same answer.

    A text containing ``FAIL_MARKER`` makes the whole forward pass raise, like a kernel error
    would, so tests can check that a batch-mate's failure stays its own. ``calls`` counts passes.
    """

    def __init__(self, dim: int = 16) -> None:
        self.labels = Labels(
            intents=("balance", "greeting", "oos", "transfer"),
            sentiments=("negative", "neutral", "positive"),
        )
        self.model_id = "fake@0"
        self.dim = dim
        self.calls = 0
        self.texts_seen = 0

    def _row(self, text: str, size: int, salt: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "little")
        return np.random.default_rng(seed).normal(size=size).astype(np.float32)

    def predict(self, texts: list[str]) -> NluOutputs:
        self.calls += 1
        self.texts_seen += len(texts)
        if any(FAIL_MARKER in t for t in texts):
            raise RuntimeError("fake kernel failure")
        emb = np.stack([self._row(t, self.dim, "e") for t in texts])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        intents = np.stack([self._row(t, len(self.labels.intents), "i") for t in texts])
        sentiments = np.stack([self._row(t, 3, "s") for t in texts])
        return NluOutputs(emb, softmax(intents * 3), softmax(sentiments), [len(t.split()) for t in texts])
