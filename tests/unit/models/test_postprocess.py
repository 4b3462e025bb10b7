"""label_outputs: top-k intents best first, the sentiment distribution, and the out-of-scope flag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xz_serve.models.base import Labels, NluOutputs
from xz_serve.models.detector import OosDetector
from xz_serve.models.postprocess import label_outputs, oos_cut

LABELS = Labels(
    intents=("balance", "greeting", "oos", "transfer"),
    sentiments=("negative", "neutral", "positive"),
    oos_threshold=0.5,
)


def outputs(intent_rows: list[list[float]]) -> NluOutputs:
    n = len(intent_rows)
    embeddings = np.eye(n, 8, dtype=np.float32)
    sentiment = np.tile(np.array([[0.2, 0.3, 0.5]]), (n, 1))
    return NluOutputs(embeddings, np.array(intent_rows), sentiment, token_counts=[99] * n)


def test_top_k_intents_come_best_first_with_their_probabilities() -> None:
    [pred] = label_outputs(outputs([[0.1, 0.6, 0.05, 0.25]]), LABELS, [7], top_k=3)
    assert [name for name, _ in pred.intents] == ["greeting", "transfer", "balance"]
    assert [p for _, p in pred.intents] == pytest.approx([0.6, 0.25, 0.1])
    assert all(isinstance(p, float) for _, p in pred.intents)
    assert not pred.out_of_scope


def test_top_k_is_capped_at_the_number_of_intents() -> None:
    [pred] = label_outputs(outputs([[0.1, 0.6, 0.05, 0.25]]), LABELS, [7], top_k=50)
    assert [name for name, _ in pred.intents] == ["greeting", "transfer", "balance", "oos"]


def test_out_of_scope_by_label() -> None:
    [pred] = label_outputs(outputs([[0.1, 0.1, 0.7, 0.1]]), LABELS, [3], top_k=1)
    assert pred.intents == [("oos", pytest.approx(0.7))]
    assert pred.out_of_scope


def test_out_of_scope_by_threshold_but_the_top_intent_is_still_reported() -> None:
    low, at = label_outputs(outputs([[0.3, 0.2, 0.1, 0.4], [0.5, 0.2, 0.1, 0.2]]), LABELS, [3, 4], top_k=2)
    assert low.intents[0] == ("transfer", pytest.approx(0.4)) and low.out_of_scope  # 0.4 < 0.5
    assert at.intents[0] == ("balance", pytest.approx(0.5)) and not at.out_of_scope  # the floor itself passes


def test_zero_threshold_flags_only_the_oos_label() -> None:
    labels = Labels(LABELS.intents, LABELS.sentiments)  # oos_threshold defaults to 0
    preds = label_outputs(outputs([[0.3, 0.2, 0.1, 0.4], [0.1, 0.1, 0.7, 0.1]]), labels, [1, 1], top_k=1)
    assert [p.out_of_scope for p in preds] == [False, True]


def test_rows_keep_input_order_with_their_own_sentiment_embedding_and_tokens() -> None:
    out = outputs([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    first, second = label_outputs(out, LABELS, [5, 11], top_k=1)
    assert (first.intents[0][0], second.intents[0][0]) == ("balance", "transfer")
    assert first.sentiment == pytest.approx({"negative": 0.2, "neutral": 0.3, "positive": 0.5})
    np.testing.assert_array_equal(second.embedding, out.embeddings[1])
    assert (first.tokens, second.tokens) == (5, 11)  # the token_counts argument, not outputs'


def test_with_a_detector_its_flags_decide_and_the_confidence_floor_is_not_used() -> None:
    detector = OosDetector(
        whiten=np.eye(8), centers=np.eye(8)[:3], in_scope=np.array([0, 1, 3]), oos_index=2,
        feature_mean=np.zeros(3), feature_scale=np.ones(3), weights=np.array([1.0, 0.0, 0.0]),
        bias=0.0, threshold=0.6,
    )  # fmt: skip
    labels = dataclasses.replace(LABELS, detector=detector)
    emb = np.zeros((3, 8), dtype=np.float32)
    emb[0, 0] = 1.0  # on a class mean: distance 0, score sigmoid(log 1e-12) ~ 0
    emb[1, 7] = 1.0  # off every mean: distance 2, score sigmoid(log 2) = 2/3 >= 0.6
    emb[2, 1] = 1.0  # on a mean, but the oos class wins the argmax
    probs = np.array([[0.3, 0.2, 0.1, 0.4], [0.9, 0.05, 0.0, 0.05], [0.1, 0.1, 0.7, 0.1]])
    out = NluOutputs(emb, probs, np.tile([[0.2, 0.3, 0.5]], (3, 1)), token_counts=[1, 1, 1])
    preds = label_outputs(out, labels, [1, 1, 1], top_k=1)
    assert [p.out_of_scope for p in preds] == [False, True, True]  # 0.4 < oos_threshold 0.5 no longer flags
    assert preds[0].oos_score < 1e-6 and preds[1].oos_score == pytest.approx(2 / 3, rel=1e-6)
    assert oos_cut(labels) == 0.6  # the detector's threshold is the cut the flags applied


def test_without_a_detector_the_score_is_one_minus_the_top_in_scope_probability() -> None:
    # The `oos` column is not an in-scope intent: its winning the argmax does not lower the score.
    out = outputs([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.6, 0.2], [0.3, 0.3, 0.1, 0.3]])
    preds = label_outputs(out, LABELS, [1, 1, 1], top_k=1)
    assert [p.oos_score for p in preds] == pytest.approx([0.3, 0.8, 0.7])
    assert oos_cut(LABELS) == 0.5
    # The flag applies the same cut: a score above it is out of scope, one below it is not.
    assert [p.out_of_scope for p in preds] == [False, True, True]


def test_a_detector_with_a_mix_serves_the_blended_labels_and_probabilities() -> None:
    detector = OosDetector(
        whiten=np.eye(8), centers=np.eye(8)[:3], in_scope=np.array([0, 1, 3]), oos_index=2,
        feature_mean=np.zeros(3), feature_scale=np.ones(3), weights=np.array([1.0, 0.0, 0.0]),
        bias=0.0, threshold=0.99, mix=1.0,
    )  # fmt: skip
    labels = dataclasses.replace(LABELS, detector=detector)
    emb = np.zeros((1, 8), dtype=np.float32)
    emb[0, 1] = 1.0  # on the mean of head column 1 ("greeting")
    out = NluOutputs(emb, np.array([[0.45, 0.4, 0.05, 0.1]]), np.tile([[0.2, 0.3, 0.5]], (1, 1)), [1])
    [pred] = label_outputs(out, labels, [1], top_k=2)
    blended, _, _ = detector.label(emb, out.intent_probs)
    assert pred.intents[0][0] == "greeting"  # the head alone says "balance"
    assert [p for _, p in pred.intents] == pytest.approx(np.sort(blended[0])[::-1][:2].tolist())
