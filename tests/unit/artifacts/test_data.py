"""The build's data helpers: JSONL readers, the holdout split, the out-of-scope threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xz_serve.artifacts.data import (
    INTENT_DIR,
    LabelledSet,
    apply_oos_threshold,
    choose_oos_threshold,
    fingerprint_files,
    intent_names,
    load_split,
    read_jsonl,
    split_holdout,
)

OOS = 2  # index of "oos" in the three-label examples below


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_apply_oos_threshold_keeps_confident_argmaxes_and_turns_the_rest_into_oos() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.3, 0.6], [0.5, 0.3, 0.2]])
    assert apply_oos_threshold(probs, OOS, 0.5).tolist() == [0, 2, 2, 0]  # 0.5 itself is not under
    assert apply_oos_threshold(probs, OOS, 0.0).tolist() == probs.argmax(-1).tolist()
    assert apply_oos_threshold(probs, OOS, 0.99).tolist() == [OOS] * 4


def test_choose_oos_threshold_picks_the_lowest_floor_that_catches_the_unsure_oos_texts() -> None:
    # in scope: confident and right (0.9); out of scope: the model says label 0 at 0.45
    probs = np.array([[0.9, 0.05, 0.05]] * 6 + [[0.05, 0.9, 0.05]] * 6 + [[0.45, 0.3, 0.25]] * 4)
    labels = [0] * 6 + [1] * 6 + [OOS] * 4
    threshold = choose_oos_threshold(probs, labels, OOS)
    assert threshold == 0.46  # every floor in (0.45, 0.9] is perfect; the grid's first wins
    assert (apply_oos_threshold(probs, OOS, threshold) == np.array(labels)).all()


def test_choose_oos_threshold_is_zero_when_the_argmax_is_already_best() -> None:
    probs = np.array([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])
    assert choose_oos_threshold(probs, [0, 1, OOS], OOS) == 0.0


def test_choose_oos_threshold_stays_on_its_grid_below_095() -> None:
    probs = np.array([[0.96, 0.02, 0.02]] * 3)  # every text is oos, all confidently wrong
    assert choose_oos_threshold(probs, [OOS] * 3, OOS) == 0.0  # no floor up to 0.94 helps


def test_read_jsonl_skips_blank_lines_and_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = ['{"text": "café ☹️", "label": "a"}', "", "   ", '{"text": "b", "label": "b"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [{"text": "café ☹️", "label": "a"}, {"text": "b", "label": "b"}]


def test_load_split_maps_labels_through_names(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "task" / "val.jsonl", [{"text": "hi", "label": "b"}, {"text": "yo", "label": "a"}])
    data = load_split(tmp_path, "task", "val", ("a", "b"))
    assert data == LabelledSet(["hi", "yo"], [1, 0], ("a", "b"))
    with pytest.raises(KeyError):
        load_split(tmp_path, "task", "val", ("a",))  # an unknown label is an error, not a guess


def test_intent_names_are_the_sorted_distinct_training_labels(tmp_path: Path) -> None:
    rows = [{"text": t, "label": label} for t, label in [("a", "transfer"), ("b", "oos"), ("c", "balance"),
                                                          ("d", "oos")]]  # fmt: skip
    write_jsonl(tmp_path / INTENT_DIR / "train.jsonl", rows)
    assert intent_names(tmp_path) == ("balance", "oos", "transfer")


def test_split_holdout_is_stratified_disjoint_and_seeded() -> None:
    labels = [0] * 50 + [1] * 20 + [2] * 3
    data = LabelledSet([f"t{i}" for i in range(len(labels))], labels, ("a", "b", "c"))
    keep, hold = split_holdout(data, 0.1, seed=7)
    assert sorted(keep.texts + hold.texts) == sorted(data.texts)
    assert not set(keep.texts) & set(hold.texts)
    assert sorted(hold.labels) == [0] * 5 + [1] * 2 + [2]  # 10% per label, at least one each
    assert keep.names == hold.names == data.names
    again_keep, again_hold = split_holdout(data, 0.1, seed=7)
    assert (again_keep, again_hold) == (keep, hold)
    assert split_holdout(data, 0.1, seed=8)[1] != hold


def test_fingerprint_files_follows_content_not_argument_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1")
    b.write_text("2")
    first = fingerprint_files([a, b])
    assert fingerprint_files([b, a]) == first
    b.write_text("3")
    assert fingerprint_files([a, b]) != first
