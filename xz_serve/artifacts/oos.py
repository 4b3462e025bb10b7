"""Fitting the out-of-scope detector (``models/detector.py``) and choosing its operating point.

No val set takes part: class means and the shared covariance come from the training texts; the
weight of the class-mean posterior in the labels (``mix``) and the logistic combination from the
train holdout (its in-scope texts against its ``oos`` texts and the out-of-domain negatives drawn
from the other shared sets); the threshold from the holdout's in-scope texts alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xz_serve.models.detector import OosDetector

DEFAULT_SHRINKAGE = 0.2
# The blends tried; 0 is the head alone, and a larger weight has to label more holdout texts right.
MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# Temperatures tried for the class-mean posterior: squared distances in 384 whitened dimensions
# run to the hundreds, so the calibrated one lies far above 1.
TEMPERATURES = tuple(float(t) for t in np.geomspace(0.5, 500.0, 80))


def shared_geometry(
    embeddings: np.ndarray, labels: np.ndarray, classes: Sequence[int], shrinkage: float
) -> tuple[np.ndarray, np.ndarray]:
    """The whitening matrix ``S^(-1/2)`` and the whitened class means.

    ``S`` is the covariance of the embeddings around their own class mean, pooled over ``classes``
    (tied: one for all), shrunk towards ``trace(S)/dim * I`` by ``shrinkage``: 384 dimensions from
    a few thousand texts leave the smallest eigenvalues noisy, and shrinkage keeps their inverse
    from blowing a distance up along a direction no class ever varied in.
    """
    x = embeddings.astype(np.float64)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    rows = np.isin(labels, np.asarray(classes))
    position = {c: i for i, c in enumerate(classes)}
    centred = x[rows] - means[[position[int(c)] for c in labels[rows]]]
    cov = centred.T @ centred / max(1, len(centred) - len(classes))
    dim = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors @ np.diag(values**-0.5) @ vectors.T
    return whiten, means @ whiten


def fit_logistic(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Weighted ridge logistic regression (Newton's method) on standardised features.

    Returns:
        Feature mean, feature scale, coefficients, intercept.
    """
    mean = np.average(x, axis=0, weights=weight)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=weight))
    scale[scale == 0] = 1.0
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -60, 60)))
        grad = design.T @ (weight * (p - y)) + penalty * w
        hess = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return mean, scale, w[:-1], float(w[-1])


def choose_threshold(scores: np.ndarray, correct: np.ndarray, keep: float) -> float:
    """The lowest threshold that keeps ``keep`` of the in-scope texts the classifier gets right.

    ``scores`` are the in-scope holdout texts' out-of-scope scores and ``correct`` whether the
    argmax labels each one right. Flagging a text the classifier already gets wrong costs no
    accuracy, so only the correct ones bound the threshold: at most ``floor((1 - keep) * n)`` of
    them may reach it. The threshold sits halfway between the last score allowed to be flagged
    and the first one that must not be, so it does not hug either.
    """
    kept = np.sort(scores[correct])[::-1]
    if len(kept) == 0:
        return 1.0
    allowed = int(np.floor((1.0 - keep) * len(kept) + 1e-9))
    if allowed >= len(kept):
        return float(kept[-1])
    if allowed == 0:
        return float(np.nextafter(kept[0], np.inf))
    threshold = float((kept[allowed - 1] + kept[allowed]) / 2)
    if threshold <= kept[allowed]:  # a tie at the boundary: flag fewer rather than too many
        threshold = float(np.nextafter(kept[allowed], np.inf))
    return threshold


@dataclass(frozen=True)
class Scored:
    """One evaluation set through the detector: scores, argmax labels, gold labels.

    ``gold`` is None for a set that is out of scope throughout (the out-of-domain negatives).
    """

    scores: np.ndarray
    argmax: np.ndarray
    gold: np.ndarray | None
    oos_index: int

    @staticmethod
    def of(
        detector: OosDetector, embeddings: np.ndarray, probs: np.ndarray, gold: Sequence[int] | None
    ) -> Scored:
        blended, scores, _ = detector.label(embeddings, probs)
        return Scored(
            scores=scores,
            argmax=blended.argmax(1),
            gold=None if gold is None else np.asarray(gold),
            oos_index=detector.oos_index,
        )

    def flagged(self, threshold: float) -> np.ndarray:
        """Out of scope at ``threshold``: the score reaches it, or ``oos`` wins the argmax."""
        return (self.scores >= threshold) | (self.argmax == self.oos_index)

    def predicted(self, threshold: float, n_labels: int) -> np.ndarray:
        """Labels at ``threshold``: the argmax, or the ``oos`` column when flagged (``n_labels``, one
        past the last column, for an intent set without one)."""
        oos = self.oos_index if self.oos_index >= 0 else n_labels
        return np.where(self.flagged(threshold), oos, self.argmax)

    @property
    def in_scope(self) -> np.ndarray:
        if self.gold is None:
            return np.zeros(len(self.scores), dtype=bool)
        return self.gold != self.oos_index

    def in_scope_correct(self) -> np.ndarray:
        """For the in-scope rows: whether the argmax is right."""
        assert self.gold is not None
        rows = self.in_scope
        return np.asarray(self.argmax[rows] == self.gold[rows])


@dataclass(frozen=True)
class OperatingPoint:
    """Where one threshold leaves one evaluation set: accuracy over every text (out of scope
    counts right when flagged), over the in-scope texts (a flag counts wrong), the share of
    out-of-scope texts flagged (None without any), and the share of in-scope texts flagged."""

    accuracy: float
    in_scope_accuracy: float | None
    oos_recall: float | None
    flagged_in_scope: float | None

    @staticmethod
    def at(data: Scored, threshold: float) -> OperatingPoint:
        flagged = data.flagged(threshold)
        inside = data.in_scope
        n_in, n_out = int(inside.sum()), int((~inside).sum())
        right_in = 0
        if n_in:
            assert data.gold is not None
            right_in = int(((data.argmax == data.gold) & ~flagged & inside).sum())
        caught = int((flagged & ~inside).sum())
        return OperatingPoint(
            accuracy=(right_in + caught) / max(1, n_in + n_out),
            in_scope_accuracy=right_in / n_in if n_in else None,
            oos_recall=caught / n_out if n_out else None,
            flagged_in_scope=float(flagged[inside].mean()) if n_in else None,
        )


@dataclass(frozen=True)
class CurvePoint:
    """One row of the report's curve: a ``keep``, the threshold the holdout gives it, and where
    that threshold leaves the holdout, the val set and the held-back out-of-domain negatives."""

    keep: float
    threshold: float
    holdout: OperatingPoint
    val: OperatingPoint
    negatives_recall: float | None

    def as_dict(self) -> dict[str, float | None]:
        row: dict[str, float | None] = {"keep": self.keep, "threshold": round(self.threshold, 6)}
        for name, at in (("holdout", self.holdout), ("val", self.val)):
            for key, value in at.__dict__.items():
                row[f"{name}_{key}"] = None if value is None else round(value, 4)
        row["negatives_recall"] = None if self.negatives_recall is None else round(self.negatives_recall, 4)
        return row


def threshold_for(holdout: Scored, keep: float) -> float:
    """``choose_threshold`` on the holdout's in-scope rows."""
    rows = holdout.in_scope
    return choose_threshold(holdout.scores[rows], holdout.in_scope_correct(), keep)


def curve(holdout: Scored, val: Scored, negatives: Scored | None, keeps: Sequence[float]) -> list[CurvePoint]:
    """Each ``keep`` (most accuracy kept first): its holdout threshold, and what it does to val."""
    points = []
    for keep in sorted(set(keeps), reverse=True):
        threshold = threshold_for(holdout, keep)
        neg = None
        if negatives is not None and len(negatives.scores):
            neg = float(negatives.flagged(threshold).mean())
        at_holdout, at_val = OperatingPoint.at(holdout, threshold), OperatingPoint.at(val, threshold)
        points.append(CurvePoint(keep, threshold, at_holdout, at_val, neg))
    return points


CURVE_KEEPS = (1.0, 0.998, 0.995, 0.99, 0.985, 0.98, 0.975, 0.97, 0.96, 0.95, 0.93, 0.9, 0.85, 0.8)


def halve_sources(
    sources: dict[str, list[str]], seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each source's texts cut into two fixed halves: one fits the detector, one only reports."""
    rng = np.random.default_rng(seed)
    fit, held = {}, {}
    for name, texts in sources.items():
        order = rng.permutation(len(texts))
        half = len(texts) // 2
        fit[name] = [texts[i] for i in sorted(order[:half])]
        held[name] = [texts[i] for i in sorted(order[half:])]
    return fit, held


def choose_temperature(detector: OosDetector, squared: np.ndarray, labels: np.ndarray) -> float:
    """The ``TEMPERATURES`` entry under which the class-mean posterior gives the in-scope
    holdout texts' own intents the least negative log likelihood: calibrated probabilities, so
    that ``mix`` weighs two comparable experts."""
    column = {int(c): i for i, c in enumerate(detector.in_scope)}
    rows = np.array([int(y) in column for y in labels])
    if not rows.any():
        return 1.0
    gold = np.array([column[int(y)] for y in labels[rows]])
    picked = np.arange(len(gold))
    losses = [-detector.posterior(squared[rows], t)[picked, gold].mean() for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(losses))]


def choose_mix(
    detector: OosDetector, squared: np.ndarray, head_probs: np.ndarray, labels: np.ndarray
) -> float:
    """The ``MIX_GRID`` weight whose blended argmax labels the most holdout texts right; the
    smallest on a tie, so the head stays alone unless the class means add something."""
    hits = [int((detector.blend(head_probs, squared, mix).argmax(1) == labels).sum()) for mix in MIX_GRID]
    return MIX_GRID[int(np.argmax(hits))]


def fit_detector(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    holdout_embeddings: np.ndarray,
    holdout_probs: np.ndarray,
    holdout_labels: np.ndarray,
    negative_embeddings: np.ndarray,
    negative_probs: np.ndarray,
    oos_index: int,
    keep: float,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> OosDetector:
    """Fit the whole detector: geometry on train; the blend, then the weights on the holdout and
    the negatives; the threshold on the holdout's in-scope texts so that they keep ``keep`` of their
    accuracy.

    ``oos_index`` is the head column of ``oos`` or -1. Positives for the logistic fit are the
    holdout's ``oos`` texts and the out-of-domain ``negative_*`` texts, weighted so that they
    count as much as the holdout's in-scope texts together.
    """
    n_classes = holdout_probs.shape[1]
    in_scope = np.array([c for c in range(n_classes) if c != oos_index], dtype=np.int64)
    whiten, centers = shared_geometry(train_embeddings, train_labels, list(in_scope), shrinkage)
    blank = OosDetector(
        whiten=whiten,
        centers=centers,
        in_scope=in_scope,
        oos_index=oos_index,
        feature_mean=np.zeros(3 if oos_index >= 0 else 2),
        feature_scale=np.ones(3 if oos_index >= 0 else 2),
        weights=np.zeros(3 if oos_index >= 0 else 2),
        bias=0.0,
        threshold=1.0,
    )
    holdout_squared = blank.squared_distances(holdout_embeddings)
    blank = dataclasses.replace(blank, temperature=choose_temperature(blank, holdout_squared, holdout_labels))
    blank = dataclasses.replace(blank, mix=choose_mix(blank, holdout_squared, holdout_probs, holdout_labels))
    x = np.concatenate([
        blank.features(holdout_embeddings, holdout_probs, holdout_squared),
        blank.features(negative_embeddings, negative_probs),
    ])  # fmt: skip
    holdout_oos = holdout_labels == oos_index
    y = np.concatenate([holdout_oos, np.ones(len(negative_embeddings), dtype=bool)]).astype(np.float64)
    if y.sum() == 0:
        # No oos texts and no negatives to contrast with: the distance alone, standardised on the
        # holdout, still ranks texts; the threshold below calibrates it all the same.
        mean, scale = x.mean(0), x.std(0) + 1e-12
        coef, bias = np.eye(x.shape[1])[0], 0.0
    else:
        positives, negatives = float(y.sum()), max(1.0, float(len(y) - y.sum()))
        weight = np.where(y > 0, 1.0 / positives, 1.0 / negatives) * len(y) / 2
        mean, scale, coef, bias = fit_logistic(x, y, weight)
    fitted = dataclasses.replace(blank, feature_mean=mean, feature_scale=scale, weights=coef, bias=bias)
    holdout = Scored.of(fitted, holdout_embeddings, holdout_probs, holdout_labels)
    return fitted.with_threshold(threshold_for(holdout, keep))
