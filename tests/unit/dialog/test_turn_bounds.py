"""A chat turn's bounds, over real HTTP (uvicorn), a real store Redis and the OpenAI stand-in.

The request deadline covers the whole turn, streams included; the turn lock fences the save, so a
turn whose lock expired cannot overwrite a later one; a deleted session stays deleted; a short store
stall neither keeps the session locked nor cuts a stream without a word.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer, redis_or_skip
from tests.standin import StandinServer
from tests.unit.dialog.live import LLM, TEMPLATE, chat_settings, served, stream_turn
from xz_serve.dialog.sessions import lock_key

DEADLINE = "x-request-timeout-ms"


@pytest.fixture
def store_redis() -> Iterator[RedisServer]:
    yield from redis_or_skip()


@pytest.fixture
async def admin(store_redis: RedisServer) -> AsyncIterator[Redis]:
    """A second client of the store, for what an operator or a fault does to it (CLIENT PAUSE)."""
    client = Redis.from_url(store_redis.url)
    yield client
    await client.aclose()


async def new_session(http: httpx.AsyncClient) -> str:
    first = await http.post("/v1/chat", json={"message": TEMPLATE})
    assert first.status_code == 200 and first.json()["policy"] == "template", first.text
    return str(first.json()["session_id"])


async def turns(http: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/sessions/{sid}")
    assert response.status_code == 200, response.text
    return list(response.json()["turns"])


async def test_the_deadline_bounds_an_llm_turn(standin: StandinServer, store_redis: RedisServer) -> None:
    """A 500 ms deadline with a 3 s upstream: 504 at the deadline, nothing saved, the session free."""
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)
        standin.faults(latency_ms=3000)
        started = time.monotonic()
        payload = {"message": LLM, "session_id": sid}
        late = await http.post("/v1/chat", json=payload, headers={DEADLINE: "500"})
        elapsed = time.monotonic() - started
        standin.faults(latency_ms=0)
        assert (late.status_code, elapsed < 1.0) == (504, True), (late.status_code, elapsed, late.text)
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert len(await turns(http, sid)) == 2  # the dropped turn left nothing behind
        after = await http.post("/v1/chat", json={"message": TEMPLATE, "session_id": sid})
        assert after.status_code == 200, after.text  # and its lock is gone


async def test_the_deadline_bounds_a_streamed_turn(standin: StandinServer, store_redis: RedisServer) -> None:
    """A stream that would take about 6 s under a 1 s deadline: an error event at the deadline, then
    the terminator; the turn is not saved and the session is free."""
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)
        standin.faults(chunk_delay_ms=150)
        seen = await stream_turn(http, {"message": LLM, "session_id": sid}, {DEADLINE: "1000"})
        standin.faults(chunk_delay_ms=0)
        last = seen.events[-1][0]
        assert (seen.types[-2:], last < 1.6) == (["error", "[DONE]"], True), (seen.types[-3:], last)
        assert seen.of("error")[0]["error"]["code"] == "deadline_exceeded" and not seen.of("done")
        assert len(await turns(http, sid)) == 2
        after = await http.post("/v1/chat", json={"message": TEMPLATE, "session_id": sid})
        assert after.status_code == 200, after.text


async def test_a_turn_whose_lock_expired_never_overwrites_a_later_turn(
    standin: StandinServer, store_redis: RedisServer
) -> None:
    """turn_lock_s=1 and a 2.5 s upstream: B is accepted once A's lock has expired, and saved first.
    Every turn answered 200 must be in the session; the other is refused, not silently lost."""
    async with served(chat_settings(standin, store_redis, turn_lock_s=1)) as http:
        sid = await new_session(http)
        standin.faults(latency_ms=2500)
        slow = asyncio.create_task(http.post("/v1/chat", json={"message": LLM, "session_id": sid}))
        await asyncio.sleep(1.3)
        fast = await http.post("/v1/chat", json={"message": "thanks", "session_id": sid})
        first = await slow
        standin.faults(latency_ms=0)
        answered = [m for m, r in [(LLM, first), ("thanks", fast)] if r.status_code == 200]
        kept = [t["text"] for t in await turns(http, sid) if t["role"] == "user"]
        assert fast.status_code == 200, fast.text
        assert sorted(kept) == sorted([TEMPLATE, *answered]), (kept, first.status_code, fast.status_code)
        assert first.status_code == 409 and first.json()["error"]["code"] == "turn_lock_expired", first.text


async def test_a_session_deleted_during_a_turn_stays_deleted(
    standin: StandinServer, store_redis: RedisServer
) -> None:
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)
        standin.faults(latency_ms=1000)
        turn = asyncio.create_task(http.post("/v1/chat", json={"message": LLM, "session_id": sid}))
        await asyncio.sleep(0.4)
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 200
        assert (await http.get(f"/v1/sessions/{sid}")).status_code == 404
        answered = await turn
        standin.faults(latency_ms=0)
        after = await http.get(f"/v1/sessions/{sid}")
        assert after.status_code == 404, after.text  # the turn's save did not bring it back
        assert answered.status_code == 404 and answered.json()["error"]["code"] == "session_not_found"


async def test_a_new_session_deleted_during_its_first_stream_never_appears(
    standin: StandinServer, store_redis: RedisServer
) -> None:
    """The stream's meta event names the new session before it is saved: deleting it then works,
    the stream says so, and the session is never created."""
    async with served(chat_settings(standin, store_redis)) as http:
        deleted: list[int] = []

        async def delete(meta: dict[str, Any]) -> None:
            deleted.append((await http.delete(f"/v1/sessions/{meta['session_id']}")).status_code)

        standin.faults(chunk_delay_ms=20)
        seen = await stream_turn(http, {"message": LLM}, on_delta=delete)
        standin.faults(chunk_delay_ms=0)
        sid = seen.of("meta")[0]["session_id"]
        after = await http.get(f"/v1/sessions/{sid}")
        assert (deleted, after.status_code) == ([200], 404), (deleted, after.text)
        assert seen.types[-2:] == ["error", "[DONE]"] and not seen.of("done")
        assert seen.of("error")[0]["error"]["code"] == "session_not_found"


async def test_a_store_stall_does_not_leave_the_session_locked(
    standin: StandinServer, store_redis: RedisServer, admin: Redis
) -> None:
    """CLIENT PAUSE 2500 WRITE while a turn runs under a 1.5 s deadline: the turn gets 503, and
    once the store answers again the session takes the next turn (not 409 for the lock's TTL)."""
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)
        standin.faults(latency_ms=300)
        started = time.monotonic()
        turn = asyncio.create_task(
            http.post("/v1/chat", json={"message": LLM, "session_id": sid}, headers={DEADLINE: "1500"})
        )
        await asyncio.sleep(0.1)
        await admin.execute_command("CLIENT", "PAUSE", 2500, "WRITE")
        stalled = await turn
        answered_after = time.monotonic() - started
        standin.faults(latency_ms=0)
        assert stalled.status_code == 503 and stalled.json()["error"]["code"] == "store_unavailable"
        assert stalled.headers["retry-after"] == "1"
        assert answered_after < 2.0, answered_after  # the deadline, not the stall, bounds the answer
        await asyncio.sleep(max(0.0, started + 0.1 + 2.5 + 0.6 - time.monotonic()))
        left_ms = await admin.pttl(lock_key("default", sid))
        after = await http.post("/v1/chat", json={"message": TEMPLATE, "session_id": sid})
        assert (after.status_code, left_ms) == (200, -2), (after.text, left_ms)


async def test_a_store_stall_during_a_stream_is_ridden_out(
    standin: StandinServer, store_redis: RedisServer, admin: Redis
) -> None:
    """CLIENT PAUSE 2000 WRITE from the first delta of a 0.4 s stream: the save waits the stall out
    within the deadline, then the done event comes and the reply is in the session."""
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)

        async def stall(_: Any) -> None:
            await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")

        standin.faults(chunk_delay_ms=10)
        try:
            seen = await stream_turn(http, {"message": LLM, "session_id": sid}, on_delta=stall)
        except httpx.HTTPError as exc:  # the stream was cut
            pytest.fail(f"the stream was cut: {exc!r}")
        standin.faults(chunk_delay_ms=0)
        assert seen.types[-2:] == ["done", "[DONE]"], seen.types[-3:]
        kept = await turns(http, sid)
        assert len(kept) == 4 and kept[-1]["text"] == seen.of("done")[0]["reply"]


async def test_a_store_stall_past_the_deadline_ends_the_stream_with_an_error_event(
    standin: StandinServer, store_redis: RedisServer, admin: Redis
) -> None:
    """CLIENT PAUSE 4000 WRITE from the first delta, deadline 1.5 s: the save cannot happen in time,
    so the stream ends with a store_unavailable event (never a done event for an unsaved turn), and
    once the stall is over the session is free."""
    async with served(chat_settings(standin, store_redis)) as http:
        sid = await new_session(http)
        paused: list[float] = []

        async def stall(_: Any) -> None:
            await admin.execute_command("CLIENT", "PAUSE", 4000, "WRITE")
            paused.append(time.monotonic())

        standin.faults(chunk_delay_ms=10)
        try:
            seen = await stream_turn(http, {"message": LLM, "session_id": sid}, {DEADLINE: "1500"}, stall)
        except httpx.HTTPError as exc:
            pytest.fail(f"the stream was cut: {exc!r}")
        standin.faults(chunk_delay_ms=0)
        assert seen.types[-2:] == ["error", "[DONE]"] and not seen.of("done"), seen.types[-3:]
        error = seen.of("error")[0]["error"]
        assert error["code"] == "store_unavailable" and error["retry_after_s"] == 1
        assert seen.events[-1][0] < 2.1, seen.events[-1][0]
        await asyncio.sleep(max(0.0, paused[0] + 4.0 + 0.6 - time.monotonic()))
        after = await http.post("/v1/chat", json={"message": TEMPLATE, "session_id": sid})
        assert after.status_code == 200, after.text
        assert len(await turns(http, sid)) == 4  # the first turn and this one; the stalled one not
