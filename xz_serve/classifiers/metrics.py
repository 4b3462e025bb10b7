"""ClassifierMetrics: heads held, trainings and their time, classify latency (Ray metrics).

No-ops outside a Ray worker, so unit tests need no cluster. Tags never carry a classifier id or a
tenant: both are unbounded; the outcome and the operation are.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

TRAINING_S = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
LATENCY_MS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100]


class ClassifierMetrics:
    def __init__(self) -> None:
        self.heads = Gauge(
            "xz_classifier_heads",
            description="Classifier heads this replica holds in memory (all tenants).",
        )
        self.head_bytes = Gauge(
            "xz_classifier_head_bytes",
            description="Bytes of the classifier heads this replica holds (bounded by "
            "classifiers.registry_max_bytes).",
        )
        self.trainings = Counter(
            "xz_classifier_trainings_total",
            description="Classifier trainings by operation (create, update) and outcome (ok, failed).",
            tag_keys=("operation", "outcome"),
        )
        self.training_s = Histogram(
            "xz_classifier_training_seconds",
            description="Time to fit a head (cross-validation included, encoder time excluded).",
            boundaries=TRAINING_S,
        )
        self.classify_ms = Histogram(
            "xz_classifier_classify_ms",
            description="Time to apply a head to one request's embeddings (after the encoder pass).",
            boundaries=LATENCY_MS,
        )

    def held(self, heads: int, nbytes: int) -> None:
        self.heads.set(heads)
        self.head_bytes.set(nbytes)
