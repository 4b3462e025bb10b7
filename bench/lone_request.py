"""Where a lone request's time goes inside one process: the HTTP stack, and the model replica.

Why: at concurrency 1 a request through the service takes well over the bare model's batch-1 time,
and on a shared 2-core VM end-to-end runs drift more than the parts being cut. In process, with the
two variants interleaved request by request, the parts read to a few microseconds.

    python bench/lone_request.py stack      # the app's stack, FastRoutes on and off, instant model
    python bench/lone_request.py replica    # a lone call through NluReplica, stage by stage

``stack``: the whole ASGI app ``create_app`` builds (every middleware, auth and cache off as in
``bench/run.py``) over a client that answers at once, called with one request at a time; the same
app with ``FastRoutes`` passing everything on to FastAPI, interleaved. ``replica``: the real model
(one ONNX Runtime thread, as in ``deployments/local.yaml``); per call, the time to reach the
inference thread, the model's ``predict``, the labelling, the hop back to the event loop, and the
rest. Both print one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

import ray.serve.batching
import uvloop
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from texts import load_texts  # bench/ is sys.path[0] when run as a script

import xz_serve.http.app as app_module
from xz_serve.kernel.types import BatchStats, CallMeta, PredictResult
from xz_serve.models.fake import FakeModel
from xz_serve.models.postprocess import label_outputs
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import XzSettings

SETTINGS = {"access": {"auth_enabled": False}, "cache": {"enabled": False}}
BODIES = {
    "/v1/analyze": {"text": "how much money do i have in my checking account"},
    "/v1/embeddings": {"input": "how much money do i have in my checking account"},
}


class _PassOn:
    """FastRoutes switched off: every request goes on to FastAPI."""

    def __init__(self, app: ASGIApp, routes: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _InstantClient:
    """An NluClient that answers every call with one precomputed result (a cache hit's cost)."""

    def __init__(self, result: PredictResult) -> None:
        self.result = result

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        return self.result

    async def describe(self) -> dict[str, Any]:
        return {"model_id": self.result.model_id}


async def _post(app: ASGIApp, path: str, body: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays: nothing more arrives
        raise AssertionError

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _paired(samples: dict[str, list[float]], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in samples.items():
        row = {"median_us": round(statistics.median(values) * 1e6, 1)}
        if name != base:
            diffs = [a - b for a, b in zip(values, samples[base], strict=True)]
            row[f"paired_median_minus_{base}_us"] = round(statistics.median(diffs) * 1e6, 1)
        out[name] = row
    return out


async def stack(requests: int) -> dict[str, Any]:
    """Event-loop time per request of the whole app, FastRoutes on and off, per route."""
    settings = XzSettings.model_validate(SETTINGS)
    model = FakeModel()
    outputs = model.predict(["hello"])
    predictions = label_outputs(outputs, model.labels, outputs.token_counts, top_k=5)
    client = _InstantClient(PredictResult(predictions, BatchStats(0.1, 1.0, 1, 1), model.model_id))
    fast = app_module.create_app(client, settings)
    original = app_module.FastRoutes
    app_module.FastRoutes = _PassOn  # type: ignore[misc,assignment]
    try:
        plain = app_module.create_app(client, settings)
    finally:
        app_module.FastRoutes = original  # type: ignore[misc]
    apps: dict[str, ASGIApp] = {"fast_routes": fast, "fastapi_only": plain}
    result: dict[str, Any] = {"requests": requests}
    for path, payload in BODIES.items():
        body = json.dumps(payload).encode()
        for app in apps.values():  # warm-up: first calls build the middleware stack
            for _ in range(300):
                assert await _post(app, path, body) == 200
        samples: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(requests):
            for name in random.sample(list(apps), len(apps)):
                started = time.perf_counter()
                await _post(apps[name], path, body)
                samples[name].append(time.perf_counter() - started)
        result[path] = _paired(samples, "fastapi_only")
    return result


async def replica(rounds: int) -> dict[str, Any]:
    """A lone call through NluReplica with the real model, split into its stages (milliseconds)."""
    ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None  # type: ignore[method-assign]
    settings = XzSettings.model_validate(
        {**SETTINGS, "model": {"intra_op_threads": 1, "build_if_missing": False}}
    )
    nlu = NluReplica(settings.model, settings.batch, settings.api.top_k)
    marks: dict[str, float] = {}
    model = nlu.model

    def labelled(texts: list[str]) -> list[Any]:
        marks["thread_in"] = time.perf_counter()
        outputs = model.predict(texts)
        marks["predicted"] = time.perf_counter()
        predictions = label_outputs(outputs, model.labels, outputs.token_counts, nlu.top_k)
        marks["thread_out"] = time.perf_counter()
        return predictions

    infer = nlu._infer

    async def timed_infer(texts: list[str]) -> Any:
        marks["infer_in"] = time.perf_counter()
        answer = await infer(texts)
        marks["infer_out"] = time.perf_counter()
        return answer

    nlu._labelled = labelled  # type: ignore[method-assign]
    nlu._infer = timed_infer  # type: ignore[method-assign]
    texts = load_texts(300)
    for text in texts[:30]:
        await nlu.predict([text])
    rows: list[dict[str, float]] = []
    direct: list[float] = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            model.predict([text])  # the bare model on the event loop's thread, for reference
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            await nlu.predict([text])
            ended = time.perf_counter()
            rows.append({
                "total": ended - started,
                "to_pass": marks["infer_in"] - started,
                "hop_to_thread": marks["thread_in"] - marks["infer_in"],
                "predict": marks["predicted"] - marks["thread_in"],
                "labelling": marks["thread_out"] - marks["predicted"],
                "hop_to_loop": marks["infer_out"] - marks["thread_out"],
                "after_pass": ended - marks["infer_out"],
            })  # fmt: skip
    stages = {key: round(statistics.median(r[key] for r in rows) * 1e3, 3) for key in rows[0]}
    return {
        "calls": len(rows),
        "median_ms": stages,
        "bare_predict_on_loop_thread_median_ms": round(statistics.median(direct) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["stack", "replica"])
    parser.add_argument("--requests", type=int, default=5000, help="stack: requests per variant and route")
    parser.add_argument("--rounds", type=int, default=3, help="replica: passes over the 300 texts")
    args = parser.parse_args()
    work = stack(args.requests) if args.part == "stack" else replica(args.rounds)
    print(json.dumps(uvloop.run(work)))


if __name__ == "__main__":
    main()
