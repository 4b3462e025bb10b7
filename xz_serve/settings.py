"""XzSettings: the one typed source of configuration (Serve YAML ``args`` win over ``XZ_*`` env).

Each package owns its spec (pure pydantic, no I/O) beside its code; this module only composes
them, so XzSettings stays the one schema of ``args:`` while each package owns its knobs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from xz_serve.access.spec import AccessSpec, ApiSpec
from xz_serve.cache.spec import CacheSpec
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.dialog.spec import DialogSpec
from xz_serve.kernel.spec import DeploymentSpec, StoreSpec
from xz_serve.models.spec import BuildSpec, ModelSpec, Quantization
from xz_serve.nlu.spec import BatchSpec
from xz_serve.telemetry.spec import TelemetrySpec

__all__ = [
    "AccessSpec",
    "ApiSpec",
    "BatchSpec",
    "BuildSpec",
    "CacheSpec",
    "ClassifierSpec",
    "DeploymentSpec",
    "DialogSpec",
    "ModelSpec",
    "Quantization",
    "StoreSpec",
    "TelemetrySpec",
    "XzSettings",
]


class XzSettings(BaseSettings):
    """Everything xz_serve reads; built once in ``build_app`` and sliced per deployment."""

    model_config = SettingsConfigDict(
        env_prefix="XZ_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    topology: Literal["split", "fused"] = Field(
        "fused",
        description="fused: each replica serves HTTP and runs the model (no actor hop; `nlu` sizes "
        "it): the most req/s per core; split: Ingress and NLU deployments scale apart, at one actor "
        "hop per request.",
    )
    model: ModelSpec = Field(default_factory=ModelSpec)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    api: ApiSpec = Field(default_factory=ApiSpec)
    ingress: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=0.5, max_ongoing_requests=256)
    )
    nlu: DeploymentSpec = Field(
        default_factory=lambda: DeploymentSpec(num_cpus=1.0, max_ongoing_requests=256)
    )
    cache: CacheSpec = Field(default_factory=CacheSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    access: AccessSpec = Field(default_factory=AccessSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    dialog: DialogSpec = Field(default_factory=DialogSpec)
    classifiers: ClassifierSpec = Field(default_factory=ClassifierSpec)

    @model_validator(mode="after")
    def _batches_can_fill(self) -> XzSettings:
        if self.nlu.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError(
                "nlu.max_ongoing_requests must be >= batch.max_batch_size, or batches never fill"
            )
        return self
