"""Training and validation sets read from the shared JSONL files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

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
