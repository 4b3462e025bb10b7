"""Synthetic labelled embeddings: L2-normalised points around class centres on a shared offset,
the way sentence embeddings of one domain crowd one side of the sphere."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clusters:
    centres: np.ndarray  # [k, dim]
    offset: np.ndarray  # [dim]
    noise: float

    @staticmethod
    def make(k: int, dim: int = 64, noise: float = 1.0, seed: int = 0) -> Clusters:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(k, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        offset = rng.normal(size=dim)
        return Clusters(centres * 0.6, offset / np.linalg.norm(offset), noise)

    def sample(self, per_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``per_label`` points of every label (label-major order) and their labels."""
        rng = np.random.default_rng(seed)
        k, dim = self.centres.shape
        y = np.repeat(np.arange(k), per_label)
        x = self.centres[y] + self.offset + self.noise * rng.normal(size=(len(y), dim)) / np.sqrt(dim)
        return normalised(x), y

    def far(self, n: int, seed: int) -> np.ndarray:
        """Points of the same domain (offset) in directions no class takes."""
        rng = np.random.default_rng(seed)
        dim = self.centres.shape[1]
        direction = rng.normal(size=(n, dim))
        direction -= direction @ np.linalg.pinv(self.centres) @ self.centres  # away from every centre
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        spread = self.noise * rng.normal(size=(n, dim)) / np.sqrt(dim)  # as scattered as the classes
        return normalised(self.offset + 0.6 * direction + spread)


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
