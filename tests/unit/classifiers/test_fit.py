"""The head's math on synthetic clusters: accuracy, out-of-scope scores, the cross-validated
estimate, stratified folds, the bytes a head is stored as."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.classifiers.clusters import Clusters
from xz_serve.classifiers.fit import choose_threshold, fit_softmax, stratified_folds, train
from xz_serve.classifiers.head import Head
from xz_serve.classifiers.spec import ClassifierSpec

SPEC = ClassifierSpec()
LABELS = tuple(f"label_{i}" for i in range(8))


def test_separated_clusters_are_learnt_and_far_points_flagged() -> None:
    clusters = Clusters.make(8, noise=1.0)
    x, y = clusters.sample(30, seed=1)
    trained = train(x, y, LABELS, SPEC)
    test_x, test_y = clusters.sample(100, seed=2)
    inside = trained.head.score(test_x)
    outside = trained.head.score(clusters.far(400, seed=3))
    assert (inside.probs.argmax(1) == test_y).mean() >= 0.95
    np.testing.assert_allclose(inside.probs.sum(1), 1.0, rtol=1e-5)
    assert outside.oos.mean() > inside.oos.mean() + 0.4
    assert outside.flagged.mean() >= 0.8
    # The threshold keeps about oos_keep of held-out in-scope texts; fresh ones behave alike.
    assert inside.flagged.mean() <= 1 - SPEC.oos_keep + 0.05


@pytest.mark.parametrize("noise", [1.5, 2.0])
def test_the_cross_validated_estimate_tracks_accuracy_on_unseen_texts(noise: float) -> None:
    clusters = Clusters.make(8, noise=noise, seed=4)
    x, y = clusters.sample(30, seed=5)
    trained = train(x, y, LABELS, SPEC)
    test_x, test_y = clusters.sample(300, seed=6)
    accuracy = float((trained.head.score(test_x).probs.argmax(1) == test_y).mean())
    assert accuracy < 0.95  # a hard enough set for the estimate to mean something
    assert abs(trained.validation.accuracy - accuracy) < 0.07
    assert trained.validation.folds_scored == SPEC.cv_folds  # a small set: every fold
    assert trained.validation.held_out == len(y)


def test_a_large_set_stops_scoring_folds_once_enough_are_held_out() -> None:
    clusters = Clusters.make(8, noise=1.5, seed=7)
    x, y = clusters.sample(100, seed=8)
    spec = ClassifierSpec(validation_min_examples=300)
    trained = train(x, y, LABELS, spec)
    assert trained.validation.folds_scored == 2  # 160 held out per fold: two folds reach 300
    assert trained.validation.held_out == 320
    assert len(trained.iterations) == 3  # two fold fits and the final one


def test_folds_are_stratified_and_never_hold_a_label_out_whole() -> None:
    y = np.array([0] * 2 + [1] * 7 + [2] * 23)
    folds = stratified_folds(y, 5, np.random.default_rng(0))
    for label in range(3):
        per_fold = np.bincount(folds[y == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
        for fold in range(5):
            assert (y[folds != fold] == label).any()
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1


def test_two_examples_per_label_train() -> None:
    clusters = Clusters.make(3, noise=0.5, seed=9)
    x, y = clusters.sample(2, seed=10)
    trained = train(x, y, LABELS[:3], SPEC)
    test_x, test_y = clusters.sample(50, seed=11)
    assert (trained.head.score(test_x).probs.argmax(1) == test_y).mean() >= 0.9
    assert 0.0 < trained.head.threshold <= 1.0


def test_softmax_fit_reaches_the_optimum_of_its_loss() -> None:
    """At the returned weights the gradient of the penalised loss is near zero."""
    clusters = Clusters.make(4, dim=16, noise=2.0, seed=12)
    x, y = clusters.sample(40, seed=13)
    w, b, steps = fit_softmax(x, y, 4, l2=1e-2, max_iterations=500)
    assert steps < 500
    # Finite differences of the loss around the optimum in raw space: moving any way costs.
    probs = np.exp(x @ w.T + b)
    probs /= probs.sum(1, keepdims=True)
    onehot = np.eye(4)[y]
    grad_b = (probs - onehot).mean(0)
    assert np.abs(grad_b).max() < 1e-4  # the bias is unpenalised: its gradient is the data term


def test_choose_threshold_keeps_the_share_asked_for() -> None:
    scores = np.linspace(0.0, 1.0, 101)
    threshold = choose_threshold(scores, keep=0.9)
    assert (scores >= threshold).sum() == 10
    assert choose_threshold(scores, keep=1.0) > 1.0


def test_a_head_survives_its_bytes() -> None:
    clusters = Clusters.make(5, noise=1.0, seed=14)
    x, y = clusters.sample(10, seed=15)
    head = train(x, y, ("ä", "b", "c", "d", "e"), SPEC).head
    again = Head.from_bytes(head.to_bytes())
    assert again.labels == head.labels and again.threshold == head.threshold
    np.testing.assert_array_equal(again.score(x).probs, head.score(x).probs)
    np.testing.assert_array_equal(again.score(x).oos, head.score(x).oos)
    with pytest.raises(ValueError):
        Head.from_bytes(head.to_bytes()[:-4])
    with pytest.raises(ValueError):
        head.score(x[:, :10])


def test_a_head_of_twenty_labels_stays_small() -> None:
    """1,000 heads of 20 labels on 384-dim embeddings must fit 200 MB: about 64 kB each."""
    clusters = Clusters.make(20, dim=384, noise=1.0, seed=16)
    x, y = clusters.sample(5, seed=17)
    head = train(x, y, tuple(f"l{i}" for i in range(20)), SPEC).head
    assert head.nbytes < 70_000
    assert len(head.to_bytes()) < 70_000


def test_two_labels_still_flag_far_points() -> None:
    """With two labels, a held-out text whose own label is removed always has confidence 1: that
    must not teach the score that high confidence means out of scope."""
    clusters = Clusters.make(2, noise=0.3, seed=18)
    x, y = clusters.sample(6, seed=19)
    head = train(x, y, ("a", "b"), SPEC).head
    assert head.oos_weights[1] <= 0 <= head.oos_weights[0]
    far = head.score(clusters.far(100, seed=20))
    assert far.flagged.mean() >= 0.9
