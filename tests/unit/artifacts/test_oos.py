"""Fitting the out-of-scope detector: its geometry and logistic fit on synthetic Gaussian clusters,
and the choice of its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from xz_serve.artifacts import oos

DIM = 6
COV = np.diag([4.0, 1.0, 1.0, 0.25, 0.25, 0.04])  # anisotropic: one loose axis, one tight
MEANS = np.array([[0, 0, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0]], dtype=float)


def clusters(n: int, seed: int, means: np.ndarray = MEANS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.multivariate_normal(m, COV, size=n) for m in means])
    return x, np.repeat(np.arange(len(means)), n)


def probs_from(x: np.ndarray, n_columns: int) -> np.ndarray:
    """A nearest-mean classifier's softmax over the clusters (plus zero columns up to n_columns)."""
    d = ((x[:, None, :] - MEANS[None]) ** 2 / np.diag(COV)).sum(-1)
    logits = np.full((len(x), n_columns), -50.0)
    logits[:, : len(MEANS)] = -d / 2
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_whitening_inverts_the_pooled_within_class_covariance() -> None:
    x, y = clusters(2000, seed=0)
    whiten, centers = oos.shared_geometry(x, y, [0, 1, 2], shrinkage=0.0)
    centred = x - MEANS[y]
    assert whiten @ np.cov(centred.T) @ whiten == pytest.approx(np.eye(DIM), abs=0.05)
    assert centers == pytest.approx(np.stack([x[y == c].mean(0) for c in range(3)]) @ whiten)
    # The squared distance after whitening is the Mahalanobis distance under the sample covariance.
    point = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.5])
    mean0 = x[y == 0].mean(0)
    cov = (x - np.stack([x[y == c].mean(0) for c in range(3)])[y]).T
    cov = cov @ cov.T / (len(x) - 3)
    expected = (point - mean0) @ np.linalg.inv(cov) @ (point - mean0)
    assert ((point @ whiten - centers[0]) ** 2).sum() == pytest.approx(expected)


def test_mahalanobis_sees_a_step_along_the_tight_axis_as_farther_than_along_the_loose_one() -> None:
    x, y = clusters(500, seed=1)
    whiten, centers = oos.shared_geometry(x, y, [0, 1, 2], shrinkage=0.0)
    loose, tight = np.eye(DIM)[0] * -1.5, np.eye(DIM)[5] * 1.5  # same Euclidean step from class 0
    d = [((p @ whiten - centers[0]) ** 2).sum() for p in (loose, tight)]
    assert d[1] > 20 * d[0]


def test_full_shrinkage_is_euclidean_distance_scaled_by_the_mean_variance() -> None:
    x, y = clusters(300, seed=2)
    whiten, _ = oos.shared_geometry(x, y, [0, 1, 2], shrinkage=1.0)
    scale = whiten[0, 0]
    assert whiten == pytest.approx(scale * np.eye(DIM))
    assert scale**-2 == pytest.approx(np.trace(COV) / DIM, rel=0.1)  # S = mean variance * I


def test_only_the_listed_classes_shape_the_geometry() -> None:
    x, y = clusters(300, seed=3)
    far = np.random.default_rng(3).normal(50, 30, size=(300, DIM))  # an `oos` class, spread wide
    x2, y2 = np.concatenate([x, far]), np.concatenate([y, np.full(300, 3)])
    without = oos.shared_geometry(x, y, [0, 1, 2], 0.1)[0]
    assert oos.shared_geometry(x2, y2, [0, 1, 2], 0.1)[0] == pytest.approx(without)


def test_fit_logistic_recovers_a_separating_direction() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 2)) * [1.0, 5.0] + [3.0, 0.0]
    p = 1 / (1 + np.exp(-(2.0 * (x[:, 0] - 3.0) + 0.0 * x[:, 1])))
    y = (rng.random(4000) < p).astype(float)
    mean, scale, coef, bias = oos.fit_logistic(x, y, np.ones(len(y)), l2=0.0)
    assert mean == pytest.approx([3.0, 0.0], abs=0.2) and scale == pytest.approx([1.0, 5.0], rel=0.1)
    assert coef[0] / scale[0] == pytest.approx(2.0, rel=0.15)  # back in raw units
    assert abs(coef[1]) < 0.2 and abs(bias) < 0.2


def test_fit_logistic_weights_balance_a_rare_class() -> None:
    x = np.array([[0.0], [0.1], [0.2], [0.3], [1.0]])
    y = np.array([0, 0, 0, 0, 1.0])
    weight = np.where(y > 0, 1 / 1, 1 / 4) * len(y) / 2
    _, _, coef, _ = oos.fit_logistic(x, y, weight)
    assert coef[0] > 0


class TestChooseThreshold:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    correct = np.array([True] * 10 + [False])  # the 0.99 one is wrong anyway

    def test_keep_everything_flags_no_correct_text(self) -> None:
        t = oos.choose_threshold(self.scores, self.correct, keep=1.0)
        assert t > 0.95 and not (self.scores[self.correct] >= t).any()

    def test_the_threshold_sits_halfway_between_the_last_flagged_and_the_first_kept(self) -> None:
        # keep 0.8 of 10 correct texts: 2 may be flagged (0.95, 0.9); the next (0.8) must not
        assert oos.choose_threshold(self.scores, self.correct, keep=0.8) == pytest.approx(0.85)
        # keep 0.85: floor(1.5) = 1 may be flagged
        assert oos.choose_threshold(self.scores, self.correct, keep=0.85) == pytest.approx(0.925)

    def test_wrong_texts_do_not_count_against_the_budget(self) -> None:
        flagged = self.scores >= oos.choose_threshold(self.scores, self.correct, keep=0.9)
        assert flagged.tolist()[-2:] == [True, True] and flagged.sum() == 2

    def test_ties_at_the_boundary_flag_fewer_rather_than_more(self) -> None:
        scores = np.array([0.2, 0.5, 0.5, 0.9])
        t = oos.choose_threshold(scores, np.ones(4, dtype=bool), keep=0.5)  # 2 allowed: 0.9 and one 0.5
        assert (scores >= t).sum() == 1

    def test_keep_zero_and_no_correct_texts(self) -> None:
        assert oos.choose_threshold(self.scores, self.correct, keep=0.0) == pytest.approx(0.1)
        assert oos.choose_threshold(self.scores, np.zeros(11, dtype=bool), keep=0.99) == 1.0


def fitted(with_oos: bool, keep: float = 0.98) -> tuple[oos.OosDetector, dict[str, np.ndarray]]:
    n_columns = 4 if with_oos else 3
    oos_index = 3 if with_oos else -1
    train_x, train_y = clusters(400, seed=5)
    hold_x, hold_y = clusters(100, seed=6)
    # Unseen intents: beside known ones along the loose axis, but off them along the tight ones.
    novel = np.array([[1, 0, 0, 2, 2, 0.8], [5, 1, 0, -2, 0, -0.8]], dtype=float)
    neg_x, _ = clusters(100, seed=7, means=novel)
    hold_probs = probs_from(hold_x, n_columns)
    if with_oos:
        odd, _ = clusters(10, seed=8, means=novel)
        hold_x, hold_y = np.concatenate([hold_x, odd]), np.concatenate([hold_y, np.full(20, 3)])
        hold_probs = probs_from(hold_x, n_columns)
    det = oos.fit_detector(
        train_x, train_y, hold_x, hold_probs, hold_y, neg_x, probs_from(neg_x, n_columns), oos_index, keep
    )
    val_x, _ = clusters(100, seed=9)
    new_x, _ = clusters(100, seed=10, means=novel)
    return det, {
        "in": det.score(val_x, probs_from(val_x, n_columns)),
        "out": det.score(new_x, probs_from(new_x, n_columns)),
        "hold_scores": det.score(hold_x[hold_y != 3], hold_probs[hold_y != 3]),
        "hold_correct": hold_probs[hold_y != 3].argmax(1) == hold_y[hold_y != 3],
    }


@pytest.mark.parametrize("with_oos", [False, True])
def test_the_fitted_detector_separates_unseen_clusters_from_known_ones(with_oos: bool) -> None:
    det, s = fitted(with_oos)
    names = ("distance", "confidence", "oos_prob") if with_oos else ("distance", "confidence")
    assert det.feature_names == names
    assert det.weights[0] > 0  # farther from every class mean: more out of scope
    pairs = (s["out"][:, None] > s["in"][None, :]).mean()  # AUROC
    assert pairs > 0.99
    assert (s["out"] >= det.threshold).mean() > 0.9
    assert (s["in"] >= det.threshold).mean() < 0.05


def test_the_fitted_threshold_keeps_the_asked_share_of_the_holdouts_accuracy() -> None:
    det, s = fitted(with_oos=False, keep=0.95)
    correct = s["hold_correct"]
    kept = (correct & (s["hold_scores"] < det.threshold)).sum() / correct.sum()
    assert 0.95 <= kept < 0.95 + 2 / correct.sum()


def test_without_negatives_or_oos_texts_the_distance_alone_ranks() -> None:
    train_x, train_y = clusters(200, seed=11)
    hold_x, hold_y = clusters(50, seed=12)
    det = oos.fit_detector(train_x, train_y, hold_x, probs_from(hold_x, 3), hold_y,
                           np.zeros((0, DIM)), np.zeros((0, 3)), -1, 0.99)  # fmt: skip
    assert det.weights.tolist() == [1.0, 0.0] and det.bias == 0.0
    assert det.score(np.full((1, DIM), 30.0), probs_from(np.full((1, DIM), 30.0), 3))[0] > det.threshold


def test_operating_point_counts_flags_as_wrong_in_scope_and_right_out_of_scope() -> None:
    data = oos.Scored(
        scores=np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.95]),
        argmax=np.array([0, 0, 1, 2, 2, 0]),  # row 3's argmax is the oos class itself
        gold=np.array([0, 0, 0, 1, 2, 2]),  # rows 4 and 5 are oos
        oos_index=2,
    )
    point = oos.OperatingPoint.at(data, 0.85)
    # in scope: row 0 right, row 1 flagged, row 2 wrong, row 3 argmax oos -> 1 of 4
    assert point.in_scope_accuracy == 0.25 and point.flagged_in_scope == 0.5
    # out of scope: row 4 by its argmax, row 5 by its score -> both caught
    assert point.oos_recall == 1.0 and point.accuracy == pytest.approx(3 / 6)
    assert oos.OperatingPoint.at(data, np.inf).oos_recall == 0.5  # the argmax alone


def test_predicted_labels_put_flags_on_the_oos_column_or_one_past_the_last() -> None:
    data = oos.Scored(np.array([0.1, 0.9]), np.array([1, 0]), np.array([1, 0]), oos_index=-1)
    assert data.predicted(0.5, n_labels=2).tolist() == [1, 2]
    assert oos.OperatingPoint.at(data, 0.5).oos_recall is None


def test_the_curve_trades_in_scope_accuracy_for_recall_as_keep_falls() -> None:
    det, _ = fitted(with_oos=True)
    x, y = clusters(60, seed=13)
    hold = oos.Scored.of(det, x, probs_from(x, 4), y)
    vx, vy = clusters(60, seed=14)
    odd = np.random.default_rng(15).normal(0, 3, size=(40, DIM))
    val = oos.Scored.of(det, np.concatenate([vx, odd]), probs_from(np.concatenate([vx, odd]), 4),
                        np.concatenate([vy, np.full(40, 3)]))  # fmt: skip
    points = oos.curve(hold, val, None, [0.9, 1.0, 0.95, 0.95])
    assert [p.keep for p in points] == [1.0, 0.95, 0.9]
    thresholds = [p.threshold for p in points]
    assert thresholds == sorted(thresholds, reverse=True)
    recalls = [p.val.oos_recall for p in points]
    assert recalls == sorted(recalls)
    assert points[0].holdout.in_scope_accuracy == pytest.approx(float((hold.argmax == y).mean()))
    assert set(points[0].as_dict()) >= {"keep", "threshold", "val_oos_recall", "holdout_in_scope_accuracy"}


def test_halve_sources_is_a_seeded_disjoint_split_per_source() -> None:
    sources = {"a": [f"a{i}" for i in range(9)], "b": ["b0"]}
    fit, held = oos.halve_sources(sources, seed=1)
    assert len(fit["a"]) == 4 and len(held["a"]) == 5 and fit["b"] == [] and held["b"] == ["b0"]
    assert sorted(fit["a"] + held["a"]) == sorted(sources["a"])
    assert oos.halve_sources(sources, seed=1) == (fit, held)


def test_the_mix_stays_zero_when_the_head_is_already_right() -> None:
    train_x, train_y = clusters(300, seed=21)
    hold_x, hold_y = clusters(60, seed=22)
    det = oos.fit_detector(
        train_x,
        train_y,
        hold_x,
        probs_from(hold_x, 3),
        hold_y,
        hold_x[:0],
        probs_from(hold_x[:0], 3),
        -1,
        0.98,
    )
    assert det.mix == 0.0


def test_the_mix_weighs_the_class_means_in_where_they_label_the_holdout_better() -> None:
    train_x, train_y = clusters(300, seed=23)
    hold_x, hold_y = clusters(60, seed=24)
    # a head that confuses classes 1 and 2 a third of the time, with little confidence
    rng = np.random.default_rng(25)
    noisy = np.full((len(hold_x), 3), 0.2)
    guess = np.where((hold_y > 0) & (rng.random(len(hold_y)) < 0.33), 3 - hold_y, hold_y)
    noisy[np.arange(len(hold_x)), guess] = 0.6
    det = oos.fit_detector(train_x, train_y, hold_x, noisy, hold_y, hold_x[:0], noisy[:0], -1, 0.98)
    assert det.mix > 0.0
    blended = det.blend(noisy, det.squared_distances(hold_x))
    assert (blended.argmax(1) == hold_y).mean() > (noisy.argmax(1) == hold_y).mean() + 0.2


def test_the_temperature_calibrates_the_class_mean_posterior() -> None:
    train_x, train_y = clusters(300, seed=26)
    hold_x, hold_y = clusters(100, seed=27)
    hold_probs, none = probs_from(hold_x, 3), hold_x[:0]
    det = oos.fit_detector(train_x, train_y, hold_x, hold_probs, hold_y, none, hold_probs[:0], -1, 0.98)
    squared = det.squared_distances(hold_x)
    # Gaussian clusters with the covariance the geometry estimates: the plain posterior is the true one
    assert 0.5 <= det.temperature <= 2.5
    # distances ten times as large need a temperature about ten times as high
    assert oos.choose_temperature(det, 10 * squared, hold_y) == pytest.approx(10 * det.temperature, rel=0.2)
