"""NluClient, and the one way a request's texts are split into batch-sized calls and joined again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from xz_serve.kernel.deadline import remaining_s
from xz_serve.kernel.errors import DeadlineExceededError, OverloadedError
from xz_serve.kernel.types import CallMeta, PredictResult


class NluClient(Protocol):
    """Predictions for texts, and what model answers them."""

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult: ...

    async def describe(self) -> dict[str, Any]: ...


def chunked(texts: list[str], size: int) -> list[list[str]]:
    """``texts`` in order, in pieces of at most ``size`` (one replica batch each)."""
    return [texts[i : i + size] for i in range(0, len(texts), size)]


async def predict_chunked(
    texts: list[str],
    meta: CallMeta | None,
    chunk: int,
    call: Callable[[list[str]], Awaitable[PredictResult]],
    *,
    timeout_s: float | None = None,
) -> PredictResult:
    """``call`` once per chunk of ``texts``, concurrently, joined in order.

    The wait ends at the request's deadline, else after ``timeout_s`` (None: no bound). When it
    ends early, or the caller is cancelled (the client left), every call still running is
    cancelled too, so a replica drops the work nobody waits for.

    Raises:
        DeadlineExceededError: the deadline passed first (504).
        OverloadedError: ``timeout_s`` passed first, with no deadline set (503).
    """
    deadline = meta.deadline if meta is not None else None
    wait_s = remaining_s(deadline) or timeout_s  # raises once the deadline passed
    pending = [call(piece) for piece in chunked(texts, chunk)]
    try:
        async with asyncio.timeout(wait_s):
            if len(pending) == 1:
                return await pending[0]
            parts = await asyncio.gather(*pending)
    except (TimeoutError, asyncio.CancelledError) as exc:
        for item in pending:
            cancel = getattr(item, "cancel", None)  # a Serve DeploymentResponse; coroutines close
            if callable(cancel):
                cancel()
        if isinstance(exc, asyncio.CancelledError):
            raise
        if deadline is not None:
            raise DeadlineExceededError("the models did not answer before the deadline") from None
        raise OverloadedError("the models did not answer in time", retry_after_s=1) from None
    return PredictResult.join(list(parts))
