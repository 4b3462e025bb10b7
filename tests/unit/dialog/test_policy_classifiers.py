"""A policy's `classifiers` section: a run-time classifier's label chooses the rule, on the turn's own
embedding; anything it does not label in scope falls through to the intent rules."""

from __future__ import annotations

from tests.conftest import ROOT
from tests.unit.dialog.scripted import Said, ScriptedNlu
from xz_serve.classifiers.service import ClassifierService
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.classifiers.store import MemoryClassifierStore
from xz_serve.dialog.policy import Rule, load_policy
from xz_serve.dialog.service import DialogService
from xz_serve.dialog.sessions import MemorySessionStore
from xz_serve.dialog.spec import DialogSpec
from xz_serve.kernel.context import RequestContext
from xz_serve.upstream.client import UpstreamPool

EXAMPLES = [(f"{topic} example {i}", topic) for topic in ("lights", "heating") for i in range(6)]
SCRIPT = {text: Said("oos", topic=topic) for text, topic in EXAMPLES} | {
    "turn the lights on": Said("oos", topic="lights"),
    "make it warmer": Said("oos", topic="heating"),
    "hello": Said("greeting", topic="hello"),
}
LIGHTS = Rule(action="template", reply="Switching the lights.")
BASE = load_policy(ROOT / "deployments" / "dialog" / "policy.yaml")


async def make(sections: dict[str, dict[str, Rule]]) -> tuple[DialogService, ScriptedNlu]:
    nlu = ScriptedNlu(SCRIPT)
    classifiers = ClassifierService(ClassifierSpec(), MemoryClassifierStore(), nlu)
    await classifiers.create(RequestContext(), "home", EXAMPLES, None)
    policy = BASE.model_copy(update={"classifiers": sections})
    service = DialogService(
        nlu, DialogSpec(), policy, MemorySessionStore(3600), UpstreamPool([]), classifiers=classifiers
    )
    return service, nlu


async def test_a_classifier_label_chooses_the_rule() -> None:
    service, nlu = await make({"missing": {"lights": LIGHTS}, "home": {"lights": LIGHTS}})
    nlu.calls.clear()
    turn = await service.chat("turn the lights on", None, RequestContext())
    assert (turn.policy, turn.reply) == ("template", LIGHTS.reply)
    assert turn.body()["classifier"]["name"] == "home" and turn.body()["classifier"]["label"] == "lights"
    assert nlu.calls == [["turn the lights on"]]  # the turn's one encoder pass, nothing more


async def test_unlisted_labels_out_of_scope_texts_and_other_tenants_fall_through() -> None:
    service, _ = await make({"home": {"lights": LIGHTS}})
    warmer = await service.chat("make it warmer", None, RequestContext())  # `heating`: not listed
    assert warmer.policy == "fallback" and "classifier" not in warmer.body()
    hello = await service.chat("hello", None, RequestContext())  # far from every example
    assert (hello.policy, hello.reply) == ("template", BASE.intents["greeting"].reply)
    elsewhere = await service.chat("turn the lights on", None, RequestContext(tenant="other"))
    assert elsewhere.reply != LIGHTS.reply  # the classifier is the default tenant's


def test_the_policy_file_accepts_a_classifiers_section() -> None:
    data = BASE.model_dump() | {"classifiers": {"home": {"lights": {"action": "template", "reply": "ok"}}}}
    assert type(BASE).model_validate(data).classifiers["home"]["lights"].reply == "ok"
