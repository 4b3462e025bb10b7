"""Load the model a replica serves from a finished build, under the runtime ``model.runtime`` picks.

Building is the artifacts' job; choosing the runtime is a separate, cheap step that never touches
the build's fingerprint: ``runtime: auto`` reads ``runtime.json`` beside the artifacts, and where
it holds nothing for this CPU, build and thread count, runs the trial (models/trial.py) once and
records it. ``python -m xz_serve.models.loading`` runs that step by hand and prints the table.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime

from xz_serve.models.base import NluModel
from xz_serve.models.hybrid import HybridNluModel
from xz_serve.models.manifest import TOKENIZER_FILE, Manifest, read_manifest
from xz_serve.models.onnx_model import OnnxNluModel, load_labels
from xz_serve.models.openvino_model import OpenVinoNluModel, Precision, openvino_bf16, openvino_version
from xz_serve.models.runtime import (
    Plan,
    choose,
    cpu_fingerprint,
    read_record,
    record_key,
    trial_lock,
    verdict_entry,
    write_record,
)
from xz_serve.models.spec import ModelSpec
from xz_serve.models.trial import read_labelled, run_trials

log = logging.getLogger(__name__)

ORT_INT8, OV_BF16, HYBRID = "onnxruntime-int8", "openvino-bf16", "hybrid"
FULL_BATCH = 32  # BatchSpec.max_batch_size's default: the batch a loaded replica runs


def _manifest(artifacts: Path) -> Manifest:
    manifest = read_manifest(artifacts)
    if manifest is None:
        raise FileNotFoundError(f"no model artifacts in {artifacts}: run `xz-build` first")
    return manifest


class _Loader:
    """Builds the models of one finished build for one ModelSpec, by plan."""

    def __init__(self, spec: ModelSpec, artifacts: Path, manifest: Manifest) -> None:
        self.spec = spec
        self.artifacts = artifacts
        self.manifest = manifest
        self.labels = load_labels(artifacts)

    def model_id(self, plan: Plan) -> str:
        return f"{self.manifest.model_id}@{self.manifest.revision}:{plan.tag()}"

    def ort(self, quantization: str, model_id: str) -> OnnxNluModel:
        return OnnxNluModel(
            self.manifest.path(self.artifacts, quantization),
            self.artifacts / TOKENIZER_FILE,
            self.labels,
            model_id=model_id,
            max_tokens=self.spec.max_tokens,
            threads=self.spec.intra_op_threads,
            spin_wait=self.spec.spin_wait,
        )

    def openvino(self, precision: Precision, model_id: str) -> OpenVinoNluModel:
        return OpenVinoNluModel(
            self.manifest.path(self.artifacts, "fp32"),
            self.artifacts / TOKENIZER_FILE,
            self.labels,
            model_id=model_id,
            max_tokens=self.spec.max_tokens,
            threads=self.spec.intra_op_threads,
            precision=precision,
        )

    def build(self, plan: Plan) -> NluModel:
        model_id = self.model_id(plan)
        if plan.engine == "onnxruntime":
            return self.ort(plan.precision, model_id)
        if plan.engine == "openvino":
            return self.openvino("bf16" if plan.precision == "bf16" else "fp32", model_id)
        return HybridNluModel(self.ort("int8", model_id), self.openvino("bf16", model_id), plan.cut, model_id)


def trial_context(spec: ModelSpec, manifest: Manifest) -> dict[str, Any]:
    """Everything besides the CPU that the trial's numbers depend on: part of the record's key."""
    return {
        "revision": manifest.revision,
        "threads": spec.intra_op_threads,
        "max_tokens": spec.max_tokens,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version(),
    }


def plan_of(entry: dict[str, Any]) -> Plan:
    """The plan a recorded choice stands for."""
    reason = f"measured: {entry.get('reason', '')}"
    if entry["choice"] == OV_BF16:
        return Plan("openvino", "bf16", reason=reason)
    if entry["choice"] == HYBRID:
        cut = next(t["cut"] for t in entry["trials"] if t["name"] == HYBRID)
        return Plan("hybrid", "int8+bf16", cut=int(cut), reason=reason)
    return Plan("onnxruntime", "int8", reason=reason)


def measure_runtime(loader: _Loader, context: dict[str, Any]) -> dict[str, Any] | None:
    """Run the trial and return its record entry; None when there is no labelled val data to
    guard accuracy with (then nothing but the reference runtime may serve)."""
    spec, labels = loader.spec, loader.labels
    intent = read_labelled(spec.intent_dir(), labels.intents)
    sentiment = read_labelled(spec.sentiment_dir(), labels.sentiments)
    if intent is None or not intent.texts:
        return None
    candidates: dict[str, Callable[[], NluModel]] = {
        ORT_INT8: lambda: loader.ort("int8", ORT_INT8),
        OV_BF16: lambda: loader.openvino("bf16", OV_BF16),
    }
    trials, reference = run_trials(
        candidates,
        lambda: loader.ort("fp32", "reference"),
        intent,
        sentiment,
        FULL_BATCH,
        (ORT_INT8, OV_BF16),
    )
    verdict = choose(trials, reference, fallback=ORT_INT8)
    entry = verdict_entry(verdict, cpu_fingerprint(), context)
    entry["guard_sets"] = [s.source for s in (intent, sentiment) if s is not None]
    return entry


def choose_runtime(spec: ModelSpec, remeasure: bool = False) -> tuple[Plan, dict[str, Any] | None]:
    """The plan ``spec`` asks for, and the record entry behind it where ``auto`` measured.

    ``auto`` on the INT8 variant considers OpenVINO only where it is installed and the CPU plugin
    has bf16; elsewhere, and for ``quantization: fp32`` (the reference), ONNX Runtime serves.

    Raises:
        FileNotFoundError: no complete build in ``spec.artifacts_dir``.
    """
    artifacts = Path(spec.artifacts_dir)
    manifest = _manifest(artifacts)
    if spec.runtime == "onnxruntime":
        return Plan("onnxruntime", spec.quantization, reason="model.runtime: onnxruntime"), None
    if spec.runtime == "openvino":
        precision = "bf16" if spec.quantization == "int8" and openvino_bf16() else "fp32"
        return Plan("openvino", precision, reason="model.runtime: openvino"), None
    if spec.quantization == "fp32":
        return Plan("onnxruntime", "fp32", reason="fp32 is the reference: nothing to choose"), None
    if openvino_version() is None:
        return Plan("onnxruntime", "int8", reason="auto: openvino is not installed"), None
    if not openvino_bf16():
        return Plan("onnxruntime", "int8", reason="auto: this CPU has no bf16 for OpenVINO"), None
    context = trial_context(spec, manifest)
    key = record_key(cpu_fingerprint(), context)
    entry = None if remeasure else read_record(artifacts, key)
    if entry is None:
        with trial_lock(artifacts):
            entry = None if remeasure else read_record(artifacts, key)  # another replica's, meanwhile
            if entry is None:
                entry = measure_runtime(_Loader(spec, artifacts, manifest), context)
                if entry is None:
                    return Plan(
                        "onnxruntime", "int8", reason="auto: no labelled val texts for the guard"
                    ), None
                write_record(artifacts, key, entry)
    return plan_of(entry), entry


def load_onnx_model(spec: ModelSpec) -> NluModel:
    """The model named by ``spec``: the ONNX graphs of the build under the chosen runtime; its
    ``model_id`` (``name@revision:tag``) names the runtime (models/runtime.py, ``Plan.tag``).

    Raises:
        FileNotFoundError: no complete build in ``spec.artifacts_dir``.
        ImportError: ``runtime: openvino`` where openvino is not installed.
    """
    plan, _ = choose_runtime(spec)
    artifacts = Path(spec.artifacts_dir)
    loader = _Loader(spec, artifacts, _manifest(artifacts))
    log.info("loading %s from %s (%s)", loader.model_id(plan), artifacts, plan.reason)
    return loader.build(plan)


def format_entry(entry: dict[str, Any]) -> str:
    """A record entry as a table: each trial's speed, accuracy and verdict, then the choice."""
    ref = entry["reference_intent_accuracy"]
    lines = [
        f"CPU: {entry['cpu']['model']}; threads {entry['threads'] or 'default'}; "
        f"revision {entry['revision']}; ORT FP32 intent accuracy {ref:.2%}",
        f"{'candidate':18} {'batch-1 ms':>10} {'texts/s @full':>13} {'intent acc':>10} {'vs FP32':>8} "
        f"{'agree':>7} {'sentiment':>9}  verdict",
    ]
    for t in entry["trials"]:
        verdict = entry["refused"].get(t["name"], "passes")
        lines.append(
            f"{t['name']:18} {t['batch1_ms']:>10.2f} {t['full_texts_per_s']:>13.0f} "
            f"{t['intent_accuracy']:>10.2%} {(t['intent_accuracy'] - ref) * 100:>+8.2f} "
            f"{t['intent_agreement']:>7.2%} {t['sentiment_accuracy']:>9.2%}  {verdict}"
            + (f" (ORT up to {t['cut']} texts)" if t.get("cut") else "")
        )
    lines.append(f"choice: {entry['choice']} ({entry['reason']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m xz_serve.models.loading [--artifacts-dir DIR] [--threads N] [--remeasure]``:
    choose (or re-measure) the runtime for this machine, record it and print the trial."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, default=0, help="model.intra_op_threads of the replicas")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"])
    parser.add_argument("--remeasure", action="store_true", help="measure even where a record exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = ModelSpec(
        artifacts_dir=args.artifacts_dir,
        data_dir=args.data_dir,
        intra_op_threads=args.threads,
        runtime=args.runtime,
        build_if_missing=False,
    )
    plan, entry = choose_runtime(spec, remeasure=args.remeasure)
    if entry is not None:
        print(format_entry(entry))
    print(f"serving: {plan.tag()} ({plan.reason})")


if __name__ == "__main__":
    main()
