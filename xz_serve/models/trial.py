"""The runtime trial: time each candidate model and check its accuracy against ORT FP32.

Candidates come as factories, so the trial loads one model at a time (and the unit tests can hand
it fakes). Timing uses one fixed set of texts at a ladder of batch sizes, each size for a short
time budget; the accuracy guard runs each candidate over the labelled val sets at the full batch
and compares its intent accuracy with the FP32 graph's under ONNX Runtime (models/runtime.py).
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xz_serve.models.base import NluModel
from xz_serve.models.runtime import Trial, hybrid_trial

log = logging.getLogger(__name__)

MAX_GUARD_TEXTS = 4000  # per task: the whole CLINC150 (3,100) and TweetEval (1,000) val sets
TIMING_TEXTS = 64


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with gold label indices in the model's head order; ``source`` names the file."""

    texts: list[str]
    gold: np.ndarray
    source: str


@dataclass(frozen=True)
class Reference:
    """ORT FP32's answers on the guard sets: what every candidate is held to."""

    intent_argmax: np.ndarray
    intent_accuracy: float


def read_labelled(folder: Path, names: tuple[str, ...], limit: int = MAX_GUARD_TEXTS) -> LabelledTexts | None:
    """``folder``'s val.jsonl (train.jsonl where it has none), rows whose label the model knows,
    at most ``limit`` of them by a fixed shuffle; None when neither file is there."""
    index = {name: i for i, name in enumerate(names)}
    for split in ("val", "train"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            continue
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    if row.get("label") in index and str(row.get("text", "")).strip():
                        rows.append((str(row["text"]), index[row["label"]]))
        if len(rows) > limit:
            rows = random.Random(0).sample(rows, limit)
        return LabelledTexts([t for t, _ in rows], np.array([g for _, g in rows]), str(path))
    return None


def timing_texts(sets: list[LabelledTexts], n: int = TIMING_TEXTS) -> list[str]:
    """A fixed mix of ``n`` texts drawn evenly from ``sets``: the lengths serving sees."""
    pools = [s.texts for s in sets if s.texts]
    if not pools:
        return []
    mixed = [
        text for group in zip(*[p[: n // len(pools) + 1] for p in pools], strict=False) for text in group
    ]
    return mixed[:n]


def argmaxes(model: NluModel, texts: list[str], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Intent and sentiment argmax of every text, in passes of ``batch`` texts."""
    intents, sentiments = [], []
    for start in range(0, len(texts), batch):
        outputs = model.predict(texts[start : start + batch])
        intents.append(outputs.intent_probs.argmax(-1))
        sentiments.append(outputs.sentiment_probs.argmax(-1))
    if not intents:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(intents), np.concatenate(sentiments)


def time_passes(
    model: NluModel,
    texts: list[str],
    sizes: list[int],
    budget_s: float = 0.3,
    min_passes: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, float]:
    """Median milliseconds per pass at each batch size, cycling through ``texts``: one warm-up
    pass, then passes until ``budget_s`` is spent (at least ``min_passes``)."""
    result: dict[int, float] = {}
    for size in sizes:
        windows = [texts[i : i + size] for i in range(0, max(len(texts) - size, 0) + 1, size)] or [texts]
        model.predict(windows[0])
        samples: list[float] = []
        started = clock()
        while len(samples) < min_passes or clock() - started < budget_s:
            batch = windows[len(samples) % len(windows)]
            t0 = clock()
            model.predict(batch)
            samples.append(clock() - t0)
        result[size] = statistics.median(samples) * 1000
    return result


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Share of rows where ``predicted`` equals ``gold`` (0 for no rows)."""
    return float((predicted == gold).mean()) if len(gold) else 0.0


def reference(model: NluModel, intent: LabelledTexts, batch: int) -> Reference:
    """The FP32 graph's answers on the intent guard set."""
    predicted, _ = argmaxes(model, intent.texts, batch)
    return Reference(predicted, accuracy(predicted, intent.gold))


def measure(
    name: str,
    model: NluModel,
    ref: Reference,
    intent: LabelledTexts,
    sentiment: LabelledTexts | None,
    texts: list[str],
    full_batch: int,
) -> Trial:
    """One candidate's trial: speed at the ladder of sizes, accuracy on both guard sets."""
    sizes = sorted({s for s in (1, 2, 4, 8, 16, full_batch) if s <= full_batch})
    batch_ms = time_passes(model, texts, sizes)
    intent_pred, _ = argmaxes(model, intent.texts, full_batch)
    sentiment_acc = 0.0
    if sentiment is not None:
        _, sentiment_pred = argmaxes(model, sentiment.texts, full_batch)
        sentiment_acc = accuracy(sentiment_pred, sentiment.gold)
    return Trial(
        name=name,
        batch1_ms=round(batch_ms[1], 3),
        full_batch=full_batch,
        full_texts_per_s=round(full_batch / batch_ms[full_batch] * 1000, 1),
        intent_accuracy=accuracy(intent_pred, intent.gold),
        sentiment_accuracy=sentiment_acc,
        intent_agreement=accuracy(intent_pred, ref.intent_argmax),
        batch_ms={s: round(ms, 3) for s, ms in batch_ms.items()},
    )


def run_trials(
    candidates: dict[str, Callable[[], NluModel]],
    reference_model: Callable[[], NluModel],
    intent: LabelledTexts,
    sentiment: LabelledTexts | None,
    full_batch: int = 32,
    hybrid: tuple[str, str] | None = None,
) -> tuple[list[Trial], float]:
    """Every candidate's trial (one model loaded at a time), plus the hybrid of the ``hybrid``
    pair (small, large) where each wins at some sizes; and the reference's intent accuracy."""
    ref = reference(reference_model(), intent, full_batch)
    texts = timing_texts([intent, *([sentiment] if sentiment else [])])
    trials: list[Trial] = []
    for name, factory in candidates.items():
        started = time.perf_counter()
        trial = measure(name, factory(), ref, intent, sentiment, texts, full_batch)
        log.info("runtime trial %s in %.1f s: %s", name, time.perf_counter() - started, trial)
        trials.append(trial)
    by_name = {t.name: t for t in trials}
    if hybrid is not None and hybrid[0] in by_name and hybrid[1] in by_name:
        mixed = hybrid_trial(by_name[hybrid[0]], by_name[hybrid[1]])
        if mixed is not None:
            trials.append(mixed)
    return trials, ref.intent_accuracy
