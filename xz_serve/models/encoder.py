"""EncoderModel: tokenizer, preprocessing, length buckets and outputs shared by every runtime.

A runtime (ONNX Runtime, OpenVINO) only supplies ``_forward``: one padded batch in, the graph's
three outputs out. Everything that decides *what* the model sees and returns lives here, once, so
two runtimes can only differ in arithmetic, never in tokens or post-processing.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from xz_serve.models.base import Labels, NluOutputs, softmax
from xz_serve.models.detector import load_detector
from xz_serve.models.manifest import LABELS_FILE
from xz_serve.models.preprocess import spell_symbols


def load_labels(artifacts_dir: Path) -> Labels:
    """Label names in head order, and the out-of-scope detector, as the build wrote them."""
    data = json.loads((artifacts_dir / LABELS_FILE).read_text(encoding="utf-8"))
    entry = data.get("oos_detector")
    return Labels(
        intents=tuple(data["intents"]),
        sentiments=tuple(data["sentiments"]),
        oos_threshold=float(data.get("oos_threshold", 0.0)),
        detector=load_detector(artifacts_dir / entry["file"], entry) if entry else None,
    )


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """The MiniLM WordPiece tokenizer, truncating to ``max_tokens``; batches are padded by the
    caller, per length bucket."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return tokenizer


def length_buckets(lengths: np.ndarray, max_waste: float = 0.25) -> list[np.ndarray]:
    """Indices grouped by similar length (shortest first): a group ends where padding the next
    text's length would leave more than ``max_waste`` of the group's tokens as padding."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[list[int]] = [[]]
    total = 0
    for i in order:
        group = buckets[-1]
        padded = (len(group) + 1) * int(lengths[i])
        if group and padded and 1 - (total + int(lengths[i])) / padded > max_waste:
            buckets.append([])
            total = 0
        buckets[-1].append(int(i))
        total += int(lengths[i])
    return [np.array(b) for b in buckets]


class EncoderModel(ABC):
    """An NluModel over the exported graph: inputs ``input_ids`` and ``attention_mask`` (int64,
    ``[batch, tokens]``), outputs embedding, intent logits and sentiment logits in that order."""

    def __init__(self, tokenizer_path: Path, labels: Labels, model_id: str, max_tokens: int) -> None:
        self.tokenizer = load_tokenizer(tokenizer_path, max_tokens)
        self.labels = labels
        self.model_id = model_id

    @abstractmethod
    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for one padded batch: embedding, intent logits, sentiment logits."""

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw graph outputs for ``texts``: embeddings, intent logits, sentiment logits."""
        embedding, intent, sentiment, _ = self._run(texts)
        return embedding, intent, sentiment

    def _run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One pass per length bucket: texts sorted by length and cut where padding would waste
        more than a quarter of the tokens, so a tweet does not make 30 short commands pad to it."""
        ids_list = [e.ids for e in self.tokenizer.encode_batch([spell_symbols(t) for t in texts])]
        lengths = np.array([len(ids) for ids in ids_list])
        outputs: list[np.ndarray | None] = [None, None, None]
        for bucket in length_buckets(lengths):
            longest = int(lengths[bucket].max())
            ids = np.zeros((len(bucket), longest), dtype=np.int64)
            mask = np.zeros((len(bucket), longest), dtype=np.int64)
            for row, i in enumerate(bucket):
                ids[row, : lengths[i]] = ids_list[i]
                mask[row, : lengths[i]] = 1
            for k, result in enumerate(self._forward(ids, mask)[:3]):
                if outputs[k] is None:
                    outputs[k] = np.empty((len(texts), result.shape[1]), dtype=np.float32)
                outputs[k][bucket] = result  # type: ignore[index]
        embedding, intent, sentiment = (o for o in outputs if o is not None)
        return embedding, intent, sentiment, lengths

    def predict(self, texts: list[str]) -> NluOutputs:
        """One pass over ``texts``: embeddings, intent and sentiment probabilities, token counts."""
        embedding, intent, sentiment, lengths = self._run(texts)
        return NluOutputs(
            embeddings=embedding,
            intent_probs=softmax(intent),
            sentiment_probs=softmax(sentiment),
            token_counts=lengths.tolist(),
        )
