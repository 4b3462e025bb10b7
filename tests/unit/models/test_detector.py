"""OosDetector: the serve-side score from one pass's embeddings and probabilities, and its files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from xz_serve.models.detector import OosDetector, load_detector


def detector(oos_index: int = -1, threshold: float = 0.5) -> OosDetector:
    """2-d embeddings, two in-scope classes at (1, 0) and (0, 1), whitening = 2 * identity."""
    n_features = 3 if oos_index >= 0 else 2
    return OosDetector(
        whiten=2 * np.eye(2),
        centers=np.array([[2.0, 0.0], [0.0, 2.0]]),  # the class means, whitened
        in_scope=np.array([0, 1]),
        oos_index=oos_index,
        feature_mean=np.zeros(n_features),
        feature_scale=np.ones(n_features),
        weights=np.array([1.0, -1.0, 0.5][:n_features]),
        bias=-0.25,
        threshold=threshold,
    )


def test_distance_is_the_squared_whitened_distance_to_the_nearest_class_mean() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 0.5], [0.6, 0.8]])
    # whitened rows (2, 0), (0, 1), (1.2, 1.6); nearest means (2, 0), (0, 2), (0, 2) or (2, 0)
    expected = [0.0, 1.0, min(0.8**2 + 1.6**2, 1.2**2 + 0.4**2)]
    assert detector().distances(emb) == pytest.approx(expected)


def test_features_are_log_distance_log_top_in_scope_probability_and_log_oos_probability() -> None:
    emb = np.array([[0.0, 0.5]])
    probs = np.array([[0.2, 0.5, 0.3]])  # column 2 is oos
    feats = detector(oos_index=2).features(emb, probs)
    assert feats[0] == pytest.approx([np.log(1.0), np.log(0.5), np.log(0.3)], abs=1e-9)
    assert detector(oos_index=2).feature_names == ("distance", "confidence", "oos_prob")
    no_oos = detector().features(emb, np.array([[0.4, 0.6]]))
    assert no_oos[0] == pytest.approx([0.0, np.log(0.6)], abs=1e-9)
    assert detector().feature_names == ("distance", "confidence")


def test_score_is_the_logistic_of_the_standardised_weighted_features() -> None:
    det = detector()
    emb, probs = np.array([[0.0, 0.5], [1.0, 0.0]]), np.array([[0.4, 0.6], [0.9, 0.1]])
    z = det.features(emb, probs) @ det.weights + det.bias
    assert det.score(emb, probs) == pytest.approx(1 / (1 + np.exp(-z)))
    shifted = dataclasses.replace(det, feature_mean=np.array([1.0, 0.0]), feature_scale=np.array([2.0, 1.0]))
    feats = det.features(emb, probs)
    z2 = ((feats - [1.0, 0.0]) / [2.0, 1.0]) @ det.weights + det.bias
    assert shifted.score(emb, probs) == pytest.approx(1 / (1 + np.exp(-z2)))


def test_far_from_every_class_and_unsure_scores_higher() -> None:
    det = detector()
    near, far = np.array([[0.95, 0.05]]), np.array([[-0.7, -0.7]])
    assert det.score(far, np.array([[0.5, 0.5]]))[0] > det.score(near, np.array([[0.99, 0.01]]))[0]


def test_flags_at_the_threshold_itself_and_whenever_oos_wins_the_argmax() -> None:
    det = detector(oos_index=2)
    emb = np.array([[1.0, 0.0], [1.0, 0.0]])
    probs = np.array([[0.98, 0.01, 0.01], [0.3, 0.0, 0.7]])
    scores, _ = det.flags(emb, probs)
    at = det.with_threshold(float(scores[0]))
    _, flagged = at.flags(emb, probs)
    assert flagged[0]  # score == threshold is out of scope
    _, flagged = det.with_threshold(1.0).flags(emb, probs)
    assert flagged.tolist() == [False, True]  # the oos argmax, whatever the score


def test_save_and_load_give_the_same_scores(tmp_path: Path) -> None:
    det = detector(oos_index=2, threshold=0.375)
    det.save(tmp_path / "detector.npz")
    back = load_detector(tmp_path / "detector.npz", {"bias": det.bias, "oos_index": 2, "threshold": 0.375})
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 2))
    probs = rng.dirichlet(np.ones(3), size=5)
    assert back.score(emb, probs) == pytest.approx(det.score(emb, probs), rel=1e-6)
    assert (back.threshold, back.oos_index, back.feature_names) == (0.375, 2, det.feature_names)


def test_without_a_mix_the_head_labels_alone() -> None:
    det = detector()
    head = np.array([[0.9, 0.1]])
    probs, _, _ = det.label(np.array([[0.0, 1.0]]), head)  # at class 1's mean, the head says 0
    np.testing.assert_array_equal(probs, head)


def test_a_mix_lets_the_class_means_outvote_an_unsure_head() -> None:
    det = dataclasses.replace(detector(), mix=0.5)
    at_class_1 = np.array([[0.0, 1.0]])
    probs, scores, _ = det.label(at_class_1, np.array([[0.6, 0.4]]))
    assert probs.argmax(1).tolist() == [1] and probs.sum() == pytest.approx(1.0)
    # a sure head keeps its label: the blend weighs, it does not replace
    sure, _, _ = det.label(at_class_1, np.array([[0.999, 0.001]]))
    assert sure.argmax(1).tolist() == [0]
    # the score reads the head's probabilities, not the blend: the blend moves labels, not the cut
    off_mean, head = np.array([[0.5, 1.0]]), np.array([[0.6, 0.4]])
    blended, scores, _ = det.label(off_mean, head)
    assert scores == pytest.approx(det.score_features(det.features(off_mean, head)), rel=1e-9)
    assert scores != pytest.approx(det.score_features(det.features(off_mean, blended)), rel=1e-3)
    assert det.score(off_mean, head) == pytest.approx(scores, rel=1e-9)


def test_the_blend_leaves_oos_against_the_best_in_scope_intent_to_the_head() -> None:
    det = dataclasses.replace(detector(oos_index=2), in_scope=np.array([0, 1]), mix=1.0)
    head = np.array([[0.3, 0.2, 0.5]])
    probs = det.blend(head, det.squared_distances(np.array([[1.0, 0.0]])))
    # oos stays ahead of the best in-scope intent exactly as far as the head put it
    assert np.log(probs[0, 2] / probs[0, 0]) == pytest.approx(np.log(0.5 / 0.3))
    assert probs[0, 0] > probs[0, 1]


def test_the_mix_is_saved_and_loaded(tmp_path: Path) -> None:
    det = dataclasses.replace(detector(), mix=0.2)
    det.save(tmp_path / "d.npz")
    back = load_detector(
        tmp_path / "d.npz", {"bias": det.bias, "oos_index": -1, "threshold": 0.5, "mix": 0.2}
    )
    assert back.mix == 0.2
    older = load_detector(tmp_path / "d.npz", {"bias": det.bias, "oos_index": -1, "threshold": 0.5})
    assert older.mix == 0.0
