"""The parts of OnnxNluModel that need no built graph: length buckets and the labels file."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from xz_serve.models.base import Labels
from xz_serve.models.detector import OosDetector
from xz_serve.models.manifest import DETECTOR_FILE, LABELS_FILE
from xz_serve.models.onnx_model import length_buckets, load_labels


def as_lists(buckets: list[np.ndarray]) -> list[list[int]]:
    return [b.tolist() for b in buckets]


def test_equal_lengths_make_one_bucket() -> None:
    assert as_lists(length_buckets(np.array([5, 5, 5, 5]))) == [[0, 1, 2, 3]]


def test_a_long_text_starts_a_new_bucket_shortest_first() -> None:
    # [3, 3] then adding 10 would pad 30 slots for 16 tokens (47% waste > 25%)
    assert as_lists(length_buckets(np.array([10, 3, 3, 10]))) == [[1, 2], [0, 3]]


def test_waste_up_to_the_limit_stays_in_one_bucket() -> None:
    # [3, 4]: 8 slots for 7 tokens, 12.5% waste
    assert as_lists(length_buckets(np.array([4, 3]))) == [[1, 0]]
    assert as_lists(length_buckets(np.array([4, 3]), max_waste=0.1)) == [[1], [0]]


def test_max_waste_one_never_splits() -> None:
    assert as_lists(length_buckets(np.array([1, 64, 2, 128]), max_waste=1.0)) == [[0, 2, 1, 3]]


def test_zero_length_texts_do_not_divide_by_zero() -> None:
    assert as_lists(length_buckets(np.array([0, 0, 4]))) == [[0, 1], [2]]


@pytest.mark.parametrize("seed", range(5))
def test_every_text_lands_once_and_no_bucket_wastes_more_than_allowed(seed: int) -> None:
    rng = random.Random(seed)
    lengths = np.array([rng.randint(1, 128) for _ in range(200)])
    buckets = length_buckets(lengths)
    assert sorted(i for b in buckets for i in b.tolist()) == list(range(200))
    for bucket in buckets:
        group = lengths[bucket]
        assert 1 - group.sum() / (len(group) * group.max()) <= 0.25
    assert all(lengths[a].max() <= lengths[b].min() for a, b in itertools.pairwise(buckets))


def test_load_labels_reads_the_build_and_defaults_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / LABELS_FILE
    path.write_text(json.dumps({"intents": ["a", "oos"], "sentiments": ["neg", "pos"], "oos_threshold": 0.4}))
    assert load_labels(tmp_path) == Labels(("a", "oos"), ("neg", "pos"), oos_threshold=0.4)
    path.write_text(json.dumps({"intents": ["a", "oos"], "sentiments": ["neg", "pos"]}))
    assert load_labels(tmp_path).oos_threshold == 0.0


def test_load_labels_reads_the_detector_beside_the_labels(tmp_path: Path) -> None:
    detector = OosDetector(
        whiten=np.eye(2), centers=np.eye(2), in_scope=np.array([0]), oos_index=1,
        feature_mean=np.zeros(3), feature_scale=np.ones(3), weights=np.array([1.0, -1.0, 0.5]),
        bias=0.25, threshold=0.7,
    )  # fmt: skip
    detector.save(tmp_path / DETECTOR_FILE)
    entry = {"file": DETECTOR_FILE, "oos_index": 1, "bias": 0.25, "threshold": 0.7}
    labels = {"intents": ["a", "oos"], "sentiments": ["neg", "pos"], "oos_detector": entry}
    (tmp_path / LABELS_FILE).write_text(json.dumps(labels))
    loaded = load_labels(tmp_path)
    assert loaded == Labels(("a", "oos"), ("neg", "pos"))  # the detector is not part of equality
    assert loaded.detector is not None and loaded.detector.threshold == 0.7
    emb, probs = np.array([[0.6, 0.8]]), np.array([[0.3, 0.7]])
    assert loaded.detector.score(emb, probs) == pytest.approx(detector.score(emb, probs))
