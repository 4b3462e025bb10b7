"""TelemetrySpec: tracing and metrics knobs. Pure pydantic, nested in XzSettings as ``telemetry``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TelemetrySpec(BaseModel):
    """What is traced and measured; exporters follow the standard ``OTEL_*`` environment variables.

    Where spans go (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_PROTOCOL``), how they are sampled (``OTEL_TRACES_SAMPLER``) and whether the
    SDK runs at all (``OTEL_SDK_DISABLED``) are deliberately not fields here: operators already know
    those variables, and every OpenTelemetry tool reads them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="Master switch for traces, JSON logs and the HTTP middleware (xz_http_* metrics); "
        "tracing is also off whenever no OTEL exporter is configured.",
    )
    service_name: str = Field(
        default="xz-serve",
        description="OpenTelemetry `service.name` of every replica unless OTEL_SERVICE_NAME is set: "
        "how the trace backend groups our spans.",
    )
    forward_otel_env: bool = Field(
        default=True,
        description="Copy the OTEL_* variables of the process that builds the app into every "
        "replica's runtime_env, so `OTEL_... serve run` configures replicas on an already running "
        "cluster too (Ray workers otherwise inherit the env of whoever started the cluster). "
        "Exporter headers (OTEL_EXPORTER_OTLP_*HEADERS) and URLs with a password are never copied: "
        "the Ray dashboard shows runtime_env; see `otlp_headers_file`.",
    )
    otlp_headers_file: Path | None = Field(
        default=None,
        description="A file holding the OTLP exporter headers in OTEL_EXPORTER_OTLP_HEADERS's format "
        "(`authorization=Bearer%20...`), read by each replica at start and used instead of that "
        "variable; it must exist on every node (e.g. a mounted Secret). None: replicas use the "
        "variable from their own environment, inherited from whoever started the Ray cluster.",
    )
    json_logs: bool = Field(
        default=True,
        description="Write the `xz_serve` loggers as JSON lines with trace_id/span_id, so a log "
        "line leads to its trace.",
    )
