"""OpenVinoNluModel: the built FP32 graph under OpenVINO, computing in bf16 where the CPU has it.

Why the FP32 graph and not ORT's INT8 one: OpenVINO runs ONNX Runtime's dynamically quantized
operators slowly (145 texts/s against ORT's 410 on the same graph and CPU), while on a CPU with
AMX or AVX512-BF16 it turns the FP32 graph into bf16 kernels that beat ORT INT8 at full batches.
On a CPU without bf16 the precision hint falls back to f32; ``runtime: auto`` never picks OpenVINO
there (models/runtime.py).

``openvino`` is imported lazily: without it installed, this module still imports and
``openvino_bf16()`` says so, so the runtime choice can fall back to ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from xz_serve.models.base import Labels
from xz_serve.models.encoder import EncoderModel

Precision = Literal["bf16", "fp32"]
DEVICE = "CPU"


def _core() -> Any:
    """A fresh ``openvino.Core``; raises ImportError where openvino is not installed."""
    import openvino

    return openvino.Core()


def openvino_version() -> str | None:
    """The installed openvino's version, or None when it is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.get_version())


def openvino_bf16() -> bool:
    """True when openvino is installed and its CPU plugin reports native bf16 (AMX, AVX512-BF16)."""
    try:
        capabilities = _core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    except ImportError:
        return False
    return "BF16" in [str(c).upper() for c in capabilities]


class OpenVinoNluModel(EncoderModel):
    """One compiled model, one infer request (a replica runs one pass at a time), three outputs."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        labels: Labels,
        model_id: str,
        max_tokens: int = 128,
        threads: int = 0,
        precision: Precision = "bf16",
    ) -> None:
        super().__init__(tokenizer_path, labels, model_id, max_tokens)
        core = _core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            # One stream, latency hint: a replica runs one batch at a time with all its threads,
            # as ONNX Runtime does; throughput streams would split those threads between batches
            # that never come.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(model_path)), DEVICE, config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        self.request.infer({"input_ids": ids, "attention_mask": mask})
        # The request reuses its output buffers on the next pass: copy out.
        return [np.array(self.request.get_output_tensor(k).data, copy=True) for k in range(3)]
