"""The runtime trial on fake candidates: timing by a fake clock, the guard sets read from JSONL,
and an inaccurate or slow candidate losing the choice end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xz_serve.models.base import Labels, NluOutputs
from xz_serve.models.runtime import choose
from xz_serve.models.trial import (
    LabelledTexts,
    accuracy,
    read_labelled,
    run_trials,
    time_passes,
    timing_texts,
)

INTENTS = ("balance", "greeting", "oos", "transfer")
SENTIMENTS = ("negative", "neutral", "positive")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedModel:
    """Answers from a text -> (intent, sentiment) table; each pass costs ``fixed_ms`` plus
    ``per_text_ms`` per text on ``clock``; ``wrong`` texts get the next intent instead."""

    def __init__(
        self,
        answers: dict[str, tuple[int, int]],
        wrong: set[str] | None = None,
        fixed_ms: float = 0.0,
        per_text_ms: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.labels = Labels(intents=INTENTS, sentiments=SENTIMENTS)
        self.model_id = "scripted"
        self.answers = answers
        self.wrong = wrong or set()
        self.fixed_ms = fixed_ms
        self.per_text_ms = per_text_ms
        self.clock = clock
        self.sizes: list[int] = []

    def predict(self, texts: list[str]) -> NluOutputs:
        self.sizes.append(len(texts))
        if self.clock is not None:
            self.clock.now += (self.fixed_ms + self.per_text_ms * len(texts)) / 1000
        intent = np.zeros((len(texts), len(INTENTS)))
        sentiment = np.zeros((len(texts), len(SENTIMENTS)))
        for row, text in enumerate(texts):
            i, s = self.answers[text]
            intent[row, (i + 1) % len(INTENTS) if text in self.wrong else i] = 1.0
            sentiment[row, s] = 1.0
        return NluOutputs(np.zeros((len(texts), 4), np.float32), intent, sentiment, [1] * len(texts))


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_time_passes_reports_the_median_pass_time_per_size() -> None:
    clock = Clock()
    model = ScriptedModel({f"t{i}": (0, 0) for i in range(40)}, fixed_ms=1.0, per_text_ms=0.5, clock=clock)
    texts = [f"t{i}" for i in range(40)]
    result = time_passes(model, texts, [1, 8, 32], budget_s=0.05, clock=clock)
    assert result == pytest.approx({1: 1.5, 8: 5.0, 32: 17.0})
    assert set(model.sizes) == {1, 8, 32}


def test_time_passes_runs_at_least_min_passes_and_until_the_budget() -> None:
    clock = Clock()
    model = ScriptedModel({"a": (0, 0)}, fixed_ms=10.0, clock=clock)
    time_passes(model, ["a"], [1], budget_s=0.095, min_passes=3, clock=clock)
    assert len(model.sizes) == 1 + 10  # one warm-up, then 10 passes of 10 ms to spend 0.095 s


def test_read_labelled_takes_val_skips_unknown_labels_and_caps_deterministically(tmp_path: Path) -> None:
    rows = [{"text": f"text {i}", "label": INTENTS[i % 4]} for i in range(50)]
    write_jsonl(
        tmp_path / "val.jsonl", [*rows, {"text": "new", "label": "unseen"}, {"text": " ", "label": "oos"}]
    )
    write_jsonl(tmp_path / "train.jsonl", [{"text": "train only", "label": "oos"}])
    full = read_labelled(tmp_path, INTENTS)
    assert full is not None and full.source.endswith("val.jsonl")
    assert len(full.texts) == 50
    assert all(
        INTENTS[g] == INTENTS[int(t.split()[1]) % 4] for t, g in zip(full.texts, full.gold, strict=True)
    )
    capped = read_labelled(tmp_path, INTENTS, limit=10)
    assert capped is not None and len(capped.texts) == 10
    again = read_labelled(tmp_path, INTENTS, limit=10)
    assert again is not None and again.texts == capped.texts


def test_read_labelled_falls_back_to_train_then_none(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hi", "label": "greeting"}])
    found = read_labelled(tmp_path, INTENTS)
    assert found is not None and found.source.endswith("train.jsonl") and found.gold.tolist() == [1]
    assert read_labelled(tmp_path / "missing", INTENTS) is None


def test_timing_texts_mix_both_sets() -> None:
    a = LabelledTexts([f"a{i}" for i in range(100)], np.zeros(100), "a")
    b = LabelledTexts([f"b{i}" for i in range(100)], np.zeros(100), "b")
    mixed = timing_texts([a, b], n=10)
    assert len(mixed) == 10
    assert sum(t.startswith("a") for t in mixed) == 5


def test_accuracy_of_no_rows_is_zero() -> None:
    assert accuracy(np.array([]), np.array([])) == 0.0
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)


def guard_sets(n: int = 1000) -> tuple[LabelledTexts, LabelledTexts, dict[str, tuple[int, int]]]:
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(n)]
    gold_i = rng.integers(0, len(INTENTS), n)
    gold_s = rng.integers(0, len(SENTIMENTS), n)
    answers = {t: (int(i), int(s)) for t, i, s in zip(texts, gold_i, gold_s, strict=True)}
    # the reference gets 10% wrong, so accuracy is 0.9, not a trivial 1.0
    return LabelledTexts(texts, gold_i, "intent"), LabelledTexts(texts, gold_s, "sentiment"), answers


def test_an_accurate_faster_candidate_wins_and_a_less_accurate_one_is_refused() -> None:
    intent, sentiment, answers = guard_sets()
    ref_wrong = set(intent.texts[::10])
    ref_acc = 0.9
    # "close" differs from the reference on 2 more texts (0.2 points): within the guard;
    # "sloppy" on 10 more (1 point): refused, although it is the fastest
    close = ref_wrong | set(intent.texts[1:3])
    sloppy = ref_wrong | set(intent.texts[1:10]) | {intent.texts[11]}
    candidates = {
        "reference-speed": lambda: ScriptedModel(answers, ref_wrong),
        "close": lambda: ScriptedModel(answers, close),
        "sloppy": lambda: ScriptedModel(answers, sloppy),
    }
    trials, reference = run_trials(candidates, lambda: ScriptedModel(answers, ref_wrong), intent, sentiment)
    assert reference == pytest.approx(ref_acc)
    by_name = {t.name: t for t in trials}
    assert by_name["close"].intent_accuracy == pytest.approx(ref_acc - 0.002)
    assert by_name["close"].intent_agreement == pytest.approx(0.998)
    assert by_name["sloppy"].intent_accuracy == pytest.approx(ref_acc - 0.01)
    assert by_name["reference-speed"].sentiment_accuracy == 1.0
    assert set(by_name["close"].batch_ms) == {1, 2, 4, 8, 16, 32}
    verdict = choose(trials, reference, fallback="reference-speed")
    assert "sloppy" in verdict.refused and "close" not in verdict.refused


def test_run_trials_adds_the_hybrid_of_the_named_pair() -> None:
    intent, sentiment, answers = guard_sets(200)

    class Timed(ScriptedModel):
        def __init__(self, fixed_ms: float, per_text_ms: float) -> None:
            super().__init__(answers)
            self.cost = (fixed_ms, per_text_ms)

        def predict(self, texts: list[str]) -> NluOutputs:
            import time

            time.sleep((self.cost[0] + self.cost[1] * len(texts)) / 1000)
            return super().predict(texts)

    # small: 0.5 ms + 1 ms/text; large: 6 ms + 0.2 ms/text: small wins up to 4 texts (4.5 against
    # 6.8 ms), large from 8 (7.6 against 8.5 ms)
    candidates = {"small": lambda: Timed(0.5, 1.0), "large": lambda: Timed(6.0, 0.2)}
    trials, _ = run_trials(
        candidates, lambda: ScriptedModel(answers), intent, sentiment, 32, ("small", "large")
    )
    hybrid = next(t for t in trials if t.name == "hybrid")
    assert hybrid.cut == 4
    small = next(t for t in trials if t.name == "small")
    large = next(t for t in trials if t.name == "large")
    assert hybrid.batch1_ms == small.batch1_ms and hybrid.full_texts_per_s == large.full_texts_per_s
