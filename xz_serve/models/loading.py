"""Load the model a replica serves, building the artifacts first when they are missing."""

from __future__ import annotations

import logging
from pathlib import Path

from xz_serve.artifacts.build import TOKENIZER_FILE, ensure_artifacts, read_manifest
from xz_serve.models.onnx_model import OnnxNluModel, load_labels
from xz_serve.settings import ModelSpec

log = logging.getLogger(__name__)


def load_model(spec: ModelSpec) -> OnnxNluModel:
    """The INT8 (or FP32) ONNX model named by ``spec``.

    Raises:
        FileNotFoundError: the artifacts are missing and ``build_if_missing`` is off.
    """
    artifacts = Path(spec.artifacts_dir)
    manifest = ensure_artifacts(spec) if spec.build_if_missing else read_manifest(artifacts)
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
