"""What a finished build leaves in the artifacts dir, as the serving side reads it.

``xz-build`` (``artifacts/``) writes these files; replicas and the dialog's policy check read them.
The names live here so that neither side spells them twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FP32_FILE = "nlu-fp32.onnx"
INT8_FILE = "nlu-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
DETECTOR_FILE = "detector.npz"  # the out-of-scope detector's arrays (models/detector.py)
CURVE_FILE = "oos_curve.png"  # the report's out-of-scope recall against in-scope accuracy
MODEL_NAME = "xz-minilm-nlu"


@dataclass(frozen=True)
class Manifest:
    """What a finished build left behind; ``revision`` changes whenever any input changes.

    ``training`` is the fingerprint of the trained graphs' inputs alone: a later build with the
    same one reuses them. Empty for builds that did not record it.
    """

    fingerprint: str
    model_id: str
    revision: str
    files: dict[str, str]
    training: str = ""

    def path(self, artifacts_dir: Path, quantization: str) -> Path:
        return artifacts_dir / (INT8_FILE if quantization == "int8" else FP32_FILE)


def read_manifest(artifacts_dir: Path) -> Manifest | None:
    """The manifest of a complete build, or None when absent or when any listed file is missing."""
    path = artifacts_dir / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = Manifest(**json.loads(path.read_text(encoding="utf-8")))
    if not all((artifacts_dir / name).exists() for name in manifest.files):
        return None
    return manifest


def intent_labels(artifacts_dir: Path) -> list[str] | None:
    """The built model's intent labels in head order; None when no build is there yet."""
    path = artifacts_dir / LABELS_FILE
    if not path.exists():
        return None
    labels: list[str] = json.loads(path.read_text(encoding="utf-8"))["intents"]
    return labels
