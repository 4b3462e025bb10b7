"""AdmissionMiddleware: past the bound a request gets an immediate JSON 503 with Retry-After,
probes stay open, and a cancelled (disconnected) request frees its slot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from starlette.types import Receive, Scope, Send

from xz_serve.http.middleware.admission import AdmissionMiddleware, max_in_flight
from xz_serve.settings import XzSettings


class Gate:
    """An ASGI app that answers 200 once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_bound_derives_from_the_batch() -> None:
    assert max_in_flight(XzSettings(batch={"max_batch_size": 16, "queue_batches": 2})) == 32
    assert max_in_flight(XzSettings(api={"max_in_flight": 5})) == 5


def test_bound_stays_below_what_serve_lets_the_replica_hold() -> None:
    """With all of the HTTP replica's Serve slots taken, Serve queues the request itself and then
    answers a plain-text 503. The gate binds at three quarters of those slots, leaving the rest for
    refusals in progress (defaults: 32 batches of 32 texts, 256 slots)."""
    assert max_in_flight(XzSettings()) == 192
    fused = XzSettings(nlu={"max_ongoing_requests": 64}, ingress={"max_ongoing_requests": 512})
    assert max_in_flight(fused) == 48  # fused: the nlu deployment serves HTTP
    split = fused.model_copy(update={"topology": "split"})
    assert max_in_flight(split) == 384  # split: the ingress deployment does
    explicit = XzSettings(api={"max_in_flight": 1000}, nlu={"max_ongoing_requests": 100})
    assert max_in_flight(explicit) == 75
    assert max_in_flight(XzSettings(batch={"max_batch_size": 1}, nlu={"max_ongoing_requests": 1})) == 1


async def test_excess_is_refused_at_once_and_slots_come_back() -> None:
    inner = Gate()
    app = AdmissionMiddleware(inner, limit=2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        held = [asyncio.create_task(http.post("/v1/analyze")) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert app.in_flight == 2
        refused = await asyncio.wait_for(http.post("/v1/analyze"), 1)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        probe = asyncio.create_task(http.get("/readyz"))  # exempt: waits on the gate like the others
        await asyncio.sleep(0.05)
        assert not probe.done()
        held[0].cancel()  # a client that goes away
        await asyncio.gather(held[0], return_exceptions=True)
        assert app.in_flight == 1
        inner.release.set()
        assert (await held[1]).status_code == 200 and (await probe).status_code == 200
        assert app.in_flight == 0
        assert (await http.post("/v1/analyze")).status_code == 200


def streaming_app(
    sent_part: asyncio.Event, next_chunk: asyncio.Event, teardown: asyncio.Event
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A stream of two chunks, then work after its last byte (spans end, metrics record)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        sent_part.set()
        await next_chunk.wait()  # a long stream: still held between chunks
        await send({"type": "http.response.body", "body": b"b"})
        await teardown.wait()  # after the last byte: the answer is out, the work is not

    return app


async def run_two(inside_limit: int | None) -> list[int]:
    """A stream, a request during it, its last byte, then a request during its teardown: the
    statuses the three requests got."""
    sent_part, next_chunk, teardown = asyncio.Event(), asyncio.Event(), asyncio.Event()
    app = AdmissionMiddleware(
        streaming_app(sent_part, next_chunk, teardown), limit=1, inside_limit=inside_limit
    )
    messages: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/stream", "headers": []}
    first = asyncio.create_task(app(scope, receive, send))
    await sent_part.wait()
    assert app.in_flight == 1
    await app(scope, receive, send)  # refused: the stream still holds the slot
    next_chunk.set()
    for _ in range(10):
        if messages[-1].get("body") == b"b":
            break
        await asyncio.sleep(0)
    assert messages[-1].get("body") == b"b"
    assert app.in_flight == 0 and app.inside == 1 and not first.done()  # answered, still inside
    second = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(0.01)
    teardown.set()
    await asyncio.gather(first, second)
    assert app.in_flight == 0 == app.inside  # each request released both counts exactly once
    return [int(str(m["status"])) for m in messages if m["type"] == "http.response.start"]


async def test_the_slot_is_free_once_the_last_byte_is_sent() -> None:
    """A client that already has its answer and sends the next request finds the slot free, while
    the layers inside still work on the first; with room under Serve's slots it is admitted."""
    statuses = await run_two(inside_limit=2)
    assert statuses == [200, 503, 200]


async def test_requests_still_inside_count_against_serves_slots() -> None:
    """Serve counts a request until the app returns: at the bound derived from Serve's slots, one
    in its teardown still counts, so Serve's own plain-text 503 is never reached."""
    statuses = await run_two(inside_limit=None)  # the bound of both counts is 1
    assert statuses == [200, 503, 503]


async def test_refusals_do_not_share_header_lists() -> None:
    """Outer layers may append to a response's headers in place (Serve adds x-request-id)."""
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            headers = message["headers"]
            assert isinstance(headers, list)
            headers.append((b"x-request-id", b"r"))  # what an outer middleware does
            sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = AdmissionMiddleware(Gate(), limit=0)
    scope = {"type": "http", "path": "/v1/intent", "method": "POST", "headers": []}
    for _ in range(3):
        await app(scope, receive, send)
    assert [len(m["headers"]) for m in sent] == [4, 4, 4]  # type: ignore[arg-type]


async def test_only_the_probe_paths_themselves_are_exempt() -> None:
    """A path that merely ends like a probe (``/v1/models/healthz``) takes a slot like any other;
    the probes stay exempt under a route prefix (Serve's ``root_path``)."""
    inner = Gate()
    inner.release.set()
    app = AdmissionMiddleware(inner, limit=0)
    sent: list[int] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            sent.append(int(message["status"]))  # type: ignore[call-overload]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    def scope(path: str, root: str = "") -> dict[str, object]:
        return {"type": "http", "path": root + path, "root_path": root, "method": "GET", "headers": []}

    for path in ["/v1/models/healthz", "/v1/readyz", "/x/healthz/", "/healthzz"]:
        await app(scope(path), receive, send)
    assert sent == [503, 503, 503, 503]
    sent.clear()
    for path, root in [("/healthz", ""), ("/readyz", ""), ("/healthz", "/app"), ("/readyz", "/app")]:
        await app(scope(path, root), receive, send)
    assert sent == [200, 200, 200, 200]
