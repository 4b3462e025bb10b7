"""Training a head (``head.py``) from labelled embeddings, and its cross-validated estimate (pure numpy).

1. Stratified folds; each fold in turn is held out while a head is fitted on the rest, until
   ``validation_min_examples`` held-out examples are scored (every fold of a small set). That gives
   the accuracy estimate and, for every held-out example, the out-of-scope features twice: as it is
   (in scope) and with its own label removed from the fold's head (a text of a label the head has
   never seen: the stand-in for out of scope, since users send no ``oos`` examples).
2. A two-feature logistic regression separates the two; the threshold keeps ``oos_keep`` of the
   held-out examples the fold heads label right in scope.
3. The final head is fitted on every example, warm-started from the first fold's head.

The softmax regression is fitted by L-BFGS on centred embeddings rescaled to unit variance per
dimension on average (one scalar), so a single L2 strength suits any training set; the centring and
the scalar are folded back into the weights and bias, so serving applies them to raw embeddings.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from xz_serve.classifiers.head import Head, nearest_distance, oos_features, oos_score, softmax
from xz_serve.classifiers.spec import ClassifierSpec

SHRINKAGE = 0.2  # the diagonal variances are pulled this far towards their mean: few examples per label
HISTORY = 10  # L-BFGS memory
MIN_FEATURE_SCALE = 0.05  # out-of-scope features are logs: below this spread a feature is noise


@dataclass(frozen=True)
class Validation:
    """How the fold heads did on the examples they did not see."""

    accuracy: float  # argmax right, out-of-scope flags ignored
    held_out: int  # examples scored
    folds: int  # folds the examples were split into
    folds_scored: int  # folds trained and scored (fewer than ``folds`` on large sets)
    in_scope_flagged: float  # held-out examples flagged out of scope at the chosen threshold
    unseen_label_flagged: float  # the same examples, their own label removed, flagged

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Trained:
    """A fitted head, its estimate, and what it took."""

    head: Head
    validation: Validation
    seconds: float
    iterations: list[int] = field(default_factory=list)  # L-BFGS steps per fit, final last


def train(embeddings: np.ndarray, y: np.ndarray, labels: tuple[str, ...], spec: ClassifierSpec,
          seed: int = 0) -> Trained:  # fmt: skip
    """A head for ``labels`` from embeddings [n, dim] and label indices ``y`` [n].

    Every label must have at least two examples (``examples.check_examples`` ensures it), so each
    fold's training part sees every label.
    """
    started = time.perf_counter()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    k = len(labels)
    folds = stratified_folds(y, spec.cv_folds, np.random.default_rng(seed))
    right, in_feats, out_feats, correct = [], [], [], []
    iterations: list[int] = []
    warm: tuple[np.ndarray, np.ndarray] | None = None
    scored = 0
    for fold in range(spec.cv_folds):
        test = folds == fold
        if not test.any():
            continue
        w, b, steps = fit_softmax(x[~test], y[~test], k, spec.l2, spec.max_iterations)
        iterations.append(steps)
        warm = warm or (w, b)
        scale, centers = shared_geometry(x[~test], y[~test], k)
        inside, outside, hit = _held_out_features(x[test], y[test], w, b, scale, centers)
        in_feats.append(inside)
        out_feats.append(outside)
        correct.append(hit)
        right.append(hit.sum())
        scored += int(test.sum())
        if scored >= spec.validation_min_examples:
            break
    inside_all, outside_all, hit_all = (
        np.concatenate(in_feats),
        np.concatenate(out_feats),
        np.concatenate(correct),
    )
    mean, std, weights, bias = fit_oos(
        np.concatenate([inside_all, outside_all]),
        np.concatenate([np.zeros(len(inside_all)), np.ones(len(outside_all))]),
    )
    in_scores = oos_score(inside_all, mean, std, weights, bias)
    out_scores = oos_score(outside_all, mean, std, weights, bias)
    threshold = choose_threshold(in_scores[hit_all], spec.oos_keep)
    w, b, steps = fit_softmax(x, y, k, spec.l2, spec.max_iterations, init=warm)
    iterations.append(steps)
    scale, centers = shared_geometry(x, y, k)
    head = Head(
        labels=labels, weights=w, bias=b, scale=scale, centers=centers,
        oos_mean=(float(mean[0]), float(mean[1])), oos_scale=(float(std[0]), float(std[1])),
        oos_weights=(float(weights[0]), float(weights[1])), oos_bias=bias, threshold=threshold,
    )  # fmt: skip
    validation = Validation(
        accuracy=float(sum(right) / scored),
        held_out=scored,
        folds=spec.cv_folds,
        folds_scored=len(in_feats),
        in_scope_flagged=float((in_scores >= threshold).mean()),
        unseen_label_flagged=float((out_scores >= threshold).mean()),
    )
    return Trained(head, validation, time.perf_counter() - started, iterations)


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A fold index per example: each label's examples dealt round-robin (shuffled), so a label
    with two examples is never held out whole, and folds differ in size by at most one per label."""
    folds = np.empty(len(y), dtype=np.int64)
    start = 0
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        folds[rows] = (start + np.arange(len(rows))) % k
        start = (start + len(rows)) % k  # the next label continues where this one stopped
    return folds


def _held_out_features(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, scale: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-scope features of held-out rows as they are and with their own label removed, and
    whether the fold's head labels each right."""
    logits = x @ w.T + b
    probs = softmax(logits)
    z = x * scale
    sq = (centers.astype(np.float64) ** 2).sum(1)
    inside = oos_features(nearest_distance(z, centers, sq), probs.max(1))
    rows = np.arange(len(y))
    # Own label removed: its logit to -inf (softmax over the others), its mean out of reach.
    logits[rows, y] = -np.inf
    others = softmax(logits).max(1)
    cross = (z @ centers.T).astype(np.float64)
    dist = (z.astype(np.float64) ** 2).sum(1, keepdims=True) - 2.0 * cross + sq
    dist[rows, y] = np.inf
    outside = oos_features(np.maximum(dist.min(1), 0.0), others)
    return inside, outside, probs.argmax(1) == y


def shared_geometry(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``scale`` (1/std per dimension of the within-label spread, shrunk towards the mean
    variance) and the class means times it."""
    onehot = np.zeros((k, len(y)), dtype=np.float32)
    onehot[y, np.arange(len(y))] = 1.0
    counts = onehot.sum(1, dtype=np.float64)
    means = (onehot @ x).astype(np.float64) / np.maximum(counts, 1)[:, None]  # a product, not np.add.at
    var = ((x - means[y]) ** 2).mean(0)
    var = (1 - SHRINKAGE) * var + SHRINKAGE * var.mean()
    scale = 1.0 / np.sqrt(np.maximum(var, 1e-12))
    return scale.astype(np.float32), (means * scale).astype(np.float32)


def fit_softmax(
    x: np.ndarray, y: np.ndarray, k: int, l2: float, max_iterations: int,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """Multinomial logistic regression by L-BFGS: ``(weights [k, dim], bias [k], steps)`` that apply
    to raw embeddings. The loss is the mean cross-entropy plus ``l2 / 2 * |W|^2`` in the rescaled
    space (the bias is not penalised)."""
    n, dim = x.shape
    mu = x.mean(0)
    xc = x - mu
    s = float(1.0 / max(np.sqrt((xc.astype(np.float64) ** 2).mean()), 1e-12))  # per-dimension unit rms
    xc *= s
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[: k * dim].reshape(k, dim), theta[k * dim :]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = unpack(theta)
        logits = xc @ w.astype(np.float32).T + b.astype(np.float32)
        logits -= logits.max(1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(1, keepdims=True))
        log_p = logits - log_norm
        loss = -float((log_p * onehot).sum(dtype=np.float64)) / n + 0.5 * l2 * float((w**2).sum())
        g = (np.exp(log_p) - onehot) / n
        gw = (g.T @ xc).astype(np.float64) + l2 * w
        gb = g.sum(0, dtype=np.float64)
        return loss, np.concatenate([gw.ravel(), gb])

    theta = np.zeros(k * dim + k)
    if init is not None:  # raw-space (W, b) into this fit's centred, rescaled space
        w0, b0 = init
        theta = np.concatenate([(w0 / s).ravel(), b0 + w0 @ mu]).astype(np.float64)
    theta, steps = lbfgs(loss_grad, theta, max_iterations)
    w, b = unpack(theta)
    w_raw = w * s
    return w_raw.astype(np.float32), (b - w_raw @ mu).astype(np.float32), steps


def lbfgs(
    loss_grad: object, theta: np.ndarray, max_iterations: int, tol: float = 1e-6, rel_tol: float = 1e-6
) -> tuple[np.ndarray, int]:
    """Minimise a smooth convex function; ``loss_grad(theta) -> (loss, gradient)``. Backtracking
    (Armijo) line search from a unit step; the first step is scaled to the gradient's size. Stops
    when a step improves the loss by less than ``rel_tol`` of it: on HWU64 the val accuracy no
    longer moved after 40 steps while the loss kept creeping down for a hundred more."""
    fn = loss_grad  # typed loosely: a plain callable
    loss, grad = fn(theta)  # type: ignore[operator]
    pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=HISTORY)
    steps = 0
    for steps in range(1, max_iterations + 1):  # noqa: B007 - the count is returned
        direction = -_two_loop(grad, pairs)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            pairs.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0 if pairs else min(1.0, 1.0 / max(np.abs(grad).sum(), 1e-12))
        for _ in range(30):
            candidate = theta + step * direction
            new_loss, new_grad = fn(candidate)  # type: ignore[operator]
            if new_loss <= loss + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s_vec, y_vec = candidate - theta, new_grad - grad
        curvature = float(s_vec @ y_vec)
        if curvature > 1e-10:
            pairs.append((s_vec, y_vec, 1.0 / curvature))
        done = abs(loss - new_loss) <= rel_tol * max(1.0, abs(loss))
        theta, loss, grad = candidate, new_loss, new_grad
        if done or np.abs(grad).max() < tol:
            break
    return theta, steps


def _two_loop(grad: np.ndarray, pairs: deque[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    q = grad.copy()
    alphas = []
    for s_vec, y_vec, rho in reversed(pairs):
        alpha = rho * float(s_vec @ q)
        alphas.append(alpha)
        q -= alpha * y_vec
    if pairs:
        s_vec, y_vec, _ = pairs[-1]
        q *= float(s_vec @ y_vec) / float(y_vec @ y_vec)
    for (s_vec, y_vec, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = rho * float(y_vec @ q)
        q += (alpha - beta) * s_vec
    return q


def fit_oos(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``fit_logistic`` on (log distance, log confidence), kept monotone: the score may only rise
    with the distance and fall with the confidence. A feature whose fitted weight has the other sign
    separated the held-out sets by an accident of the set (with two labels, a text whose own label
    is removed always gets confidence 1), so it is dropped and the rest refitted."""
    mean, scale, weights, bias = fit_logistic(x, y)
    wrong = np.array([weights[0] < 0, weights[1] > 0])
    if not wrong.any():
        return mean, scale, weights, bias
    keep = ~wrong if not wrong.all() else np.array([True, False])
    sub_mean, sub_scale, sub_weights, bias = fit_logistic(x[:, keep], y)
    mean[keep], scale[keep] = sub_mean, sub_scale
    weights = np.zeros(2)
    weights[keep] = np.maximum(sub_weights, 0) if keep[0] else np.minimum(sub_weights, 0)
    return mean, scale, weights, bias


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Ridge logistic regression by Newton's method on standardised features, the two classes
    weighted equally. Returns feature mean, feature scale, coefficients, intercept."""
    weight = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum())) * len(y)
    mean = x.mean(0)
    # A floor in log units: a feature that barely varies on the held-out sets (confidences all near
    # 1) must not turn a modest change on a new text into an extreme score.
    scale = np.maximum(x.std(0), MIN_FEATURE_SCALE)
    design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -60, 60)))
        grad = design.T @ (weight * (p - y)) + penalty * w
        hess = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return mean, scale, w[:-1], float(w[-1])


def choose_threshold(scores: np.ndarray, keep: float) -> float:
    """The lowest threshold at which at most ``1 - keep`` of ``scores`` (held-out examples labelled
    right) reach it, halfway between the last score allowed to and the first that must not."""
    kept = np.sort(scores)[::-1]
    if len(kept) == 0:
        return 1.0
    allowed = int(np.floor((1.0 - keep) * len(kept) + 1e-9))
    if allowed >= len(kept):
        return float(kept[-1])
    if allowed == 0:
        return float(np.nextafter(kept[0], np.inf))
    threshold = float((kept[allowed - 1] + kept[allowed]) / 2)
    return threshold if threshold > kept[allowed] else float(np.nextafter(kept[allowed], np.inf))
