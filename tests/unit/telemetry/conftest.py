"""Span capture for the telemetry tests (``tests/unit/spans.py``)."""

from tests.unit.spans import _provider, spans

__all__ = ["_provider", "spans"]
