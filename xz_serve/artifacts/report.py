"""The build report: FP32 vs INT8 accuracy, embedding fidelity, size on disk and speed."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from xz_serve.artifacts.data import OOS_LABEL, LabelledSet, apply_oos_threshold
from xz_serve.artifacts.progress import progress
from xz_serve.models.base import softmax
from xz_serve.models.onnx_model import OnnxNluModel


def run_batches(model: OnnxNluModel, texts: list[str], desc: str) -> tuple[np.ndarray, ...]:
    """Embeddings, intent and sentiment logits for ``texts`` in batches of 64."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in progress(range(0, len(texts), 64), desc, unit="batch", leave=False):
        parts.append(model.logits(texts[start : start + 64]))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def intent_metrics(pred: np.ndarray, data: LabelledSet) -> dict[str, float]:
    """Accuracy over all labels, in-scope accuracy, and out-of-scope recall (CLINC150's metrics)."""
    gold = np.array(data.labels)
    oos = data.names.index(OOS_LABEL)
    in_scope = gold != oos
    return {
        "accuracy": float((pred == gold).mean()),
        "in_scope_accuracy": float((pred[in_scope] == gold[in_scope]).mean()),
        "oos_recall": float((pred[~in_scope] == oos).mean()),
    }


def evaluate(
    model: OnnxNluModel,
    intent_val: LabelledSet,
    sentiment_val: LabelledSet,
    original_embeddings: np.ndarray,
) -> dict[str, Any]:
    """Scores of one variant on both validation sets, plus cosine to the original MiniLM."""
    embedding, intent, _ = run_batches(model, intent_val.texts, "eval intent")
    _, _, sentiment = run_batches(model, sentiment_val.texts, "eval sentiment")
    oos = intent_val.names.index(OOS_LABEL)
    predicted = apply_oos_threshold(softmax(intent), oos, model.labels.oos_threshold)
    return {
        "intent": intent_metrics(predicted, intent_val),
        "intent_argmax_only": intent_metrics(intent.argmax(-1), intent_val),
        "sentiment": {
            "accuracy": float((sentiment.argmax(-1) == np.array(sentiment_val.labels)).mean())
        },
        "embedding_cosine_to_minilm": float((embedding * original_embeddings).sum(-1).mean()),
    }


def measure_speed(model: OnnxNluModel, texts: list[str]) -> dict[str, float]:
    """Batch-1 latency (median and P99 over 200 texts) and batch-32 throughput (texts per second)."""
    singles = texts[:200]
    for text in singles[:20]:
        model.logits([text])
    latencies = []
    for text in singles:
        start = time.perf_counter()
        model.logits([text])
        latencies.append(time.perf_counter() - start)
    batches = [texts[i : i + 32] for i in range(0, min(len(texts), 32 * 40), 32)]
    model.logits(batches[0])
    start = time.perf_counter()
    for batch in batches:
        model.logits(batch)
    elapsed = time.perf_counter() - start
    return {
        "batch1_p50_ms": statistics.median(latencies) * 1000,
        "batch1_p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "batch32_texts_per_s": sum(len(b) for b in batches) / elapsed,
    }


def size_mb(path: Path) -> float:
    """File size in MB (10^6 bytes)."""
    return path.stat().st_size / 1e6


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report, for the terminal and the README."""
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    rows = [
        ("intent accuracy (151 labels)", "intent", "accuracy", "{:.2%}"),
        ("intent in-scope accuracy", "intent", "in_scope_accuracy", "{:.2%}"),
        ("intent oos recall", "intent", "oos_recall", "{:.2%}"),
        ("sentiment accuracy", "sentiment", "accuracy", "{:.2%}"),
    ]
    lines = [f"{'metric':34} {'FP32':>12} {'INT8':>12}"]
    for title, group, key, fmt in rows:
        lines.append(f"{title:34} {fmt.format(fp32[group][key]):>12} {fmt.format(int8[group][key]):>12}")
    for title, key, fmt in [
        ("embedding cosine to MiniLM", "embedding_cosine_to_minilm", "{:.4f}"),
        ("size (MB)", "size_mb", "{:.1f}"),
        ("batch-1 latency P50 (ms)", "batch1_p50_ms", "{:.2f}"),
        ("batch-1 latency P99 (ms)", "batch1_p99_ms", "{:.2f}"),
        ("batch-32 throughput (texts/s)", "batch32_texts_per_s", "{:.0f}"),
    ]:
        lines.append(f"{title:34} {fmt.format(fp32[key]):>12} {fmt.format(int8[key]):>12}")
    lines.append(f"INT8 size / FP32 size: {int8['size_mb'] / fp32['size_mb']:.1%}")
    return "\n".join(lines)
