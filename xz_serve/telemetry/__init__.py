"""Traces (OpenTelemetry), metrics (Ray -> Prometheus) and structured logs.

``configure_telemetry(spec, component)`` is what a Serve replica calls in its constructor.
"""

from __future__ import annotations

from xz_serve.telemetry.logging import configure_json_logging
from xz_serve.telemetry.metrics import serve_tags
from xz_serve.telemetry.spec import TelemetrySpec
from xz_serve.telemetry.tracing import configure_tracing


def configure_telemetry(spec: TelemetrySpec | None = None, component: str = "") -> bool:
    """Tracing and JSON logs for this process, per ``spec``; True when spans are exported."""
    spec = spec or TelemetrySpec()
    if not spec.enabled:
        return False
    if spec.json_logs and serve_tags()["application"]:  # in a replica; tests keep pytest's logging
        configure_json_logging()
    return configure_tracing(spec.service_name, component, spec.otlp_headers_file)
