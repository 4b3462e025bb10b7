"""Run-time classifiers through the API of a locally served app, on HWU64 (64 labels, 8,608 texts).

Why: a classifier defined at run time is only worth having if it is accurate, usable soon after the
request, costs the classify route no more than the encoder pass every route pays, and 1,000 of them
fit a replica. This measures all four against one `serve run` of deployments/local.yaml (its own
port, cache off so both routes run the encoder on every request, a real durable redis-server as the
store):

1. create-to-usable: POST /v1/classifiers with the HWU64 train set (202: it trains in the
   background), poll the job, first successful /v1/classify; encoder and fit time included;
2. val accuracy: the 1,076 val texts through /v1/classify (the label; and counting out-of-scope
   flags as wrong);
3. /v1/classify req/s against /v1/intent req/s: wrk at the same load on the same val texts,
   alternating routes for ``--rounds`` rounds;
4. memory: ``--heads`` heads of ``--labels`` labels written to the store, each then used once through
   /v1/classify so the replica holds them all; the replica's RSS before and after (its pid from
   ``x-replica``), and the heads' bytes as the registry counts them.

    python bench/classifiers.py            # writes bench/results/classifiers.{json,md}; about 6 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from local_servers import RedisServer, free_port  # bench/ is sys.path[0]
from results_md import command_line, write_markdown
from run import family, log, run_wrk, start_server, stop_server, tail, wait_ready
from texts import BENCH_DIR, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from xz_serve.classifiers.fit import train
from xz_serve.classifiers.head import Head
from xz_serve.classifiers.registry import ClassifierRegistry
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.classifiers.store import Record, RedisClassifierStore

DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
OUT = BENCH_DIR / "results" / "classifiers.json"
NAME = "hwu64"
TARGETS = {"val_accuracy": 0.90, "create_to_usable_s": 30.0, "rps_ratio": 0.90, "memory_mb": 200.0}


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def replica_pid(root: int) -> int:
    """The pid of the one Serve replica among the processes ``serve run`` (pid ``root``) started."""
    found = []
    for pid in family(root):
        try:
            if b"ServeReplica" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    if len(found) != 1:
        raise RuntimeError(f"expected one ServeReplica process, found {found}")
    return found[0]


def serve_config(port: int, workdir: Path) -> Path:
    """deployments/local.yaml on ``port``, so a developer's own server on :8000 can keep running,
    with one model replica: the memory a replica spends on heads is read from that one process."""
    config = yaml.safe_load((REPO_ROOT / "deployments" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    nlu = config["applications"][0]["args"]["nlu"]
    nlu.update(min_replicas=1, max_replicas=1, num_cpus=1)
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ----------------------------------------------------------------------------- measurements


def create_to_usable(client: httpx.Client, train_rows: list[dict[str, str]]) -> dict[str, Any]:
    started = time.monotonic()
    body = {"name": NAME, "examples": train_rows, "description": "HWU64 train set"}
    response = client.post("/v1/classifiers", json=body, timeout=120)
    answered = time.monotonic() - started
    if response.status_code == 201:
        record = response.json()
    elif response.status_code == 202:
        url = response.json()["status_url"]
        while True:
            status = client.get(url).json()
            if status["status"] == "ready":
                record = status["classifier"]
                break
            if status["status"] == "failed":
                raise RuntimeError(f"training failed: {status}")
            time.sleep(0.2)
    else:
        raise RuntimeError(f"create answered {response.status_code}: {response.text[:500]}")
    while (
        client.post("/v1/classify", json={"classifier": NAME, "text": "wake me up at 7"}).status_code != 200
    ):
        time.sleep(0.05)
    usable = time.monotonic() - started
    log(f"create: answered {response.status_code} in {answered:.2f} s, usable after {usable:.2f} s")
    return {"status": response.status_code, "answered_s": round(answered, 3), "usable_s": round(usable, 3),
            "record": record}  # fmt: skip


def accuracy(client: httpx.Client, val: list[dict[str, str]], oos_texts: list[str]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(val), 64):
        chunk = [r["text"] for r in val[start : start + 64]]
        response = client.post("/v1/classify", json={"classifier": NAME, "texts": chunk})
        response.raise_for_status()
        results += response.json()["results"]
    right = np.array([r["label"] == v["label"] for r, v in zip(results, val, strict=True)])
    flagged = np.array([r["out_of_scope"] for r in results])
    far: list[dict[str, Any]] = []
    for start in range(0, len(oos_texts), 64):
        body = {"classifier": NAME, "texts": oos_texts[start : start + 64]}
        far += client.post("/v1/classify", json=body).json()["results"]
    return {
        "val_texts": len(val),
        "val_accuracy": round(float(right.mean()), 4),
        "val_accuracy_flags_wrong": round(float((right & ~flagged).mean()), 4),
        "val_flagged_out_of_scope": round(float(flagged.mean()), 4),
        "clinc150_oos_texts": len(far),
        "clinc150_oos_flagged": round(float(np.mean([r["out_of_scope"] for r in far])), 4) if far else None,
    }


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    quoted = [
        '"' + json.dumps(b, ensure_ascii=True).replace("\\", "\\\\").replace('"', '\\"') + '"' for b in bodies
    ]
    path.write_text("return {\n" + "".join(f"  {q},\n" for q in quoted) + "}\n", encoding="ascii")
    return path


def wrk(url: str, route: str, bodies: Path, concurrency: int, duration_s: float) -> dict[str, Any]:
    data = run_wrk(url, concurrency, duration_s, path=route, texts=bodies)
    log(f"wrk {route} c={concurrency}: {data['ok_rps']} ok req/s, p50 {data['latency_ms']['p50']:.1f} ms, "
        f"p99 {data['latency_ms']['p99']:.1f} ms, non2xx {data['non2xx']}")  # fmt: skip
    return data


def throughput(url: str, texts: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    intent = write_bodies(workdir / "intent.lua", [{"text": t} for t in texts])
    classify = write_bodies(workdir / "classify.lua", [{"classifier": NAME, "text": t} for t in texts])
    wrk(url, "/v1/intent", intent, args.concurrency, args.warmup)  # warm-up, discarded
    runs: dict[str, list[dict[str, Any]]] = {"intent": [], "classify": []}
    for _ in range(args.rounds):
        for name, route, bodies in (("intent", "/v1/intent", intent), ("classify", "/v1/classify", classify)):
            time.sleep(1.0)
            runs[name].append(wrk(url, route, bodies, args.concurrency, args.duration))
    mean = {name: float(np.mean([r["ok_rps"] for r in rs])) for name, rs in runs.items()}
    return {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "runs": runs,
        "intent_ok_rps": round(mean["intent"], 2),
        "classify_ok_rps": round(mean["classify"], 2),
        "rps_ratio": round(mean["classify"] / mean["intent"], 4),
        "p50_ms": {name: [r["latency_ms"]["p50"] for r in rs] for name, rs in runs.items()},
    }


def synthetic_heads(count: int, labels: int, dim: int) -> list[Head]:
    """``count`` distinct heads of ``labels`` labels, trained on clusters like real embeddings."""
    rng = np.random.default_rng(0)
    names = tuple(f"label_{i:02d}" for i in range(labels))
    heads = []
    for _ in range(count):
        centres = rng.normal(size=(labels, dim))
        offset = rng.normal(size=dim)
        y = np.repeat(np.arange(labels), 3)
        x = centres[y] * 0.6 / np.sqrt(dim) + offset / np.sqrt(dim) + rng.normal(size=(len(y), dim)) / dim
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        heads.append(train(x, y, names, ClassifierSpec(max_iterations=50)).head)
    return heads


async def store_heads(url: str, heads: list[Head], count: int, model_id: str) -> list[str]:
    """``count`` classifiers in the store (the distinct ``heads`` in turn), written as the API would."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    store = RedisClassifierStore(client, timeout_s=5.0)
    names = []
    try:
        for i in range(count):
            head, now = heads[i % len(heads)], time.time()
            record = Record(id=f"clf_mem{i:05d}", name=f"mem{i:05d}", version=1,
                            labels={label: 3 for label in head.labels}, validation={}, model_id=model_id,
                            created_at=now, updated_at=now, head_bytes=len(head.to_bytes()))  # fmt: skip
            await store.create("default", record, head, max_count=count + 10)
            names.append(record.name)
    finally:
        await client.aclose()
    return names


async def registry_bytes(url: str, names: list[str]) -> dict[str, Any]:
    """The same heads loaded into a ClassifierRegistry in this process: its byte count and RSS delta."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    before = rss_kb(os.getpid())
    registry = ClassifierRegistry(RedisClassifierStore(client, 5.0), 0.25, 10**10)
    try:
        for name in names:
            await registry.get("default", name)
    finally:
        await client.aclose()
    return {"heads": registry.heads, "registry_bytes": registry.bytes,
            "bench_process_rss_delta_kb": rss_kb(os.getpid()) - before}  # fmt: skip


def memory(
    client: httpx.Client, store_url: str, model_id: str, args: argparse.Namespace, root: int
) -> dict[str, Any]:
    client.delete(f"/v1/classifiers/{NAME}")  # the tenant's 1,000 are the synthetic ones
    pid = replica_pid(root)
    started = time.monotonic()
    heads = synthetic_heads(args.distinct_heads, args.labels, 384)
    log(f"memory: trained {len(heads)} distinct heads in {time.monotonic() - started:.1f} s")
    names = asyncio.run(store_heads(store_url, heads, args.heads, model_id))
    before = rss_kb(pid)
    for name in names:
        response = client.post("/v1/classify", json={"classifier": name, "text": "hello there"})
        response.raise_for_status()
    after = rss_kb(pid)
    local = asyncio.run(registry_bytes(store_url, names))
    result = {
        "heads": len(names),
        "labels": args.labels,
        "replica_pid": pid,
        "replica_rss_before_kb": before,
        "replica_rss_after_kb": after,
        "replica_rss_delta_mb": round((after - before) / 1024, 2),
        "head_bytes_each": heads[0].nbytes,
        "stored_bytes_each": len(heads[0].to_bytes()),
        **local,
        "registry_mb": round(local["registry_bytes"] / 2**20, 2),
    }
    log(f"memory: {result}")
    return result


# ----------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    meta, create, acc = result["meta"], result["create"], result["accuracy"]
    tp, mem = result["throughput"], result["memory"]
    record = create["record"]
    verdict = {
        "val accuracy": (acc["val_accuracy"], f">= {TARGETS['val_accuracy']:.0%}",
                         acc["val_accuracy"] >= TARGETS["val_accuracy"]),
        "create to usable (s)": (create["usable_s"], f"<= {TARGETS['create_to_usable_s']:g}",
                                 create["usable_s"] <= TARGETS["create_to_usable_s"]),
        "classify / intent req/s": (tp["rps_ratio"], f">= {TARGETS['rps_ratio']}",
                                    tp["rps_ratio"] >= TARGETS["rps_ratio"]),
        f"replica RSS growth, {mem['heads']} heads of {mem['labels']} labels (MB)": (
            mem["replica_rss_delta_mb"], f"<= {TARGETS['memory_mb']:g}",
            mem["replica_rss_delta_mb"] <= TARGETS["memory_mb"]),
    }  # fmt: skip
    lines = [
        f"# Run-time classifiers on HWU64 ({meta['started']}, {meta['cpus']} CPUs)",
        "",
        f"One `serve run` of deployments/local.yaml (fused, 1 replica, cache off, store on a durable "
        f"redis-server); load average at start {meta['loadavg_at_start']}.",
        "",
        "| measure | value | target | met |",
        "|---|---:|---:|:---:|",
        *[f"| {k} | {v} | {t} | {'yes' if ok else 'no'} |" for k, (v, t, ok) in verdict.items()],
        "",
        f"**Create**: {create['status']} after {create['answered_s']} s; {sum(record['labels'].values())} "
        f"examples, {len(record['labels'])} labels; fit {record['training_s']} s (the rest of "
        f"{create['usable_s']} s is the encoder pass over the examples, and the poll); head "
        f"{record['head_bytes']} bytes. Cross-validated estimate: {record['validation']}.",
        "",
        f"**Val** ({acc['val_texts']} texts): accuracy {acc['val_accuracy']:.2%}; "
        f"{acc['val_accuracy_flags_wrong']:.2%} counting out-of-scope flags as wrong "
        f"({acc['val_flagged_out_of_scope']:.2%} of val flagged). CLINC150 val `oos` texts flagged: "
        f"{acc['clinc150_oos_flagged']:.0%} of {acc['clinc150_oos_texts']} (informational: many are in "
        "HWU64's domains).",
        "",
        f"**Throughput**: wrk -t1 -c{tp['concurrency']} -d{tp['duration_s']:g}s, {tp['rounds']} rounds "
        f"alternating routes, same val texts: /v1/intent {tp['intent_ok_rps']} req/s, /v1/classify "
        f"{tp['classify_ok_rps']} req/s (P50 ms intent {tp['p50_ms']['intent']}, classify "
        f"{tp['p50_ms']['classify']}).",
        "",
        f"**Memory**: {mem['heads']} heads of {mem['labels']} labels; replica RSS "
        f"{mem['replica_rss_before_kb']} -> {mem['replica_rss_after_kb']} kB "
        f"(+{mem['replica_rss_delta_mb']} MB); the registry counts "
        f"{mem['registry_mb']} MB ({mem['head_bytes_each']} bytes a head; {mem['stored_bytes_each']} "
        f"stored); the same heads loaded in the bench process: +{mem['bench_process_rss_delta_kb']} kB RSS.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--distinct-heads", type=int, default=50, help="trained heads, stored in turn")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="xz_bench_clf_"))
    store = RedisServer(durable=True)
    store.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAY_ADDRESS": "local", "XZ_CACHE__ENABLED": "false",
           "XZ_MODEL__BUILD_IF_MISSING": "false", "XZ_STORE__REDIS_URL": store.url,
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    server_log = workdir / "serve.log"
    proc = start_server(["serve", "run", str(serve_config(port, workdir))], env, server_log)
    result: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "git": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip(),
            "targets": TARGETS,
        }
    }
    try:
        wait_ready(f"{url}/readyz", 300, proc)
        train_rows = rows(DATA / "intent_hwu64" / "train.jsonl")
        val = rows(DATA / "intent_hwu64" / "val.jsonl")
        oos = [r["text"] for r in rows(DATA / "intent_clinc150" / "val.jsonl") if r["label"] == "oos"]
        with httpx.Client(base_url=url, timeout=60) as client:
            client.delete(f"/v1/classifiers/{NAME}")  # a leftover from an interrupted run
            result["create"] = create_to_usable(client, train_rows)
            result["accuracy"] = accuracy(client, val, oos)
            log(f"accuracy: {result['accuracy']}")
            result["throughput"] = throughput(url, [r["text"] for r in val], args, workdir)
            model_id = result["create"]["record"]["model_id"]
            result["memory"] = memory(client, store.url, model_id, args, proc.pid)
    except Exception:
        log(f"failed; server log tail:\n{tail(server_log)}")
        raise
    finally:
        left = stop_server(proc, grace_s=30, ray_stop_fallback=False)
        store.close()
        if left:
            log(f"processes left behind: {left}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    command = command_line("python bench/classifiers.py", argv)
    md = write_markdown(args.out.with_suffix(".md"), markdown(result), command, "; about 6 minutes")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
