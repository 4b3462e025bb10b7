"""DialogService: policy decisions, escalation, reply cache rules, honest fallbacks (real stand-in)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.standin import StandinServer
from tests.unit.dialog.scripted import Said, ScriptedNlu
from xz_serve.cache.semantic import SemanticCache
from xz_serve.dialog.policy import load_policy
from xz_serve.dialog.service import DialogService
from xz_serve.dialog.sessions import MemorySessionStore, SessionNotFoundError
from xz_serve.dialog.spec import DialogSpec
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.errors import ConflictError, InvalidInputError, PayloadTooLargeError, RateLimitedError
from xz_serve.kernel.redis import RedisGuard
from xz_serve.upstream.client import Upstream, UpstreamPool
from xz_serve.upstream.spec import UpstreamSpec

POLICY = load_policy(ROOT / "deployments" / "dialog" / "policy.yaml")
SCRIPT = {
    "hello": Said("greeting"),
    "hello?": Said("greeting", confidence=0.3),  # too unsure: treated as out of scope
    "this is awful": Said("greeting", sentiment="negative"),
    "this is still awful": Said("greeting", sentiment="negative"),
    "i hate this": Said("greeting", sentiment="negative"),
    "ok thanks": Said("greeting", sentiment="positive"),
    "i lost my card": Said("report_lost_card"),
    "how do i jump start my car": Said("jump_start", topic="jump"),
    "how can i jump start a car battery": Said("jump_start", topic="jump"),
    "jump start a car how": Said("oos", topic="jump"),  # same question, other intent
    "what is my balance": Said("balance", topic="balance"),
    "what's the weather": Said("weather", topic="weather"),
    "how do i export my trello boards": Said("oos", topic="trello"),
    "can i back up trello": Said("oos", topic="trello"),
    "send money to mom": Said("transfer", topic="transfer"),
    "and to dad": Said("transfer", topic="transfer2"),
}


def make(
    pool: UpstreamPool | None = None, *, cache: bool = True, **spec: Any
) -> tuple[DialogService, ScriptedNlu]:
    nlu = ScriptedNlu(SCRIPT)
    reply_cache = SemanticCache(RedisGuard(None), threshold=0.75, margin=0.1) if cache else None
    service = DialogService(
        nlu,
        DialogSpec(**spec),
        POLICY,
        MemorySessionStore(3600),
        pool if pool is not None else UpstreamPool([]),
        reply_cache,
    )
    return service, nlu


def pool_for(standin: StandinServer, **kw: Any) -> UpstreamPool:
    spec = UpstreamSpec(
        name="standin", base_url=standin.base_url, model="standin-chat-1", backoff_base_s=0.01, **kw
    )
    return UpstreamPool([Upstream(spec)])


async def test_template_reply_one_nlu_pass_and_session_kept() -> None:
    service, nlu = make()
    ctx = RequestContext()
    first = await service.chat("hello", None, ctx)
    assert first.policy == "template" and first.reply == POLICY.intents["greeting"].reply
    assert first.new_session and nlu.calls == [["hello"]]  # one encoder pass for the turn
    second = await service.chat("ok thanks", first.session.id, ctx)
    assert second.session.id == first.session.id and not second.new_session
    session = await service.get_session(ctx.tenant, first.session.id)
    assert [t.role for t in session.turns] == ["user", "assistant", "user", "assistant"]
    assert session.last_intent == "greeting" and session.sentiment_trend == ["neutral", "positive"]


async def test_escalates_after_n_negative_turns_and_stays_escalated() -> None:
    service, _ = make(escalate_after_negative=3)
    ctx = RequestContext()
    sid = None
    policies = []
    for text in ["this is awful", "this is still awful", "i hate this", "ok thanks"]:
        turn = await service.chat(text, sid, ctx)
        sid = turn.session.id
        policies.append(turn.policy)
    assert policies == ["template", "template", "escalate", "escalate"]
    session = await service.get_session(ctx.tenant, sid)
    assert session.escalated and session.slots["handoff_reason"] == "negative_sentiment"
    assert session.turns[-1].text == POLICY.escalation


async def test_a_positive_turn_resets_the_negative_run() -> None:
    service, _ = make(escalate_after_negative=2)
    ctx = RequestContext()
    sid = None
    for text in ["this is awful", "ok thanks", "i hate this"]:
        turn = await service.chat(text, sid, ctx)
        sid = turn.session.id
        assert turn.policy == "template"


async def test_handoff_intent_escalates_at_once() -> None:
    service, _ = make()
    turn = await service.chat("i lost my card", None, RequestContext())
    assert turn.policy == "escalate" and turn.session.escalated
    assert turn.reply == POLICY.intents["report_lost_card"].reply
    assert turn.session.slots["handoff_reason"] == "intent"


async def test_cacheable_intent_is_served_from_the_reply_cache(standin: StandinServer) -> None:
    service, _ = make(pool_for(standin))
    ctx = RequestContext()
    first = await service.chat("how do i jump start my car", None, ctx)
    assert first.policy == "llm" and first.completion is not None
    second = await service.chat("how can i jump start a car battery", None, ctx)
    assert second.policy == "cache" and second.reply == first.reply
    assert second.cache_similarity is not None and second.cache_similarity > 0.75
    assert standin.stats()["requests"] == 1
    assert second.session.usage.saved_tokens == first.completion.usage.total
    other_intent = await service.chat("jump start a car how", None, ctx)  # same topic, intent oos
    assert other_intent.policy == "llm"  # partitioned by intent
    other_tenant = await service.chat("how can i jump start a car battery", None, RequestContext(tenant="b"))
    assert other_tenant.policy == "llm"  # and by tenant
    assert standin.stats()["requests"] == 3


@pytest.mark.parametrize("text", ["what is my balance", "what's the weather"])
async def test_personal_and_time_sensitive_intents_are_never_cached(
    standin: StandinServer, text: str
) -> None:
    service, _ = make(pool_for(standin))
    for _ in range(2):
        assert (await service.chat(text, None, RequestContext())).policy == "llm"
    assert standin.stats()["requests"] == 2


async def test_no_store_and_no_cache_headers_are_respected(standin: StandinServer) -> None:
    service, _ = make(pool_for(standin))
    asked, rephrased = "how do i jump start my car", "how can i jump start a car battery"
    assert (await service.chat(asked, None, RequestContext(cache_write=False))).policy == "llm"
    assert (await service.chat(rephrased, None, RequestContext())).policy == "llm"  # nothing was stored
    assert (await service.chat(rephrased, None, RequestContext(cache_read=False))).policy == "llm"
    hit = await service.chat(asked, None, RequestContext())
    assert hit.policy == "cache" and standin.stats()["requests"] == 3


async def test_out_of_scope_replies_are_never_cached(standin: StandinServer) -> None:
    """Out of scope is where any unrecognised text goes, personal ones included: its replies are
    neither stored nor served from the reply cache, for the same question or a rephrasing."""
    service, _ = make(pool_for(standin))
    asked, rephrased = "how do i export my trello boards", "can i back up trello"
    policies = [
        (await service.chat(text, None, RequestContext())).policy for text in [asked, asked, rephrased]
    ]
    assert policies == ["llm", "llm", "llm"] and standin.stats()["requests"] == 3


async def test_low_confidence_is_out_of_scope_and_falls_back_honestly_without_upstream() -> None:
    service, _ = make()
    turn = await service.chat("hello?", None, RequestContext())
    assert turn.nlu.intent == "oos" and turn.nlu.out_of_scope
    assert turn.policy == "fallback" and "no_upstream" in turn.flags
    assert turn.reply == POLICY.out_of_scope.fallback


async def test_upstream_failures_become_fallback_replies(standin: StandinServer) -> None:
    standin.faults(fail_status=500, retry_after_s=None)
    service, _ = make(pool_for(standin, retries=1, breaker_failures=2, breaker_reset_s=60))
    first = await service.chat("send money to mom", None, RequestContext())
    assert first.policy == "fallback" and first.flags == ["upstream_failed"]
    assert first.reply == POLICY.fallback
    second = await service.chat("send money to mom", None, RequestContext())
    assert second.policy == "fallback" and second.flags == ["breaker_open"]
    assert standin.stats()["requests"] == 2  # the open breaker sent nothing


async def test_context_intents_get_history_cacheable_ones_do_not(standin: StandinServer) -> None:
    service, _ = make(pool_for(standin))
    ctx = RequestContext()
    first = await service.chat("send money to mom", None, ctx)
    second = await service.chat("and to dad", first.session.id, ctx)
    assert first.completion and second.completion
    assert second.completion.usage.prompt_tokens > first.completion.usage.prompt_tokens + 50  # history sent
    third = await service.chat("how do i jump start my car", first.session.id, ctx)
    fresh = await service.chat("how do i jump start my car", None, RequestContext(cache_read=False))
    assert third.completion and fresh.completion
    assert third.completion.usage.prompt_tokens == fresh.completion.usage.prompt_tokens  # no history
    session = await service.get_session(ctx.tenant, first.session.id)
    assert session.usage.llm_calls == 3
    assert session.usage.prompt_tokens == sum(
        t.completion.usage.prompt_tokens for t in (first, second, third)
    )


async def test_bad_input_and_unknown_sessions() -> None:
    service, _ = make()
    with pytest.raises(SessionNotFoundError):
        await service.chat("hello", "no-such-session", RequestContext())
    with pytest.raises(InvalidInputError):
        await service.chat("   ", None, RequestContext())
    with pytest.raises(PayloadTooLargeError):
        await service.chat("x" * 3000, None, RequestContext())
    turn = await service.chat("hello", None, RequestContext(tenant="a"))
    with pytest.raises(SessionNotFoundError):  # sessions are per tenant
        await service.get_session("b", turn.session.id)
    await service.delete_session("a", turn.session.id)
    with pytest.raises(SessionNotFoundError):
        await service.delete_session("a", turn.session.id)


async def test_a_session_answers_one_turn_at_a_time(standin: StandinServer) -> None:
    service, _ = make(pool_for(standin))
    ctx = RequestContext()
    first = await service.chat("send money to mom", None, ctx)
    standin.faults(latency_ms=300)  # the upstream is slow: the turns overlap
    outcomes = await asyncio.gather(
        service.chat("and to dad", first.session.id, ctx),
        service.chat("send money to mom", first.session.id, ctx),
        return_exceptions=True,
    )
    busy = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(busy) == 1 and busy[0].code == "session_busy" and busy[0].retry_after_s == 1
    session = await service.get_session(ctx.tenant, first.session.id)
    assert len(session.turns) == 4  # both turns of the one that ran; none overwritten
    standin.faults(latency_ms=0)
    await service.chat("and to dad", first.session.id, ctx)  # the lock was released
    assert len((await service.get_session(ctx.tenant, first.session.id)).turns) == 6


async def test_a_failed_or_abandoned_turn_releases_the_session() -> None:
    service, _ = make()
    first = await service.chat("hello", None, RequestContext())

    class Refusing:
        async def charge_texts(self, ctx: RequestContext, count: int) -> None:
            raise RateLimitedError("no texts left", retry_after_s=5)

    service.meter = Refusing()
    with pytest.raises(RateLimitedError):
        await service.chat("hello", first.session.id, RequestContext())
    service.meter = None
    turn = await service.begin("hello", first.session.id, RequestContext(), stream=True)
    await service.release(turn)  # what the SSE route does when the client leaves mid-stream
    assert (await service.chat("ok thanks", first.session.id, RequestContext())).policy == "template"
