"""Exporter headers (a collector's bearer token) and URL passwords never reach Ray's runtime_env,
which the dashboard shows, nor the start-up log; replicas can read the headers from a file instead."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from xz_serve.telemetry.redact import redact, redact_headers, redact_url, scrub
from xz_serve.telemetry.tracing import build_exporter, forwarded_env, read_headers_file

TOKEN = "tok-9f2c1e7d"
OTEL = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {TOKEN},x-tenant=acme",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-api-key={TOKEN}",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
}


def test_headers_and_url_passwords_are_not_forwarded() -> None:
    env = {**OTEL, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"https://u:{TOKEN}@collector/v1/traces"}
    assert forwarded_env(env) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6380/0", "redis://:***@127.0.0.1:6380/0"),
        ("rediss://admin:p%40ss@redis.svc:6380/1", "rediss://admin:***@redis.svc:6380/1"),
        ("redis://127.0.0.1:6380/0?password=pw&db=2", "redis://127.0.0.1:6380/0?password=***&db=2"),
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
        ("not a url", "not a url"),
    ],
)
def test_url_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_header_names_stay_values_go() -> None:
    assert redact_headers(OTEL["OTEL_EXPORTER_OTLP_HEADERS"]) == "authorization=***,x-tenant=***"
    nested = {"runtime_env": {"env_vars": dict(OTEL)}, "urls": ["redis://:pw@h:1/0"]}
    shown = redact(nested)
    assert TOKEN not in repr(shown) and "pw@" not in repr(shown)
    assert shown["runtime_env"]["env_vars"]["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert nested["runtime_env"]["env_vars"] == OTEL  # the original is untouched
    assert scrub(f"refused for {TOKEN}", TOKEN, None) == "refused for ***"


def test_the_app_keeps_headers_out_of_runtime_env_and_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from xz_serve.app import build_app, with_otel_env
    from xz_serve.settings import XzSettings

    for name, value in OTEL.items():
        monkeypatch.setenv(name, value)
    options = with_otel_env({"ray_actor_options": {"num_cpus": 1}}, XzSettings())
    env_vars = options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env_vars == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    with caplog.at_level(logging.INFO, logger="xz_serve"):
        build_app({"topology": "split"})
    assert "deployment options" in caplog.text and TOKEN not in caplog.text
    assert "OTEL_EXPORTER_OTLP_HEADERS" in caplog.text  # says what it left out, and why


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that records the headers of each export."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.received.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_headers_file_is_forwarded_as_a_path_and_sent_by_the_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xz_serve.app import with_otel_env
    from xz_serve.settings import XzSettings

    secret = tmp_path / "otlp-headers"
    secret.write_text(f"authorization=Bearer%20{TOKEN}\n")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    settings = XzSettings(telemetry={"otlp_headers_file": str(secret)})
    env_vars = with_otel_env({}, settings)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env_vars["XZ_TELEMETRY__OTLP_HEADERS_FILE"] == str(secret)  # the path, not the token
    assert TOKEN not in repr(env_vars)

    headers = read_headers_file(env_vars["XZ_TELEMETRY__OTLP_HEADERS_FILE"])
    assert headers == {"authorization": f"Bearer {TOKEN}"}
    assert isinstance(build_exporter({"OTEL_TRACES_EXPORTER": "otlp"}, headers), GrpcExporter)
    collector = _Collector()
    try:
        url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        exporter = build_exporter(env, headers)
        assert isinstance(exporter, HttpExporter)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.get_tracer("tests").start_span("one").end()
        provider.shutdown()
    finally:
        collector.shutdown()
    assert collector.received and collector.received[0]["authorization"] == f"Bearer {TOKEN}"


def test_an_unreadable_headers_file_is_logged_without_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="xz_serve"):
        assert read_headers_file(tmp_path / "missing") is None
    assert "missing" in caplog.text
    assert read_headers_file(None) is None
