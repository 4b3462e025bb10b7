"""configure_tracing: the OpenTelemetry SDK for this process, from the standard ``OTEL_*`` variables.

Every Serve replica is its own process, so each calls this once in its constructor. Spans are
exported by a ``BatchSpanProcessor`` (a background thread; ``OTEL_BSP_*`` tune it), never on the
request's critical path. Sampling is the SDK's ``OTEL_TRACES_SAMPLER`` / ``_ARG``.

Exporter headers are credentials (a collector's bearer token), and Ray shows every deployment's
``runtime_env`` on its dashboard and in its logs. So they never travel there: a replica reads them
from its own environment, inherited from whoever started the Ray cluster (``serve run`` starting a
local one, ``ray start``, a pod's env from a Secret), or from ``telemetry.otlp_headers_file``, a
file in the same format as ``OTEL_EXPORTER_OTLP_HEADERS`` that every node can read (a mounted
Secret); only that path, which is not a secret, is forwarded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.util.re import parse_env_headers

from xz_serve.telemetry.redact import is_header_var, url_has_secret

HEADERS_FILE_ENV = "XZ_TELEMETRY__OTLP_HEADERS_FILE"
"""How ``telemetry.otlp_headers_file`` reaches replicas that are built without the settings (the
split topology's model replicas): the path, never the headers, in their runtime_env."""

log = logging.getLogger(__name__)

_lock = threading.Lock()
_configured: TracerProvider | None = None


def exporter_kind(env: Mapping[str, str]) -> str | None:
    """Which exporter the environment asks for: ``otlp``, ``console``, or None for tracing off.

    Off when ``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``, or when neither an exporter
    nor an OTLP endpoint is set: an unconfigured process must not try to reach localhost:4317.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not kind:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return "otlp" if endpoint else None
    first = kind.split(",")[0].strip()
    return first if first in ("otlp", "console") else None


def otlp_protocol(env: Mapping[str, str]) -> str:
    """``grpc`` (the spec's default) or ``http/protobuf``; the traces-specific variable wins."""
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()


def read_headers_file(path: str | Path | None) -> dict[str, str] | None:
    """The OTLP headers in ``path`` (``key=value,...``, as in OTEL_EXPORTER_OTLP_HEADERS), or None.

    An unreadable file is logged (its path, never its content) and exports go without headers:
    tracing must not stop a replica from serving.
    """
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        log.error("OTLP headers file %s unreadable (%s); exporting without it", path, type(exc).__name__)
        return None
    return parse_env_headers(text, liberal=True) if text else None


def build_exporter(env: Mapping[str, str], headers: dict[str, str] | None = None) -> SpanExporter | None:
    """The exporter the environment configures; endpoint, headers and timeouts are read by it.

    ``headers`` (from the headers file) replace the environment's OTEL_EXPORTER_OTLP_HEADERS.
    """
    kind = exporter_kind(env)
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        return None
    if otlp_protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(headers=headers)


def configure_tracing(
    service_name: str = "xz-serve", component: str = "", headers_file: str | Path | None = None
) -> bool:
    """Install the SDK tracer provider once per process; True when spans are exported.

    ``component`` (ingress, nlu, fused) goes into the resource as ``xz.component`` together with
    ``process.pid``, so a trace shows which process each span ran in. ``headers_file`` defaults to
    the path in ``XZ_TELEMETRY__OTLP_HEADERS_FILE``.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return True
        headers = read_headers_file(headers_file or os.environ.get(HEADERS_FILE_ENV))
        exporter = build_exporter(os.environ, headers)
        if exporter is None:
            return False
        attributes: dict[str, str | int] = {"process.pid": os.getpid(), "xz.component": component}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service_name
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = provider
        log.info(
            "tracing on: %s exporter, component %s, headers from %s",
            exporter_kind(os.environ),
            component or "-",
            "file" if headers else "env" if any(is_header_var(k) for k in os.environ) else "none",
        )
        return True


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``OTEL_*`` variables to hand to replicas' runtime_env (see TelemetrySpec.forward_otel_env):
    all but credentials, which the dashboard would show (see the module docstring)."""
    return {k: v for k, v in env.items() if k.startswith("OTEL_") and not withheld(k, v)}


def withheld(name: str, value: str) -> bool:
    """An OTEL_* variable kept out of runtime_env: exporter headers, or a URL with a password."""
    return is_header_var(name) or url_has_secret(value)
