"""TelemetrySpec: tracing and metrics knobs. Pure pydantic, nested in XzSettings as ``telemetry``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TelemetrySpec(BaseModel):
    """What is traced and measured; exporters follow the standard ``OTEL_*`` environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)
