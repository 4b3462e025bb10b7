"""Shapes that cross deployment boundaries: plain data, and the one rule for joining chunk results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_TOP_K = 20
"""The most intent alternatives a request may ask for (``top_k``): every prediction carries this
many (or all intents, when fewer), and each route keeps the ``top_k`` its request asked for."""


@dataclass(frozen=True)
class TextPrediction:
    """Everything one encoder pass yields for one text, already labelled."""

    intents: list[tuple[str, float]]  # the MAX_TOP_K best (label, probability), best first
    sentiment: dict[str, float]  # label -> probability
    embedding: np.ndarray  # [dim] float32, L2-normalised
    tokens: int  # tokens the encoder saw (for usage accounting)
    out_of_scope: bool  # top intent is `oos`, or its confidence is under the calibrated threshold
    oos_score: float  # in [0, 1], higher = less like any known intent; callers may pick their own cut

    def out_of_scope_at(self, floor: float) -> bool:
        """Out of scope as the model decided, or with a top confidence under the caller's ``floor``.

        The one out-of-scope rule: the routes apply ``api.oos_threshold`` and the dialog its policy's
        ``min_confidence`` through it, on top of the threshold the build calibrated.
        """
        return self.out_of_scope or self.intents[0][1] < floor


@dataclass(frozen=True)
class BatchStats:
    """How a text was batched on the replica: reported back in headers and spans."""

    queue_ms: float
    inference_ms: float
    batch_texts: int
    batch_calls: int

    @staticmethod
    def slowest(parts: list[BatchStats]) -> BatchStats:
        """One request's stats from its chunks': the slowest chunk and the largest batch count."""
        if not parts:
            return NO_STATS
        return BatchStats(
            queue_ms=max(p.queue_ms for p in parts),
            inference_ms=max(p.inference_ms for p in parts),
            batch_texts=max(p.batch_texts for p in parts),
            batch_calls=max(p.batch_calls for p in parts),
        )


NO_STATS = BatchStats(queue_ms=0.0, inference_ms=0.0, batch_texts=0, batch_calls=0)
"""Stats of a request that no model pass served (every text came from the cache)."""


@dataclass(frozen=True)
class PredictResult:
    """A replica's answer to one ``predict`` call: predictions in input order, plus stats."""

    predictions: list[TextPrediction]
    stats: BatchStats
    model_id: str = ""

    @staticmethod
    def join(parts: list[PredictResult]) -> PredictResult:
        """Chunk results joined in order (chunks of one request share a model id)."""
        if len(parts) == 1:
            return parts[0]
        return PredictResult(
            predictions=[p for part in parts for p in part.predictions],
            stats=BatchStats.slowest([p.stats for p in parts]),
            model_id=parts[0].model_id,
        )


@dataclass(frozen=True)
class CallMeta:
    """Request facts that travel with each ``predict`` call to a model replica."""

    deadline: float | None = None  # wall-clock epoch seconds; a call past it is dropped unrun
    carrier: dict[str, str] = field(default_factory=dict)  # W3C trace context of the caller
