"""OnnxNluModel: the built INT8 (or FP32) graph under ONNX Runtime with a fast Rust tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from xz_serve.models.base import Labels
from xz_serve.models.encoder import EncoderModel, length_buckets, load_labels, load_tokenizer

# The build and older callers import these helpers from here; they live in encoder.py, shared
# with every runtime.
__all__ = ["OnnxNluModel", "length_buckets", "load_labels", "load_tokenizer"]


class OnnxNluModel(EncoderModel):
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
        super().__init__(tokenizer_path, labels, model_id, max_tokens)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return outputs
