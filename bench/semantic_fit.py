"""The semantic verifier's regression: a ridge logistic fit in numpy, folds and AUC for its held-out check.

Kept apart from the benchmark so the fit is short enough to read: ``semantic_threshold.py`` calls
it and prints the coefficients that ``xz_serve/cache/verify.py`` ships.
"""

from __future__ import annotations

import numpy as np

from xz_serve.cache.verify import PairVerifier

L2 = 1.0  # ridge penalty on the standardised coefficients (not the intercept)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> PairVerifier:
    """Ridge logistic regression (Newton's method) on standardised features, as a PairVerifier."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        grad = design.T @ (p - y) + penalty * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return PairVerifier(
        min_probability=0.5,
        coef=tuple(round(float(c), 6) for c in w[:-1]),
        intercept=round(float(w[-1]), 6),
        mean=tuple(round(float(m), 6) for m in mean),
        scale=tuple(round(float(s), 6) for s in scale),
    )


def predict(model: PairVerifier, x: np.ndarray) -> np.ndarray:
    """``model.probability`` for rows of features at once."""
    z = ((x - np.asarray(model.mean)) / np.asarray(model.scale)) @ np.asarray(model.coef) + model.intercept
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))))


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold number per row, each fold with the same share of duplicates."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        folds[rows] = np.arange(len(rows)) % k
    return folds


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (rank form): chance a duplicate outscores a non-duplicate."""
    ranks = np.argsort(np.argsort(scores)) + 1.0
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return round(float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)
