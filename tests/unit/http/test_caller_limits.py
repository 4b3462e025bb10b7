"""A caller's share of a replica, on the real ASGI app (create_app, fake model): one API key (with
auth off, one client address) holds at most ``api.max_in_flight_per_key`` requests in flight,
past which it gets 429 + Retry-After while others are served; and a body that does not arrive
in full within ``api.body_timeout_s`` (or the request's deadline, if sooner) is cut with 408."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.unit.fakes import FakeNluClient
from xz_serve.access.gate import AccessGate
from xz_serve.access.keys import mint
from xz_serve.http.app import create_app
from xz_serve.http.middleware.admission import max_in_flight
from xz_serve.http.middleware.in_flight import max_in_flight_per_key
from xz_serve.settings import XzSettings

BODY = json.dumps({"text": "what is my balance"}).encode()
Receive = Callable[[], Awaitable[dict[str, Any]]]


def settings(auth: bool, **api: Any) -> XzSettings:
    return XzSettings(
        api={"max_in_flight": 4, **api}, access={"auth_enabled": auth}, cache={"enabled": False}
    )


def whole(body: bytes = BODY) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect until the test ends
        raise AssertionError

    return receive


def trickle(every_s: float = 0.02) -> Receive:
    """One byte every ``every_s``, never the last: the slow-body client."""

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": b" ", "more_body": True}

    return receive


async def call(
    app: Any,
    receive: Receive,
    *,
    auth: str | None = None,
    client: str = "10.0.0.1",
    length: int = len(BODY),
    **extra: str,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One POST /v1/analyze straight into the ASGI app: status, headers, JSON body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/analyze", "raw_path": b"/v1/analyze", "root_path": "",
        "query_string": b"", "headers": headers, "client": (client, 40000), "server": ("t", 80),
    }  # fmt: skip
    start: dict[str, Any] = {}
    body = bytearray()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    answered = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], answered, json.loads(body)


async def key(app: Any) -> str:
    gate: AccessGate = app.app.state.access
    plain, record = mint("test", requests_per_minute=100_000, texts_per_minute=100_000)
    await gate.store.put(record)
    return f"Bearer {plain}"


def test_the_default_share_is_half_the_replicas_bound() -> None:
    for size in (4, 6, 192):
        derived = settings(auth=True, max_in_flight=size)
        assert max_in_flight(derived) == size
        assert max_in_flight_per_key(derived) == size // 2
    assert max_in_flight_per_key(settings(auth=True, max_in_flight=1)) == 1
    assert max_in_flight_per_key(settings(auth=True, max_in_flight_per_key=3)) == 3
    assert max_in_flight_per_key(settings(auth=True, max_in_flight_per_key=50)) == 4  # never above the bound


async def test_one_key_cannot_take_every_slot_of_the_replica() -> None:
    app = create_app(FakeNluClient(), settings(auth=True, body_timeout_s=30))
    attacker, other = await key(app), await key(app)
    held = [asyncio.create_task(call(app, trickle(), auth=attacker, length=100_000)) for _ in range(2)]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in held)
    status, headers, body = await asyncio.wait_for(call(app, whole(), auth=attacker), 2)
    assert (status, body["error"]["code"]) == (429, "too_many_in_flight"), body
    assert headers["retry-after"] == "1"
    for _ in range(3):  # the other tenant is served meanwhile, and more than once at a time
        pair = asyncio.gather(*(call(app, whole(), auth=other) for _ in range(2)))
        results = await asyncio.wait_for(pair, 2)
        assert [r[0] for r in results] == [200, 200]
    for task in held:  # the slow clients go away: their slots come back
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert (await asyncio.wait_for(call(app, whole(), auth=attacker), 2))[0] == 200


async def test_with_auth_off_the_share_is_per_client_address() -> None:
    app = create_app(FakeNluClient(), settings(auth=False, body_timeout_s=30))
    held = [asyncio.create_task(call(app, trickle(), client="10.0.0.9", length=100_000)) for _ in range(2)]
    await asyncio.sleep(0.1)
    status, _, body = await asyncio.wait_for(call(app, whole(), client="10.0.0.9"), 2)
    assert (status, body["error"]["code"]) == (429, "too_many_in_flight")
    assert (await asyncio.wait_for(call(app, whole(), client="10.0.0.10"), 2))[0] == 200
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_a_trickled_body_is_cut_at_the_body_timeout() -> None:
    app = create_app(FakeNluClient(), settings(auth=True, body_timeout_s=0.3))
    attacker = await key(app)
    started = time.monotonic()
    status, headers, body = await asyncio.wait_for(call(app, trickle(), auth=attacker, length=100_000), 3)
    elapsed = time.monotonic() - started
    assert (status, body["error"]["code"]) == (408, "body_timeout"), body
    assert headers["connection"] == "close"
    assert 0.3 <= elapsed < 1.5, elapsed
    assert (await call(app, whole(), auth=attacker))[0] == 200  # the slot came back


async def test_the_deadline_is_enforced_while_the_body_is_read() -> None:
    app = create_app(FakeNluClient(), settings(auth=True, body_timeout_s=30))
    attacker = await key(app)
    started = time.monotonic()
    status, _, body = await asyncio.wait_for(
        call(app, trickle(), auth=attacker, length=100_000, x_request_timeout_ms="200"), 3
    )
    elapsed = time.monotonic() - started
    assert (status, body["error"]["code"]) == (408, "body_timeout"), body
    assert "deadline" in body["error"]["message"]
    assert 0.2 <= elapsed < 1.5, elapsed


async def test_a_client_that_leaves_mid_body_frees_its_slot() -> None:
    app = create_app(FakeNluClient(), settings(auth=True, body_timeout_s=30))
    leaver = await key(app)
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        await asyncio.sleep(0.01)
        sent += 1
        if sent > 5:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b" ", "more_body": True}

    for _ in range(3):  # more than its share: each left, none is still counted
        await asyncio.wait_for(call(app, receive, auth=leaver, length=100_000), 2)
        sent = 0
    assert (await asyncio.wait_for(call(app, whole(), auth=leaver), 2))[0] == 200


async def test_a_slow_but_complete_body_is_served() -> None:
    app = create_app(FakeNluClient(), settings(auth=False, body_timeout_s=5))
    pieces = [BODY[i : i + 8] for i in range(0, len(BODY), 8)]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    status, _, body = await asyncio.wait_for(call(app, receive), 3)
    assert status == 200 and body["results"][0]["index"] == 0


@pytest.mark.parametrize("declared", [10_000_000, None])
async def test_an_oversized_body_is_still_413(declared: int | None) -> None:
    app = create_app(FakeNluClient(), settings(auth=False, max_body_bytes=2048))
    chunks = [b"x" * 1024] * 3

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}

    status, _, body = await call(app, receive, length=declared if declared is not None else 100)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
