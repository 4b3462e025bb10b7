"""XzSettings: the one typed source of configuration (Serve YAML ``args`` win over ``XZ_*`` env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Each concern's spec lives beside its code (pure pydantic, no I/O) and is nested here, so XzSettings
# stays the one schema of `args:` while each package owns its knobs.
from xz_serve.access.spec import AccessSpec
from xz_serve.cache.spec import CacheSpec
from xz_serve.dialog.spec import DialogSpec
from xz_serve.telemetry.spec import TelemetrySpec

Quantization = Literal["int8", "fp32"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSpec(_Spec):
    """How the model artifacts are trained, exported and quantized; all of it feeds the fingerprint."""

    seed: int = Field(13, description="Seed for shuffling, head init and dropout: same seed, same weights.")
    max_length: int = Field(64, ge=8, le=512, description="Token cap while training; TweetEval's P99 is 45.")
    trainable_layers: int = Field(
        6, ge=0, le=6, description="Top encoder layers fine-tuned; the rest stay frozen and are run once."
    )
    epochs: int = Field(3, ge=1, le=50, description="Passes over both training sets.")
    batch_size: int = Field(32, ge=1, le=1024, description="Training batch size.")
    encoder_lr: float = Field(1e-4, gt=0, description="Learning rate of the fine-tuned encoder layers.")
    head_lr: float = Field(2e-3, gt=0, description="Learning rate of the intent and sentiment heads.")
    distill_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the loss that keeps embeddings close to the original MiniLM's, so "
        "similarity search and the semantic cache keep working after fine-tuning.",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing for both heads.")
    balance_classes: bool = Field(
        False,
        description="Weight each class by inverse frequency: the sentiment training split's label "
        "mix (48% neutral, 19% positive) is not the traffic's, so learn no prior from it.",
    )
    quant_per_channel: bool = Field(
        True, description="Per-channel INT8 weights: keeps accuracy within a point of FP32."
    )


class ModelSpec(_Spec):
    """Where the artifacts live and which variant replicas load."""

    artifacts_dir: Path = Field(Path("artifacts"), description="Built models, tokenizer, labels, report.")
    data_dir: Path = Field(Path("../shared/data"), description="Training and validation JSONL sets.")
    quantization: Quantization = Field("int8", description="Variant replicas load; fp32 for comparison.")
    build_if_missing: bool = Field(True, description="Build the artifacts on first start if absent.")
    intra_op_threads: int = Field(
        0, ge=0, le=64, description="ONNX Runtime threads per replica; 0 means one per CPU given to it."
    )
    spin_wait: bool = Field(
        False,
        description="Let ONNX Runtime threads spin between ops: lower latency on dedicated cores, "
        "but it burns CPU that HAProxy, the ingress and other replicas on the node need.",
    )
    max_tokens: int = Field(128, ge=8, le=512, description="Tokens per text kept at inference.")
    build: BuildSpec = Field(default_factory=BuildSpec)


class BatchSpec(_Spec):
    """Serve batching knobs, applied through ``user_config`` so retuning needs no restart."""

    max_batch_size: int = Field(32, ge=1, le=512, description="Texts per encoder pass at most.")
    batch_wait_timeout_s: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Longest a partial batch waits for company, and only while the model is busy "
        "with the previous pass: a call that finds the model idle runs at once.",
    )
    queue_batches: float = Field(
        32,
        ge=1,
        le=1024,
        description="Admission bound per model replica, in full batches: a call is refused at once "
        "(503 + Retry-After) while more than `queue_batches * max_batch_size` texts are pending, so "
        "an overload queues at most that many passes (about 2 s of work at batch 32 on 2 cores) "
        "instead of piling up until deadlines pass. Large enough by default to absorb a burst of "
        "hundreds of requests; lower it (2 = one batch running, one forming) to trade burst "
        "tolerance for a tight latency bound under sustained overload.",
    )


class ApiSpec(_Spec):
    """Input limits and response shaping; a request beyond a limit is a 4xx, never a model call."""

    max_texts: int = Field(64, ge=1, le=4096, description="Texts per request.")
    max_text_chars: int = Field(2000, ge=1, le=100_000, description="Characters per text.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body size.")
    top_k: int = Field(3, ge=1, le=20, description="Intent alternatives returned per text.")
    oos_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Below this top-intent confidence a text is flagged out of scope even when the "
        "head picked an in-scope intent: an assistant should say it does not know.",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Default deadline of a request: past it, the request is answered 504 and, if "
        "still queued, dropped before inference. Clients may ask for less or more with the "
        "`x-request-timeout-ms` header.",
    )
    max_request_timeout_s: float = Field(
        60.0, gt=0, description="Cap on `x-request-timeout-ms`: no client may hold a slot longer."
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="HTTP requests one replica works on at once; past it, 503 + Retry-After before "
        "the body is read. None derives it from the batch: `batch.queue_batches * "
        "batch.max_batch_size` (a request carries at least one text, so single-text traffic is "
        "bounded here and larger requests by the replica's text bound). Either way at most three "
        "quarters of the HTTP replica's `max_ongoing_requests` (`nlu` when fused, `ingress` when "
        "split), so this bound refuses (JSON 503) before Serve queues or refuses anything.",
    )


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
        200.0, gt=0, le=10_000, description="Longest one store round trip may take before it fails."
    )


class XzSettings(BaseSettings):
    """Everything xz_serve reads; built once in ``build_app`` and sliced per deployment."""

    model_config = SettingsConfigDict(
        env_prefix="XZ_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    topology: Literal["split", "fused"] = Field(
        "fused",
        description="fused: each replica serves HTTP and runs the model (no actor hop; `nlu` sizes "
        "it), 2.2x the req/s of split in bench/results/serving.md; split: Ingress and NLU "
        "deployments scale apart, at one actor hop per request.",
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

    @model_validator(mode="after")
    def _batches_can_fill(self) -> XzSettings:
        if self.nlu.max_ongoing_requests < self.batch.max_batch_size:
            raise ValueError(
                "nlu.max_ongoing_requests must be >= batch.max_batch_size, or batches never fill"
            )
        return self
