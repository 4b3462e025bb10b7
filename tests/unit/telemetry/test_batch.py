"""Spans of a batching replica: a request span per call, one batch span linking all of them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ray import serve

from xz_serve.kernel.types import CallMeta
from xz_serve.models.fake import FAIL_MARKER, FakeModel
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import BatchSpec, ModelSpec
from xz_serve.telemetry.propagation import inject

# @serve.batch binds its queue to the loop that first used it (one loop per replica process in Serve).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("fresh_batch_queue")]


@pytest.fixture(autouse=True)
def replica_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Serve, @serve.batch asks the replica context only for a warning."""
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=1024))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


def make_replica() -> NluReplica:
    model = FakeModel()
    return NluReplica(ModelSpec(), BatchSpec(max_batch_size=16, batch_wait_timeout_s=0.05), 2, lambda: model)


async def test_a_batch_span_links_every_call_it_served(spans: InMemorySpanExporter) -> None:
    replica = make_replica()
    tracer = trace.get_tracer("tests")
    callers = [tracer.start_span(f"caller {i}") for i in range(6)]
    metas = [CallMeta(carrier=inject(trace.set_span_in_context(c))) for c in callers]
    replica._busy_until = 1e18  # the model counts as busy: calls gather into one batch (max 0.05 s)
    results = await asyncio.gather(*(replica.predict([f"text {i}"], m) for i, m in enumerate(metas)))
    for caller in callers:
        caller.end()

    finished = spans.get_finished_spans()
    calls = [s for s in finished if s.name == "xz.replica.predict"]
    (batch,) = [s for s in finished if s.name == "xz.replica.batch"]
    assert len(calls) == 6
    # each request span is the child of its own caller
    assert sorted(c.parent.span_id for c in calls) == sorted(c.get_span_context().span_id for c in callers)
    # the batch links to every request span and sits in the first request's trace
    assert {link.context.span_id for link in batch.links} == {c.context.span_id for c in calls}
    assert batch.attributes["xz.batch.calls"] == 6 and batch.attributes["xz.batch.size"] == 6
    assert batch.parent.span_id in {c.context.span_id for c in calls}
    for call in calls:
        assert call.attributes["xz.batch.calls"] == 6
        assert call.attributes["xz.queue_wait_ms"] >= 0
    assert all(r.stats.batch_calls == 6 for r in results)


async def test_a_failed_call_marks_only_its_span(spans: InMemorySpanExporter) -> None:
    replica = make_replica()
    outcomes = await asyncio.gather(
        replica.predict(["fine"]), replica.predict([f"broken {FAIL_MARKER}"]), return_exceptions=True
    )
    assert not isinstance(outcomes[0], BaseException) and isinstance(outcomes[1], BaseException)
    calls = {
        s.attributes["xz.texts"]: s for s in spans.get_finished_spans() if s.name == "xz.replica.predict"
    }
    statuses = sorted(
        s.status.status_code.name for s in spans.get_finished_spans() if s.name == "xz.replica.predict"
    )
    assert statuses == ["ERROR", "UNSET"]
    assert calls
