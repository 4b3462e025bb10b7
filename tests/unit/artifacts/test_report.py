"""The build report's pure parts: evaluation at the detector's point, per-label scores, the most
confused pairs, the curve's picture and the printed text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xz_serve.artifacts import oos, report
from xz_serve.artifacts.data import LabelledSet
from xz_serve.models.base import Labels
from xz_serve.models.detector import OosDetector

NAMES = ("balance", "oos", "transfer")


def variant(accuracy: float, size_mb: float, per_s: float) -> dict[str, Any]:
    point = {"accuracy": accuracy, "in_scope_accuracy": 0.95, "oos_recall": 0.5, "flagged_in_scope": 0.01}
    return {
        "intent": point,
        "intent_argmax_only": {**point, "oos_recall": 0.25},
        "negatives_recall": 0.9,
        "sentiment": {"accuracy": 0.6612},
        "embedding_cosine_to_minilm": 0.98765,
        "size_mb": size_mb,
        "batch1_p50_ms": 2.971,
        "batch1_p99_ms": 5.966,
        "batch32_texts_per_s": per_s,
    }


def curve_row(keep: float, threshold: float) -> dict[str, Any]:
    return {"keep": keep, "threshold": threshold, "holdout_in_scope_accuracy": 0.99,
            "val_in_scope_accuracy": 0.97, "val_oos_recall": None, "val_accuracy": 0.97,
            "negatives_recall": 0.9}  # fmt: skip


REPORT = {
    "data": {"intent": {"labels": 3}},
    "variants": {"fp32": variant(0.9, 90.0, 400.4), "int8": variant(0.8912, 23.0, 530.7)},
    "detector": {"features": ["distance", "confidence"], "threshold": 0.75, "keep_in_scope": 0.995},
    "oos_curve": [curve_row(1.0, 0.99), curve_row(0.995, 0.75)],
    "confused": [{"label": "transfer", "predicted": "balance", "count": 4}],
    "labels": {
        "balance": {"precision": 0.5, "recall": 1.0, "support": 2},
        "transfer": {"precision": 1.0, "recall": 0.25, "support": 4},
    },
}


def test_format_report_is_fp32_against_int8_then_the_detector_curve_confusions_and_labels() -> None:
    lines = report.format_report(REPORT).splitlines()
    assert lines[0].split() == ["metric", "FP32", "INT8"]
    rows = {line[:34].strip(): line[34:].split() for line in lines[1:13]}
    assert rows["intent accuracy (3 labels)"] == ["90.00%", "89.12%"]
    assert rows["intent oos recall"] == ["50.00%", "50.00%"]
    assert rows["argmax only: oos recall"] == ["25.00%", "25.00%"]
    assert rows["out-of-domain negatives flagged"] == ["90.00%", "90.00%"]
    assert rows["sentiment accuracy"] == ["66.12%", "66.12%"]
    assert rows["embedding cosine to MiniLM"] == ["0.9877", "0.9877"]
    assert rows["size (MB)"] == ["90.0", "23.0"]
    assert rows["batch-32 throughput (texts/s)"] == ["400", "531"]
    assert lines[13] == "INT8 size / FP32 size: 25.6%"
    text = "\n".join(lines)
    assert "threshold 0.7500, chosen on the train holdout to keep 99.5% of its in-scope accuracy" in text
    curve = [line for line in lines if line.strip().startswith(("1 ", "0.995 "))]
    assert curve[0].split() == ["1", "0.9900", "99.00%", "97.00%", "-", "97.00%", "90.00%"]
    assert curve[1].endswith("<")  # the chosen point
    assert "  transfer -> balance (4)" in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("per label"))
    label_rows = [line.split() for line in lines[start + 2 :]]
    assert label_rows == [["transfer", "100.00%", "25.00%", "4"], ["balance", "50.00%", "100.00%", "2"]]


def test_a_missing_value_prints_as_a_dash() -> None:
    fp32 = variant(0.9, 90.0, 400.0)
    fp32["intent"]["oos_recall"] = None
    text = report.format_report({"variants": {"fp32": fp32, "int8": fp32}})
    row = next(line for line in text.splitlines() if line.startswith("intent oos recall"))
    assert row.split()[-2:] == ["-", "-"]


def scored(gold: list[int], argmax: list[int], scores: list[float], oos_index: int = 1) -> oos.Scored:
    return oos.Scored(np.array(scores), np.array(argmax), np.array(gold), oos_index)


def test_per_label_precision_recall_and_support_at_the_threshold() -> None:
    # balance: 2 gold (1 right, 1 flagged); transfer: 2 gold (1 right, 1 said balance); oos: 2 gold
    data = scored(gold=[0, 0, 2, 2, 1, 1], argmax=[0, 0, 2, 0, 0, 1], scores=[0.1, 0.9, 0.1, 0.2, 0.8, 0.1])
    table = report.per_label(data, 0.5, NAMES)
    assert table["balance"] == {"precision": 0.5, "recall": 0.5, "support": 2}
    assert table["transfer"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert table["oos"] == {"precision": round(2 / 3, 4), "recall": 1.0, "support": 2}


def test_without_an_oos_class_flags_are_a_column_of_their_own_shown_only_with_support() -> None:
    data = scored(gold=[0, 1], argmax=[0, 1], scores=[0.9, 0.1], oos_index=-1)
    table = report.per_label(data, 0.5, ("a", "b"))
    assert table == {"a": {"precision": 0.0, "recall": 0.0, "support": 1},
                     "b": {"precision": 1.0, "recall": 1.0, "support": 1}}  # fmt: skip
    assert report.confused_pairs(data, 0.5, ("a", "b")) == [{"label": "a", "predicted": "oos", "count": 1}]


def test_confused_pairs_most_frequent_first_then_by_name() -> None:
    data = scored(gold=[2, 2, 2, 0, 0, 1], argmax=[0, 0, 2, 2, 2, 0], scores=[0.0] * 5 + [0.0])
    assert report.confused_pairs(data, 0.5, NAMES, top=2) == [
        {"label": "balance", "predicted": "transfer", "count": 2},
        {"label": "transfer", "predicted": "balance", "count": 2},
    ]


class ScriptedModel:
    """Just enough of OnnxNluModel: ``logits`` per batch."""

    def __init__(self, intent_logits: dict[str, list[float]]) -> None:
        self.intent_logits = intent_logits
        self.labels = Labels(NAMES, ("negative", "neutral", "positive"))
        self.batches: list[int] = []

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.batches.append(len(texts))
        embedding = np.array([[1.0, 0.0] if t != "far" else [0.0, 1.0] for t in texts])
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


def distance_only_detector(threshold: float) -> OosDetector:
    """Scores 0.5 at the class mean (1, 0) and more the farther a text is from it."""
    return OosDetector(
        whiten=np.eye(2), centers=np.array([[1.0, 0.0], [1.0, 0.0]]), in_scope=np.array([0, 2]),
        oos_index=1, feature_mean=np.zeros(3), feature_scale=np.ones(3),
        weights=np.array([1.0, 0.0, 0.0]), bias=float(-np.log(1e-12)), threshold=threshold,
    )  # fmt: skip


def test_evaluate_scores_at_the_detectors_threshold_and_without_it() -> None:
    model = ScriptedModel({"pay": [5.0, 0.0, 0.0], "far": [5.0, 0.0, 0.0], "odd": [0.0, 5.0, 0.0]})
    intent_val = LabelledSet(["pay", "far", "odd"], [0, 1, 1], NAMES)  # "far" is oos, away from the mean
    sentiment_val = LabelledSet(["good day", "bad day"], [2, 0], ("negative", "neutral", "positive"))
    original = np.array([[1.0, 0.0]] * 3)
    scores, (val, negatives) = report.evaluate(
        model, distance_only_detector(0.75), intent_val, sentiment_val, original, ["far", "pay"]  # type: ignore[arg-type]
    )
    assert scores["intent"] == {"accuracy": 1.0, "in_scope_accuracy": 1.0, "oos_recall": 1.0,
                                "flagged_in_scope": 0.0}  # fmt: skip
    assert scores["intent_argmax_only"]["oos_recall"] == 0.5  # only "odd", by its oos argmax
    assert scores["negatives_recall"] == 0.5  # "far" flagged, "pay" not
    assert scores["sentiment"] == {"accuracy": 1.0}
    assert scores["embedding_cosine_to_minilm"] == pytest.approx(2 / 3)
    assert val.gold is not None and negatives is not None and negatives.gold is None


def test_plot_curve_writes_a_png(tmp_path: Path) -> None:
    hold = scored([0, 0, 2, 1], [0, 0, 2, 1], [0.1, 0.2, 0.3, 0.9])
    points = oos.curve(hold, hold, hold, [1.0, 0.5])
    assert report.plot_curve(points, 0.5, tmp_path / "curve.png", "test")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_size_mb_is_decimal_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 2_500_000)
    assert report.size_mb(path) == 2.5


def test_run_batches_of_no_texts_are_empty_arrays_of_the_right_width() -> None:
    embedding, intent, sentiment = report.run_batches(ScriptedModel({}), [], "eval")  # type: ignore[arg-type]
    assert embedding.shape == (0, 2) and intent.shape == (0, 3) and sentiment.shape == (0, 3)
