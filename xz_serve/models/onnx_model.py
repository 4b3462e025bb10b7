"""OnnxNluModel: the built INT8 (or FP32) graph under ONNX Runtime with a fast Rust tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from xz_serve.models.base import Labels, NluOutputs, softmax
from xz_serve.models.preprocess import spell_symbols


def load_labels(artifacts_dir: Path) -> Labels:
    """Label names in head order, as the build wrote them."""
    data = json.loads((artifacts_dir / "labels.json").read_text(encoding="utf-8"))
    return Labels(
        intents=tuple(data["intents"]),
        sentiments=tuple(data["sentiments"]),
        oos_threshold=float(data.get("oos_threshold", 0.0)),
    )


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    """The MiniLM WordPiece tokenizer, truncating to ``max_tokens`` and padding to the batch."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


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
        encodings = self.tokenizer.encode_batch([spell_symbols(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        embedding, intent, sentiment = self.session.run(
            None, {"input_ids": ids, "attention_mask": mask}
        )
        return embedding, intent, sentiment, mask

    def predict(self, texts: list[str]) -> NluOutputs:
        embedding, intent, sentiment, mask = self._run(texts)
        return NluOutputs(
            embeddings=embedding.astype(np.float32, copy=False),
            intent_probs=softmax(intent),
            sentiment_probs=softmax(sentiment),
            token_counts=mask.sum(axis=1).tolist(),
        )
