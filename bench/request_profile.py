"""Where a request's CPU goes: py-spy over the fused replica while wrk loads one route.

Why: the serving ratios say how far the request path is from the model's ceiling, not where the
difference goes. This starts xz_serve as ``bench/run.py`` does (fused, cache off), loads ``--route``
with wrk at ``--concurrency`` (the bench's texts, one per request), records every Python thread of
the replica with py-spy (``--idle`` off: only samples that were running), and writes the collapsed
stacks and a summary that splits the samples by layer (model, tokenizer, ASGI stack, Serve, ...).

    python bench/request_profile.py --route /v1/embeddings --concurrency 32 --seconds 20 --name embeddings

Writes ``bench/results/profile_<name>.{txt,md,json}``; the collapsed file opens in speedscope or
flamegraph.pl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import peer_infinity  # bench/ is sys.path[0]
from run import (
    DEFAULT_XZ_CMD,
    DEFAULT_XZ_URL,
    _alive,
    family,
    log,
    run_wrk,
    start_server,
    stop_server,
    wait_ready,
    xz_env,
)
from soak import TICK_S, cpu_ticks, host_ticks, name_of
from texts import LUA_TEXTS, REPO_ROOT, load_texts

RESULTS = REPO_ROOT / "bench" / "results"
# First match wins, tested against each frame "function (file:line)" from the leaf upwards: a
# sample is charged to the innermost layer it is in.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("model: onnxruntime run", ("onnxruntime/capi", "openvino/")),
    ("model: tokenizer", ("tokenizers/", "encode_batch")),
    ("model: numpy pre/post (detector, softmax, padding)", ("xz_serve/models/",)),
    ("nlu: batching and client", ("xz_serve/nlu/", "ray/serve/batching.py")),
    ("json encode/decode", ("json/", "orjson", "msgspec")),
    ("pydantic", ("pydantic/", "pydantic_core")),
    ("app: routes and middleware", ("xz_serve/http/", "xz_serve/access/", "xz_serve/cache/")),
    ("telemetry", ("xz_serve/telemetry/", "opentelemetry/", "prometheus_client/")),
    ("fastapi/starlette", ("fastapi/", "starlette/")),
    ("uvicorn/h11/httptools", ("uvicorn/", "h11/", "httptools/")),
    ("ray serve replica", ("ray/serve/",)),
    ("ray core", ("ray/_private/", "ray/_raylet", "ray/util/", "grpc/")),
    ("asyncio event loop", ("asyncio/", "uvloop/")),
]


def replica_pid(root: int, timeout_s: float = 30) -> int:
    """The PID of the fused replica (``ray::ServeReplica:xz:...``) among ``root``'s family."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in sorted(_alive(family(root))):
            if name_of(pid).startswith("ray::ServeReplica:xz:"):
                return pid
        time.sleep(0.5)
    raise RuntimeError("no ServeReplica:xz process found")


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # leaf last in py-spy's collapsed format
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarise(collapsed: Path) -> dict[str, Any]:
    """Samples per layer (innermost wins) and the 25 leaf functions with the most samples."""
    by_layer: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        total += count
        by_layer[layer_of(frames)] += count
        leaves[frames[-1]] += count
    return {
        "samples": total,
        "layers": {k: {"samples": v, "share": round(v / total, 4)} for k, v in by_layer.most_common()},
        "top_leaves": [{"frame": k, "share": round(v / total, 4)} for k, v in leaves.most_common(25)],
    }


def markdown(result: dict[str, Any]) -> str:
    s, w = result["summary"], result["wrk"]
    lines = [
        f"Measured: {result['started'][:10]}",
        "",
        f"Reproduce: `{result['command']}`",
        "",
        f"# Where the replica's CPU goes: `{result['route']}` at c={result['concurrency']}",
        "",
        f"xz_serve fused (`{result['server_command']}`), cache off, model {result['model']}. wrk "
        f"{w['duration_s']:.0f} s: {w['ok_rps']} ok req/s, P50 {w['latency_ms']['p50']:.2f} ms, "
        f"P99 {w['latency_ms']['p99']:.2f} ms. py-spy at {result['rate']} Hz over the replica's "
        f"threads, running samples only: {s['samples']} samples; {result['cpu_ms_per_request']} ms "
        "of replica CPU per request (its CPU time over the run divided by requests).",
        "",
        f"Cores in use during the run ({result['cpu_count']} on the machine):",
        "",
        "| process | cores |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in result["cores_by_process"].items()],
        "",
        "The replica's CPU per request by thread (ONNX Runtime's pool threads are native, so py-spy's "
        "samples below see only the Python thread that waits on them):",
        "",
        "| thread | ms per request |",
        "|---|---:|",
        *[f"| {k} | {v:.2f} |" for k, v in result["replica_ms_per_request_by_thread"].items()],
        "",
        "| layer (innermost frame wins) | share of samples |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v['share']:.1%} |" for k, v in s["layers"].items()]
    lines += ["", "Leaf functions with the most samples:", "", "| frame | share |", "|---|---:|"]
    lines += [f"| `{t['frame'][:110]}` | {t['share']:.1%} |" for t in s["top_leaves"][:15]]
    lines += ["", f"Stacks: [{result['collapsed']}]({result['collapsed']}) (collapsed; speedscope opens it)."]
    return "\n".join(lines) + "\n"


def _cpu_s(stat: Path) -> float:
    """User + system CPU seconds from a /proc ``stat`` file (a process's or one of its threads')."""
    ticks = cpu_ticks(stat)
    if ticks is None:
        raise ProcessLookupError(f"{stat} is gone")
    return ticks * TICK_S


def cpu_seconds(pid: int) -> float:
    return _cpu_s(Path(f"/proc/{pid}/stat"))


def machine_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of every core since boot: steal, the time the hypervisor gave to
    other machines, is neither this machine's work nor idle, so it is kept apart."""
    busy, steal = host_ticks()
    return busy * TICK_S, steal * TICK_S


def cpu_by_process(pids: set[int]) -> dict[str, float]:
    """CPU seconds so far per process name (processes with the same name summed)."""
    out: Counter[str] = Counter()
    for pid in pids:
        try:
            out[name_of(pid)] += cpu_seconds(pid)
        except (OSError, IndexError):
            continue
    return dict(out)


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds so far per thread of ``pid``, by thread id (Ray names every thread alike)."""
    out: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = f"tid {task.name}" + (" (main)" if task.name == str(pid) else "")
        try:
            out[name] += _cpu_s(task / "stat")
        except OSError:
            continue
    return dict(out)


def cores_used(
    before: dict[str, float], after: dict[str, float], busy_s: float, steal_s: float, wall_s: float
) -> dict[str, float]:
    """Cores each server process used over ``wall_s``, the rest of the machine (wrk included), and
    the cores the hypervisor took for other machines."""
    used = {k: (after[k] - before.get(k, 0.0)) / wall_s for k in after}
    used = {k: round(v, 3) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.005}
    used["everything else (wrk, other tenants)"] = round(busy_s / wall_s - sum(used.values()), 3)
    used["steal (other machines)"] = round(steal_s / wall_s, 3)
    return used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route", default="/v1/embeddings", choices=["/v1/embeddings", "/v1/analyze"])
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--name", default=None, help="results go to bench/results/profile_<name>.*")
    p.add_argument("--xz-cmd", default=DEFAULT_XZ_CMD)
    p.add_argument("--xz-env", action="append", default=[], help="extra KEY=VALUE for the server")
    p.add_argument("--xz-env-file", type=Path, default=REPO_ROOT / "deployments" / "ray.env")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    name = args.name or args.route.rsplit("/", 1)[-1]
    work = Path(tempfile.mkdtemp(prefix="xz-profile-"))
    texts = LUA_TEXTS
    if args.route == "/v1/embeddings":
        texts = peer_infinity.embedding_bodies(load_texts(), work / "embed.lua", None)
    venv_bin = str(Path(sys.executable).parent)  # `serve` and py-spy live beside this interpreter
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        **xz_env(args, "fused"),
    }
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    proc = start_server(shlex.split(args.xz_cmd), env, work / "server.log")
    try:
        ready = wait_ready(DEFAULT_XZ_URL + "/readyz", args.ready_timeout, proc)
        pid = replica_pid(proc.pid)
        log(f"replica pid {pid}; warm-up {args.warmup:g} s")
        run_wrk(DEFAULT_XZ_URL, args.concurrency, args.warmup, args.route, texts)
        collapsed = RESULTS / f"profile_{name}.txt"
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", str(args.rate),
               "-d", f"{args.seconds:g}", "-f", "raw", "-o", str(collapsed), "--nonblocking"]  # fmt: skip
        recorder = threading.Thread(target=subprocess.run, args=(spy,), kwargs={"capture_output": True})
        members = _alive(family(proc.pid))
        threads0 = cpu_by_thread(pid)
        cpu0, by0, (busy0, steal0), t0 = (
            cpu_seconds(pid),
            cpu_by_process(members),
            machine_s(),
            time.monotonic(),
        )
        recorder.start()
        wrk = run_wrk(DEFAULT_XZ_URL, args.concurrency, args.seconds, args.route, texts)
        cpu1, by1, (busy1, steal1), t1 = (
            cpu_seconds(pid),
            cpu_by_process(members),
            machine_s(),
            time.monotonic(),
        )
        threads1 = cpu_by_thread(pid)
        recorder.join(timeout=args.seconds + 60)
    finally:
        stop_server(proc, 30.0, False)
    requests = max(1, wrk["requests"])
    result = {
        "started": started,
        "command": "python bench/request_profile.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "server_command": args.xz_cmd,
        "route": args.route,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "model": ready.get("detail", ready),
        "wrk": wrk,
        "cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / requests, 2),
        "cores_by_process": cores_used(by0, by1, busy1 - busy0, steal1 - steal0, t1 - t0),
        "cpu_count": os.cpu_count(),
        "replica_ms_per_request_by_thread": {
            k: round(1000 * v / requests, 2)
            for k, v in sorted(
                ((k, threads1[k] - threads0.get(k, 0.0)) for k in threads1), key=lambda kv: -kv[1]
            )
            if 1000 * v / requests >= 0.05
        },
        "collapsed": collapsed.name,
        "summary": summarise(collapsed),
    }
    (RESULTS / f"profile_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"profile_{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
