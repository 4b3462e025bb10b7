"""Real receivers for the telemetry test: an OTLP/HTTP trace endpoint, an Alertmanager webhook, and
Prometheus / Alertmanager processes on free 127.0.0.1 ports (killed by pid at teardown)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import free_port


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, with the resource (process) that sent it."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace_id, span_id)
    resource: dict[str, Any]


@dataclass
class _Store:
    spans: list[ReceivedSpan] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server:
    """A ThreadingHTTPServer in a daemon thread; ``handle(path, body)`` decides what to store."""

    def __init__(self) -> None:
        self.store = _Store()
        self.port = free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                reply, content_type = outer.handle(self.path, body)
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, path: str, body: bytes) -> tuple[bytes, str]:
        raise NotImplementedError

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class OtlpReceiver(_Server):
    """Decodes OTLP/HTTP protobuf ``ExportTraceServiceRequest`` posts to ``/v1/traces``."""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, body: bytes) -> tuple[bytes, str]:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            spans = []
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                                resource=resource,
                            )
                        )
            with self.store.lock:
                self.store.spans.extend(spans)
        return ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"

    def spans(self) -> list[ReceivedSpan]:
        with self.store.lock:
            return list(self.store.spans)


class WebhookReceiver(_Server):
    """Alertmanager's webhook: keeps every JSON notification."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def handle(self, path: str, body: bytes) -> tuple[bytes, str]:
        with self.store.lock:
            self.store.bodies.append(json.loads(body))
        return b"{}", "application/json"

    def alerts(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [alert for body in self.store.bodies for alert in body.get("alerts", [])]


class Daemon:
    """A monitoring binary on a free 127.0.0.1 port; ``stop()`` kills exactly its pid."""

    def __init__(self, argv: list[str], port: int, ready_path: str, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{argv[0]} not ready: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def binary(*names: str) -> str | None:
    """The first of ``names`` on PATH (Debian calls Alertmanager ``prometheus-alertmanager``)."""
    return next((found for name in names if (found := shutil.which(name))), None)
