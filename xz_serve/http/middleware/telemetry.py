"""TelemetryMiddleware: one server span per HTTP request, the trace id header, RED metrics.

A pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware), installed outermost so
it sees every response, including errors raised by inner middlewares. It continues an incoming
W3C ``traceparent`` (or starts a trace), hands the span's carrier to the request context for the
stages downstream, answers ``x-trace-id``, puts the request's id on the span (``xz.request_id``:
the id ``x-request-id`` answers and Serve's logs carry), and records request count, latency and
errors by route *template* (``/v1/analyze``, never a raw path: bounded label values).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xz_serve.http.middleware.context import bind_request_id
from xz_serve.telemetry.metrics import http_metrics
from xz_serve.telemetry.propagation import extract, inject, trace_id_hex

tracer = trace.get_tracer("xz_serve.telemetry")

UNMATCHED = "unmatched"  # route label of requests no route matched (404s): one value, not the path
TRACE_HEADER = "x-trace-id"
_ERROR_BODY_LIMIT = 4096

ContextHook = Callable[[Scope, dict[str, str]], None]


def route_template(scope: Scope) -> str:
    """The matched route's path template, set on the scope by the router."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def error_code(body: bytes, status: int) -> str:
    """``error.code`` of our JSON error body, else ``http_<status>``."""
    try:
        code = json.loads(body)["error"]["code"]
        return code if isinstance(code, str) else f"http_{status}"
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"


def _request_attributes(scope: Scope, headers: dict[str, str]) -> dict[str, str | int]:
    """HTTP server span attributes per the OpenTelemetry semantic conventions (stable HTTP)."""
    attributes: dict[str, str | int] = {
        "http.request.method": scope.get("method", "GET"),
        "url.path": scope.get("root_path", "") + scope.get("path", ""),
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server, client = scope.get("server"), scope.get("client")
    if server:
        attributes["server.address"], attributes["server.port"] = str(server[0]), int(server[1] or 0)
    if client:
        attributes["client.address"] = str(client[0])
    if "user-agent" in headers:
        attributes["user_agent.original"] = headers["user-agent"]
    return attributes


class TelemetryMiddleware:
    """Trace and measure each HTTP request; ``on_context`` receives the downstream carrier."""

    def __init__(self, app: ASGIApp, on_context: ContextHook | None = None) -> None:
        self.app = app
        self.on_context = on_context
        self.metrics = http_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        method = scope.get("method", "GET")
        span = tracer.start_span(
            method,
            context=extract({k: headers[k] for k in ("traceparent", "tracestate") if k in headers}),
            kind=SpanKind.SERVER,
            attributes=_request_attributes(scope, headers),
        )
        span.set_attribute("xz.request_id", bind_request_id(scope).request_id)
        span_context = span.get_span_context()
        trace_id = trace_id_hex(span_context) if span_context.is_valid else None
        status = 500
        error_body = bytearray()

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if trace_id is not None:
                    message["headers"] = [
                        *message.get("headers", ()),
                        (TRACE_HEADER.encode(), trace_id.encode()),
                    ]
            elif message["type"] == "http.response.body" and status >= 400:
                error_body.extend(message.get("body", b"")[: _ERROR_BODY_LIMIT - len(error_body)])
            await send(message)

        with trace.use_span(span, end_on_exit=False):
            if self.on_context is not None:
                self.on_context(scope, inject())
            try:
                await self.app(scope, receive, send_traced)
            except BaseException as exc:
                span.record_exception(exc)
                status = 500
                raise
            finally:
                route = route_template(scope)
                if route != UNMATCHED:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
                code = error_code(bytes(error_body), status) if status >= 400 else None
                self.metrics.record(route, method, status, (time.perf_counter() - started) * 1000, code)
