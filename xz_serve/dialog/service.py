"""DialogService: one chat turn = NLU prediction + session -> policy decision -> reply -> session saved.

The message goes through the NLU replicas once (the same cached client as /v1/analyze); its
embedding is reused for the semantic reply cache, so a turn costs at most one encoder pass.
Decision order: a conversation already handed to a human stays there; a handoff intent, or the
user's sentiment negative for ``escalate_after_negative`` turns in a row, escalates; a template
rule replies from the policy; an llm rule is served from the reply cache when the rule is
cacheable and a near-duplicate question of the same intent was answered, else asks the upstream.
No upstream configured, every breaker open, or every retry failed: the rule's honest fallback
reply (policy ``fallback``, flagged), never a 5xx.

The request's deadline bounds the whole turn, the upstream call and a streamed reply included: past
it the turn is dropped (504, or an error event once a stream has begun) and nothing is saved. The
save is fenced by the turn lock (``sessions.py``); a store that stalls is retried while the deadline
allows. A lock that could not be released (the store stalled) is released in the background as soon
as the store answers again, so a short stall does not keep the session busy for ``turn_lock_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from opentelemetry import trace

from xz_serve.cache.keys import semantic_namespace
from xz_serve.cache.semantic import SemanticCache
from xz_serve.cache.spec import CacheSpec
from xz_serve.classifiers.service import ClassifierService
from xz_serve.dialog.metrics import DialogMetrics
from xz_serve.dialog.policy import OOS, Policy, Rule, load_policy
from xz_serve.dialog.sessions import (
    Session,
    SessionNotFoundError,
    SessionStore,
    StoreUnavailableError,
    Turn,
    TurnLockLostError,
    open_store,
)
from xz_serve.dialog.spec import DialogSpec
from xz_serve.kernel.context import RequestContext
from xz_serve.kernel.deadline import remaining_s
from xz_serve.kernel.errors import (
    ConflictError,
    DeadlineExceededError,
    InvalidInputError,
    PayloadTooLargeError,
)
from xz_serve.kernel.redis import RedisGuard
from xz_serve.kernel.spec import StoreSpec
from xz_serve.kernel.types import PredictResult
from xz_serve.nlu.shapes import sentiment_json
from xz_serve.upstream.client import Completion, NoUpstreamError, ReplyStream, UpstreamPool

log = logging.getLogger(__name__)

SAVE_BACKOFF_S = (0.1, 1.0)  # first and longest pause between save attempts while the store stalls
UNLOCK_BACKOFF_S = (0.2, 2.0)  # the same for a lock released in the background
UNLOCK_MIN_S = 0.1  # a release gets at least this long in the foreground, even past the deadline


def _inc(counter: Any, value: float, tags: dict[str, str]) -> None:
    if value > 0:  # Ray counters refuse 0
        counter.inc(value, tags=tags)


tracer = trace.get_tracer("xz_serve.dialog")

PolicyName = Literal["template", "cache", "llm", "escalate", "fallback"]
Predict = Callable[[list[str], RequestContext], Awaitable[PredictResult]]


class TextMeter(Protocol):
    """Charges a request's texts to its caller's limits (the access gate)."""

    async def charge_texts(self, ctx: RequestContext, count: int) -> None: ...


@dataclass
class Understanding:
    """What the NLU made of the message (one encoder pass)."""

    intent: str
    confidence: float
    out_of_scope: bool
    sentiment: str
    sentiment_scores: dict[str, float]
    embedding: np.ndarray
    model_id: str
    # The policy's run-time classifier that chose the rule, if one did: name, label, confidence.
    classified: dict[str, Any] | None = None


@dataclass
class ChatTurn:
    """One turn in progress: the decision, the reply (or a stream that will produce it), what it cost."""

    session: Session
    new_session: bool
    message: str
    nlu: Understanding
    rule: Rule
    policy: PolicyName
    reply: str = ""
    flags: list[str] = field(default_factory=list)
    completion: Completion | None = None
    stream: ReplyStream | None = None
    cache_similarity: float | None = None
    cacheable: bool = False
    started: float = field(default_factory=time.perf_counter)
    lock_token: str | None = None  # the session's turn lock, held until the turn is saved
    deadline: float | None = None  # the request's, epoch seconds

    def meta(self) -> dict[str, Any]:
        """Everything about the turn except the reply text (first SSE event, and part of the body)."""
        return {
            "session_id": self.session.id,
            "new_session": self.new_session,
            "intent": {
                "label": self.nlu.intent,
                "confidence": round(self.nlu.confidence, 6),
                "out_of_scope": self.nlu.out_of_scope,
            },
            "sentiment": sentiment_json(self.nlu.sentiment_scores),
            **({"classifier": self.nlu.classified} if self.nlu.classified else {}),
            "policy": self.policy,
            "escalated": self.session.escalated,
            "flags": self.flags,
        }

    def body(self) -> dict[str, Any]:
        """The JSON response of a finished turn."""
        usage = None
        if self.completion is not None:
            u = self.completion.usage
            usage = {
                "upstream": self.completion.upstream,
                "model": self.completion.model,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "estimated": u.estimated,
                "cost_usd": round(self.completion.cost_usd, 8),
            }
        cache = None if self.cache_similarity is None else {"similarity": round(self.cache_similarity, 4)}
        return {**self.meta(), "reply": self.reply, "usage": usage, "cache": cache}


class DialogService:
    """Chat turns and session access for /v1/chat and /v1/sessions."""

    def __init__(
        self,
        predict: Predict,
        spec: DialogSpec,
        policy: Policy,
        store: SessionStore,
        upstreams: UpstreamPool,
        reply_cache: SemanticCache | None = None,
        *,
        oos_threshold: float = 0.0,
        metrics: DialogMetrics | None = None,
        meter: TextMeter | None = None,
        classifiers: ClassifierService | None = None,
    ) -> None:
        self.predict = predict
        self.spec = spec
        self.policy = policy
        self.store = store
        self.upstreams = upstreams
        self.reply_cache = reply_cache
        self.min_confidence = max(oos_threshold, policy.min_confidence)
        self.metrics = metrics or DialogMetrics()
        self.meter = meter
        self.classifiers = classifiers
        self._unlocking: set[asyncio.Task[None]] = set()  # locks being released in the background

    # -- sessions -----------------------------------------------------------------------------------
    async def get_session(self, tenant: str, session_id: str) -> Session:
        session = await self.store.get(tenant, session_id)
        if session is None:
            raise SessionNotFoundError(f"no session {session_id!r} (it may have expired or been deleted)")
        return session

    async def delete_session(self, tenant: str, session_id: str) -> None:
        if not await self.store.delete(tenant, session_id):
            raise SessionNotFoundError(f"no session {session_id!r} (it may have expired or been deleted)")

    # -- one turn -----------------------------------------------------------------------------------
    def _understand(self, result: PredictResult) -> Understanding:
        pred = result.predictions[0]
        label, confidence = pred.intents[0]
        oos = label == OOS or pred.out_of_scope_at(self.min_confidence)
        sentiment = max(pred.sentiment, key=pred.sentiment.__getitem__)
        return Understanding(
            OOS if oos else label,
            float(confidence),
            oos,
            sentiment,
            dict(pred.sentiment),
            pred.embedding,
            result.model_id,
        )

    def _namespace(self, nlu: Understanding, tenant: str) -> str:
        return semantic_namespace(f"reply.{nlu.intent}", nlu.model_id, tenant)

    def _messages(self, turn: ChatTurn) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": turn.rule.prompt or ""}]
        if not turn.cacheable and self.spec.history_turns:  # context-free rules get no history
            history = turn.session.turns[-self.spec.history_turns :]
            messages += [{"role": t.role, "content": t.text} for t in history]
        messages.append({"role": "user", "content": turn.message})
        return messages

    async def begin(
        self,
        message: str,
        session_id: str | None,
        ctx: RequestContext,
        *,
        stream: bool = False,
        start_missing: bool = False,
    ) -> ChatTurn:
        """Understand the message, load the session, decide; a non-stream llm turn is answered here.

        ``start_missing``: a ``session_id`` that does not exist (yet) starts a session under that id
        instead of a 404; for ids the caller derives from its own stable name (``session_for_user``).
        """
        message = message.strip()
        if not message:
            raise InvalidInputError("message must not be empty", code="empty_message")
        if len(message) > self.spec.max_message_chars:
            raise PayloadTooLargeError(f"message exceeds {self.spec.max_message_chars} characters")
        if not message.isascii():
            try:  # JSON may escape a lone surrogate (\ud800): no tokenizer, hash or store can take it
                message.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError("message is not valid Unicode", code="invalid_text") from None
        with tracer.start_as_current_span("xz.dialog.turn") as span:
            new = session_id is None
            session = Session.new(ctx.tenant) if session_id is None else None
            sid = session.id if session is not None else str(session_id)
            token = await self.store.lock(ctx.tenant, sid, self.spec.turn_lock_s)
            if token is None:
                raise ConflictError(
                    f"session {sid!r} is answering another message; send the next one after it",
                    code="session_busy",
                    retry_after_s=1,
                )
            try:
                if session is None and start_missing:
                    session = await self.store.get(ctx.tenant, sid)
                    if session is None:
                        session, new = Session.new(ctx.tenant, session_id=sid), True
                if session is None:
                    session = await self.get_session(ctx.tenant, sid)
                if self.meter is not None:
                    await self.meter.charge_texts(ctx, 1)  # the message, against the key's limits
                nlu = self._understand(await self.predict([message], ctx))
                session.record_sentiment(nlu.sentiment)
                rule = await self._rule(nlu, ctx.tenant)
                turn = ChatTurn(
                    session, new, message, nlu, rule, "template", lock_token=token, deadline=ctx.deadline
                )
                await self._decide(turn, ctx, stream)
            except BaseException:
                await self._unlock(ctx.tenant, sid, token, ctx.deadline)
                raise
            span.set_attribute("xz.dialog.policy", turn.policy)
            span.set_attribute("xz.dialog.intent", nlu.intent)
            return turn

    async def release(self, turn: ChatTurn) -> None:
        """Free what the turn holds (idempotent): its upstream stream, if one is still open, and the
        session lock; after the save, or when a stream is abandoned."""
        if turn.stream is not None:
            await turn.stream.close()
        token, turn.lock_token = turn.lock_token, None
        if token is not None:
            await self._unlock(turn.session.tenant, turn.session.id, token, turn.deadline)

    async def _unlock(self, tenant: str, session_id: str, token: str, deadline: float | None) -> None:
        """Release the lock now, within the deadline (at least ``UNLOCK_MIN_S``); if the store does
        not answer in that time, keep trying in the background, so that the response is not held
        and the session is free as soon as the store answers again."""
        bound = None if deadline is None else max(UNLOCK_MIN_S, deadline - time.time())
        try:
            async with asyncio.timeout(bound):
                await self.store.unlock(tenant, session_id, token)
            return
        except (StoreUnavailableError, TimeoutError):
            log.warning(
                "could not release the lock of session %s yet; retrying it in the background", session_id
            )
        task = asyncio.create_task(self._unlock_later(tenant, session_id, token))
        self._unlocking.add(task)
        task.add_done_callback(self._unlocking.discard)

    async def _unlock_later(self, tenant: str, session_id: str, token: str) -> None:
        """Retry a release until it succeeds or the lock has expired by itself anyway."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.spec.turn_lock_s
        delay, longest = UNLOCK_BACKOFF_S
        while loop.time() + delay < until:
            await asyncio.sleep(delay)
            try:
                await self.store.unlock(tenant, session_id, token)
            except StoreUnavailableError:
                delay = min(2 * delay, longest)
                continue
            log.info("released the lock of session %s after a store stall", session_id)
            return

    async def _rule(self, nlu: Understanding, tenant: str) -> Rule:
        """The rule of the first policy classifier that labels the message with a label it lists
        (in scope), else the intent's rule: the same embedding, no second encoder pass."""
        if self.classifiers is not None:
            for name, rules in self.policy.classifiers.items():
                hit = await self.classifiers.route(tenant, name, nlu.embedding, nlu.model_id)
                if hit is not None and hit.label in rules:
                    confidence = round(hit.confidence, 6)
                    nlu.classified = {"name": name, "label": hit.label, "confidence": confidence}
                    return rules[hit.label]
        return self.policy.rule_for(nlu.intent)

    async def _decide(self, turn: ChatTurn, ctx: RequestContext, stream: bool) -> None:
        session, rule = turn.session, turn.rule
        if session.escalated:
            turn.policy, turn.reply = "escalate", self.policy.escalation
            return
        negative = session.negative_streak >= self.spec.escalate_after_negative
        if rule.action == "handoff" or negative:
            reason = "negative_sentiment" if negative and rule.action != "handoff" else "intent"
            session.escalated = True
            session.slots["handoff_reason"] = reason
            turn.policy = "escalate"
            turn.reply = rule.reply if rule.action == "handoff" and rule.reply else self.policy.escalation
            self.metrics.escalations.inc(tags={"reason": reason})
            return
        if rule.action == "template":
            turn.policy, turn.reply = "template", rule.reply or ""
            return
        turn.cacheable = rule.cacheable and self.reply_cache is not None and self.spec.reply_cache
        if turn.cacheable and ctx.cache_read and await self._from_cache(turn, ctx):
            return
        if not self.upstreams:
            self._fallback(turn, "no_upstream")
            return
        messages, tokens, deadline = self._messages(turn), self.spec.max_reply_tokens, ctx.deadline
        try:
            if stream:
                turn.stream = await self.upstreams.stream(messages, tokens, deadline=deadline)
                turn.policy = "llm"
            else:
                turn.completion = await self.upstreams.complete(messages, tokens, deadline=deadline)
                turn.policy, turn.reply = "llm", turn.completion.text
        except NoUpstreamError as exc:
            self._fallback(turn, "breaker_open" if exc.breaker_open else "upstream_failed")
            self.metrics.llm_calls.inc(tags={"upstream": "all", "outcome": "failed"})
        except DeadlineExceededError:
            self.metrics.llm_calls.inc(tags={"upstream": "all", "outcome": "deadline"})
            raise
        finally:
            self.metrics.breakers(self.upstreams.breaker_states())

    async def _from_cache(self, turn: ChatTurn, ctx: RequestContext) -> bool:
        assert self.reply_cache is not None
        namespace = self._namespace(turn.nlu, ctx.tenant)
        hit = await self.reply_cache.lookup(namespace, turn.nlu.embedding, text=turn.message)
        if hit is None:
            return False
        try:
            cached = json.loads(hit.value)
            turn.reply = str(cached["reply"])
            saved = int(cached.get("tokens", 0))
        except (ValueError, KeyError, TypeError):
            return False  # a foreign or corrupt entry: ask the LLM instead
        turn.policy, turn.cache_similarity = "cache", hit.similarity
        turn.session.usage.cache_hits += 1
        turn.session.usage.saved_tokens += saved
        _inc(self.metrics.saved_tokens, saved, {"key": ctx.key_id or "anonymous"})
        return True

    def _fallback(self, turn: ChatTurn, why: str) -> None:
        turn.policy = "fallback"
        turn.reply = turn.rule.fallback or self.policy.fallback
        turn.flags.append(why)

    async def finish(self, turn: ChatTurn, ctx: RequestContext) -> None:
        """Record the reply: usage counters, reply cache, both turns into the session (saved); then
        release the session's turn lock, whatever happened."""
        try:
            await self._record(turn, ctx)
        finally:
            await self.release(turn)

    async def _record(self, turn: ChatTurn, ctx: RequestContext) -> None:
        if turn.stream is not None and turn.stream.completion is not None:
            turn.completion = turn.stream.completion
        session, now = turn.session, time.time()
        nlu = turn.nlu
        session.add(
            Turn(
                role="user",
                text=turn.message,
                at=now,
                intent=nlu.intent,
                confidence=round(nlu.confidence, 6),
                sentiment=nlu.sentiment,
            ),
            self.spec.max_turns,
        )
        session.add(Turn(role="assistant", text=turn.reply, at=now, policy=turn.policy), self.spec.max_turns)
        session.last_intent = nlu.intent
        if turn.completion is not None:
            self._account(turn, ctx)
        await self._save(turn)
        whole = "stream_interrupted" not in turn.flags  # only a whole reply is reused
        if turn.completion is not None and turn.cacheable and ctx.cache_write and whole:
            usage = turn.completion.usage
            # The reply and what it saved; the question's digest travels beside it (``text=``) for
            # the verifier, so the value does not repeat the question (a long message doubled it).
            value = json.dumps({"reply": turn.reply, "tokens": usage.total}, ensure_ascii=False)
            await self.reply_cache.store(  # type: ignore[union-attr]
                self._namespace(nlu, ctx.tenant),
                nlu.embedding,
                value.encode(),
                ttl_s=self.spec.reply_cache_ttl_s,
                text=turn.message,
            )
        self.metrics.turns.inc(tags={"policy": turn.policy})
        elapsed_ms = (time.perf_counter() - turn.started) * 1000
        self.metrics.reply_latency.observe(elapsed_ms, tags={"policy": turn.policy})

    async def _save(self, turn: ChatTurn) -> None:
        """Save under the turn's lock; while the store stalls, try again as long as the deadline
        leaves time (without a deadline, once).

        Raises:
            DeadlineExceededError: the deadline passed before the save began; nothing was saved.
            StoreUnavailableError: the store did not take the save in time.
            TurnLockLostError, SessionNotFoundError: the lock expired, or the session was deleted.
        """
        token = turn.lock_token
        if token is None:
            raise TurnLockLostError(f"session {turn.session.id!r}: this turn no longer holds its lock")
        delay, longest = SAVE_BACKOFF_S
        while True:
            left = remaining_s(turn.deadline)
            try:
                async with asyncio.timeout(left):
                    await self.store.save(turn.session, token)
                return
            except (StoreUnavailableError, TimeoutError) as exc:
                failed = exc
            if turn.deadline is None or turn.deadline - time.time() <= delay:
                if isinstance(failed, StoreUnavailableError):
                    raise failed
                raise StoreUnavailableError("the session store failed to write in time", retry_after_s=1)
            log.warning("saving session %s failed (%s); retrying in %.1f s", turn.session.id, failed, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, longest)

    def _account(self, turn: ChatTurn, ctx: RequestContext) -> None:
        completion = turn.completion
        assert completion is not None
        usage, key = completion.usage, ctx.key_id or "anonymous"
        spent = turn.session.usage
        spent.llm_calls += 1
        spent.prompt_tokens += usage.prompt_tokens
        spent.completion_tokens += usage.completion_tokens
        spent.cost_usd = round(spent.cost_usd + completion.cost_usd, 8)
        up = completion.upstream
        self.metrics.llm_calls.inc(tags={"upstream": up, "outcome": "ok"})
        _inc(self.metrics.tokens, usage.prompt_tokens, {"upstream": up, "kind": "prompt", "key": key})
        _inc(self.metrics.tokens, usage.completion_tokens, {"upstream": up, "kind": "completion", "key": key})
        _inc(self.metrics.cost, completion.cost_usd, {"upstream": up, "key": key})
        if usage.estimated:
            turn.flags.append("usage_estimated")

    async def chat(self, message: str, session_id: str | None, ctx: RequestContext) -> ChatTurn:
        """A whole non-streamed turn."""
        turn = await self.begin(message, session_id, ctx)
        await self.finish(turn, ctx)
        return turn

    async def close(self) -> None:
        for task in list(self._unlocking):  # their locks expire by themselves
            task.cancel()
        await self.upstreams.close()
        await self.store.close()


def build_dialog(
    predict: Predict,
    spec: DialogSpec,
    *,
    store: StoreSpec,
    store_guard: RedisGuard,
    cache: CacheSpec,
    cache_guard: RedisGuard,
    intents: Collection[str] | None,
    oos_threshold: float = 0.0,
    meter: TextMeter | None = None,
    classifiers: ClassifierService | None = None,
) -> DialogService:
    """The service: policy validated now against the model's ``intents`` (PolicyError stops the
    start), sessions on the durable store, reply cache on the cache Redis (semantic, per intent),
    upstream pool. The guards are the process's shared ones, one per Redis role."""
    if intents is None:
        log.warning("no built model labels found: the policy's intent names are not checked")
    policy = load_policy(spec.policy_path, intents)
    sessions = open_store(store_guard.client, spec.session_ttl_s, store.session_timeout_ms / 1000)
    reply_cache = None
    if cache.enabled and spec.reply_cache:  # the cache's threshold and verifier, our margin
        update: dict[str, Any] = {"semantic_margin": spec.reply_cache_margin}
        if spec.reply_cache_threshold is not None:
            update["semantic_threshold"] = spec.reply_cache_threshold
        reply_cache = SemanticCache.from_spec(cache.model_copy(update=update), cache_guard)
    pool = UpstreamPool.from_specs(spec.upstreams, spec.prices, spec.fallback_order)
    log.info(
        "dialog: %d policy intents, %d upstreams, reply cache %s, sessions in %s",
        len(policy.intents),
        len(spec.upstreams),
        "on" if reply_cache else "off",
        "redis" if store_guard.configured else "process memory",
    )
    return DialogService(
        predict, spec, policy, sessions, pool, reply_cache,
        oos_threshold=oos_threshold, meter=meter, classifiers=classifiers,
    )  # fmt: skip
