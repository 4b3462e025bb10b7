"""A deployment's own intents, end to end: ``xz-build --intent-data`` on ten HWU64 intents (a small,
fast build: two epochs, two trainable layers), that model served through Serve beside the default
app with a policy written for its labels, and a broken data folder refused before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROOT, deployed, local_args

pytestmark = pytest.mark.integration

DATA = ROOT.parent / "shared" / "data"
XZ_BUILD = Path(sys.executable).parent / "xz-build"
INTENTS = (
    "alarm_set", "calendar_query", "cooking_recipe", "iot_hue_lightoff", "music_query",
    "news_query", "play_music", "takeaway_order", "transport_ticket", "weather_query",
)  # fmt: skip
# Small and fast: the point is the path from a folder of JSONL to a served model, not accuracy.
FAST = {
    "XZ_MODEL__BUILD__EPOCHS": "2",
    "XZ_MODEL__BUILD__TRAINABLE_LAYERS": "2",
    "XZ_MODEL__BUILD__OOS_NEGATIVES_PER_SOURCE": "200",
}
OUT_OF_DOMAIN = [
    "How can I send a Windows executable via Gmail?",
    "What is the difference between a list and a tuple in Python?",
    "Why do cats purr when they are happy?",
    "What is the best way to learn linear algebra on my own?",
    "Which is better for a beginner, guitar or piano?",
    "How do I merge two branches in git without losing changes?",
]


def rows(path: Path, labels: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    out = [json.loads(line) for line in path.open(encoding="utf-8")]
    return [r for r in out if labels is None or r["label"] in labels]


def write(path: Path, items: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")


def xz_build(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FAST}
    return subprocess.run(
        [str(XZ_BUILD), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def custom_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ten HWU64 intents (all their training texts), a 600-tweet sentiment set, built into a tmp dir."""
    root = tmp_path_factory.mktemp("custom")
    write(root / "intents" / "train.jsonl", rows(DATA / "intent_hwu64" / "train.jsonl", INTENTS))
    val = rows(DATA / "intent_hwu64" / "val.jsonl", INTENTS)
    write(root / "intents" / "val.jsonl", val)
    write(root / "sentiment" / "train.jsonl", rows(DATA / "sentiment_tweeteval" / "train.jsonl")[:600])
    artifacts = root / "artifacts"
    started = time.monotonic()
    done = xz_build("--intent-data", str(root / "intents"), "--sentiment-data", str(root / "sentiment"),
                    "--artifacts-dir", str(artifacts), timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((artifacts / "report.json").read_text())
    policy = root / "policy.yaml"
    rules = "\n".join(f"  {name}: {{action: template, reply: 'ok: {name}'}}" for name in INTENTS)
    policy.write_text(
        "version: 1\nfallback: sorry\nescalation: handing over\n"
        "out_of_scope: {action: template, reply: 'not one of mine'}\n"
        "default: {action: template, reply: 'ok'}\n"
        f"intents:\n{rules}\n"
    )
    return {"artifacts": artifacts, "report": report, "val": val, "policy": policy, "output": done.stdout,
            "seconds": time.monotonic() - started}  # fmt: skip


def test_a_broken_data_folder_is_refused_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "intents"
    good = [{"text": f"wake me up at {h} am", "label": "alarm_set"} for h in range(1, 7)]
    good += [{"text": f"play song number {n}", "label": "play_music"} for n in range(1, 7)]
    write(folder / "train.jsonl", good)
    with (folder / "train.jsonl").open("a") as handle:
        handle.write('{"text": "dim the lights", "label": }\n')
        handle.write('{"text": "turn off the lights"}\n')
    write(folder / "val.jsonl", [{"text": "order a pizza", "label": "takeaway_order"}])
    started = time.monotonic()
    done = xz_build("--intent-data", str(folder), "--artifacts-dir", str(tmp_path / "art"), timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert time.monotonic() - started < 60
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    assert f"{train}:13: not JSON" in done.stderr
    assert f'{train}:14: no "label"' in done.stderr
    assert "Traceback" not in done.stderr and "train epoch" not in done.stdout + done.stderr
    assert not (tmp_path / "art").exists()
    # Fixed lines, but a val label the training set lacks: still refused, still before training.
    write(folder / "train.jsonl", good)
    done = xz_build("--intent-data", str(folder), "--artifacts-dir", str(tmp_path / "art"), timeout=120)
    assert done.returncode == 2
    assert f"{val}:1: label 'takeaway_order' is not in train.jsonl" in done.stderr


def test_the_build_reports_the_custom_label_set_and_its_detector(custom_build: dict[str, Any]) -> None:
    report, artifacts = custom_build["report"], custom_build["artifacts"]
    labels = json.loads((artifacts / "labels.json").read_text())
    assert labels["intents"] == sorted(INTENTS)  # no `oos` class in this set, none added
    assert labels["oos_detector"]["features"] == ["distance", "confidence"]
    assert (artifacts / "detector.npz").exists() and (artifacts / "oos_curve.png").exists()
    assert report["data"]["intent"] == {
        "folder": str(artifacts.parent / "intents"), "labels": 10, "oos_class": False,
        "train": report["data"]["intent"]["train"], "holdout": report["data"]["intent"]["holdout"],
        "val": len(custom_build["val"]), "val_source": "val.jsonl",
    }  # fmt: skip
    int8 = report["variants"]["int8"]
    assert int8["intent"]["oos_recall"] is None  # val has no out-of-scope texts to recall
    assert int8["intent"]["accuracy"] >= 0.8, int8["intent"]
    assert int8["negatives_recall"] >= 0.8, int8  # the held-back tweets and questions
    assert set(report["labels"]) == set(INTENTS)
    assert report["oos_curve"] and "most confused on val" in custom_build["output"]


@pytest.fixture(scope="module")
def custom_url(serve_url: str, custom_build: dict[str, Any]) -> Iterator[str]:
    args = local_args()
    model = {"artifacts_dir": str(custom_build["artifacts"]), "build_if_missing": False}
    args["model"] = {**args["model"], **model}
    args["dialog"] = {**args["dialog"], "policy_path": str(custom_build["policy"])}
    with deployed(serve_url, "custom", args) as url:
        yield url


def test_the_custom_model_is_served_with_its_labels_and_out_of_scope_flags(
    custom_url: str, custom_build: dict[str, Any]
) -> None:
    val = custom_build["val"][::5]
    texts = [r["text"] for r in val] + OUT_OF_DOMAIN
    with httpx.Client(base_url=custom_url, timeout=60) as client:
        revision = json.loads((custom_build["artifacts"] / "manifest.json").read_text())["revision"]
        body = client.post("/v1/intent", json={"texts": texts, "top_k": 3}).raise_for_status().json()
        assert body["model"].endswith(f"@{revision}:int8")
        results = body["results"]
        in_scope, out = results[: len(val)], results[len(val) :]
        for item in results:
            assert {t["label"] for t in item["intent"]["top_k"]} <= set(INTENTS)
        right = sum(item["intent"]["label"] == r["label"] for item, r in zip(in_scope, val, strict=True))
        pairs = [(i["intent"]["label"], r["label"]) for i, r in zip(in_scope, val, strict=True)]
        assert right >= 0.75 * len(val), pairs
        assert sum(item["out_of_scope"] for item in in_scope) <= 0.15 * len(val)
        assert sum(item["out_of_scope"] for item in out) >= len(out) - 1, out
        assert all(item["intent"]["label"] == "oos" for item in out if item["out_of_scope"])
        analyzed = client.post("/v1/analyze", json={"text": OUT_OF_DOMAIN[0]}).raise_for_status().json()
        assert analyzed["results"][0]["out_of_scope"] and "sentiment" in analyzed["results"][0]
        chat = client.post("/v1/chat", json={"message": "set an alarm for 7 am tomorrow"})
        chat = chat.raise_for_status().json()
        assert chat["reply"] == "ok: alarm_set", chat  # the policy written for these intents


def test_the_out_of_scope_score_reaches_the_caller(custom_url: str) -> None:
    with httpx.Client(base_url=custom_url, timeout=60) as client:
        card = client.get("/v1/models").raise_for_status().json()["data"][0]
        assert card["intents"] == sorted(INTENTS) and 0 < card["oos_threshold"] < 1
        texts = ["set an alarm for 7 am", *OUT_OF_DOMAIN]
        for route in ("/v1/intent", "/v1/analyze"):
            results = client.post(route, json={"texts": texts}).raise_for_status().json()["results"]
            scores = [item["oos_score"] for item in results]
            assert all(0 <= s <= 1 for s in scores), scores
            assert scores[0] < min(scores[1:]), scores
            # The flag is the model's own cut on the score it returned (no `oos` class here).
            for item in results:
                assert item["out_of_scope"] == (item["oos_score"] >= card["oos_threshold"]), item
