"""Turn one batch's raw arrays into labelled per-text predictions."""

from __future__ import annotations

import numpy as np

from xz_serve.kernel.types import TextPrediction
from xz_serve.models.base import Labels, NluOutputs


def label_outputs(
    outputs: NluOutputs, labels: Labels, token_counts: list[int], top_k: int
) -> list[TextPrediction]:
    """Top-k intents, sentiment distribution and embedding per text, in input order.

    Out of scope is the detector's call where the build fitted one, scored from this same pass's
    embeddings and probabilities (which it may also blend with its class means); otherwise the
    ``oos`` label winning or a top confidence under ``labels.oos_threshold``. Every text also
    carries its out-of-scope score, so a caller can apply a cut of its own: the detector's score,
    or without one, one minus the top in-scope probability.
    """
    k = min(top_k, len(labels.intents))
    flagged = None
    intent_probs = outputs.intent_probs
    if labels.detector is not None:
        intent_probs, scores, flagged = labels.detector.label(outputs.embeddings, intent_probs)
    else:
        scores = 1.0 - in_scope_confidence(intent_probs, labels)
    top = np.argsort(-intent_probs, axis=-1)[:, :k]
    predictions = []
    for row, indices in enumerate(top):
        probs = intent_probs[row]
        best = labels.intents[indices[0]]
        predictions.append(
            TextPrediction(
                intents=[(labels.intents[i], float(probs[i])) for i in indices],
                sentiment={
                    name: float(p)
                    for name, p in zip(labels.sentiments, outputs.sentiment_probs[row], strict=True)
                },
                embedding=outputs.embeddings[row],
                tokens=token_counts[row],
                out_of_scope=bool(flagged[row])
                if flagged is not None
                else best == labels.oos or float(probs[indices[0]]) < labels.oos_threshold,
                oos_score=float(scores[row]),
            )
        )
    return predictions


def in_scope_confidence(intent_probs: np.ndarray, labels: Labels) -> np.ndarray:
    """The highest probability among the in-scope intents, per row (the ``oos`` column left out)."""
    columns = [i for i, name in enumerate(labels.intents) if name != labels.oos]
    return np.asarray(intent_probs[:, columns].max(axis=1), dtype=np.float64)


def oos_cut(labels: Labels) -> float:
    """The cut on ``oos_score`` this model applies: the detector's threshold, or without one the
    score at which the top in-scope probability falls under ``labels.oos_threshold``."""
    if labels.detector is not None:
        return float(labels.detector.threshold)
    return 1.0 - labels.oos_threshold
