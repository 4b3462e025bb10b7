"""ModelSpec (which artifacts replicas load, and how) and BuildSpec (how ``xz-build`` makes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Quantization = Literal["int8", "fp32"]
Runtime = Literal["auto", "onnxruntime", "openvino"]


class BuildSpec(_Spec):
    """How the model artifacts are trained, exported and quantized; all of it feeds the fingerprint."""

    seed: int = Field(13, description="Seed for shuffling, head init and dropout: same seed, same weights.")
    max_length: int = Field(
        64, ge=8, le=512, description="Token cap while training; longer than nearly every TweetEval text."
    )
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
        "mix (neutral-heavy) is not the traffic's, so learn no prior from it.",
    )
    quant_per_channel: bool = Field(
        True,
        description="Per-channel INT8 weights (one scale per output channel, not per tensor): keeps "
        "INT8 accuracy close to FP32.",
    )
    min_examples_per_label: int = Field(
        5,
        ge=2,
        description="Fewest training examples a label may have: the build refuses data with fewer, "
        "before training (one goes to the calibration holdout, the rest cannot teach a class).",
    )
    max_conflict_share: float = Field(
        0.001,
        ge=0,
        lt=1,
        description="Share of a task's rows whose text also appears with another label that the "
        "build tolerates as label noise (kept, and listed as warnings); above it the data is refused.",
    )
    max_data_mb: float = Field(
        200.0, gt=0, description="Largest JSONL file the build reads (MB): a bigger one is refused unread."
    )
    oos_negatives_per_source: int = Field(
        3000,
        ge=0,
        description="Out-of-domain texts drawn from each shared source (tweets, QQP, StackFAQ) for "
        "the out-of-scope detector: half fit it, half are held back for the report.",
    )
    oos_keep_in_scope: float = Field(
        0.995,
        gt=0,
        le=1,
        description="The out-of-scope detector's operating point: the share of the in-scope accuracy "
        "on the train holdout that it keeps. Lower flags more out-of-scope requests and more "
        "in-scope ones with them.",
    )


class ModelSpec(_Spec):
    """Where the artifacts live and which variant replicas load."""

    artifacts_dir: Path = Field(Path("artifacts"), description="Built models, tokenizer, labels, report.")
    data_dir: Path = Field(
        Path("../shared/data"),
        description="The shared data sets: the default intent and sentiment data, and the "
        "out-of-domain texts (tweets, QQP and StackFAQ questions) that calibrate the "
        "out-of-scope detector.",
    )
    intent_data: Path | None = Field(
        None,
        description="Folder with the intent set: train.jsonl and optionally val.jsonl, one "
        '{"text", "label"} a line, any labels (`oos` optional). Unset: data_dir/intent_clinc150.',
    )
    sentiment_data: Path | None = Field(
        None,
        description="Folder with the sentiment set, laid out as intent_data. Unset: "
        "data_dir/sentiment_tweeteval.",
    )
    quantization: Quantization = Field("int8", description="Variant replicas load; fp32 for comparison.")
    runtime: Runtime = Field(
        "auto",
        description="Inference runtime. onnxruntime: the `quantization` graph under ONNX Runtime. "
        "openvino: the FP32 graph under OpenVINO, in bf16 where the CPU has it (needs `openvino`). "
        "auto: measured once per CPU, build and thread count (recorded in runtime.json beside the "
        "artifacts): ORT INT8, OpenVINO bf16, or ORT for small batches and OpenVINO for large, "
        "whichever is fastest at a full batch without slowing one text by over 25% and within 0.3 "
        "points of FP32 intent accuracy; ORT INT8 where openvino is missing or has no bf16.",
    )
    build_if_missing: bool = Field(True, description="Build the artifacts on first start if absent.")
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="Inference threads per replica (ONNX Runtime or OpenVINO); 0 means one per CPU "
        "given to it.",
    )
    spin_wait: bool = Field(
        False,
        description="Let ONNX Runtime threads spin between ops: lower latency on dedicated cores, "
        "but it burns CPU that HAProxy, the ingress and other replicas on the node need.",
    )
    max_tokens: int = Field(128, ge=8, le=512, description="Tokens per text kept at inference.")
    build: BuildSpec = Field(default_factory=BuildSpec)

    def intent_dir(self) -> Path:
        """The intent set's folder: ``intent_data``, or CLINC150 under ``data_dir``."""
        return self.intent_data if self.intent_data is not None else self.data_dir / "intent_clinc150"

    def sentiment_dir(self) -> Path:
        """The sentiment set's folder: ``sentiment_data``, or TweetEval under ``data_dir``."""
        if self.sentiment_data is not None:
            return self.sentiment_data
        return self.data_dir / "sentiment_tweeteval"
