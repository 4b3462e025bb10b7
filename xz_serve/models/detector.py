"""The out-of-scope detector: one score per text from the encoder pass that labelled it.

Three features, all from outputs the graph already has (no second pass):

- ``distance``: the log of the smallest squared Mahalanobis distance from the served embedding to
  an in-scope class mean, under one covariance shared by all classes (shrunk towards a scaled
  identity). A fine-tuned encoder puts in-scope texts near their class mean and unfamiliar ones
  far from every mean, whatever the classifier's softmax says.
- ``confidence``: the log of the classifier's highest in-scope probability.
- ``oos_prob``: the log of the ``oos`` class probability, only where the intent set has one.

A logistic combination of the standardised features gives the score in (0, 1); a text is out of
scope at ``score >= threshold`` (or when the ``oos`` class wins the argmax).

The same distances also label: ``mix`` weighs the class-mean posterior (a Gaussian classifier with
the shared covariance, ``softmax(-d² / 2T)``, its temperature ``T`` fitted so that its
probabilities are calibrated) into the head's log probabilities. On a small intent set the class
means generalise where the head overfits; on a large one they add nothing, and the build leaves
``mix`` at 0. The score reads the head's own probabilities either way, so the blend moves labels,
never the out-of-scope cut. The build fits the means, the covariance, ``T``, ``mix``, the weights
and the threshold (``artifacts/oos.py``); this module only reads them and scores, in numpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_FLOOR = 1e-12  # log of a probability or a distance never sees zero
FEATURES_WITH_OOS = ("distance", "confidence", "oos_prob")
FEATURES_WITHOUT_OOS = ("distance", "confidence")


@dataclass(frozen=True, eq=False)
class OosDetector:
    """Fitted parameters; ``score`` maps a batch's embeddings and intent probabilities to scores.

    ``whiten`` is ``S^(-1/2)`` for the shrunk shared covariance ``S``, and ``centers`` the class
    means already whitened, so a squared distance is a plain Euclidean one after ``e @ whiten``.
    """

    whiten: np.ndarray  # [dim, dim] float32
    centers: np.ndarray  # [n_in_scope, dim] float32, whitened class means
    in_scope: np.ndarray  # [n_in_scope] int: the head columns of the in-scope intents
    oos_index: int  # head column of `oos`, or -1 when the intent set has none
    feature_mean: np.ndarray  # [n_features]
    feature_scale: np.ndarray  # [n_features]
    weights: np.ndarray  # [n_features]
    bias: float
    threshold: float  # out of scope at score >= threshold
    mix: float = 0.0  # weight of the class-mean posterior in the intent probabilities
    temperature: float = 1.0  # of the class-mean posterior: softmax(-d² / (2 * temperature))

    def __post_init__(self) -> None:
        # float32, as the embeddings are: a batch's two matrix products cost a fraction of a
        # millisecond, where float64 took milliseconds on busy cores. Fitting and serving share it.
        for name in ("whiten", "centers"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        object.__setattr__(self, "_centers_sq", (self.centers.astype(np.float64) ** 2).sum(1))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES_WITH_OOS if self.oos_index >= 0 else FEATURES_WITHOUT_OOS

    def squared_distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance from each row to each in-scope class mean."""
        z = embeddings.astype(np.float32, copy=False) @ self.whiten
        cross = (z @ self.centers.T).astype(np.float64)
        sq = (z.astype(np.float64) ** 2).sum(1, keepdims=True) - 2.0 * cross + self._centers_sq
        return np.maximum(sq, 0.0)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to an in-scope class mean, per row."""
        return self.squared_distances(embeddings).min(1)

    def posterior(self, squared: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Log probabilities of the in-scope intents under the class means (columns in
        ``in_scope`` order), at ``temperature`` (the fitted one by default)."""
        logits = -0.5 * squared / (self.temperature if temperature is None else temperature)
        logits -= logits.max(1, keepdims=True)
        return np.asarray(logits - np.log(np.exp(logits).sum(1, keepdims=True)))

    def blend(self, intent_probs: np.ndarray, squared: np.ndarray, mix: float | None = None) -> np.ndarray:
        """The intent probabilities with the class-mean posterior weighed in at ``mix`` (the
        fitted one by default); unchanged at 0.

        The ``oos`` column, which has no mean, gets the best in-scope posterior's share, so the
        blend moves in-scope intents against each other and leaves ``oos`` against the best of
        them to the head.
        """
        mix = self.mix if mix is None else mix
        if mix == 0.0:
            return intent_probs
        posterior = self.posterior(squared)
        logits = np.log(intent_probs.astype(np.float64) + _FLOOR)
        logits[:, self.in_scope] += mix * posterior
        if self.oos_index >= 0:
            logits[:, self.oos_index] += mix * posterior.max(1)
        logits -= logits.max(1, keepdims=True)
        blended = np.exp(logits)
        return np.asarray(blended / blended.sum(1, keepdims=True), dtype=intent_probs.dtype)

    def features(
        self, embeddings: np.ndarray, intent_probs: np.ndarray, squared: np.ndarray | None = None
    ) -> np.ndarray:
        """The raw (unstandardised) feature matrix, columns in ``feature_names`` order.

        ``intent_probs`` are the head's; ``squared`` the distances, when already computed.
        """
        probs = intent_probs.astype(np.float64)
        nearest = (self.squared_distances(embeddings) if squared is None else squared).min(1)
        columns = [
            np.log(nearest + _FLOOR),
            np.log(probs[:, self.in_scope].max(1) + _FLOOR),
        ]
        if self.oos_index >= 0:
            columns.append(np.log(probs[:, self.oos_index] + _FLOOR))
        return np.stack(columns, axis=1)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """The logistic combination of raw features: the out-of-scope score in (0, 1)."""
        z = ((features - self.feature_mean) / self.feature_scale) @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))

    def score(self, embeddings: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        """Out-of-scope scores in (0, 1) for one batch: higher means less like any known intent."""
        return self.label(embeddings, head_probs)[1]

    def flags(self, embeddings: np.ndarray, head_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores, and whether each text is out of scope."""
        _, scores, flagged = self.label(embeddings, head_probs)
        return scores, flagged

    def label(
        self, embeddings: np.ndarray, head_probs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All of one batch from one distance computation: the blended intent probabilities, the
        scores, and the flags (the score reaches the threshold, or ``oos`` wins the argmax)."""
        squared = self.squared_distances(embeddings)
        probs = self.blend(head_probs, squared)
        scores = self.score_features(self.features(embeddings, head_probs, squared))
        flagged = scores >= self.threshold
        if self.oos_index >= 0:
            flagged |= probs.argmax(1) == self.oos_index
        return probs, scores, flagged

    def with_threshold(self, threshold: float) -> OosDetector:
        return dataclasses.replace(self, threshold=threshold)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "whiten": self.whiten,
            "centers": self.centers,
            "in_scope": self.in_scope,
            "feature_mean": self.feature_mean,
            "feature_scale": self.feature_scale,
            "weights": self.weights,
        }

    def save(self, path: Path) -> None:
        """Write the arrays to ``path`` as one ``.npz``; the scalars (``bias``, ``oos_index``,
        ``threshold``, ``mix``, ``temperature``) go in labels.json beside it."""
        with path.open("wb") as handle:
            np.savez(handle, **self.arrays())


def load_detector(path: Path, entry: dict[str, float]) -> OosDetector:
    """The detector from its ``.npz`` and its labels.json entry (``bias``, ``oos_index``,
    ``threshold``; ``mix`` and ``temperature``, which builds before the blend lack: no blend)."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    return OosDetector(
        whiten=arrays["whiten"],
        centers=arrays["centers"],
        in_scope=arrays["in_scope"].astype(np.int64),
        oos_index=int(entry["oos_index"]),
        feature_mean=arrays["feature_mean"].astype(np.float64),
        feature_scale=arrays["feature_scale"].astype(np.float64),
        weights=arrays["weights"].astype(np.float64),
        bias=float(entry["bias"]),
        threshold=float(entry["threshold"]),
        mix=float(entry.get("mix", 0.0)),
        temperature=float(entry.get("temperature", 1.0)),
    )
