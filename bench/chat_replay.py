"""Replay an FAQ-like chat stream through /v1/chat, reply cache off vs on; count upstream tokens.

Many users ask the same questions in different words: the stream is built from StackFAQ (60
questions, each with its canonical wording and ~10 human rephrasings), interleaved with CLINC150
validation utterances as other traffic (greetings, balances, transfers...). Two streams:

- ``replay``: realistic popularity. Each FAQ message picks a question by a Zipf law (s = 1.1: a few
  questions are asked often) and one of its wordings uniformly, so popular questions recur, often in
  words already seen; 20% of messages are other traffic.
- ``distinct``: every StackFAQ wording exactly once, shuffled, plus 20% other traffic: no text ever
  repeats, so every cache hit is a true paraphrase hit (the hard case).

Each stream runs twice through the real HTTP app (``create_api``: routes, access, exact NLU cache,
dialog service, policy from deployments/dialog/policy.yaml) with the real INT8 model in process, a real
redis-server for the cache and one for sessions, and the OpenAI stand-in (bench/openai_standin.py,
a real HTTP server with 150 ms latency) as the upstream: once with ``dialog.reply_cache`` off, once
on. Ray is not started: the figures here are upstream tokens and wrong replies, which do not depend
on the serving topology; P50/P99 are end-to-end reply times in process, comparable between the two
runs only.

A cached reply is *wrong* when the question it was generated for (the stand-in quotes the question it
answers) is not one of the same StackFAQ entry's wordings. Written to bench/results/chat_replay.{json,md}.

    flock /tmp/xz/ray.lock timeout 900 python -m bench.chat_replay
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.local_servers import RedisServer, StandinServer
from bench.results_md import command_line, write_markdown
from xz_serve.http.app import create_api
from xz_serve.kernel.types import BatchStats, CallMeta, PredictResult
from xz_serve.models.postprocess import label_outputs
from xz_serve.settings import ModelSpec, XzSettings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
QUOTED = re.compile(r'^About "(.*?)": ', re.S)

Message = tuple[str, str]  # text, what it asks: "faq:<id>" (StackFAQ entry) or "intent:<label>" (CLINC150)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_streams(data: Path, seed: int, faq_messages: int, other_share: float) -> dict[str, list[Message]]:
    faq = read_jsonl(data / "paraphrase" / "stackfaq_dev.jsonl")
    wordings = [list(dict.fromkeys([f["question"], *f["rephrasings"]])) for f in faq]
    clinc = [
        (r["text"], f"intent:{r['label']}")
        for r in read_jsonl(data / "intent_clinc150" / "val.jsonl")
        if r["label"] != "oos"
    ]
    rng = random.Random(seed)
    order = list(range(len(faq)))
    rng.shuffle(order)  # which questions are popular: random, not file order
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(faq))]
    replay: list[Message] = []
    for _ in range(faq_messages):
        i = order[rng.choices(range(len(faq)), weights=weights)[0]]
        replay.append((rng.choice(wordings[i]), f"faq:{i}"))
    distinct: list[Message] = [(w, f"faq:{i}") for i, ws in enumerate(wordings) for w in ws]
    rng.shuffle(distinct)
    streams = {}
    for name, faq_stream in (("replay", replay), ("distinct", distinct)):
        others = round(len(faq_stream) * other_share / (1 - other_share))
        mixed: list[Message] = [*faq_stream, *rng.sample(clinc, others)]
        # interleave: keep the FAQ order, scatter the other traffic through it
        rng.shuffle(mixed)
        streams[name] = mixed
    return streams


class InProcessNlu:
    """NluClient over the INT8 model in this process (one pass per call, in a worker thread)."""

    def __init__(self, artifacts: Path) -> None:
        from xz_serve.models.loading import load_onnx_model

        self.model = load_onnx_model(ModelSpec(artifacts_dir=artifacts, build_if_missing=False))
        self.lock = asyncio.Lock()

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        started = time.perf_counter()
        async with self.lock:  # one pass at a time, as one model replica runs them
            outputs = await asyncio.to_thread(self.model.predict, texts)
        predictions = label_outputs(outputs, self.model.labels, outputs.token_counts, 3)
        ms = (time.perf_counter() - started) * 1000
        return PredictResult(predictions, BatchStats(0.0, ms, len(texts), 1), self.model.model_id)

    async def describe(self) -> dict[str, Any]:
        return {"model_id": self.model.model_id}


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


async def run_once(
    stream: list[Message],
    nlu: InProcessNlu,
    standin: StandinServer,
    cache_url: str,
    store_url: str,
    reply_cache: bool,
    threshold: float | None,
    concurrency: int,
) -> dict[str, Any]:
    standin.reset()
    standin.faults(latency_ms=150)
    settings = XzSettings(
        access={"auth_enabled": False},
        cache={"redis_url": cache_url},
        store={"redis_url": store_url},
        dialog={
            "policy_path": REPO / "deployments" / "dialog" / "policy.yaml",
            "upstreams": [{"name": "standin", "base_url": standin.base_url, "model": "standin-chat-1"}],
            "reply_cache": reply_cache,
            "reply_cache_threshold": threshold,
        },
        model={"artifacts_dir": REPO / "artifacts", "build_if_missing": False},
    )
    app = create_api(nlu, settings)  # type: ignore[arg-type]
    records: list[dict[str, Any]] = []
    queue: asyncio.Queue[tuple[int, Message]] = asyncio.Queue()
    for item in enumerate(stream):
        queue.put_nowait(item)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as http:

        async def user() -> None:
            while not queue.empty():
                index, (text, truth) = queue.get_nowait()
                started = time.perf_counter()
                response = await http.post("/v1/chat", json={"message": text})
                elapsed = (time.perf_counter() - started) * 1000
                body = response.json()
                records.append(
                    {
                        "index": index,
                        "text": text,
                        "truth": truth,
                        "status": response.status_code,
                        "ms": elapsed,
                        "policy": body.get("policy"),
                        "intent": (body.get("intent") or {}).get("label"),
                        "reply": body.get("reply", ""),
                    }
                )

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    stats = standin.stats()
    return {"records": records, "upstream": stats, "wall_s": round(wall, 1)}


def evaluate(run: dict[str, Any], asks: dict[str, str]) -> dict[str, Any]:
    """A cached reply is right only if its source question asks what the message asks."""
    records = run["records"]
    faq_records = [r for r in records if r["truth"].startswith("faq:")]
    hits = [r for r in records if r["policy"] == "cache"]
    wrong = []
    for r in hits:
        quoted = QUOTED.match(r["reply"])
        source = asks.get(quoted.group(1)) if quoted else None
        if source != r["truth"]:
            wrong.append(r)
    by_policy: dict[str, int] = {}
    for r in records:
        by_policy[str(r["policy"])] = by_policy.get(str(r["policy"]), 0) + 1
    tokens = run["upstream"]["prompt_tokens"] + run["upstream"]["completion_tokens"]
    ms = [r["ms"] for r in records]
    faq_oos = sum(r["intent"] == "oos" for r in faq_records)
    return {
        "messages": len(records),
        "faq_messages": len(faq_records),
        "errors": sum(r["status"] != 200 for r in records),
        "policies": dict(sorted(by_policy.items())),
        "faq_labelled_oos": round(faq_oos / max(1, len(faq_records)), 4),
        "upstream_requests": run["upstream"]["requests"],
        "upstream_prompt_tokens": run["upstream"]["prompt_tokens"],
        "upstream_completion_tokens": run["upstream"]["completion_tokens"],
        "upstream_tokens": tokens,
        "cache_hits": len(hits),
        "faq_hit_rate": round(sum(r["truth"].startswith("faq:") for r in hits) / max(1, len(faq_records)), 4),
        "wrong_cached_replies": len(wrong),
        "wrong_share_of_replies": round(len(wrong) / max(1, len(records)), 4),
        "wrong_share_of_hits": round(len(wrong) / max(1, len(hits)), 4),
        "wrong_examples": [
            {"message": r["text"], "answered": QUOTED.match(r["reply"]).group(1)}  # type: ignore[union-attr]
            for r in wrong[:10]
        ],
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "p50_ms_cache_hits": percentile([r["ms"] for r in hits], 50),
        "wall_s": run["wall_s"],
    }


def report(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Chat replay: upstream tokens with and without the semantic reply cache",
        "",
        f"Model `{results['model_id']}`; made by `python -m bench.chat_replay` (method in its docstring). "
        f"Upstream: OpenAI stand-in, {results['upstream_latency_ms']} ms per call; {results['concurrency']} "
        f"concurrent users; reply cache margin {results['margin']}, pair verifier "
        f"{'on' if results['verify'] else 'off'}; `t` is the cosine threshold (default "
        f"{results['default_threshold']}, the semantic cache's).",
        "",
        "| stream | reply cache | messages | upstream requests | upstream tokens | tokens saved "
        "| FAQ hit rate "
        "| wrong cached replies | wrong / replies | wrong / hits | P50 ms | P99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results["streams"].items():
        off = runs["off"]
        for label, r in runs.items():
            saved = 1 - r["upstream_tokens"] / max(1, off["upstream_tokens"])
            r["tokens_saved"] = round(saved, 4)
            lines.append(
                f"| {name} | {label} | {r['messages']} | {r['upstream_requests']} | {r['upstream_tokens']} "
                f"| {'' if label == 'off' else f'{saved:.1%}'} | {r['faq_hit_rate']:.1%} | "
                f"{r['wrong_cached_replies']} | {r['wrong_share_of_replies']:.2%} | "
                f"{r['wrong_share_of_hits']:.2%} | {r['p50_ms']} | {r['p99_ms']} |"
            )
    lines += ["", "How each reply was produced, per run:", ""]
    for name, runs in results["streams"].items():
        for label, r in runs.items():
            lines.append(
                f"- {name}, {label}: {r['policies']}; StackFAQ messages labelled `oos`: "
                f"{r['faq_labelled_oos']:.1%}; P50 of cache hits {r['p50_ms_cache_hits']} ms"
            )
    lines += ["", "Target: >= 60% fewer upstream tokens with <= 1% wrong replies."]
    write_markdown(out.with_suffix(".md"), "\n".join(lines), command_line("python -m bench.chat_replay"))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


async def main_async(args: argparse.Namespace) -> None:
    streams = build_streams(args.data, args.seed, args.faq_messages, args.other_share)
    asks: dict[str, str] = {}  # a question's first 80 characters (what the stand-in quotes) -> what it asks
    for stream in streams.values():
        for text, truth in stream:
            asks.setdefault(text[:80], truth)
    nlu = InProcessNlu(args.artifacts)
    standin = StandinServer()
    cache, store = RedisServer(), RedisServer(durable=True)
    standin.start()
    cache.start()
    store.start()
    settings = XzSettings()
    results: dict[str, Any] = {
        "model_id": nlu.model.model_id,
        "upstream_latency_ms": 150,
        "concurrency": args.concurrency,
        "default_threshold": settings.cache.semantic_threshold,
        "margin": settings.dialog.reply_cache_margin,
        "verify": getattr(settings.cache, "semantic_verify", False),
        "seed": args.seed,
        "streams": {},
    }
    plan: list[tuple[str, bool, float | None]] = [("off", False, None)]
    thresholds = args.thresholds or sorted({settings.cache.semantic_threshold, 0.75, 0.8})
    plan += [(f"on, t={t}", True, t) for t in thresholds]
    try:
        for name in args.streams:
            runs = {}
            for label, on, threshold in plan:
                cache.restart()  # an empty cache Redis (no persistence) for every run
                run = await run_once(
                    streams[name], nlu, standin, cache.url, store.url, on, threshold, args.concurrency
                )
                runs[label] = evaluate(run, asks)
                print(name, label, json.dumps(runs[label]), flush=True)
            results["streams"][name] = runs
    finally:
        standin.stop()
        cache.close()
        store.close()
    report(results, args.out)
    print((args.out.with_suffix(".md")).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--faq-messages", type=int, default=1200)
    parser.add_argument("--other-share", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--streams", nargs="+", default=["replay", "distinct"])
    parser.add_argument(
        "--thresholds", nargs="+", type=float, default=None, help="default: the cache's, 0.75 and 0.8"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_replay")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
