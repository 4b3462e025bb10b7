"""Load the ONNX model a replica serves from a finished build (building is the artifacts' job)."""

from __future__ import annotations

import logging
from pathlib import Path

from xz_serve.models.manifest import TOKENIZER_FILE, read_manifest
from xz_serve.models.onnx_model import OnnxNluModel, load_labels
from xz_serve.models.spec import ModelSpec

log = logging.getLogger(__name__)


def load_onnx_model(spec: ModelSpec) -> OnnxNluModel:
    """The INT8 (or FP32) ONNX model named by ``spec``.

    Raises:
        FileNotFoundError: no complete build in ``spec.artifacts_dir``.
    """
    artifacts = Path(spec.artifacts_dir)
    manifest = read_manifest(artifacts)
    if manifest is None:
        raise FileNotFoundError(f"no model artifacts in {artifacts}: run `xz-build` first")
    path = manifest.path(artifacts, spec.quantization)
    log.info("loading %s (%s) from %s", manifest.model_id, spec.quantization, path)
    return OnnxNluModel(
        path,
        artifacts / TOKENIZER_FILE,
        load_labels(artifacts),
        model_id=f"{manifest.model_id}@{manifest.revision}:{spec.quantization}",
        max_tokens=spec.max_tokens,
        threads=spec.intra_op_threads,
        spin_wait=spec.spin_wait,
    )
