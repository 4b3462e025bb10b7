"""LocalNluClient: the NluClient of a fused replica, over its own in-process NluReplica (no actor hop)."""

from __future__ import annotations

from typing import Any

from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.nlu.client import predict_chunked
from xz_serve.nlu.replica import NluReplica


class LocalNluClient:
    """Chunks like the remote client; past the deadline the replica drops the calls still queued."""

    def __init__(self, replica: NluReplica, max_batch_size: int) -> None:
        self.replica = replica
        self.chunk = max_batch_size

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        return await predict_chunked(texts, meta, self.chunk, lambda piece: self.replica.predict(piece, meta))

    async def describe(self) -> dict[str, Any]:
        return self.replica.describe()
