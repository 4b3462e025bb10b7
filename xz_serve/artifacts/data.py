"""The training and validation sets: JSONL folders, checked line by line before any training.

A task's folder holds ``train.jsonl`` and optionally ``val.jsonl``, one ``{"text", "label"}`` object
a line, with any label set. ``check_task`` reads and validates a folder and names every problem as
``file:line: problem``; the build runs it on both tasks before it loads a model, so bad data stops
the build in a second instead of after a quarter of an hour of training.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

OOS_LABEL = "oos"
MAX_PROBLEMS = 20  # listed in one error; the rest are counted


@dataclass(frozen=True)
class LabelledSet:
    """Texts with integer labels and the label names they index."""

    texts: list[str]
    labels: list[int]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One example and the line of its file it came from (1-based)."""

    line: int
    text: str
    label: str


class DataError(ValueError):
    """Training data the build refuses: one ``file:line: problem`` a line, all found at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        super().__init__(text)


@dataclass(frozen=True)
class TaskData:
    """A validated task: its label names (sorted) and its training and validation rows.

    ``val`` is None when the folder has no ``val.jsonl``.
    """

    folder: Path
    names: tuple[str, ...]
    train: list[Row]
    val: list[Row] | None
    warnings: tuple[str, ...] = ()  # conflicts under the tolerated share, kept as given

    def labelled(self, rows: list[Row]) -> LabelledSet:
        index = {name: i for i, name in enumerate(self.names)}
        return LabelledSet([r.text for r in rows], [index[r.label] for r in rows], self.names)

    @property
    def has_oos(self) -> bool:
        return OOS_LABEL in self.names


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Every line of a trusted JSON Lines file (the shared sets) as a dict."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _field(record: dict[str, object], name: str) -> tuple[str | None, str | None]:
    """``record[name]`` as a non-empty string, or the problem with it."""
    if name not in record:
        return None, f'no "{name}"'
    value = record[name]
    if not isinstance(value, str):
        return None, f'"{name}" is {type(value).__name__}, not a string'
    if not value.strip():
        return None, f'"{name}" is empty'
    return value, None


def read_rows(path: Path, max_mb: float) -> tuple[list[Row], list[str]]:
    """The rows of one labelled JSONL file, and a ``file:line: problem`` for each bad line.

    A file over ``max_mb`` is refused unread. Blank lines are skipped.
    """
    size = path.stat().st_size
    if size > max_mb * 1e6:
        return [], [f"{path}: {size / 1e6:.1f} MB, over the {max_mb:g} MB bound (build.max_data_mb)"]
    rows: list[Row] = []
    problems: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"{path}:{number}: not UTF-8 (byte {err.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{number}: not JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(record, dict):
                problems.append(f'{path}:{number}: not a JSON object with "text" and "label"')
                continue
            text, text_problem = _field(record, "text")
            label, label_problem = _field(record, "label")
            for problem in (text_problem, label_problem):
                if problem:
                    problems.append(f"{path}:{number}: {problem}")
            if text is not None and label is not None:
                rows.append(Row(number, text, label.strip()))
    return rows, problems


def text_key(text: str) -> str:
    """What makes two texts the same for the conflict check: case and spacing aside."""
    return " ".join(text.casefold().split())


def _conflicts(files: list[tuple[Path, list[Row]]]) -> list[str]:
    """``file:line`` of each text labelled differently from where it first appeared."""
    first: dict[str, tuple[Path, Row]] = {}
    problems = []
    for path, rows in files:
        for row in rows:
            key = text_key(row.text)
            seen = first.setdefault(key, (path, row))
            if seen[1].label != row.label:
                where = f"line {seen[1].line}" if seen[0] == path else f"{seen[0]}:{seen[1].line}"
                problems.append(
                    f"{path}:{row.line}: text {row.text.strip()!r} is labelled {row.label!r} here "
                    f"and {seen[1].label!r} at {where}"
                )
    return problems


def check_task(
    folder: Path, min_examples: int, max_mb: float, max_conflict_share: float = 0.0
) -> TaskData:
    """Read and validate one task's folder.

    The same text with two labels is refused when such texts are more than ``max_conflict_share``
    of the rows: then the labels are wrong, not noisy. Below it (crowd-labelled sets have a few:
    TweetEval's train, CLINC150's train against its val) they stay as given and come back as
    ``warnings``.

    Raises:
        DataError: naming the file and line of every problem found: no train.jsonl, a line that is
            not JSON or lacks a non-empty text or label, a label with fewer than ``min_examples``
            training examples, a val label absent from train, texts with conflicting labels, a
            file over ``max_mb``.
    """
    train_path, val_path = folder / "train.jsonl", folder / "val.jsonl"
    if not folder.is_dir():
        raise DataError([f"{folder}: no such folder"])
    if not train_path.is_file():
        raise DataError([f"{train_path}: missing (a task's folder needs train.jsonl)"])
    train, problems = read_rows(train_path, max_mb)
    val: list[Row] | None = None
    if val_path.is_file():
        val, val_problems = read_rows(val_path, max_mb)
        problems += val_problems
    if problems:
        raise DataError(problems)
    if not train:
        raise DataError([f"{train_path}: no examples"])
    counts = Counter(r.label for r in train)
    first_line = {}
    for row in train:
        first_line.setdefault(row.label, row.line)
    for label, count in sorted(counts.items()):
        if count < min_examples:
            problems.append(
                f"{train_path}:{first_line[label]}: label {label!r} has {count} example"
                f"{'s' if count != 1 else ''}, fewer than {min_examples} (build.min_examples_per_label)"
            )
    if len(counts) < 2:
        problems.append(f"{train_path}: one label ({next(iter(counts))!r}); a classifier needs two or more")
    if val is not None:
        unknown: dict[str, list[int]] = {}
        for row in val:
            if row.label not in counts:
                unknown.setdefault(row.label, []).append(row.line)
        for label, lines in unknown.items():
            also = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
            problems.append(f"{val_path}:{lines[0]}: label {label!r} is not in {train_path.name}{also}")
    files = [(train_path, train)] + ([(val_path, val)] if val is not None else [])
    conflicts = _conflicts(files)
    rows = len(train) + len(val or [])
    if conflicts and len(conflicts) > max_conflict_share * rows:
        problems.append(
            f"{folder}: {len(conflicts)} text{'s' if len(conflicts) != 1 else ''} with conflicting "
            f"labels, over the {max_conflict_share:.2%} of {rows} rows tolerated "
            "(build.max_conflict_share):"
        )
        problems += conflicts
    if problems:
        raise DataError(problems)
    return TaskData(folder, tuple(sorted(counts)), train, val, tuple(conflicts))


def fingerprint_files(paths: list[Path]) -> str:
    """A content hash of input files, so the build reruns only when one of them changes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def split_holdout(data: LabelledSet, fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """Stratified split: the holdout selects the epoch and calibrates the out-of-scope detector,
    so the val set never does."""
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


NEGATIVE_SOURCES = {
    "tweets": ("sentiment_tweeteval", "train.jsonl"),
    "qqp": ("paraphrase", "qqp_pairs_dev.jsonl"),
    "stackfaq": ("paraphrase", "stackfaq_dev.jsonl"),
}


def negative_files(data_dir: Path) -> dict[str, Path]:
    """The shared files that out-of-domain negatives come from, those that exist."""
    paths = {name: data_dir / folder / file for name, (folder, file) in NEGATIVE_SOURCES.items()}
    return {name: path for name, path in paths.items() if path.is_file()}


def negative_texts(
    data_dir: Path, per_source: int, seed: int, exclude: set[str]
) -> dict[str, list[str]]:
    """Out-of-domain texts for an intent set, ``per_source`` at most from each shared source: tweets,
    QQP and StackFAQ questions (no assistant would route them to an intent). Texts that also appear
    in the intent set (``exclude``, by ``text_key``) are left out."""
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name, path in negative_files(data_dir).items():
        records = read_jsonl(path)
        if name == "qqp":
            texts = sorted({q for r in records for q in (r["text_a"], r["text_b"])})
        elif name == "stackfaq":
            texts = [q for r in records for q in [r["question"], *r["rephrasings"]]]
        else:
            texts = [r["text"] for r in records]
        texts = [t for t in texts if t.strip() and text_key(t) not in exclude]
        out[name] = rng.sample(texts, min(per_source, len(texts)))
    return out
