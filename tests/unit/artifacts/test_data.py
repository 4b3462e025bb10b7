"""The build's data helpers: the JSONL readers, the holdout split, the negatives; the checks a task's
folder passes before any training are in test_data_checks.py."""

from __future__ import annotations

import json
from pathlib import Path

from xz_serve.artifacts.data import (
    LabelledSet,
    fingerprint_files,
    negative_files,
    negative_texts,
    read_jsonl,
    split_holdout,
    text_key,
)


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_jsonl_skips_blank_lines_and_reads_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = ['{"text": "café ☹️", "label": "a"}', "", "   ", '{"text": "b", "label": "b"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [{"text": "café ☹️", "label": "a"}, {"text": "b", "label": "b"}]


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


def test_negative_texts_sample_each_shared_source_and_leave_out_the_intent_sets_texts(tmp_path: Path) -> None:
    tweets = [{"text": f"tweet {i}", "label": "neutral"} for i in range(10)]
    tweets.append({"text": "Wake me UP", "label": "x"})
    write_jsonl(tmp_path / "sentiment_tweeteval" / "train.jsonl", tweets)
    qqp = [{"text_a": "why is the sky blue?", "text_b": "why is the sky blue?", "label": 1}]
    write_jsonl(tmp_path / "paraphrase" / "qqp_pairs_dev.jsonl", qqp)
    faq = {"question": "how to exit vim", "rephrasings": ["quit vim?"], "answer": ":q"}
    (tmp_path / "paraphrase" / "stackfaq_dev.jsonl").write_text(json.dumps(faq) + "\n")
    assert set(negative_files(tmp_path)) == {"tweets", "qqp", "stackfaq"}
    got = negative_texts(tmp_path, per_source=4, seed=0, exclude={text_key("wake me up")})
    assert len(got["tweets"]) == 4 and all(t.startswith("tweet ") for t in got["tweets"])
    assert got["qqp"] == ["why is the sky blue?"]  # a question asked twice is one text
    assert sorted(got["stackfaq"]) == ["how to exit vim", "quit vim?"]
    assert negative_texts(tmp_path, 4, 0, {text_key("wake me up")}) == got  # seeded


def test_negative_texts_use_only_the_sources_that_exist(tmp_path: Path) -> None:
    assert negative_texts(tmp_path, per_source=10, seed=0, exclude=set()) == {}
