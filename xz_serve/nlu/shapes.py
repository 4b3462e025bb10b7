"""The JSON shape of a text's intent and sentiment, the same in every route and chat reply."""

from __future__ import annotations

from typing import Any

from xz_serve.kernel.types import TextPrediction


def intent_json(pred: TextPrediction, top_k: int, out_of_scope: bool) -> dict[str, Any]:
    """The top intent (``oos`` when out of scope), its confidence and the ``top_k`` alternatives."""
    label, confidence = pred.intents[0]
    return {
        "label": "oos" if out_of_scope else label,
        "confidence": round(confidence, 6),
        "top_k": [{"label": lab, "confidence": round(p, 6)} for lab, p in pred.intents[:top_k]],
    }


def sentiment_json(scores: dict[str, float]) -> dict[str, Any]:
    """The most likely sentiment and every label's probability."""
    rounded = {k: round(v, 6) for k, v in scores.items()}
    return {"label": max(rounded, key=rounded.__getitem__), "scores": rounded}
