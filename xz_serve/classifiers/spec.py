"""ClassifierSpec: bounds, training and spread of the run-time classifiers (nested in XzSettings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClassifierSpec(BaseModel):
    """Classifiers users define at run time on the shared encoder's embedding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Off: /v1/classifiers and /v1/classify are not mounted.")
    max_examples: int = Field(
        20_000,
        ge=4,
        le=200_000,
        description="Examples per create or update: each is one encoder pass (charged to the key's "
        "texts per minute) and a row of the training matrix held during training.",
    )
    max_labels: int = Field(
        256,
        ge=2,
        le=4096,
        description="Labels per classifier: a head's size grows with them (two 384-float rows per "
        "label), and so does the cost of every classify call.",
    )
    max_text_chars: int = Field(
        2000, ge=1, le=100_000, description="Characters per example text (longer ones are refused, not cut)."
    )
    max_label_chars: int = Field(
        64, ge=1, le=1024, description="Characters per label: labels travel in every classify answer."
    )
    max_description_chars: int = Field(1000, ge=0, le=100_000, description="Characters of `description`.")
    max_per_tenant: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Classifiers one tenant may hold: bounds the store's memory and a replica's "
        "registry per tenant (1,000 heads of 20 labels cost about 64 MB of replica memory).",
    )
    max_head_bytes: int = Field(
        1_000_000,
        ge=10_000,
        description="Largest stored head (parameters and label names); a training set whose head "
        "would be larger is refused before any encoder work.",
    )
    l2: float = Field(
        1e-2,
        gt=0,
        le=10,
        description="L2 penalty of the logistic regression (on the weights, against the mean "
        "cross-entropy, in a space where each dimension has unit spread). On HWU64 1e-2 gave the best "
        "val accuracy (91.5%; 90.6% at 1e-4, 89.2% at 1e-1) and converges in half the steps of 1e-4.",
    )
    max_iterations: int = Field(
        100,
        ge=5,
        le=5000,
        description="L-BFGS steps per fit: the loss is convex, and accuracy stops moving well before "
        "the default on sets of a few thousand examples; more steps only add training time.",
    )
    cv_folds: int = Field(
        5, ge=2, le=20, description="Stratified folds of the cross-validated accuracy estimate."
    )
    validation_min_examples: int = Field(
        1000,
        ge=1,
        description="Folds are trained and scored in turn until this many held-out examples have been "
        "scored (every fold of a small set): a large set then costs two fits instead of `cv_folds` + 1, "
        "and the estimate's standard error stays under about 1.5 points.",
    )
    oos_keep: float = Field(
        0.95,
        gt=0.5,
        le=1.0,
        description="Share of the held-out examples the head labels right that must stay in scope: "
        "the out-of-scope threshold is set on the held-out folds to flag at most 1 - this of them.",
    )
    async_examples: int = Field(
        1000,
        ge=1,
        description="A create or update with more examples than this answers 202 with a status URL "
        "and trains in the background, so no request waits on a long training.",
    )
    training_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="Deadline of a background training's encoder calls; past it the job fails.",
    )
    training_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="BLAS threads a training may use. One: a replica's cores belong to the encoder, "
        "and on a busy 2-core node a multi-threaded fit ran 6x slower than a single-threaded one.",
    )
    max_concurrent_trainings: int = Field(
        1,
        ge=1,
        le=64,
        description="Trainings one replica runs at once (others wait their turn): each takes a core "
        "away from the encoder while it runs.",
    )
    embed_window: int = Field(
        256,
        ge=1,
        le=4096,
        description="Example texts handed to the encoder per call: a few batches at a time, so live "
        "traffic interleaves with a training's embedding and the model's queue bound is never hit.",
    )
    refresh_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="How often a replica re-reads a tenant's version counter while it serves that "
        "tenant: a new, changed or deleted classifier is seen by every replica within this time.",
    )
    store_timeout_ms: float = Field(
        1000.0,
        gt=0,
        le=30_000,
        description="Longest a classifier read or write may take in the store Redis; slower answers "
        "503 (writes) or serves the heads this replica already holds (classify).",
    )
    registry_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1_000_000,
        description="Head bytes one replica keeps in memory over all tenants; the least recently "
        "used heads are dropped past it (and read again from the store when next used).",
    )
    job_ttl_s: int = Field(
        86_400, ge=60, description="How long the status of a background training stays readable."
    )
