"""An in-memory SDK tracer provider: the spans our code makes, without any exporter or network.

The fixtures are re-exported by the conftests of the packages whose tests read spans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()


_INSTALLED: list[bool] = []


def _install() -> None:
    """The global provider can be set once per process; reuse ours if a test already did."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture(scope="session")
def _provider() -> None:
    _install()


@pytest.fixture
def spans(_provider: None) -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()
