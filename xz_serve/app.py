"""build_app: the only place deployments are bound, from one XzSettings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from xz_serve.api.ingress import Ingress
from xz_serve.batching.replica import NluReplica
from xz_serve.settings import XzSettings

log = logging.getLogger(__name__)


def resolve_paths(settings: XzSettings) -> XzSettings:
    """Absolute artifact and data paths: replicas do not share the driver's working directory."""
    model = settings.model.model_copy(
        update={
            "artifacts_dir": Path(settings.model.artifacts_dir).resolve(),
            "data_dir": Path(settings.model.data_dir).resolve(),
        }
    )
    return settings.model_copy(update={"model": model})


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve app builder (``import_path: xz_serve.app:build_app``); YAML ``args`` win over env."""
    settings = resolve_paths(XzSettings(**(args or {})))
    nlu_options = settings.nlu.serve_options()
    nlu_options["user_config"] = settings.batch.model_dump()
    log.info("nlu deployment options: %s", nlu_options)
    nlu = (
        serve.deployment(NluReplica)
        .options(name="nlu", health_check_period_s=10, **nlu_options)
        .bind(settings.model, settings.batch, settings.api.top_k)
    )
    ingress = serve.deployment(Ingress).options(name="ingress", **settings.ingress.serve_options())
    return ingress.bind(nlu, settings.api, settings.batch)
