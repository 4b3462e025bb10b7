"""Exact-cache replay: hit rate, precision, hit vs miss latency and model computations saved.

Why: a cache is worth its complexity only if repeats are frequent enough, hits are much faster than
misses, and no hit is wrong. This replays a stream built from the shared data against the real app
(`serve run deployments/local.yaml` with a real redis-server as the cache), one request at a time
so latencies are not queueing:

- CLINC150 validation texts drawn with Zipf-like popularity (a few texts very often, most rarely);
- case/whitespace variants of texts already seen (``"  What IS my balance"``): they normalise to
  the same key (the tokenizer lowercases and splits on whitespace) and must HIT;
- StackFAQ rephrasings of one question: different texts, which the exact cache must MISS.

Precision: every hit's labels are compared with a fresh uncached answer for the same text
(``Cache-Control: no-cache, no-store``), and each hit text's cached embedding with a fresh one
(cosine >= 0.999). Results: bench/results/cache_replay.{json,md}.

    flock /tmp/xz/ray.lock timeout 900 python bench/cache_replay.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from local_servers import RedisServer  # bench/ is sys.path[0]
from results_md import command_line, write_markdown
from run import DEFAULT_XZ_ENV, env_file, log, port_in_use, start_server, stop_server, tail, wait_ready
from texts import BENCH_DIR, DATA_DIR, REPO_ROOT

URL = "http://127.0.0.1:8000"
WRK_REPLAY = BENCH_DIR / "wrk_replay.lua"


# ----------------------------------------------------------------------------- the stream


def variant(text: str, rng: random.Random) -> str:
    """Same tokens, other bytes: case and whitespace changes the uncased tokenizer cannot see."""
    words = text.split()
    kind = rng.choice(["upper", "title", "spaces", "mixed"])
    if kind == "upper":
        return text.upper()
    if kind == "title":
        return text.title()
    if kind == "spaces":
        return "  " + "   ".join(words) + " \n"
    return " ".join(w.upper() if i % 2 else w for i, w in enumerate(words)) + "  "


def build_stream(
    n: int, pool: int, seed: int, zipf_s: float, variant_p: float, paraphrase_p: float
) -> list[dict]:
    """``n`` requests: {"text", "kind" in repeat|variant|paraphrase, "base": canonical text}."""
    rng = random.Random(seed)
    clinc = [json.loads(line)["text"] for line in (DATA_DIR / "intent_clinc150" / "val.jsonl").open()]
    texts = rng.sample(clinc, pool)
    weights = [1 / (rank + 1) ** zipf_s for rank in range(pool)]
    faq = [json.loads(line) for line in (DATA_DIR / "paraphrase" / "stackfaq_dev.jsonl").open()]
    phrasings = [[q["question"], *q["rephrasings"]] for q in faq]
    next_phrasing = [0] * len(phrasings)
    seen: list[str] = []
    stream: list[dict] = []
    for _ in range(n):
        roll = rng.random()
        if roll < paraphrase_p:
            i = rng.randrange(len(phrasings))
            if next_phrasing[i] >= len(phrasings[i]):
                continue
            text = phrasings[i][next_phrasing[i]]  # each rephrasing once: a new text for the same question
            next_phrasing[i] += 1
            stream.append(
                {"text": text, "kind": "paraphrase" if next_phrasing[i] > 1 else "faq", "base": text}
            )
        elif roll < paraphrase_p + variant_p and seen:
            base = rng.choice(seen)
            stream.append({"text": variant(base, rng), "kind": "variant", "base": base})
        else:
            text = rng.choices(texts, weights)[0]
            seen.append(text)
            stream.append({"text": text, "kind": "clinc", "base": text})
    return stream


# ----------------------------------------------------------------------------- requests


class Client:
    """One keep-alive HTTP/1.1 connection (stdlib): the least client overhead in Python."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[float, int, dict, dict]:
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self.conn.request("POST", path, data, {"content-type": "application/json", **(headers or {})})
        response = self.conn.getresponse()
        payload = response.read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        head = {k.lower(): v for k, v in response.getheaders()}
        return elapsed_ms, response.status, head, json.loads(payload)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


def lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal whose level does not occur in it."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def ended(out: Path) -> bool:
    """Whether wrk_replay.lua wrote its END line (read from the file's tail: the poll runs while the
    replay is being timed, on the same cores as the server)."""
    if not out.exists() or out.stat().st_size < 4:
        return False
    with out.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        return f.read() == b"END\n"


def wrk_replay(url: str, texts: list[str], workdir: Path, name: str, bypass: bool = False) -> list[dict]:
    """POST ``texts`` to /v1/analyze in order on one keep-alive connection, timed by wrk
    (bench/wrk_replay.lua); ``bypass`` sends ``Cache-Control: no-cache, no-store``."""
    bodies = workdir / f"{name}_bodies.lua"
    lines = ",\n".join(lua_string(json.dumps({"text": text})) for text in texts)
    bodies.write_text("return {\n" + lines + "\n}\n")
    out = workdir / f"{name}_out.tsv"
    env = {**os.environ, "WRK_TEXTS": str(bodies), "WRK_OUT": str(out), "WRK_BYPASS": "1" if bypass else ""}
    timeout_s = 60 + len(texts)  # generous: about 1 ms a hit, 10 ms a miss
    command = ["wrk", "-t1", "-c1", f"-d{timeout_s}s", "--timeout", "30s", "-s", str(WRK_REPLAY), url]
    # wrk's main thread sleeps for the whole -d even after the script stops its thread: wait for
    # the script's END line instead, then stop wrk.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not ended(out):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wrk stopped before answering all {len(texts)} requests")
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    rows = []
    for line in out.read_text().splitlines()[:-1]:
        _, status, ms, x_cache, computed, server_ms, body = line.split("\t", 6)
        rows.append(
            {
                "ms": float(ms),
                "status": int(status),
                "x_cache": x_cache,
                "computed": int(computed),
                "server_ms": float(server_ms),
                "result": json.loads(body).get("results", [{}])[0],
            }
        )
    if len(rows) != len(texts):
        raise RuntimeError(f"wrk answered {len(rows)} of {len(texts)} requests")
    return rows


def replay(url: str, stream: list[dict], workdir: Path) -> list[dict]:
    rows = wrk_replay(url, [item["text"] for item in stream], workdir, "replay")
    return [{**item, **row} for item, row in zip(stream, rows, strict=True)]


def precision(url: str, rows: list[dict], workdir: Path) -> dict[str, Any]:
    """Every hit against a fresh uncached answer: labels per hit, embedding cosine per hit text."""
    client = Client(url)
    fresh_headers = {"Cache-Control": "no-cache, no-store"}
    hits = [r for r in rows if r["x_cache"] == "hit"]
    fresh: dict[str, dict] = {}
    cosines: dict[str, float] = {}
    uncached_ms: list[float] = []  # the same texts with the cache bypassed: what a hit saves
    uncached_server_ms: list[float] = []
    hit_texts = list(dict.fromkeys(r["text"] for r in hits))
    uncached = wrk_replay(url, hit_texts, workdir, "uncached", bypass=True)
    for text, row in zip(hit_texts, uncached, strict=True):
        uncached_ms.append(row["ms"])
        uncached_server_ms.append(row["server_ms"])
        assert row["x_cache"] == "bypass", row
        fresh[text] = row["result"]
    for text in hit_texts:
        _, _, _, cached = client.post("/v1/embeddings", {"input": text})
        _, _, _, new = client.post("/v1/embeddings", {"input": text}, fresh_headers)
        a = np.asarray(cached["data"][0]["embedding"], dtype=np.float64)
        b = np.asarray(new["data"][0]["embedding"], dtype=np.float64)
        cosines[text] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    wrong = []
    for r in hits:
        f, c = fresh[r["text"]], r["result"]
        same = (
            c["intent"]["label"] == f["intent"]["label"]
            and c["sentiment"]["label"] == f["sentiment"]["label"]
            and c["out_of_scope"] == f["out_of_scope"]
            and cosines[r["text"]] >= 0.999
        )
        if not same:
            wrong.append(
                {
                    "text": r["text"],
                    "cached": c["intent"]["label"],
                    "fresh": f["intent"]["label"],
                    "cosine": cosines[r["text"]],
                }
            )
    return {
        "hits_checked": len(hits),
        "hit_texts_checked": len(fresh),
        "correct_hits": len(hits) - len(wrong),
        "precision": round((len(hits) - len(wrong)) / len(hits), 5) if hits else None,
        "min_cosine": round(min(cosines.values()), 6) if cosines else None,
        "wrong": wrong[:20],
        "uncached_latency_ms_client": summary(uncached_ms),
        "uncached_latency_ms_server": summary(uncached_server_ms),
    }


def analyse(rows: list[dict], stream_args: dict[str, Any]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200]
    hits = [r for r in ok if r["x_cache"] == "hit"]
    misses = [r for r in ok if r["x_cache"] == "miss"]
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ("clinc", "variant", "faq", "paraphrase"):
        rs = [r for r in ok if r["kind"] == kind]
        by_kind[kind] = {"requests": len(rs), "hits": sum(r["x_cache"] == "hit" for r in rs)}
    # A variant of a text seen before must hit; a rephrasing is another text and must miss
    # (unless its normalised form really equals an earlier text's, which the exact cache may serve).
    computed = sum(r["computed"] for r in ok)
    latency = {"hit": summary([r["ms"] for r in hits]), "miss": summary([r["ms"] for r in misses])}
    server = {
        "hit": summary([r["server_ms"] for r in hits]),
        "miss": summary([r["server_ms"] for r in misses]),
    }
    ratio = latency["hit"]["p50"] / latency["miss"]["p50"] if hits and misses else None
    server_ratio = server["hit"]["p50"] / server["miss"]["p50"] if hits and misses else None
    return {
        "stream": stream_args,
        "requests": len(rows),
        "non_200": len(rows) - len(ok),
        "outcomes": {
            label: sum(r["x_cache"] == label for r in ok) for label in sorted({r["x_cache"] for r in ok})
        },
        "hit_rate": round(len(hits) / len(ok), 4) if ok else None,
        "by_kind": by_kind,
        "model_texts_computed": computed,
        "model_computations_saved": len(ok) - computed,
        "saved_fraction": round((len(ok) - computed) / len(ok), 4) if ok else None,
        "latency_ms_client": latency,
        "latency_ms_server": server,
        "hit_p50_over_miss_p50_client": round(ratio, 4) if ratio is not None else None,
        "hit_p50_over_miss_p50_server": round(server_ratio, 4) if server_ratio is not None else None,
        "target_hit_p50_le_20pct_of_miss_p50": ratio is not None and ratio <= 0.2,
    }


def markdown(result: dict[str, Any]) -> str:
    a, p, m = result["analysis"], result["precision"], result["meta"]
    lc, ls = a["latency_ms_client"], a["latency_ms_server"]
    uc, us = p["uncached_latency_ms_client"], p["uncached_latency_ms_server"]
    lines = [
        "# Exact cache replay (`bench/cache_replay.py`)",
        "",
        f"{a['requests']} requests to `/v1/analyze`, one at a time (c=1, timed by `wrk`), against `serve run "
        f"deployments/local.yaml` (fused, its replicas as committed) with a real redis-server as the cache; "
        f"{m['host']}, {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, {m['started']}.",
        f"Stream: {a['stream']}.",
        "",
        "| | value |",
        "|---|---:|",
        f"| hit rate | {a['hit_rate']:.1%} |",
        f"| outcomes | {a['outcomes']} |",
        f"| precision (hits equal to a fresh answer: labels, cosine >= 0.999) | {p['correct_hits']}/"
        f"{p['hits_checked']} = {p['precision']} (min cosine {p['min_cosine']}) |",
        f"| model computations saved | {a['model_computations_saved']} of "
        f"{a['requests'] - a['non_200']} texts ({a['saved_fraction']:.1%}) |",
        f"| non-200 | {a['non_200']} |",
        "",
        "| kind | requests | hits |",
        "|---|---:|---:|",
        *[f"| {k} | {v['requests']} | {v['hits']} |" for k, v in a["by_kind"].items()],
        "",
        "| latency (ms) | hit P50 | hit P99 | miss P50 | miss P99 | hit P50 / miss P50 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| client (end to end, HAProxy included) | {lc['hit']['p50']} | {lc['hit']['p99']} "
        f"| {lc['miss']['p50']} | {lc['miss']['p99']} | {a['hit_p50_over_miss_p50_client']} |",
        f"| server (`x-total-time-ms`, in the route) | {ls['hit']['p50']} | {ls['hit']['p99']} "
        f"| {ls['miss']['p50']} | {ls['miss']['p99']} | {a['hit_p50_over_miss_p50_server']} |",
        "",
        f"Uncached baseline (the {p['hit_texts_checked']} hit texts again with `Cache-Control: no-cache, "
        f"no-store`, after the replay): client P50 {uc['p50']} ms / P99 {uc['p99']} ms, server P50 "
        f"{us['p50']} ms; hit P50 / uncached P50 = {round(lc['hit']['p50'] / uc['p50'], 4)} (client), "
        f"{round(ls['hit']['p50'] / us['p50'], 4)} (server). Miss P50 - uncached P50 = "
        f"{round(ls['miss']['p50'] - us['p50'], 3)} ms in the route: what a miss does besides the model "
        "(one Redis round trip that reads and leases, the coalescing bookkeeping, the write-back on the "
        "same event loop).",
        "",
        f"Target hit P50 <= 20% of miss P50 (client side): "
        f"{'met' if a['target_hit_p50_le_20pct_of_miss_p50'] else 'NOT met'}.",
        "",
        "`variant`: case/whitespace variants of texts seen before (same key after normalisation, must hit); "
        "`faq`: first phrasing of a StackFAQ question; `paraphrase`: later rephrasings (other texts, must "
        "miss the exact cache).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--pool", type=int, default=800, help="distinct CLINC150 texts in the Zipf draw")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent (weight 1/rank^s)")
    p.add_argument("--variant-p", type=float, default=0.1)
    p.add_argument("--paraphrase-p", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--warmup", type=int, default=50, help="uncached requests first (JIT, pools)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "cache_replay.json")
    p.add_argument("--ready-timeout", type=float, default=240.0)
    p.add_argument("--stop-grace", type=float, default=45.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if port_in_use(URL):
        raise SystemExit(f"{URL} is in use; stop that server first")
    stream_args = {
        "requests": args.requests,
        "pool": args.pool,
        "zipf_s": args.zipf,
        "variant_p": args.variant_p,
        "paraphrase_p": args.paraphrase_p,
        "seed": args.seed,
    }
    stream = build_stream(args.requests, args.pool, args.seed, args.zipf, args.variant_p, args.paraphrase_p)
    log_dir = Path(tempfile.mkdtemp(prefix="xz_cache_bench_"))
    redis = RedisServer()
    redis.start()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(env_file(REPO_ROOT / "deployments" / "ray.env"))
    for item in DEFAULT_XZ_ENV:
        key, _, value = item.partition("=")
        env[key] = value
    env["XZ_CACHE__ENABLED"] = "true"  # DEFAULT_XZ_ENV turns it off for the serving bench
    env["XZ_CACHE__REDIS_URL"] = redis.url
    env["XZ_TOPOLOGY"] = "fused"
    proc = start_server(["serve", "run", "deployments/local.yaml"], env, log_dir / "xz.log")
    result: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": os.uname().nodename,
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "command": command_line("python bench/cache_replay.py", argv),
            "logs": str(log_dir),
        },
    }
    try:
        wait_ready(URL + "/readyz", args.ready_timeout, proc)
        warm = Client(URL)
        for i in range(args.warmup):
            warm.post("/v1/analyze", {"text": f"warm up request number {i}"}, {"Cache-Control": "no-store"})
        log(f"replaying {len(stream)} requests")
        started = time.monotonic()
        rows = replay(URL, stream, log_dir)
        result["meta"]["replay_s"] = round(time.monotonic() - started, 1)
        result["analysis"] = analyse(rows, stream_args)
        log("checking every hit against a fresh answer")
        result["precision"] = precision(URL, rows, log_dir)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["log_tail"] = tail(log_dir / "xz.log")
        log(f"FAILED: {result['error']}\n{result['log_tail']}")
    finally:
        left = stop_server(proc, args.stop_grace, ray_stop_fallback=False)
        result["meta"]["leftover_pids"] = left
        redis.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if "error" in result:
        return 1
    md = write_markdown(args.out.with_suffix(".md"), markdown(result), result["meta"]["command"])
    print(md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
