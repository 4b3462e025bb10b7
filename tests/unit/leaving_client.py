"""Reading Server-Sent Events in tests, and an ASGI client that leaves a stream early, as a real
client drops its connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any


def sse_events(text: str) -> list[Any]:
    """The ``data:`` events of an SSE body, JSON decoded, with ``[DONE]`` kept as the string."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def leave_stream(
    app: Any, path: str, payload: dict[str, Any], after_chunks: int, headers: dict[str, str] | None = None
) -> list[bytes]:
    """POST ``payload`` to ``path`` as a client that disconnects once it has read ``after_chunks``
    body chunks (0: while the response's first message is still being written, so no body is
    produced at all); the chunks it read. Drives the ASGI app directly, the way uvicorn does (spec
    2.3: the app learns of the disconnect from ``receive``)."""
    body = json.dumps(payload).encode()
    chunks: list[bytes] = []
    gone = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and after_chunks == 0:
            await asyncio.sleep(0.05)  # a paused transport (a slow client): the disconnect lands here
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
        if len(chunks) >= after_chunks:
            gone.set()

    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *extra],
    }  # fmt: skip
    if after_chunks == 0:
        gone.set()
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return chunks
