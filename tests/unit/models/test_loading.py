"""How loading.py turns ``model.runtime`` into a plan: the explicit runtimes, auto's fallbacks to
ONNX Runtime, and auto measuring once per key, then reading its record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xz_serve.models import loading
from xz_serve.models.manifest import MANIFEST_FILE
from xz_serve.models.runtime import RUNTIME_FILE, Plan
from xz_serve.models.spec import ModelSpec


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    (tmp_path / "nlu-int8.onnx").write_bytes(b"")
    manifest = {"fingerprint": "f", "model_id": "xz", "revision": "rev1", "files": {"nlu-int8.onnx": "0"}}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tmp_path


def spec(artifacts: Path, **update: Any) -> ModelSpec:
    return ModelSpec(artifacts_dir=artifacts, build_if_missing=False, **update)


def probes(monkeypatch: pytest.MonkeyPatch, version: str | None, bf16: bool) -> None:
    monkeypatch.setattr(loading, "openvino_version", lambda: version)
    monkeypatch.setattr(loading, "openvino_bf16", lambda: bf16)


def test_explicit_runtimes_need_no_measurement(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes(monkeypatch, "2026.0", bf16=True)
    assert loading.choose_runtime(spec(artifacts, runtime="onnxruntime"))[0].tag() == "int8"
    assert (
        loading.choose_runtime(spec(artifacts, runtime="onnxruntime", quantization="fp32"))[0].tag() == "fp32"
    )
    assert loading.choose_runtime(spec(artifacts, runtime="openvino"))[0].tag() == "bf16-openvino"
    probes(monkeypatch, "2026.0", bf16=False)
    assert loading.choose_runtime(spec(artifacts, runtime="openvino"))[0].tag() == "fp32-openvino"


@pytest.mark.parametrize(
    ("version", "bf16", "quantization", "why"),
    [
        (None, False, "int8", "not installed"),
        ("2026.0", False, "int8", "no bf16"),
        ("2026.0", True, "fp32", "reference"),
    ],
)
def test_auto_serves_onnxruntime_without_measuring_where_openvino_cannot_win(
    artifacts: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str | None,
    bf16: bool,
    quantization: str,
    why: str,
) -> None:
    probes(monkeypatch, version, bf16)
    monkeypatch.setattr(loading, "measure_runtime", lambda *a: pytest.fail("measured"))
    plan, entry = loading.choose_runtime(spec(artifacts, quantization=quantization))
    assert (plan.engine, plan.precision, entry) == ("onnxruntime", quantization, None)
    assert why in plan.reason


def test_auto_measures_once_then_reads_the_record(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes(monkeypatch, "2026.0", bf16=True)
    calls: list[dict[str, Any]] = []

    def measure(loader: Any, context: dict[str, Any]) -> dict[str, Any]:
        calls.append(context)
        hybrid = {"name": "hybrid", "cut": 4}
        return {"choice": "hybrid", "reason": "fastest", "trials": [hybrid], **context}

    monkeypatch.setattr(loading, "measure_runtime", measure)
    monkeypatch.setattr(loading, "_Loader", lambda *a: None)
    plan, entry = loading.choose_runtime(spec(artifacts, intra_op_threads=2))
    assert plan == Plan("hybrid", "int8+bf16", cut=4, reason="measured: fastest")
    assert entry is not None and calls == [
        loading.trial_context(spec(artifacts, intra_op_threads=2), entry_manifest(artifacts))
    ]
    again, _ = loading.choose_runtime(spec(artifacts, intra_op_threads=2))
    assert again == plan and len(calls) == 1  # read from runtime.json
    loading.choose_runtime(spec(artifacts, intra_op_threads=4))  # another thread count: measured again
    assert len(calls) == 2
    assert len(json.loads((artifacts / RUNTIME_FILE).read_text())["entries"]) == 2
    loading.choose_runtime(spec(artifacts, intra_op_threads=2), remeasure=True)
    assert len(calls) == 3


def test_auto_without_val_data_keeps_onnxruntime_and_records_nothing(
    artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes(monkeypatch, "2026.0", bf16=True)
    monkeypatch.setattr(loading, "measure_runtime", lambda *a: None)
    monkeypatch.setattr(loading, "_Loader", lambda *a: None)
    plan, entry = loading.choose_runtime(spec(artifacts))
    assert (plan.tag(), entry) == ("int8", None)
    assert "no labelled val texts" in plan.reason
    assert not (artifacts / RUNTIME_FILE).exists()


@pytest.mark.parametrize(
    ("choice", "tag"),
    [
        ("onnxruntime-int8", "int8"),
        ("openvino-bf16", "bf16-openvino"),
        ("hybrid", "int8-onnxruntime+bf16-openvino"),
    ],
)
def test_a_recorded_choice_becomes_its_plan(choice: str, tag: str) -> None:
    entry = {"choice": choice, "reason": "r", "trials": [{"name": "hybrid", "cut": 8}]}
    assert loading.plan_of(entry).tag() == tag


def test_no_build_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        loading.choose_runtime(spec(tmp_path))


def entry_manifest(artifacts: Path) -> Any:
    from xz_serve.models.manifest import read_manifest

    return read_manifest(artifacts)
