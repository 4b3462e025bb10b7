"""W3C trace context in plain dict carriers: how a trace crosses Serve's actor boundaries.

Ray's own tracing hook and ``serve.get_trace_context`` are alpha, so the context travels explicitly
(``CallMeta.carrier``) as ``traceparent``/``tracestate`` entries. Any change of mechanism stays here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
tracer = trace.get_tracer("xz_serve.telemetry")


def inject(context: Context | None = None) -> dict[str, str]:
    """The carrier of ``context`` (default: the current one); empty when nothing is traced."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> Context:
    """An OpenTelemetry context whose parent is the carrier's span (an empty context if none)."""
    return _W3C.extract(dict(carrier or {}))


def span_context(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The remote span a carrier names, for span links; None when the carrier holds none."""
    found = trace.get_current_span(extract(carrier)).get_span_context()
    return found if found.is_valid else None


def trace_id_hex(ctx: SpanContext) -> str:
    """32 lowercase hex digits, as in ``traceparent`` and in trace backends' URLs."""
    return format(ctx.trace_id, "032x")


@contextmanager
def client_span(
    name: str, carrier: Mapping[str, str] | None, **attributes: str | int
) -> Iterator[dict[str, str]]:
    """A CLIENT span around an outgoing call; yields the carrier to send with it.

    Its parent is the current span, or ``carrier``'s when this task has none (a call made on
    behalf of a request from another task). Exceptions are recorded on the span and re-raised.
    """
    current = trace.get_current_span().get_span_context()
    parent = None if current.is_valid else extract(carrier)
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes):
        yield inject() or dict(carrier or {})
