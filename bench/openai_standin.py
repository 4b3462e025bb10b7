"""A stand-in for a paid LLM API: a real HTTP server speaking OpenAI's chat-completions protocol.

It answers ``POST /v1/chat/completions`` (JSON, or SSE chunks ending in ``data: [DONE]`` when
``stream`` is true, with a usage chunk when ``stream_options.include_usage`` is set) and
``GET /v1/models``, so the code under test cannot tell it from the real thing. Replies are
deterministic for a prompt and about as long as an assistant's answer to a FAQ (60-220 words), and
``usage`` counts tokens with its own word-piece rule (every word, number and punctuation mark is a
token, long words one per 6 letters, plus OpenAI's per-message overhead), so token savings are
measured, not assumed.

Faults for tests and benchmarks, from flags or at run time through ``POST /admin/faults``:
``fail_next`` (a list of statuses the next requests get, e.g. [429, 500]), ``fail_status`` (every
request fails with it until cleared), ``retry_after_s`` (sent with 429/503), ``latency_ms`` (before
the first byte), ``chunk_delay_ms`` (between stream chunks), ``omit_usage``. ``GET /admin/stats``
returns counters (requests, failures injected, tokens served); ``POST /admin/reset`` zeroes them.

    python -m bench.openai_standin --port 8399 [--latency-ms 50] [--omit-usage] [--api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "standin-chat-1"
_WORDS = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
_VOCAB = re.findall(
    r"[a-z]+",
    "you can open the settings page and choose the option that matches your account then confirm "
    "it with the link we send by email most users find this works within a few minutes if it does "
    "not try again later or contact support with the error message shown on screen and the steps "
    "you took before it appeared we also keep a help article about this with screenshots for each "
    "step including what to do when the button is missing or greyed out on mobile devices",
)


def count_tokens(text: str) -> int:
    """The stand-in's own token count (what its ``usage`` reports)."""
    return sum(max(1, math.ceil(len(w) / 6)) for w in _WORDS.findall(text))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return 3 + sum(4 + count_tokens(str(m.get("content", ""))) for m in messages)


def reply_for(messages: list[dict[str, Any]], max_tokens: int | None) -> tuple[str, str]:
    """A deterministic reply (and finish reason) for the last user message."""
    question = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
    seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    words = [_VOCAB[(seed >> (i % 48) ^ i * 2654435761) % len(_VOCAB)] for i in range(60 + seed % 161)]
    text = f'About "{question[:80]}": ' + " ".join(words) + "."
    if max_tokens is not None and count_tokens(text) > max_tokens:
        kept: list[str] = []
        for word in text.split(" "):
            if count_tokens(" ".join([*kept, word])) > max_tokens:
                break
            kept.append(word)
        return " ".join(kept), "length"
    return text, "stop"


@dataclass
class Faults:
    fail_next: list[int] = field(default_factory=list)
    fail_status: int | None = None
    retry_after_s: float | None = 1.0
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    omit_usage: bool = False


@dataclass
class Stats:
    requests: int = 0
    streamed: int = 0
    failures_injected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def create_app(faults: Faults, api_key: str | None = None) -> Starlette:
    stats = Stats()

    def error(status: int, message: str) -> Response:
        headers = {}
        if status in (429, 503) and faults.retry_after_s is not None:
            headers["retry-after"] = f"{faults.retry_after_s:g}"
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return JSONResponse(
            {"error": {"message": message, "type": kind, "code": None}}, status, headers=headers
        )

    async def completions(request: Request) -> Response:
        stats.requests += 1
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(
                {"error": {"message": "invalid api key", "type": "invalid_request_error"}}, 401
            )
        try:
            body = await request.json()
            messages = list(body["messages"])
        except (ValueError, KeyError, TypeError):
            message = {"message": "messages is required", "type": "invalid_request_error"}
            return JSONResponse({"error": message}, 400)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        status = faults.fail_next.pop(0) if faults.fail_next else faults.fail_status
        if status:
            stats.failures_injected += 1
            return error(status, f"injected failure {status}")
        text, finish = reply_for(messages, body.get("max_tokens"))
        usage = {"prompt_tokens": prompt_tokens(messages), "completion_tokens": count_tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        stats.prompt_tokens += usage["prompt_tokens"]
        stats.completion_tokens += usage["completion_tokens"]
        ident = f"chatcmpl-{hashlib.sha256(text.encode()).hexdigest()[:24]}"
        created = int(time.time())
        model = body.get("model") or MODEL
        if not body.get("stream"):
            reply: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
            }
            if not faults.omit_usage:
                reply["usage"] = usage
            return JSONResponse(reply)
        stats.streamed += 1
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncIterator[bytes]:
            def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
                chunk = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **(extra or {}),
                }
                return f"data: {json.dumps(chunk)}\n\n".encode()

            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            words = text.split(" ")
            for i in range(0, len(words), 4):
                piece = " ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "")
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                if faults.chunk_delay_ms:
                    await asyncio.sleep(faults.chunk_delay_ms / 1000)
            yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
            if include_usage and not faults.omit_usage:
                yield event([], {"usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}]}
        )

    async def set_faults(request: Request) -> Response:
        body = await request.json()
        for name, value in body.items():
            if not hasattr(faults, name):
                return JSONResponse({"error": {"message": f"unknown fault {name}"}}, 400)
            setattr(faults, name, list(value) if name == "fail_next" else value)
        return JSONResponse(asdict(faults))

    async def get_stats(_: Request) -> Response:
        return JSONResponse(asdict(stats))

    async def reset(_: Request) -> Response:
        nonlocal stats
        stats = Stats()
        faults.__init__()  # type: ignore[misc]
        return JSONResponse(asdict(stats))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/admin/faults", set_faults, methods=["POST"]),
            Route("/admin/stats", get_stats, methods=["GET"]),
            Route("/admin/reset", reset, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--omit-usage", action="store_true")
    parser.add_argument("--fail-status", type=int, default=None, help="fail every request with this status")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    args = parser.parse_args()
    faults = Faults(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        omit_usage=args.omit_usage,
        fail_status=args.fail_status,
    )
    uvicorn.run(
        create_app(faults, args.api_key),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
