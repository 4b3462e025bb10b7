"""Shapes that cross deployment boundaries: plain data, no logic."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextPrediction:
    """Everything one encoder pass yields for one text, already labelled."""

    intents: list[tuple[str, float]]  # top-k (label, probability), best first
    sentiment: dict[str, float]  # label -> probability
    embedding: np.ndarray  # [dim] float32, L2-normalised
    tokens: int  # tokens the encoder saw (for usage accounting)
    out_of_scope: bool  # top intent is `oos`, or its confidence is under the calibrated threshold


@dataclass(frozen=True)
class BatchStats:
    """How a text was batched on the replica: reported back in headers and spans."""

    queue_ms: float
    inference_ms: float
    batch_texts: int
    batch_calls: int


@dataclass(frozen=True)
class PredictResult:
    """A replica's answer to one ``predict`` call: predictions in input order, plus stats."""

    predictions: list[TextPrediction]
    stats: BatchStats
    model_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallMeta:
    """Request facts that travel with each ``predict`` call to a model replica."""

    deadline: float | None = None  # wall-clock epoch seconds; a call past it is dropped unrun
    carrier: dict[str, str] = field(default_factory=dict)  # W3C trace context of the caller
