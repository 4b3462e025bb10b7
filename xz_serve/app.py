"""build_app: the only place deployments are bound, from one XzSettings."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from xz_serve.http.fused import FusedServer
from xz_serve.http.ingress import Ingress
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import XzSettings
from xz_serve.telemetry.redact import redact
from xz_serve.telemetry.tracing import HEADERS_FILE_ENV, forwarded_env, withheld

log = logging.getLogger(__name__)


def resolve(settings: XzSettings) -> XzSettings:
    """Absolute paths (replicas do not share the driver's working directory) and ONNX Runtime
    threads matched to the CPUs a model replica reserves (its default would take every core)."""
    threads = settings.model.intra_op_threads or max(1, math.ceil(settings.nlu.num_cpus))
    model = settings.model.model_copy(
        update={
            "artifacts_dir": Path(settings.model.artifacts_dir).resolve(),
            "data_dir": Path(settings.model.data_dir).resolve(),
            "intra_op_threads": threads,
        }
    )
    return settings.model_copy(update={"model": model})


def with_otel_env(options: dict[str, Any], settings: XzSettings) -> dict[str, Any]:
    """Give the replicas the builder's OTEL_* variables (``telemetry.forward_otel_env``): Ray workers
    otherwise see only the env of whoever started the cluster.

    Credentials (exporter headers) stay out: Ray shows runtime_env on its dashboard and in its logs.
    Replicas get them from the environment they inherit, or read ``telemetry.otlp_headers_file``,
    whose path is forwarded here.
    """
    env = forwarded_env(os.environ) if settings.telemetry.forward_otel_env else {}
    if settings.telemetry.otlp_headers_file is not None:
        env[HEADERS_FILE_ENV] = str(Path(settings.telemetry.otlp_headers_file).resolve())
    elif kept := sorted(k for k, v in os.environ.items() if k.startswith("OTEL_") and withheld(k, v)):
        log.info(
            "not in runtime_env (credentials): %s; replicas read them from the environment of whoever "
            "started the Ray cluster, or set telemetry.otlp_headers_file",
            ", ".join(kept),
        )
    if env:
        runtime_env = options.setdefault("ray_actor_options", {}).setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
    return options


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve app builder (``import_path: xz_serve.app:build_app``); YAML ``args`` win over env."""
    settings = resolve(XzSettings(**(args or {})))
    nlu_options = with_otel_env(settings.nlu.serve_options(settings.batch.max_batch_size), settings)
    nlu_options["user_config"] = settings.batch.model_dump()
    log.info("%s topology; nlu deployment options: %s", settings.topology, redact(nlu_options))
    if settings.topology == "fused":
        fused = serve.deployment(FusedServer).options(name="xz", health_check_period_s=10, **nlu_options)
        return fused.bind(settings)
    nlu = (
        serve.deployment(NluReplica)
        .options(name="nlu", health_check_period_s=10, **nlu_options)
        .bind(settings.model, settings.batch, settings.api.top_k)
    )
    ingress_options = with_otel_env(settings.ingress.serve_options(), settings)
    ingress = serve.deployment(Ingress).options(name="ingress", **ingress_options)
    return ingress.bind(nlu, settings)
