"""Training and validation sets read from the shared JSONL files."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INTENT_DIR = "intent_clinc150"
SENTIMENT_DIR = "sentiment_tweeteval"
OOS_LABEL = "oos"
SENTIMENT_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class LabelledSet:
    """Texts with integer labels and the label names they index."""

    texts: list[str]
    labels: list[int]
    names: tuple[str, ...]


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Every line of a JSON Lines file as a dict."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_split(data_dir: Path, task_dir: str, split: str, names: tuple[str, ...]) -> LabelledSet:
    """One split of one task, labels mapped through ``names`` (unknown labels are an error)."""
    rows = read_jsonl(data_dir / task_dir / f"{split}.jsonl")
    index = {name: i for i, name in enumerate(names)}
    return LabelledSet([r["text"] for r in rows], [index[r["label"]] for r in rows], names)


def intent_names(data_dir: Path) -> tuple[str, ...]:
    """The intent labels in sorted order, ``oos`` included, as found in the training set."""
    rows = read_jsonl(data_dir / INTENT_DIR / "train.jsonl")
    return tuple(sorted({r["label"] for r in rows}))


def fingerprint_files(paths: list[Path]) -> str:
    """A content hash of input files, so the build reruns only when one of them changes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def split_holdout(data: LabelledSet, fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """Stratified split: the holdout calibrates the out-of-scope threshold, never the val set."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(data.labels):
        by_label.setdefault(label, []).append(i)
    held: set[int] = set()
    for indices in by_label.values():
        held.update(rng.sample(indices, max(1, round(len(indices) * fraction))))
    keep = [i for i in range(len(data.texts)) if i not in held]
    hold = sorted(held)

    def subset(idx: list[int]) -> LabelledSet:
        return LabelledSet([data.texts[i] for i in idx], [data.labels[i] for i in idx], data.names)

    return subset(keep), subset(hold)


def apply_oos_threshold(probs: np.ndarray, oos_index: int, threshold: float) -> np.ndarray:
    """Predicted labels: the argmax, or ``oos`` where the top probability is under ``threshold``."""
    pred = probs.argmax(-1)
    pred[probs.max(-1) < threshold] = oos_index
    return pred


def choose_oos_threshold(probs: np.ndarray, labels: list[int], oos_index: int) -> float:
    """The confidence floor that maximises accuracy over all labels (oos included) on ``probs``."""
    gold = np.array(labels)
    grid = np.round(np.arange(0.0, 0.95, 0.01), 2)
    scores = [float((apply_oos_threshold(probs, oos_index, t) == gold).mean()) for t in grid]
    return float(grid[int(np.argmax(scores))])
