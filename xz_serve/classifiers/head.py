"""Head: a run-time classifier's parameters, how it scores embeddings, and its bytes (pure numpy).

A head reads the encoder's pooled, L2-normalised embedding and nothing else, so classifying costs
one small matrix product after the encoder pass every route already pays. It holds:

- a multinomial logistic regression (``weights``, ``bias``): the label and its confidence;
- the class means under one shared diagonal covariance (``scale`` = 1/std per dimension,
  ``centers`` = means times ``scale``): the distance from a text to the nearest mean. A full
  covariance would cost 384 x 384 floats per head; the diagonal keeps a head at two rows per label;
- a logistic combination of log distance and log top confidence (``oos_*``), fitted on held-out
  folds, and a threshold: the out-of-scope score and flag, without any ``oos`` examples.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

_MAGIC = b"XZH1"
_FLOOR = 1e-12  # a log never sees zero


@dataclass(frozen=True)
class Scores:
    """One batch through a head: label probabilities, out-of-scope scores and flags."""

    probs: np.ndarray  # [n, labels] float32, rows sum to 1
    oos: np.ndarray  # [n] float64 in (0, 1): higher is less like any label
    flagged: np.ndarray  # [n] bool: oos >= the head's threshold


@dataclass(frozen=True, eq=False)
class Head:
    """Fitted parameters of one classifier version."""

    labels: tuple[str, ...]
    weights: np.ndarray  # [labels, dim] float32
    bias: np.ndarray  # [labels] float32
    scale: np.ndarray  # [dim] float32: 1 / std of the shared diagonal covariance
    centers: np.ndarray  # [labels, dim] float32: class means times ``scale``
    oos_mean: tuple[float, float]  # standardisation of (log distance, log confidence)
    oos_scale: tuple[float, float]
    oos_weights: tuple[float, float]
    oos_bias: float
    threshold: float  # out of scope at score >= threshold

    def __post_init__(self) -> None:
        for name in ("weights", "bias", "scale", "centers"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        sq = (self.centers.astype(np.float64) ** 2).sum(1)
        object.__setattr__(self, "_centers_sq", sq)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory the head holds: its arrays and label strings (what a registry budgets)."""
        arrays = self.weights.nbytes + self.bias.nbytes + self.scale.nbytes + self.centers.nbytes
        return arrays + self._centers_sq.nbytes + sum(len(label) + 56 for label in self.labels)  # type: ignore[attr-defined]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Label probabilities, one row per embedding."""
        logits = embeddings.astype(np.float32, copy=False) @ self.weights.T + self.bias
        return softmax(logits)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Smallest squared scaled distance to a class mean, per row."""
        return nearest_distance(embeddings.astype(np.float32, copy=False) * self.scale, self.centers,
                                self._centers_sq)  # type: ignore[attr-defined]  # fmt: skip

    def oos_scores(self, distances: np.ndarray, top_probs: np.ndarray) -> np.ndarray:
        """The logistic combination of the two features: the out-of-scope score in (0, 1)."""
        mean, scale, weights = (np.asarray(v) for v in (self.oos_mean, self.oos_scale, self.oos_weights))
        return oos_score(oos_features(distances, top_probs), mean, scale, weights, self.oos_bias)

    def score(self, embeddings: np.ndarray) -> Scores:
        """Probabilities, out-of-scope scores and flags for a batch of embeddings [n, dim].

        Raises:
            ValueError: the embeddings' dimension is not the head's.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings of shape {embeddings.shape}; this head takes [n, {self.dim}]")
        probs = self.probabilities(embeddings)
        oos = self.oos_scores(self.distances(embeddings), probs.max(1))
        return Scores(probs=probs, oos=oos, flagged=oos >= self.threshold)

    # -- bytes ----------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """``XZH1``, a 4-byte header length, a JSON header, then the float32 arrays in order."""
        header = {
            "labels": list(self.labels),
            "dim": self.dim,
            "oos_mean": list(self.oos_mean),
            "oos_scale": list(self.oos_scale),
            "oos_weights": list(self.oos_weights),
            "oos_bias": self.oos_bias,
            "threshold": self.threshold,
        }
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        arrays = b"".join(a.tobytes() for a in (self.weights, self.bias, self.scale, self.centers))
        return _MAGIC + struct.pack("<I", len(raw)) + raw + arrays

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        """The head ``to_bytes`` wrote.

        Raises:
            ValueError: not a head, or truncated.
        """
        if data[:4] != _MAGIC or len(data) < 8:
            raise ValueError("not a classifier head")
        (size,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8 : 8 + size])
        k, dim = len(header["labels"]), int(header["dim"])
        flat = np.frombuffer(data, dtype=np.float32, offset=8 + size)
        if flat.size != k * dim * 2 + k + dim:
            raise ValueError(f"head arrays hold {flat.size} floats; {k} labels of {dim} need more")
        parts = np.split(flat, np.cumsum([k * dim, k, dim]))
        return cls(
            labels=tuple(header["labels"]),
            weights=parts[0].reshape(k, dim),
            bias=parts[1],
            scale=parts[2],
            centers=parts[3].reshape(k, dim),
            oos_mean=_pair(header["oos_mean"]),
            oos_scale=_pair(header["oos_scale"]),
            oos_weights=_pair(header["oos_weights"]),
            oos_bias=float(header["oos_bias"]),
            threshold=float(header["threshold"]),
        )


def stored_size(labels: int, dim: int, label_chars: int) -> int:
    """Bytes ``to_bytes`` writes for a head of ``labels`` labels (an upper bound with the labels'
    total characters ``label_chars``): checked before any encoder work is spent on a training set."""
    return 8 + 400 + 4 * label_chars + 4 * (labels * dim * 2 + labels + dim)


def _pair(values: list[float]) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(1, keepdims=True))


def nearest_distance(z: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray) -> np.ndarray:
    """Smallest squared Euclidean distance from each row of ``z`` to a row of ``centers``."""
    cross = (z @ centers.T).astype(np.float64)
    sq = (z.astype(np.float64) ** 2).sum(1, keepdims=True) - 2.0 * cross + centers_sq
    return np.asarray(np.maximum(sq.min(1), 0.0))


def oos_features(distances: np.ndarray, top_probs: np.ndarray) -> np.ndarray:
    """[n, 2]: log nearest distance, log top confidence."""
    return np.stack([np.log(distances + _FLOOR), np.log(top_probs.astype(np.float64) + _FLOOR)], axis=1)


def oos_score(
    features: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: float
) -> np.ndarray:
    z = ((features - mean) / scale) @ weights + bias
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))
