"""OpenVINO against ONNX Runtime on the built artifacts: the same answers, within the guard."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from xz_serve.models.loading import choose_runtime, load_onnx_model
from xz_serve.models.manifest import read_manifest
from xz_serve.models.runtime import MAX_ACCURACY_DELTA
from xz_serve.models.spec import ModelSpec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[3]
ARTIFACTS = ROOT / "artifacts"
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def val() -> list[dict[str, str]]:
    if read_manifest(ARTIFACTS) is None:
        pytest.skip("no built artifacts: run xz-build")
    pytest.importorskip("openvino")
    rows = [json.loads(line) for line in (DATA / "intent_clinc150" / "val.jsonl").open() if line.strip()]
    return random.Random(3).sample(rows, 600)


def spec(runtime: str, quantization: str = "int8") -> ModelSpec:
    return ModelSpec(
        artifacts_dir=ARTIFACTS,
        data_dir=DATA,
        build_if_missing=False,
        runtime=runtime,
        quantization=quantization,
    )


def run(model_spec: ModelSpec, texts: list[str]) -> tuple[str, np.ndarray, np.ndarray]:
    model = load_onnx_model(model_spec)
    parts = [model.predict(texts[i : i + 32]) for i in range(0, len(texts), 32)]
    embeddings = np.concatenate([p.embeddings for p in parts])
    intents = np.concatenate([p.intent_probs.argmax(-1) for p in parts])
    return model.model_id, embeddings, intents


def test_openvino_agrees_with_onnxruntime_fp32(val: list[dict[str, str]]) -> None:
    texts = [r["text"] for r in val]
    ref_id, ref_emb, ref_intent = run(spec("onnxruntime", "fp32"), texts)
    ov_id, ov_emb, ov_intent = run(spec("openvino"), texts)
    assert ref_id.endswith(":fp32") and ov_id.endswith("-openvino")
    # bf16 (where the CPU has it) keeps 8 bits of mantissa: close, not equal
    cosine = (ref_emb * ov_emb).sum(-1) / np.linalg.norm(ref_emb, axis=-1) / np.linalg.norm(ov_emb, axis=-1)
    assert cosine.min() > 0.98, cosine.min()
    assert (ov_intent == ref_intent).mean() >= 0.99
    names = load_onnx_model(spec("onnxruntime")).labels.intents
    gold = np.array([names.index(r["label"]) for r in val])
    delta = (ov_intent == gold).mean() - (ref_intent == gold).mean()
    assert abs(delta) <= MAX_ACCURACY_DELTA + 1 / len(val), delta


def test_auto_serves_what_it_chose_and_names_it(val: list[dict[str, str]]) -> None:
    plan, _ = choose_runtime(spec("auto"))
    model = load_onnx_model(spec("auto"))
    assert model.model_id.endswith(f":{plan.tag()}")
    assert model.predict([val[0]["text"]]).embeddings.shape == (1, 384)
