"""The build report: FP32 vs INT8 accuracy, embedding fidelity, size on disk and speed."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from xz_serve.artifacts.data import OOS_LABEL, LabelledSet
from xz_serve.artifacts.oos import CurvePoint, OperatingPoint, Scored
from xz_serve.artifacts.progress import progress
from xz_serve.models.base import softmax
from xz_serve.models.detector import OosDetector
from xz_serve.models.onnx_model import OnnxNluModel


def run_batches(model: OnnxNluModel, texts: list[str], desc: str) -> tuple[np.ndarray, ...]:
    """Embeddings, intent and sentiment logits for ``texts`` in batches of 64 (no texts: arrays of
    no rows, shaped by one pass over a placeholder)."""
    if not texts:
        return tuple(a[:0] for a in model.logits(["."]))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in progress(range(0, len(texts), 64), desc, unit="batch", leave=False):
        parts.append(model.logits(texts[start : start + 64]))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def evaluate(
    model: OnnxNluModel,
    detector: OosDetector,
    intent_val: LabelledSet,
    sentiment_val: LabelledSet,
    original_embeddings: np.ndarray,
    negatives: list[str],
) -> tuple[dict[str, Any], tuple[Scored, Scored | None]]:
    """Scores of one variant on both validation sets, plus cosine to the original MiniLM.

    ``intent`` is measured at the detector's threshold, ``intent_argmax_only`` without it (only
    the ``oos`` class, where there is one, says out of scope); ``negatives_recall`` is the share of
    the held-back out-of-domain ``negatives`` that the detector flags.

    Returns:
        The scores, and the val set and the negatives as the detector scored them.
    """
    embedding, intent, _ = run_batches(model, intent_val.texts, "eval intent")
    _, _, sentiment = run_batches(model, sentiment_val.texts, "eval sentiment")
    val = Scored.of(detector, embedding, softmax(intent), intent_val.labels)
    scored_negatives = None
    if negatives:
        neg_embedding, neg_intent, _ = run_batches(model, negatives, "eval negatives")
        scored_negatives = Scored.of(detector, neg_embedding, softmax(neg_intent), None)
    at = OperatingPoint.at(val, detector.threshold)
    argmax_only = OperatingPoint.at(val, np.inf)
    scores = {
        "intent": {**at.__dict__},
        "intent_argmax_only": {**argmax_only.__dict__},
        "negatives_recall": None
        if scored_negatives is None
        else float(scored_negatives.flagged(detector.threshold).mean()),
        "sentiment": {
            "accuracy": float((sentiment.argmax(-1) == np.array(sentiment_val.labels)).mean())
        },
        "embedding_cosine_to_minilm": float((embedding * original_embeddings).sum(-1).mean()),
    }
    return scores, (val, scored_negatives)


def _label_names(names: tuple[str, ...], oos_index: int) -> list[str]:
    """Names of the predicted columns: the head's, plus ``oos`` past the end when it has none."""
    return list(names) if oos_index >= 0 else [*names, OOS_LABEL]


def per_label(val: Scored, threshold: float, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Precision, recall and support of each label val has, at ``threshold`` (a flagged in-scope
    text counts against its label's recall; ``oos`` is a label like any other where the set has it)."""
    assert val.gold is not None
    columns = _label_names(names, val.oos_index)
    pred = val.predicted(threshold, len(names))
    gold = val.gold
    table = {}
    for index, name in enumerate(columns):
        support = int((gold == index).sum())
        predicted = int((pred == index).sum())
        if not support:
            continue  # a label val lacks, or the flag column of a set without `oos`
        hit = int(((pred == index) & (gold == index)).sum())
        table[name] = {
            "precision": round(hit / predicted, 4) if predicted else 0.0,
            "recall": round(hit / support, 4) if support else 0.0,
            "support": support,
        }
    return table


def confused_pairs(
    val: Scored, threshold: float, names: tuple[str, ...], top: int = 10
) -> list[dict[str, Any]]:
    """The ``top`` most frequent (true label, predicted label) mistakes on val at ``threshold``."""
    assert val.gold is not None
    columns = _label_names(names, val.oos_index)
    pred = val.predicted(threshold, len(names))
    pairs = Counter((int(g), int(p)) for g, p in zip(val.gold, pred, strict=True) if g != p)
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], columns[item[0][0]], columns[item[0][1]]))
    return [{"label": columns[g], "predicted": columns[p], "count": n} for (g, p), n in ranked[:top]]


def plot_curve(curve: list[CurvePoint], keep: float, path: Path, title: str) -> bool:
    """The curve as a PNG: out-of-scope recall (val, or the held-back negatives where val has no
    out-of-scope texts) against val in-scope accuracy, the chosen ``keep`` marked.

    Returns:
        False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: the report has the curve as a table only")
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    x = [p.val.in_scope_accuracy or 0.0 for p in curve]
    series = []
    if any(p.val.oos_recall is not None for p in curve):
        series.append(("val out-of-scope recall", [p.val.oos_recall or 0.0 for p in curve], "o-"))
    if any(p.negatives_recall is not None for p in curve):
        negatives = [p.negatives_recall or 0.0 for p in curve]
        series.append(("held-back out-of-domain negatives flagged", negatives, "s--"))
    for label, y, style in series:
        ax.plot(x, y, style, label=label, markersize=4)
    chosen = [p for p in curve if p.keep == keep]
    for point in chosen[:1]:
        ax.axvline(point.val.in_scope_accuracy or 0.0, color="grey", linewidth=0.8, linestyle=":")
        where = (point.val.in_scope_accuracy or 0.0, 0.02)
        label = f"keep {keep:g}: threshold {point.threshold:.3f}"
        ax.annotate(label, where, fontsize=8, rotation=90, va="bottom")
    ax.set_xlabel("val in-scope accuracy (a flagged in-scope text counts wrong)")
    ax.set_ylabel("share flagged out of scope")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_report(report: dict[str, Any]) -> str:
    """The report as text, for the terminal and the README: FP32 against INT8, then the
    out-of-scope detector's operating point and curve, the most confused pairs and every label's
    precision and recall."""
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    n_labels = report.get("data", {}).get("intent", {}).get("labels")
    rows: list[tuple[str, Any]] = [
        (f"intent accuracy ({n_labels} labels)" if n_labels else "intent accuracy",
         lambda v: _pct(v["intent"]["accuracy"])),
        ("intent in-scope accuracy", lambda v: _pct(v["intent"]["in_scope_accuracy"])),
        ("intent oos recall", lambda v: _pct(v["intent"]["oos_recall"])),
        ("out-of-domain negatives flagged", lambda v: _pct(v.get("negatives_recall"))),
        ("argmax only: in-scope accuracy", lambda v: _pct(v["intent_argmax_only"]["in_scope_accuracy"])),
        ("argmax only: oos recall", lambda v: _pct(v["intent_argmax_only"]["oos_recall"])),
        ("sentiment accuracy", lambda v: _pct(v["sentiment"]["accuracy"])),
        ("embedding cosine to MiniLM", lambda v: f"{v['embedding_cosine_to_minilm']:.4f}"),
        ("size (MB)", lambda v: f"{v['size_mb']:.1f}"),
        ("batch-1 latency P50 (ms)", lambda v: f"{v['batch1_p50_ms']:.2f}"),
        ("batch-1 latency P99 (ms)", lambda v: f"{v['batch1_p99_ms']:.2f}"),
        ("batch-32 throughput (texts/s)", lambda v: f"{v['batch32_texts_per_s']:.0f}"),
    ]  # fmt: skip
    lines = [f"{'metric':34} {'FP32':>12} {'INT8':>12}"]
    for title, cell in rows:
        lines.append(f"{title:34} {cell(fp32):>12} {cell(int8):>12}")
    lines.append(f"INT8 size / FP32 size: {int8['size_mb'] / fp32['size_mb']:.1%}")
    detector = report.get("detector")
    if detector:
        lines += [
            "",
            f"out-of-scope detector ({', '.join(detector['features'])}): threshold "
            f"{detector['threshold']:.4f}, chosen on the train holdout to keep "
            f"{detector['keep_in_scope']:.1%} of its in-scope accuracy",
        ]
    curve = report.get("oos_curve")
    if curve:
        lines += [
            "",
            "out-of-scope curve (INT8; each threshold from the holdout, then applied to val):",
            f"{'keep':>6} {'threshold':>10} {'holdout in':>11} {'val in':>8} {'val oos':>8} {'val all':>8} "
            f"{'negatives':>10}",
        ]
        for row in curve:
            mark = " <" if detector and row["keep"] == detector["keep_in_scope"] else ""
            lines.append(
                f"{row['keep']:>6g} {row['threshold']:>10.4f} {_pct(row['holdout_in_scope_accuracy']):>11} "
                f"{_pct(row['val_in_scope_accuracy']):>8} {_pct(row['val_oos_recall']):>8} "
                f"{_pct(row['val_accuracy']):>8} {_pct(row['negatives_recall']):>10}{mark}"
            )
        lines.append("(in: in-scope accuracy; oos: out-of-scope recall; all: accuracy over every label; "
                     "negatives: held-back out-of-domain texts flagged; < the chosen point)")  # fmt: skip
    if report.get("confused"):
        lines += ["", "most confused on val (INT8, at the chosen point): label -> predicted (count)"]
        lines += [f"  {c['label']} -> {c['predicted']} ({c['count']})" for c in report["confused"]]
    if report.get("labels"):
        lines += ["", "per label on val (INT8, at the chosen point), lowest recall first:",
                  f"  {'label':40} {'precision':>9} {'recall':>7} {'support':>7}"]  # fmt: skip
        ranked = sorted(report["labels"].items(), key=lambda item: (item[1]["recall"], item[0]))
        for name, row in ranked:
            lines.append(f"  {name:40} {row['precision']:>9.2%} {row['recall']:>7.2%} {row['support']:>7}")
    return "\n".join(lines)
