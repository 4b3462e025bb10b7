"""The policy file is validated at start: the shipped one loads, broken ones fail with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from xz_serve.dialog.policy import PolicyError, load_policy


def labels_of(data_set: str) -> set[str]:
    path = ROOT.parent / "shared" / "data" / data_set / "train.jsonl"
    return {json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip()}


CLINC = labels_of("intent_clinc150")
BASE = """
version: 1
fallback: sorry
escalation: a person will help
out_of_scope: {action: llm, prompt: answer}
default: {action: llm, prompt: help}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_shipped_policy_is_valid_for_the_model_labels() -> None:
    policy = load_policy(ROOT / "deployments" / "dialog" / "policy.yaml", CLINC)
    assert policy.rule_for("greeting").action == "template"
    assert policy.rule_for("report_lost_card").action == "handoff"
    assert not policy.rule_for("oos").cacheable  # any unrecognised text lands there
    for intent in ("balance", "transactions", "time", "date", "weather"):
        rule = policy.rule_for(intent)
        assert not rule.cacheable and (rule.personal or rule.time_sensitive), intent
    assert policy.rule_for("book_flight") == policy.default  # unlisted intents follow the default
    assert set(policy.intents) <= CLINC


def test_the_hwu64_example_policy_is_valid_for_its_labels_and_not_for_clinc() -> None:
    path = ROOT / "deployments" / "dialog" / "policy_hwu64.yaml"
    policy = load_policy(path, labels_of("intent_hwu64"))
    assert policy.rule_for("alarm_set").action == "template"
    assert policy.rule_for("qa_stock") == policy.default
    with pytest.raises(PolicyError, match="iot_hue_lighton"):
        load_policy(path, CLINC)  # written for another model: refused at start, not at the first turn


def test_unknown_intent_is_a_start_up_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "intents:\n  balanse: {action: template, reply: x}\n")
    with pytest.raises(PolicyError, match="balanse"):
        load_policy(path, CLINC)


def test_oos_must_use_out_of_scope(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "intents:\n  oos: {action: template, reply: x}\n")
    with pytest.raises(PolicyError, match="out_of_scope"):
        load_policy(path, CLINC)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{action: llm, prompt: p, cacheable: true, personal: true}", "must not be cacheable"),
        ("{action: llm, prompt: p, cacheable: true, time_sensitive: true}", "must not be cacheable"),
        ("{action: template, reply: x, cacheable: true}", "only llm rules"),
        ("{action: template}", "needs `reply`"),
        ("{action: llm}", "needs `prompt`"),
        ("{action: answer, reply: x}", "action"),
        ("{action: template, reply: x, colour: red}", "colour"),
    ],
)
def test_bad_rules_are_refused(tmp_path: Path, rule: str, message: str) -> None:
    path = write(tmp_path, BASE + f"intents:\n  balance: {rule}\n")
    with pytest.raises(PolicyError, match=message):
        load_policy(path, CLINC)


def test_out_of_scope_must_not_be_cacheable(tmp_path: Path) -> None:
    """The catch-all receives any text no intent matched, personal ones included: never cached."""
    text = BASE.replace(
        "out_of_scope: {action: llm, prompt: answer}",
        "out_of_scope: {action: llm, prompt: answer, cacheable: true}",
    )
    with pytest.raises(PolicyError, match="out_of_scope"):
        load_policy(write(tmp_path, text))


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(write(tmp_path, "intents: [unclosed"))
    with pytest.raises(PolicyError, match="fallback"):
        load_policy(write(tmp_path, "version: 1\nescalation: x\n"))
