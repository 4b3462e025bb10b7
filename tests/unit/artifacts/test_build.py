"""The build's front door: both tasks' data is checked before anything is trained, xz-build turns a
refusal into a message and exit status 2, and the fingerprint follows the chosen data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xz_serve.artifacts import build
from xz_serve.artifacts.data import DataError
from xz_serve.cli import build_main
from xz_serve.models.spec import BuildSpec, ModelSpec


def write_task(folder: Path, labels: dict[str, int], val: dict[str, int] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in (("train", labels), ("val", val)):
        if spec is not None:
            rows = [{"text": f"{lab} {name} {i}", "label": lab} for lab, n in spec.items() for i in range(n)]
            lines = [json.dumps(row) for row in rows]
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def spec_for(tmp_path: Path, intent: Path, sentiment: Path) -> ModelSpec:
    return ModelSpec(artifacts_dir=tmp_path / "art", data_dir=tmp_path / "shared", intent_data=intent,
                     sentiment_data=sentiment, build=BuildSpec(min_examples_per_label=3))  # fmt: skip


def test_default_folders_are_clinc150_and_tweeteval_under_data_dir() -> None:
    spec = ModelSpec(data_dir=Path("/data"))
    assert spec.intent_dir() == Path("/data/intent_clinc150")
    assert spec.sentiment_dir() == Path("/data/sentiment_tweeteval")
    assert ModelSpec(intent_data=Path("/mine")).intent_dir() == Path("/mine")


def test_problems_in_both_tasks_come_together_and_nothing_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    intent = write_task(tmp_path / "intents", {"alarm_set": 3, "timer_set": 1})
    sentiment = write_task(tmp_path / "sentiment", {"positive": 3, "negative": 3}, val={"neutral": 1})

    def never(*_: object) -> None:
        raise AssertionError("reached the build")

    monkeypatch.setattr(build, "fingerprint", never)
    monkeypatch.setattr(build, "_build", never)
    with pytest.raises(DataError) as err:
        build.ensure_artifacts(spec_for(tmp_path, intent, sentiment))
    assert err.value.problems == [
        f"{intent / 'train.jsonl'}:4: label 'timer_set' has 1 example, fewer than 3 "
        "(build.min_examples_per_label)",
        f"{sentiment / 'val.jsonl'}:1: label 'neutral' is not in train.jsonl",
    ]
    assert not (tmp_path / "art").exists()


def test_xz_build_prints_the_problems_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    intent = tmp_path / "intents"
    intent.mkdir()
    (intent / "train.jsonl").write_text('{"text": "wake me up", "label": "alarm_set"}\nnot json\n')
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--intent-data", str(intent), "--artifacts-dir", str(tmp_path / "art")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the training data has problems; nothing was trained" in err
    assert f"{intent / 'train.jsonl'}:2: not JSON (Expecting value at column 1)" in err
    assert "Traceback" not in err


def test_the_fingerprint_follows_the_chosen_data(tmp_path: Path) -> None:
    a = write_task(tmp_path / "a", {"x": 3, "y": 3})
    b = write_task(tmp_path / "b", {"x": 3, "z": 3})
    sentiment = write_task(tmp_path / "s", {"positive": 3, "negative": 3})
    first = build.fingerprint(spec_for(tmp_path, a, sentiment))
    assert build.fingerprint(spec_for(tmp_path, a, sentiment)) == first
    assert build.fingerprint(spec_for(tmp_path, b, sentiment)) != first
    write_task(tmp_path / "a", {"x": 3, "y": 3}, val={"x": 1})
    with_val = build.fingerprint(spec_for(tmp_path, a, sentiment))
    assert with_val != first
    # the same files under the other role are another build
    assert build.fingerprint(spec_for(tmp_path, sentiment, a)) != with_val
    negatives = tmp_path / "shared" / "paraphrase"
    negatives.mkdir(parents=True)
    (negatives / "stackfaq_dev.jsonl").write_text(json.dumps({"question": "q", "rephrasings": []}) + "\n")
    assert build.fingerprint(spec_for(tmp_path, a, sentiment)) != with_val


def test_the_training_fingerprint_ignores_what_only_calibrates(tmp_path: Path) -> None:
    from xz_serve.artifacts.graphs import training_fingerprint

    a = write_task(tmp_path / "a", {"x": 3, "y": 3})
    sentiment = write_task(tmp_path / "s", {"positive": 3, "negative": 3})
    spec = spec_for(tmp_path, a, sentiment)
    weights = build.base_model_dir() / "model.safetensors"
    first = training_fingerprint(spec, weights)
    calibrated = spec.model_copy(update={"build": spec.build.model_copy(update={"oos_keep_in_scope": 0.9})})
    assert training_fingerprint(calibrated, weights) == first
    assert build.fingerprint(calibrated) != build.fingerprint(spec)
    trained = spec.model_copy(update={"build": spec.build.model_copy(update={"epochs": 1})})
    assert training_fingerprint(trained, weights) != first


def test_graphs_are_reused_only_when_intact_and_from_the_same_training_inputs(tmp_path: Path) -> None:
    import hashlib

    from xz_serve.models.manifest import FP32_FILE, INT8_FILE, MANIFEST_FILE, REPORT_FILE

    art = tmp_path / "art"
    art.mkdir()
    files = {}
    for name, body in ((FP32_FILE, b"fp32"), (INT8_FILE, b"int8"), (REPORT_FILE, b"{}")):
        (art / name).write_bytes(body)
        files[name] = hashlib.sha256(body).hexdigest()[:16]
    manifest = {"fingerprint": "f", "model_id": "m", "revision": "r", "files": files, "training": "t1"}
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert build._reusable_graphs(art, "t1") is not None
    assert build._reusable_graphs(art, "t2") is None  # other training inputs
    (art / INT8_FILE).write_bytes(b"changed")
    assert build._reusable_graphs(art, "t1") is None  # not the graph the manifest names
    (art / INT8_FILE).write_bytes(b"int8")
    (art / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in manifest.items() if k != "training"}))
    assert build._reusable_graphs(art, "t1") is None  # a build that did not record its inputs
