"""The trained graphs: the encoder fine-tuned on both tasks, exported to ONNX (FP32) and quantized
(INT8).

This is the slow stage of a build (half an hour and more on two CPU cores). Its inputs have a
fingerprint of their own, so that a build whose only change lies downstream (the out-of-scope
detector, the report) reuses the graphs of the last build instead of training them again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xz_serve.artifacts.data import LabelledSet, TaskData, fingerprint_files, split_holdout

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

    from xz_serve.artifacts.network import NluNetwork
    from xz_serve.models.spec import ModelSpec

# The modules whose code decides the trained weights; anything else in artifacts/ only calibrates
# or reports, and changing it keeps the graphs.
TRAINING_CODE = ("data.py", "export.py", "graphs.py", "network.py", "train.py")
# Build settings read after training only.
CALIBRATION_SETTINGS = frozenset({"oos_negatives_per_source", "oos_keep_in_scope"})


def training_fingerprint(spec: ModelSpec, base_weights: Path) -> str:
    """Hash of what the graphs depend on: both tasks' files, the base weights, the training code
    and text preprocessing, the training settings and the library versions."""
    import onnxruntime
    import torch
    import transformers

    digest = hashlib.sha256()
    for role, folder in [("intent", spec.intent_dir()), ("sentiment", spec.sentiment_dir())]:
        for split in ("train", "val"):
            path = folder / f"{split}.jsonl"
            digest.update(f"{role}/{split}:".encode())
            digest.update(fingerprint_files([path]).encode() if path.is_file() else b"absent")
    here = Path(__file__).parent
    code = [here / name for name in TRAINING_CODE] + [here.parent / "models" / "preprocess.py"]
    digest.update(fingerprint_files(code).encode())
    digest.update(fingerprint_files([base_weights]).encode())
    digest.update(spec.build.model_dump_json(exclude=set(CALIBRATION_SETTINGS)).encode())
    digest.update(f"{torch.__version__}|{onnxruntime.__version__}|{transformers.__version__}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    """Each task's training, holdout and val sets, and where its val set came from."""

    sets: dict[tuple[str, str], LabelledSet]
    sources: dict[str, str]


def carve(task: TaskData, seed: int) -> tuple[LabelledSet, LabelledSet, str]:
    """The training and evaluation sets of a task: val.jsonl when there is one, else 10% of train."""
    train = task.labelled(task.train)
    if task.val is not None:
        return train, task.labelled(task.val), "val.jsonl"
    train, val = split_holdout(train, 0.1, seed + 1)
    return train, val, "10% of train.jsonl (no val.jsonl)"


def split(intent: TaskData, sentiment: TaskData, seed: int) -> Splits:
    """Train, holdout (10% of train, stratified) and val for both tasks, the same on every build."""
    sets: dict[tuple[str, str], LabelledSet] = {}
    sources: dict[str, str] = {}
    for task, data in (("intent", intent), ("sentiment", sentiment)):
        full, sets[task, "val"], sources[task] = carve(data, seed)
        sets[task, "train"], sets[task, "holdout"] = split_holdout(full, 0.1, seed)
    return Splits(sets, sources)


def _network(base_dir: Path, n_intents: int, n_sentiments: int) -> tuple[NluNetwork, Any]:
    """The base MiniLM with fresh heads, and its config."""
    from transformers import BertModel

    from xz_serve.artifacts.network import NluNetwork

    bert = BertModel.from_pretrained(str(base_dir), attn_implementation="eager", add_pooling_layer=False)
    return NluNetwork(bert, n_intents, n_sentiments), bert.config


def _token_lists(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    from xz_serve.models.preprocess import spell_symbols

    tokens = [e.ids for e in tokenizer.encode_batch([spell_symbols(t) for t in texts])]
    return [t[: t.index(0)] if 0 in t else t for t in tokens]  # drop batch padding


def train_graphs(
    spec: ModelSpec,
    base_dir: Path,
    tokenizer: Tokenizer,
    splits: Splits,
    n_labels: tuple[int, int],
    work: Path,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Fine-tune, export ``FP32_FILE`` and quantize ``INT8_FILE`` into ``work``.

    Returns:
        The per-epoch history, and the untouched MiniLM's embeddings of the intent val texts (the
        report's cosine to the original model).
    """
    import torch

    from xz_serve.artifacts import export, train
    from xz_serve.models.manifest import FP32_FILE, INT8_FILE

    build = spec.build
    train.seed_everything(build.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    network, config = _network(base_dir, *n_labels)
    stop = len(network.layers) - build.trainable_layers
    sets: dict[tuple[str, str], train.TaskSet] = {}
    for (task, part), labelled in splits.sets.items():
        prefixed = train.precompute(
            network, _token_lists(tokenizer, labelled.texts), stop, f"encode {task} {part}"
        )
        sets[task, part] = train.TaskSet(task, prefixed, torch.tensor(labelled.labels))
    history = train.train(
        network,
        [sets["intent", "train"], sets["sentiment", "train"]],
        [sets["intent", "holdout"], sets["sentiment", "holdout"]],
        [sets["intent", "val"], sets["sentiment", "val"]],
        build,
    )
    print("exporting ONNX (FP32), fusing, quantizing (INT8)")
    raw = work / "raw.onnx"
    export.export_onnx(network, raw)
    export.fuse(raw, work / FP32_FILE, config.num_attention_heads, config.hidden_size)
    raw.unlink()
    export.quantize(work / FP32_FILE, work / INT8_FILE, build.quant_per_channel)
    return history, sets["intent", "val"].prefixed.original_embedding.numpy()


def original_embeddings(
    spec: ModelSpec, base_dir: Path, tokenizer: Tokenizer, texts: list[str], n_labels: tuple[int, int]
) -> np.ndarray:
    """The untouched MiniLM's embeddings of ``texts``, as training computes them."""
    import torch

    from xz_serve.artifacts import train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    network, _ = _network(base_dir, *n_labels)
    stop = len(network.layers) - spec.build.trainable_layers
    prefixed = train.precompute(network, _token_lists(tokenizer, texts), stop, "encode intent val")
    return prefixed.original_embedding.numpy()
