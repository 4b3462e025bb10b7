"""TelemetryMiddleware in the real app: one server span per request, continuing `traceparent`,
the trace id header, HTTP semantic-convention attributes, and RED metrics by route template."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_api, create_app
from xz_serve.http.middleware import admission
from xz_serve.http.middleware import telemetry as middleware
from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.settings import ApiSpec, XzSettings

SETTINGS = XzSettings(access={"auth_enabled": False}, cache={"enabled": False})
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"


class Recorded:
    """Stands in for the Ray metrics (no-ops outside a Ray worker) to see what is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str | None]] = []

    def record(self, route: str, method: str, status: int, elapsed_ms: float, code: str | None) -> None:
        assert elapsed_ms >= 0
        self.calls.append((route, method, status, code))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    metrics = Recorded()
    monkeypatch.setattr(middleware, "http_metrics", lambda: metrics)
    return metrics


@pytest.fixture
async def client(recorded: Recorded, spans: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    fake = FakeNluClient()
    transport = httpx.ASGITransport(app=create_api(fake, SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def server_spans(spans: InMemorySpanExporter) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]


async def test_a_request_continues_the_callers_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, recorded: Recorded
) -> None:
    response = await client.post(
        "/v1/analyze", json={"text": "book a table"}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == PARENT_TRACE
    (server,) = server_spans(spans)
    assert server.name == "POST /v1/analyze"
    assert format(server.context.trace_id, "032x") == PARENT_TRACE
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/analyze"
    assert server.attributes["url.path"] == "/v1/analyze"
    assert server.attributes["http.response.status_code"] == 200
    assert server.status.status_code == StatusCode.UNSET
    assert recorded.calls == [("/v1/analyze", "POST", 200, None)]


async def test_without_traceparent_a_new_trace_starts(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.post("/v1/analyze", json={"text": "hello"})
    (server,) = server_spans(spans)
    assert server.parent is None
    assert response.headers["x-trace-id"] == format(server.context.trace_id, "032x")


async def test_the_carrier_reaches_the_model_call(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    """The NLU client gets the server span's carrier: the replica's spans join the trace."""
    seen: list[dict[str, str]] = []
    fake = FakeNluClient()
    original = fake.predict

    async def predict(texts: list[str], meta: Any = None) -> Any:
        seen.append(dict(meta.carrier))
        return await original(texts, meta)

    fake.predict = predict  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_api(fake, SETTINGS))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/v1/analyze", json={"text": "x"}, headers={"traceparent": TRACEPARENT})
    (server,) = server_spans(spans)
    span_id = format(server.context.span_id, "016x")
    assert seen == [{"traceparent": f"00-{PARENT_TRACE}-{span_id}-01"}]
    assert response.status_code == 200


async def test_errors_are_counted_by_code_and_5xx_mark_the_span(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, recorded: Recorded
) -> None:
    bad = await client.post("/v1/analyze", json={"texts": []})
    assert bad.status_code == 400
    missing = await client.get("/no/such/route")
    assert missing.status_code == 404
    assert recorded.calls == [
        ("/v1/analyze", "POST", 400, bad.json()["error"]["code"]),
        ("unmatched", "GET", 404, missing.json()["error"]["code"]),  # raw paths never become labels
    ]
    first, second = server_spans(spans)
    assert first.status.status_code == StatusCode.UNSET  # 4xx: the client's error, not the server's
    assert second.name == "GET"


def test_error_code_reads_our_json_errors() -> None:
    assert middleware.error_code(b'{"error": {"code": "empty_input", "message": "m"}}', 400) == "empty_input"
    assert middleware.error_code(b"<html>", 502) == "http_502"


class HeldClient(FakeNluClient):
    """FakeNluClient whose predictions wait for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        await self.release.wait()
        return await super().predict(texts, meta)


async def test_a_refusal_is_counted_but_opens_no_span(
    recorded: Recorded, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app's admission gate is outermost: under overload a refusal costs no span and no
    routing, yet the HTTP metrics still count it (by route, 503, ``overloaded``)."""
    monkeypatch.setattr(admission, "http_metrics", lambda: recorded)
    fake = HeldClient()
    app = create_app(fake, SETTINGS.model_copy(update={"api": ApiSpec(max_in_flight=1)}))
    assert isinstance(app, admission.AdmissionMiddleware) and app.limit == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        held = asyncio.create_task(http.post("/v1/intent", json={"text": "hello"}))
        await asyncio.sleep(0.05)
        refused = await asyncio.wait_for(http.post("/v1/intent", json={"text": "hi"}), 1)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert "x-trace-id" not in refused.headers
        assert recorded.calls == [("/v1/intent", "POST", 503, "overloaded")]
        assert spans.get_finished_spans() == ()
        fake.release.set()
        answered = await held
    assert answered.status_code == 200 and "x-trace-id" in answered.headers
    assert [s.name for s in spans.get_finished_spans()] == ["POST /v1/intent"]
    assert recorded.calls[1:] == [("/v1/intent", "POST", 200, None)]
    assert fake.calls == [["hello"]]  # the refused text never reached the model
