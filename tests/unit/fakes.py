"""Fakes for unit tests: a client that runs FakeModel in process, no Ray involved."""

from __future__ import annotations

from typing import Any

from xz_serve.kernel.types import BatchStats, CallMeta, PredictResult
from xz_serve.models.fake import FakeModel
from xz_serve.models.postprocess import label_outputs, oos_cut


class FakeNluClient:
    """Implements NluClient with FakeModel; records every call's texts."""

    def __init__(self) -> None:
        self.model = FakeModel()
        self.calls: list[list[str]] = []

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        self.calls.append(texts)
        outputs = self.model.predict(texts)
        predictions = label_outputs(outputs, self.model.labels, outputs.token_counts, top_k=3)
        return PredictResult(predictions, BatchStats(0.1, 1.0, len(texts), 1), self.model.model_id)

    async def describe(self) -> dict[str, Any]:
        labels = self.model.labels
        return {
            "model_id": self.model.model_id,
            "intents": list(labels.intents),
            "sentiments": list(labels.sentiments),
            "oos_threshold": oos_cut(labels),
        }
