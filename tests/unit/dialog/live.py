"""The real app on a real uvicorn server, in the test's own event loop, over a real store Redis.

httpx's ASGI transport buffers a whole response, so a test that must act while a stream is still
being written (delete the session, stall the store) talks to the app over a socket instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tests.conftest import free_port
from tests.redis_server import RedisServer
from tests.standin import StandinServer
from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_api
from xz_serve.settings import StoreSpec, XzSettings

# Messages FakeModel routes under the shipped policy: an llm rule, and a template.
LLM = "hello there"
TEMPLATE = "hi"


def chat_settings(standin: StandinServer, store: RedisServer, **dialog: Any) -> XzSettings:
    upstream = {"name": "standin", "model": "standin-chat-1", "base_url": standin.base_url,
                "backoff_base_s": 0.01}  # fmt: skip
    return XzSettings(
        access={"auth_enabled": False},
        store=StoreSpec(redis_url=store.url, session_timeout_ms=500),
        dialog={"upstreams": [upstream], **dialog},
    )


@asynccontextmanager
async def served(settings: XzSettings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app served by uvicorn on a free 127.0.0.1 port (stopped on exit)."""
    port = free_port()
    config = uvicorn.Config(
        create_api(FakeNluClient(), settings), host="127.0.0.1", port=port, log_level="warning",
        lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@dataclass
class Streamed:
    """One streamed turn as the client saw it: each event with its arrival time (s after the POST)."""

    status: int
    events: list[tuple[float, Any]] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e if isinstance(e, str) else e["type"] for _, e in self.events]

    def of(self, kind: str) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, dict) and e["type"] == kind]


async def stream_turn(
    http: httpx.AsyncClient,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    on_delta: Any = None,
) -> Streamed:
    """POST a streamed turn and read every event; ``on_delta(meta)`` is awaited once, at the first
    delta (the turn is then under way: session read, lock taken, upstream streaming)."""
    started = time.monotonic()
    async with http.stream("POST", "/v1/chat", json={**payload, "stream": True}, headers=headers) as response:
        seen = Streamed(response.status_code)
        if response.status_code != 200:
            await response.aread()
            seen.events.append((time.monotonic() - started, response.json()))
            return seen
        meta = None
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            event = data if data == "[DONE]" else json.loads(data)
            seen.events.append((time.monotonic() - started, event))
            if isinstance(event, dict) and event["type"] == "meta":
                meta = event
            if on_delta is not None and isinstance(event, dict) and event["type"] == "delta":
                callback, on_delta = on_delta, None
                await callback(meta)
    return seen
