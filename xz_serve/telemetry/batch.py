"""Spans and metrics of a model replica, where batching merges many requests into one pass.

Each ``predict`` call gets a request span (``xz.replica.predict``), child of the caller's carrier,
recording its queue wait and the size of the batch it rode in. The batch's inference span
(``xz.replica.batch``) runs once for many requests: it is parented to the first call's span and
*links* to every call's span (OpenTelemetry's model for batch work), so each request's trace
reaches the pass that served it, and the pass lists all the requests it served.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from xz_serve.telemetry.metrics import replica_metrics
from xz_serve.telemetry.propagation import extract, inject, span_context

tracer = trace.get_tracer("xz_serve.batching")


class _Stats(Protocol):
    queue_ms: float
    inference_ms: float
    batch_texts: int
    batch_calls: int


class _Answer(Protocol):
    @property
    def stats(self) -> _Stats: ...


A = TypeVar("A", bound=_Answer)

_in_flight = 0  # predict calls inside this process's replica: the queue depth gauge


class CallTrace:
    """``with CallTrace(carrier, texts) as call:`` around one predict call; ``call.carrier`` is the
    request span's carrier, to travel with the call into the batch."""

    def __init__(self, carrier: dict[str, str] | None, texts: int) -> None:
        self.span = tracer.start_span(
            "xz.replica.predict",
            context=extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"xz.texts": texts},
        )
        own = inject(trace.set_span_in_context(self.span))
        self.carrier = own or dict(carrier or {})
        self.queue_ms: float | None = None

    def answered(self, result: A) -> A:
        """Record how the call was batched; returns ``result`` unchanged."""
        stats = result.stats
        self.queue_ms = stats.queue_ms
        self.span.set_attributes(
            {
                "xz.queue_wait_ms": round(stats.queue_ms, 3),
                "xz.inference_ms": round(stats.inference_ms, 3),
                "xz.batch.size": stats.batch_texts,
                "xz.batch.calls": stats.batch_calls,
            }
        )
        return result

    def __enter__(self) -> CallTrace:
        global _in_flight
        _in_flight += 1
        replica_metrics().depth(_in_flight)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _in_flight
        _in_flight -= 1
        metrics = replica_metrics()
        metrics.depth(_in_flight)
        if exc is not None:
            self.span.set_attribute("error.type", type(exc).__name__)
            self.span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
        metrics.call(self.queue_ms, "ok" if exc is None else type(exc).__name__)
        self.span.end()


class BatchTrace:
    """``with BatchTrace(carriers, texts, model_id):`` around one batch's inference."""

    def __init__(self, carriers: Sequence[dict[str, str] | None], texts: int, model_id: str) -> None:
        linked = [found for c in carriers if (found := span_context(c)) is not None]
        self.texts = texts
        self.span = tracer.start_span(
            "xz.replica.batch",
            context=extract(carriers[0]) if carriers else None,
            kind=SpanKind.INTERNAL,
            links=[Link(ctx, {"xz.link": "batched_request"}) for ctx in linked],
            attributes={
                "xz.batch.size": texts,
                "xz.batch.calls": len(carriers),
                "xz.model_id": model_id,
                "xz.quantization": model_id.rsplit(":", 1)[-1] if ":" in model_id else "",
            },
        )
        self.started = 0.0

    def __enter__(self) -> BatchTrace:
        self.started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        if exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        replica_metrics().batch(self.texts, elapsed_ms)
