"""Sessions in a real redis-server (AOF, as the durable store runs): bounded, TTL, restart, outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from xz_serve.dialog.sessions import (
    LOCK,
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionNotFoundError,
    StoreUnavailableError,
    Turn,
    TurnLockLostError,
    lock_key,
    session_key,
)


@pytest.fixture(scope="module")
def store_server() -> Iterator[RedisServer]:
    server = RedisServer(durable=True)
    server.start()
    yield server
    server.close()


Store = RedisSessionStore | MemorySessionStore


async def save(store: Store, session: Session) -> None:
    """Save the way a turn does: under the session's turn lock."""
    token = await store.lock(session.tenant, session.id, ttl_s=5)
    assert token is not None
    await store.save(session, token)
    await store.unlock(session.tenant, session.id, token)


def session_with(turns: int, max_turns: int = 100) -> Session:
    session = Session.new("acme")
    for i in range(turns):
        session.add(
            Turn(role="user" if i % 2 == 0 else "assistant", text=f"turn {i}", at=float(i)), max_turns
        )
    return session


async def test_round_trip_ttl_and_tenant_isolation(store_server: RedisServer) -> None:
    store = RedisSessionStore.from_url(store_server.url, ttl_s=600, timeout_s=1.0)
    try:
        session = session_with(3)
        session.slots["handoff_reason"] = "intent"
        session.record_sentiment("negative")
        await save(store, session)
        loaded = await store.get("acme", session.id)
        assert loaded == session
        assert await store.get("other-tenant", session.id) is None  # another tenant cannot read it
        ttl = await store.client.ttl(session_key("acme", session.id))
        assert 590 <= ttl <= 600
        assert await store.delete("acme", session.id)
        assert await store.get("acme", session.id) is None
        assert not await store.delete("acme", session.id)
    finally:
        await store.close()


async def test_turns_are_bounded() -> None:
    session = session_with(25, max_turns=10)
    assert len(session.turns) == 10
    assert session.turns[0].text == "turn 15"  # the oldest went first


def test_sentiment_trend_and_negative_streak() -> None:
    session = Session.new("t")
    for label in ["negative", "negative", "neutral", "negative", "negative"]:
        session.record_sentiment(label)
    assert session.negative_streak == 2
    for _ in range(20):
        session.record_sentiment("positive")
    assert len(session.sentiment_trend) == 10 and session.negative_streak == 0


async def test_sessions_survive_a_store_restart(store_server: RedisServer) -> None:
    store = RedisSessionStore.from_url(store_server.url, ttl_s=600, timeout_s=1.0)
    try:
        session = session_with(4)
        await save(store, session)
        store_server.restart()  # SIGKILL, then start from the AOF
        assert await store.get("acme", session.id) == session
    finally:
        await store.close()


async def test_outage_is_a_clear_error_not_a_silent_loss(store_server: RedisServer) -> None:
    store = RedisSessionStore(Redis.from_url(store_server.url, socket_timeout=0.2), ttl_s=600, timeout_s=0.2)
    try:
        session = session_with(1)
        await save(store, session)
        store_server.pause()
        try:
            with pytest.raises(StoreUnavailableError) as err:
                await store.get("acme", session.id)
            assert err.value.status == 503 and err.value.retry_after_s
        finally:
            store_server.resume()
        assert await store.get("acme", session.id) == session
    finally:
        await store.close()


async def test_memory_store_expires() -> None:
    now = [1000.0]
    store = MemorySessionStore(ttl_s=60, clock=lambda: now[0])
    session = session_with(1)
    await save(store, session)
    assert await store.get("acme", session.id) == session
    now[0] += 61
    assert await store.get("acme", session.id) is None


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_turn_lock_is_exclusive_owned_and_expires(store_server: RedisServer, kind: str) -> None:
    now = [1000.0]
    store: RedisSessionStore | MemorySessionStore
    if kind == "redis":
        store = RedisSessionStore.from_url(store_server.url, ttl_s=600, timeout_s=1.0)
    else:
        store = MemorySessionStore(ttl_s=600, clock=lambda: now[0])
    try:
        token = await store.lock("acme", "s1", ttl_s=0.3)
        assert token is not None
        assert await store.lock("acme", "s1", ttl_s=0.3) is None  # held
        assert await store.lock("other", "s1", ttl_s=0.3) is not None  # per tenant
        await store.unlock("acme", "s1", "not-the-token")  # someone else's unlock does nothing
        assert await store.lock("acme", "s1", ttl_s=0.3) is None
        await store.unlock("acme", "s1", token)
        late = await store.lock("acme", "s1", ttl_s=0.3)
        assert late is not None
        if kind == "redis":
            await asyncio.sleep(0.45)
        else:
            now[0] += 0.45
        again = await store.lock("acme", "s1", ttl_s=0.3)  # a dead holder's lock expires
        assert again is not None
        await store.unlock("acme", "s1", late)  # the expired holder cannot free the new one
        assert await store.lock("acme", "s1", ttl_s=0.3) is None
    finally:
        await store.close()


async def test_a_retried_lock_command_finds_the_lock_its_own(store_server: RedisServer) -> None:
    """A lock whose reply was lost is retried with the same token: the retry must not read as busy."""
    store = RedisSessionStore.from_url(store_server.url, ttl_s=600, timeout_s=1.0)
    try:
        key = lock_key("acme", "s2")
        assert await store.client.eval(LOCK, 1, key, "tok", 5000) == 1  # type: ignore[misc]
        assert await store.client.eval(LOCK, 1, key, "tok", 5000) == 1  # type: ignore[misc]
        assert await store.client.eval(LOCK, 1, key, "other", 5000) == 0  # type: ignore[misc]
        assert await store.lock("acme", "s2", ttl_s=5) is None
    finally:
        await store.close()


@pytest.fixture(params=["redis", "memory"])
async def any_store(
    request: pytest.FixtureRequest, store_server: RedisServer
) -> AsyncIterator[tuple[Store, list[float]]]:
    """Each kind of store, with the clock the memory store reads (the Redis one uses Redis's)."""
    now = [1000.0]
    if request.param == "redis":
        store = RedisSessionStore.from_url(store_server.url, ttl_s=600, timeout_s=1.0)
        yield store, now
        await store.client.aclose()
    else:
        yield MemorySessionStore(ttl_s=600, clock=lambda: now[0]), now


async def test_a_save_is_fenced_by_the_turn_lock(any_store: tuple[Store, list[float]]) -> None:
    """A turn whose lock expired (and was taken by a later turn) cannot overwrite what that turn saved."""
    store, now = any_store
    session = session_with(2)
    token = await store.lock("acme", session.id, ttl_s=0.3)
    assert token is not None
    await store.save(session, token)
    if isinstance(store, RedisSessionStore):
        await asyncio.sleep(0.45)
    else:
        now[0] += 0.45
    later = await store.lock("acme", session.id, ttl_s=5)
    assert later is not None
    late = session.model_copy(deep=True)
    late.add(Turn(role="user", text="too late", at=3.0), 100)
    with pytest.raises(TurnLockLostError) as err:
        await store.save(late, token)
    assert err.value.status == 409 and err.value.code == "turn_lock_expired"
    kept = await store.get("acme", session.id)
    assert kept is not None and len(kept.turns) == 2
    with pytest.raises(TurnLockLostError):
        await store.save(late, "never-a-token")
    await store.save(late, later)
    kept = await store.get("acme", session.id)
    assert kept is not None and len(kept.turns) == 3


async def test_a_delete_during_a_turn_is_final(any_store: tuple[Store, list[float]]) -> None:
    """Deleting a session frees its lock and refuses the running turn's save: it never comes back,
    and a first turn's session (not saved yet) can be deleted too."""
    store, _ = any_store
    session = session_with(2)
    token = await store.lock("acme", session.id, ttl_s=5)
    assert token is not None
    await store.save(session, token)
    assert await store.delete("acme", session.id)
    with pytest.raises(SessionNotFoundError):
        await store.save(session, token)
    assert await store.get("acme", session.id) is None

    first = Session.new("acme")
    token = await store.lock("acme", first.id, ttl_s=5)
    assert token is not None
    assert await store.delete("acme", first.id)  # its first turn is still running
    with pytest.raises(SessionNotFoundError):
        await store.save(first, token)
    assert await store.get("acme", first.id) is None
    assert not await store.delete("acme", Session.new("acme").id)  # nothing there at all
