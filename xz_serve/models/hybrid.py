"""HybridNluModel: small batches on one runtime, larger ones on another, by a measured cut.

Why: ONNX Runtime INT8 and OpenVINO bf16 win at opposite ends. On an AMX CPU (3,000 val texts,
2 threads) ORT INT8 answered one text in 1.6 ms against OpenVINO's 3.05 ms, while OpenVINO bf16 did
1.6x ORT's texts/s at batch 32. A replica sees both: single texts when traffic is light, full batches
under load. Both models pass the same accuracy guard, and the model id names both, so the cache
never mixes their answers with another runtime's. A text's numbers then depend a little on the
size of the batch it came in, as they already do under ORT INT8, whose activation scales are set
per pass.
"""

from __future__ import annotations

from xz_serve.models.base import Labels, NluModel, NluOutputs


class HybridNluModel:
    """``small`` for batches of at most ``cut`` texts, ``large`` above it."""

    def __init__(self, small: NluModel, large: NluModel, cut: int, model_id: str) -> None:
        if small.labels != large.labels:
            raise ValueError("a hybrid needs two models with the same labels")
        self.small = small
        self.large = large
        self.cut = cut
        self.model_id = model_id
        self.labels: Labels = small.labels

    def predict(self, texts: list[str]) -> NluOutputs:
        """Run ``texts`` on the runtime that measured faster for a batch of their count."""
        return (self.small if len(texts) <= self.cut else self.large).predict(texts)
