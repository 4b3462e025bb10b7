"""A counted slot comes back with the answer's last body message, once, for the gate and the
per-caller cap alike: a client that has its answer and sends the next request at once must find
the slot free while the layers inside still finish the first."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope, Send

from xz_serve.http.middleware.in_flight import CallerCapMiddleware
from xz_serve.http.middleware.slot import AnswerSlot


async def test_freed_once_by_the_last_body_message_or_by_free() -> None:
    released: list[int] = []
    slot = AnswerSlot(lambda: released.append(1))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    wrapped = slot.sending(send)
    await wrapped({"type": "http.response.start", "status": 200, "headers": []})
    await wrapped({"type": "http.response.body", "body": b"a", "more_body": True})
    assert released == [] and slot.held
    await wrapped({"type": "http.response.body", "body": b"b"})
    assert released == [1] and not slot.held
    slot.free()  # the request ends after its answer: nothing more to give back
    assert released == [1]
    assert [m.get("body") for m in sent] == [None, b"a", b"b"]  # every message still goes out

    errored = AnswerSlot(lambda: released.append(2))
    errored.free()  # no answer at all (an error, a disconnect)
    errored.free()
    assert released == [1, 2]


async def test_a_key_at_its_cap_sends_its_next_request_as_the_answer_arrives() -> None:
    finishing = asyncio.Event()
    answered = asyncio.Event()

    async def lingering(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        answered.set()
        await finishing.wait()  # spans end, metrics record: after the answer went out

    app = CallerCapMiddleware(lingering, cap=1)
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/v1/analyze", "headers": [],
             "client": ("127.0.0.1", 5000)}  # fmt: skip
    first = asyncio.create_task(app(dict(scope), receive, send))
    await answered.wait()
    second = asyncio.create_task(app(dict(scope), receive, send))
    for _ in range(20):  # the second request runs to its answer (or its refusal) in a few steps
        if len(statuses) == 2:
            break
        await asyncio.sleep(0)
    finishing.set()  # before asserting: a failure must not leave the first request hanging
    assert statuses == [200, 200]  # not 429: the first answer's slot was already free
    await asyncio.gather(first, second)
    assert app.table.callers() == 0
