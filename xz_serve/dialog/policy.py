"""Policy: what the assistant does per intent, loaded from YAML and validated once at start.

Each rule is one of three actions: ``template`` (a fixed reply), ``llm`` (ask the upstream with a
system prompt) or ``handoff`` (a human takes over). A rule may be ``cacheable``: its replies then
come from the semantic reply cache for near-duplicate questions, which is only allowed for llm rules
that are neither ``personal`` (the answer depends on who asks: balance, transactions) nor
``time_sensitive`` (the answer changes: time, weather). ``out_of_scope`` is never cacheable: it
receives any text no intent recognised, so no rule about what its questions are can hold for it.
The validator refuses the file otherwise, and refuses intents the model does not know, so a typo
cannot silently route traffic to the default.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Action = Literal["template", "llm", "handoff"]
OOS = "oos"


class PolicyError(ValueError):
    """The policy file is missing, not YAML, or breaks a rule; the replica must not start with it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    """What to do for one intent."""

    action: Action = Field(description="template: fixed reply; llm: ask the upstream; handoff: a human.")
    reply: str | None = Field(None, description="The template reply, or the handoff message.")
    prompt: str | None = Field(None, description="System prompt for llm rules.")
    cacheable: bool = Field(False, description="Replies may be reused for near-duplicate questions.")
    personal: bool = Field(False, description="The answer depends on the user: never cached.")
    time_sensitive: bool = Field(False, description="The answer changes with time: never cached.")
    fallback: str | None = Field(None, description="Reply when the LLM cannot answer (policy default else).")

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.action == "template" and not self.reply:
            raise ValueError("a template rule needs `reply`")
        if self.action == "llm" and not self.prompt:
            raise ValueError("an llm rule needs `prompt`")
        if self.cacheable and self.action != "llm":
            raise ValueError("only llm rules can be cacheable (templates cost nothing to repeat)")
        if self.cacheable and (self.personal or self.time_sensitive):
            raise ValueError("a personal or time-sensitive rule must not be cacheable")
        return self


class Policy(_Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    min_confidence: float = Field(
        0.0, ge=0, le=1, description="Below this top-intent confidence a message is treated as out of scope."
    )
    fallback: str = Field(description="Honest reply when the LLM is needed but none can answer.")
    escalation: str = Field(description="Reply when the conversation is handed to a human.")
    out_of_scope: Rule = Field(description="Rule for `oos` and low-confidence messages; never cacheable.")
    default: Rule = Field(description="Rule for known intents not listed under `intents`.")
    intents: dict[str, Rule] = Field(default_factory=dict, description="Rule per intent label.")
    classifiers: dict[str, dict[str, Rule]] = Field(
        default_factory=dict,
        description="Rules per run-time classifier (`/v1/classifiers`) name, then label, tried in this "
        "order before `intents` on the same embedding: the first classifier of the caller's tenant "
        "that labels a message in scope with a listed label chooses the rule. A classifier that does "
        "not exist (yet) is skipped: classifiers are defined at run time, so names are not checked "
        "at start.",
    )

    @field_validator("out_of_scope")
    @classmethod
    def _catch_all_not_cached(cls, rule: Rule) -> Rule:
        if rule.cacheable:
            raise ValueError(
                "the out_of_scope rule must not be cacheable: it receives any text no intent "
                "recognised, personal questions included"
            )
        return rule

    def rule_for(self, intent: str) -> Rule:
        if intent == OOS:
            return self.out_of_scope
        return self.intents.get(intent, self.default)

    def check_intents(self, known: Collection[str]) -> None:
        """Refuse intents the model cannot produce (typos would silently never match)."""
        unknown = sorted(set(self.intents) - set(known))
        if OOS in self.intents:
            unknown.append(f"{OOS} (use `out_of_scope`)")
        if unknown:
            raise PolicyError(f"policy names intents the model does not know: {unknown}")


def load_policy(path: Path, known_intents: Collection[str] | None = None) -> Policy:
    """Read and validate the policy; ``known_intents`` (the model's labels) checks the intent names.

    Raises:
        PolicyError: with a message that names the file and the first problem.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy {path} is not valid YAML: {exc}") from exc
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PolicyError(f"policy {path}: {where}: {first['msg']}") from exc
    if known_intents is not None:
        policy.check_intents(known_intents)
    return policy
