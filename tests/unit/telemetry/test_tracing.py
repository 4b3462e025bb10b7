"""configure_tracing reads the standard OTEL_* variables: which exporter, which protocol, or off."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from xz_serve.telemetry.tracing import build_exporter, exporter_kind, forwarded_env, otlp_protocol


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, None),  # nothing configured: off, no attempt to reach localhost:4317
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),  # not bundled: off rather than crash a replica
    ],
)
def test_exporter_follows_the_standard_variables(env: dict[str, str], kind: str | None) -> None:
    assert exporter_kind(env) == kind


def test_protocol_defaults_to_grpc_and_the_traces_variable_wins() -> None:
    assert otlp_protocol({}) == "grpc"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert otlp_protocol(both) == "http/protobuf"


def test_build_exporter_picks_the_transport() -> None:
    assert isinstance(build_exporter({"OTEL_TRACES_EXPORTER": "otlp"}), GrpcExporter)
    http = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert isinstance(build_exporter(http), HttpExporter)
    assert isinstance(build_exporter({"OTEL_TRACES_EXPORTER": "console"}), ConsoleSpanExporter)
    assert build_exporter({}) is None


def test_only_otel_variables_are_forwarded_to_replicas() -> None:
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1", "HOME": "/root"}
    assert forwarded_env(env) == {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
