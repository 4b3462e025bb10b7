"""configure_tracing: the OpenTelemetry SDK for this process, from the standard ``OTEL_*`` variables.

Every Serve replica is its own process, so each calls this once in its constructor. Spans are
exported by a ``BatchSpanProcessor`` (a background thread; ``OTEL_BSP_*`` tune it), never on the
request's critical path. Sampling is the SDK's ``OTEL_TRACES_SAMPLER`` / ``_ARG``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

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


def build_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    """The exporter the environment configures; endpoint, headers and timeouts are read by it."""
    kind = exporter_kind(env)
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        return None
    if otlp_protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def configure_tracing(service_name: str = "xz-serve", component: str = "") -> bool:
    """Install the SDK tracer provider once per process; True when spans are exported.

    ``component`` (ingress, nlu, fused) goes into the resource as ``xz.component`` together with
    ``process.pid``, so a trace shows which process each span ran in.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return True
        exporter = build_exporter(os.environ)
        if exporter is None:
            return False
        attributes: dict[str, str | int] = {"process.pid": os.getpid(), "xz.component": component}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = service_name
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = provider
        log.info("tracing on: %s exporter, component %s", exporter_kind(os.environ), component or "-")
        return True


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``OTEL_*`` variables to hand to replicas' runtime_env (see TelemetrySpec.forward_otel_env)."""
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}
