"""What the serving side reads from a build: the manifest of a complete build, the intent labels."""

from __future__ import annotations

import json
from pathlib import Path

from xz_serve.models.manifest import (
    FP32_FILE,
    INT8_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    Manifest,
    intent_labels,
    read_manifest,
)

FILES = {INT8_FILE: "aa", LABELS_FILE: "bb"}


def write_build(root: Path) -> None:
    for name in FILES:
        (root / name).write_text("x")
    manifest = {"fingerprint": "f" * 64, "model_id": "xz-minilm-nlu", "revision": "abc123", "files": FILES}
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_no_manifest_means_no_build(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


def test_a_complete_build_is_read(tmp_path: Path) -> None:
    write_build(tmp_path)
    assert read_manifest(tmp_path) == Manifest("f" * 64, "xz-minilm-nlu", "abc123", FILES)


def test_a_listed_file_that_is_missing_makes_the_build_incomplete(tmp_path: Path) -> None:
    write_build(tmp_path)
    (tmp_path / LABELS_FILE).unlink()
    assert read_manifest(tmp_path) is None


def test_path_picks_the_variant(tmp_path: Path) -> None:
    manifest = Manifest("f", "m", "r", {})
    assert manifest.path(tmp_path, "int8") == tmp_path / INT8_FILE
    assert manifest.path(tmp_path, "fp32") == tmp_path / FP32_FILE


def test_intent_labels_in_head_order(tmp_path: Path) -> None:
    assert intent_labels(tmp_path) is None
    labels = {"intents": ["transfer", "balance", "oos"], "sentiments": ["negative"], "oos_threshold": 0.3}
    (tmp_path / LABELS_FILE).write_text(json.dumps(labels))
    assert intent_labels(tmp_path) == ["transfer", "balance", "oos"]
