"""Span capture for the HTTP middleware tests (``tests/unit/spans.py``)."""

from tests.unit.spans import _provider, spans

__all__ = ["_provider", "spans"]
