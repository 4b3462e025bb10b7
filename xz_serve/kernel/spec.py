"""Specs several layers share: the durable store's connection and one Serve deployment's sizing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentSpec(_Spec):
    """Replica count and concurrency of one Serve deployment."""

    min_replicas: int = Field(1, ge=0, le=10)
    max_replicas: int = Field(1, ge=1, le=10)
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica (fractional is fine).")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests per replica.")
    max_queued_requests: int = Field(256, ge=-1, description="Queued requests per caller before 503.")
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description="Autoscaling target of in-flight requests per replica. None derives it: one "
        "full batch for model replicas (a replica above it has a backlog), 64 for the ingress.",
    )
    upscale_delay_s: float = Field(
        5.0, ge=0, description="Load must stay above target this long before adding replicas."
    )
    downscale_delay_s: float = Field(
        30.0,
        ge=0,
        description="Load must stay below target this long before removing replicas: longer than "
        "upscale, so a short lull between bursts does not flap the replica count.",
    )
    look_back_period_s: float = Field(
        15.0,
        gt=0,
        description="Window over which in-flight requests are averaged for scaling; Serve wants it "
        "longer than its 10 s metrics interval.",
    )
    graceful_shutdown_timeout_s: float = Field(
        20.0, gt=0, description="How long a stopping replica may drain its in-flight requests."
    )

    @model_validator(mode="after")
    def _ordered(self) -> DeploymentSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def serve_options(self, default_target: float = 64) -> dict[str, Any]:
        """Options for ``Deployment.options``: fixed count when min == max, else autoscaling."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            # Serve's own rejections (past max_queued_requests) tell clients when to come back.
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        }
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.min_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "initial_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests or default_target,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s,
            }
        return options


class StoreSpec(_Spec):
    """The durable Redis: API keys, sessions and rate-limit counters (AOF on, no eviction).

    Separate from the cache's Redis, which evicts under memory pressure by design: a key or a
    session must never be evicted to make room for a cached prediction.
    """

    redis_url: str | None = Field(
        None,
        description="redis:// URL of the durable store, from env (XZ_STORE__REDIS_URL) as it may "
        "carry a password. None: keys, sessions and limits live in process memory (development only).",
    )
    timeout_ms: float = Field(
        200.0,
        gt=0,
        le=10_000,
        description="Longest a key lookup or limit check may take; slower counts as a store failure "
        "(keys verified recently keep working, limits fail open or closed per `access`).",
    )
    session_timeout_ms: float = Field(
        1000.0,
        gt=0,
        le=30_000,
        description="Longest a session read or write may take; slower answers 503 (a session is "
        "user data: it is never silently dropped the way a cache entry may be).",
    )
