"""OnnxNluModel: the built INT8 (or FP32) graph under ONNX Runtime with a fast Rust tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
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


class OnnxNluModel:
    """One session, three outputs: embedding, intent logits, sentiment logits."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        labels: Labels,
        model_id: str,
        max_tokens: int = 128,
        threads: int = 0,
        spin_wait: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = load_tokenizer(tokenizer_path, max_tokens)
        self.labels = labels
        self.model_id = model_id

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
            results = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            for k, result in enumerate(results):
                if outputs[k] is None:
                    outputs[k] = np.empty((len(texts), result.shape[1]), dtype=result.dtype)
                outputs[k][bucket] = result  # type: ignore[index]
        embedding, intent, sentiment = (o for o in outputs if o is not None)
        return embedding, intent, sentiment, lengths

    def predict(self, texts: list[str]) -> NluOutputs:
        embedding, intent, sentiment, lengths = self._run(texts)
        return NluOutputs(
            embeddings=embedding.astype(np.float32, copy=False),
            intent_probs=softmax(intent),
            sentiment_probs=softmax(sentiment),
            token_counts=lengths.tolist(),
        )
