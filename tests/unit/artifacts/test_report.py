"""The build report's pure parts: metrics, batching through a model, and the printed table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xz_serve.artifacts import report
from xz_serve.artifacts.data import LabelledSet
from xz_serve.models.base import Labels

NAMES = ("balance", "oos", "transfer")


def variant(accuracy: float, size_mb: float, per_s: float) -> dict[str, Any]:
    return {
        "intent": {"accuracy": accuracy, "in_scope_accuracy": 0.95, "oos_recall": 0.5},
        "sentiment": {"accuracy": 0.6612},
        "embedding_cosine_to_minilm": 0.98765,
        "size_mb": size_mb,
        "batch1_p50_ms": 2.971,
        "batch1_p99_ms": 5.966,
        "batch32_texts_per_s": per_s,
    }


def test_format_report_is_one_row_per_metric_fp32_then_int8() -> None:
    variants = {"fp32": variant(0.9, 90.0, 400.4), "int8": variant(0.8912, 23.0, 530.7)}
    text = report.format_report({"variants": variants})
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "FP32", "INT8"]
    assert len(lines) == 1 + 4 + 5 + 1
    rows = {line[:34].strip(): line[34:].split() for line in lines[1:-1]}
    assert rows["intent accuracy (151 labels)"] == ["90.00%", "89.12%"]
    assert rows["intent oos recall"] == ["50.00%", "50.00%"]
    assert rows["sentiment accuracy"] == ["66.12%", "66.12%"]
    assert rows["embedding cosine to MiniLM"] == ["0.9877", "0.9877"]
    assert rows["size (MB)"] == ["90.0", "23.0"]
    assert rows["batch-1 latency P50 (ms)"] == ["2.97", "2.97"]
    assert rows["batch-32 throughput (texts/s)"] == ["400", "531"]
    assert lines[-1] == "INT8 size / FP32 size: 25.6%"


def test_intent_metrics_split_in_scope_accuracy_from_oos_recall() -> None:
    data = LabelledSet(["a"] * 6, [0, 0, 2, 2, 1, 1], NAMES)
    pred = np.array([0, 2, 2, 2, 1, 0])  # in scope: 3 of 4 right; oos: 1 of 2 caught
    assert report.intent_metrics(pred, data) == {
        "accuracy": pytest.approx(4 / 6), "in_scope_accuracy": 0.75, "oos_recall": 0.5
    }  # fmt: skip


class ScriptedModel:
    """Just enough of OnnxNluModel: ``logits`` per batch, and the labels with their threshold."""

    def __init__(self, intent_logits: dict[str, list[float]]) -> None:
        self.intent_logits = intent_logits
        self.labels = Labels(NAMES, ("negative", "neutral", "positive"), oos_threshold=0.5)
        self.batches: list[int] = []

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.batches.append(len(texts))
        embedding = np.array([[1.0, 0.0]] * len(texts))
        intent = np.array([self.intent_logits.get(t, [0.0, 0.0, 5.0]) for t in texts])
        sentiment = np.array([[0.0, 0.0, 1.0] if "good" in t else [1.0, 0.0, 0.0] for t in texts])
        return embedding, intent, sentiment


def test_run_batches_goes_64_at_a_time_and_keeps_order() -> None:
    texts = [f"t{i}" for i in range(130)]
    model = ScriptedModel({t: [float(i), 0.0, 0.0] for i, t in enumerate(texts)})
    embedding, intent, sentiment = report.run_batches(model, texts, "eval")  # type: ignore[arg-type]
    assert model.batches == [64, 64, 2]
    assert embedding.shape == (130, 2) and sentiment.shape == (130, 3)
    assert intent[:, 0].tolist() == [float(i) for i in range(130)]


def test_evaluate_applies_the_models_threshold() -> None:
    unsure = [1.0, 0.9, 0.8]  # top softmax about 0.37: under 0.5, so oos
    model = ScriptedModel({"pay": [5.0, 0.0, 0.0], "what": unsure, "hmm": unsure})
    intent_val = LabelledSet(["pay", "what", "hmm"], [0, 1, 0], NAMES)
    sentiment_val = LabelledSet(["good day", "bad day"], [2, 0], ("negative", "neutral", "positive"))
    scores = report.evaluate(model, intent_val, sentiment_val, np.array([[1.0, 0.0]] * 3))  # type: ignore[arg-type]
    assert scores["intent"] == {"accuracy": pytest.approx(2 / 3), "in_scope_accuracy": 0.5, "oos_recall": 1.0}
    assert scores["intent_argmax_only"]["oos_recall"] == 0.0  # the argmax never says oos here
    assert scores["sentiment"] == {"accuracy": 1.0}
    assert scores["embedding_cosine_to_minilm"] == pytest.approx(1.0)


def test_size_mb_is_decimal_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 2_500_000)
    assert report.size_mb(path) == 2.5
