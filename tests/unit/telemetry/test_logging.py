"""JSON-lines logs carry the trace id of the span they were written in."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xz_serve.telemetry.logging import JsonFormatter


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("xz_serve.test", logging.WARNING, __file__, 1, message, (), None)
    rec.__dict__.update(extra)
    return rec


def test_a_line_inside_a_span_carries_its_ids(spans: InMemorySpanExporter) -> None:
    with trace.get_tracer("tests").start_as_current_span("work") as span:
        line = JsonFormatter().format(record("cache down", kind="timeout"))
    entry = json.loads(line)
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    assert entry["message"] == "cache down" and entry["level"] == "WARNING" and entry["kind"] == "timeout"
    assert "\n" not in line


def test_a_line_outside_any_span_has_no_ids() -> None:
    entry = json.loads(JsonFormatter().format(record("started")))
    assert "trace_id" not in entry and entry["logger"] == "xz_serve.test"
