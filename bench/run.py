"""One-command serving benchmark: raw INT8 model (a), pre-batching baseline (b), xz_serve (c).

Why: the claim "batching + INT8 + Serve beats the naive server" needs all three measured back to back
on the same machine with the same texts and the same load generator; ratios within one run are the
only numbers that mean anything on a small shared box.

    python bench/run.py --duration 10 --concurrency 1,8,32,64 --out bench/results/serving.json

(a) runs bench/raw_model.py in a subprocess. (b) and (c) are started as subprocesses in their own
process group, loaded with ``wrk -t1`` (one wrk thread, so the load generator takes little CPU from
the servers) at each concurrency, then stopped; no process of theirs is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from results_md import command_line, write_markdown  # bench/ is sys.path[0]
from rss import PeakRss
from texts import BENCH_DIR, LUA_TEXTS, REPO_ROOT, load_texts, write_lua

WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
DEFAULT_XZ_CMD = "serve run deployments/local.yaml"
DEFAULT_XZ_URL = "http://127.0.0.1:8000"
# RAY_ADDRESS=local: `serve run` starts its own Ray cluster instead of joining one already running on
# this machine (which SIGINT would then tear Serve out of). BUILD_IF_MISSING=false: bench the artifacts
# that exist (as deployments/prod.yaml does) instead of retraining for minutes inside the replica when
# the build code changed; raw_model.py reports whether they match the current code. The drain period
# only shortens the replica drain on shutdown (30 s by default with direct/HAProxy ingress).
DEFAULT_XZ_ENV = [
    "RAY_ADDRESS=local",
    # The text mix repeats: with the cache on this would measure cache hits, not serving
    # (bench/cache_replay.py measures the cache).
    "XZ_CACHE__ENABLED=false",
    "XZ_MODEL__BUILD_IF_MISSING=false",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1",
]
SATURATION_FRACTION = 0.9  # (b) is "saturated" at the lowest concurrency reaching 90% of its best req/s


def log(msg: str) -> None:
    """Progress to stderr, so stdout stays the Markdown table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """An unused loopback TCP port for the baseline server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid`` from /proc, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def family(root: int) -> set[int]:
    """``root``, its descendants, and everything in its session (Ray daemons, HAProxy, workers)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _proc_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    members = {pid for pid, (_, sid) in stats.items() if sid == root}
    members.add(root)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return members


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        st = Path(f"/proc/{pid}/stat")
        try:
            if st.exists() and ") Z " not in st.read_text():  # zombies are already dead
                alive.add(pid)
        except OSError:
            pass
    return alive


def start_server(
    cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``cwd`` in a new session (its own process group), output to a file."""
    log(f"starting: {shlex.join(cmd)} in {cwd} (log: {log_path})")
    out = log_path.open("wb")
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_server(proc: subprocess.Popen[bytes], grace_s: float, ray_stop_fallback: bool) -> list[int]:
    """SIGINT the process group, wait, then SIGTERM/SIGKILL whatever of its family survives, by PID.

    Returns the PIDs still alive at the end (should be empty). ``ray stop --force`` (which kills
    every Ray process of this user, not only ours) runs only if ``ray_stop_fallback`` is set and
    something of ours survived SIGKILL.
    """
    pids = family(proc.pid)
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        proc.poll()
        pids |= family(proc.pid)  # session members are found even after the leader exits
        targets = _alive(pids)
        if not targets:
            break
        if sig != signal.SIGINT:
            log(f"still alive, sending {sig.name}: {sorted(targets)}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # SIGINT: `serve run` shuts Serve and its Ray cluster down itself
        if sig != signal.SIGINT:  # daemons that left the group: by PID, never by name
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if not _alive(pids):
                break
            time.sleep(0.2)
    proc.wait(timeout=5)
    left = sorted(_alive(pids))
    if left and ray_stop_fallback:
        log("falling back to `ray stop --force`")
        subprocess.run([_venv_bin("ray"), "stop", "--force"], check=False, timeout=60)
        left = sorted(_alive(set(left)))
    return left


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    """Poll ``url`` until it returns 200 (then its JSON body) or the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before ready ({last})")
            try:
                r = client.get(url)
                if r.status_code == 200:
                    try:
                        return dict(r.json())
                    except ValueError:
                        return {"body": r.text[:200]}
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s ({last})")


def port_in_use(url: str) -> bool:
    """True if something already accepts connections at ``url``'s host:port."""
    u = httpx.URL(url)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((u.host, u.port or 80)) == 0


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a server log, for the error report."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- load


def run_wrk(
    url: str, concurrency: int, duration_s: float, path: str = "/v1/analyze", texts: Path = LUA_TEXTS
) -> dict[str, Any]:
    """One wrk run POSTing ``texts``' bodies to ``path``; returns the JSON line wrk_post.lua prints
    from done(), plus derived ok_rps."""
    cmd = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", "--latency", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), url,
    ]  # fmt: skip
    env = {**os.environ, "WRK_TEXTS": str(texts), "WRK_PATH": path}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed (rc {res.returncode}): {res.stdout[-500:]} {res.stderr[-500:]}")
    data: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    bad = data["non2xx"] + data["errors"]["timeout"]
    data["ok_rps"] = round(max(data["requests"] - bad, 0) / data["duration_s"], 2)
    data["concurrency"] = concurrency
    return data


def sweep(
    name: str,
    url: str,
    levels: list[int],
    duration_s: float,
    warmup_s: float,
    path: str = "/v1/analyze",
    texts: Path = LUA_TEXTS,
) -> list[dict[str, Any]]:
    """Warm up at the highest concurrency (discarded), then one wrk run per level, lowest first."""
    if warmup_s > 0:
        log(f"{name}: warm-up {warmup_s:g}s at c={max(levels)}")
        run_wrk(url, max(levels), warmup_s, path, texts)
    results = []
    for c in levels:
        time.sleep(1.0)  # let queues from the previous level drain
        r = run_wrk(url, c, duration_s, path, texts)
        lat = r["latency_ms"]
        log(
            f"{name}: c={c} {r['rps']:.1f} req/s p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms "
            f"non2xx {r['non2xx']} errors {r['errors']}"
        )
        results.append(r)
    return results


# ----------------------------------------------------------------------------- systems


def measure_raw(seconds: float, threads: int) -> dict[str, Any]:
    """(a) in a subprocess, so its ONNX Runtime threads and memory are gone before the servers start."""
    cmd = [
        sys.executable,
        str(BENCH_DIR / "raw_model.py"),
        "--seconds",
        f"{seconds:g}",
        "--threads",
        str(threads),
    ]
    log(f"raw model: {shlex.join(cmd)}")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, check=False, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"raw_model.py failed: {res.stderr[-1500:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def served_threads(xz_cmd: str) -> int | None:
    """ONNX Runtime threads per model replica in the Serve config ``xz_cmd`` runs (``serve run
    <config>``), when it sets them: the runtime in use at c=1 is a session of that many threads."""
    import yaml  # Serve's own dependency

    config = next((Path(a) for a in shlex.split(xz_cmd) if a.endswith((".yaml", ".yml"))), None)
    if config is None or not (REPO_ROOT / config).exists():
        return None
    for app in yaml.safe_load((REPO_ROOT / config).read_text()).get("applications", []):
        threads = (app.get("args") or {}).get("model", {}).get("intra_op_threads")
        if threads:
            return int(threads)
    return None


def bench_server(
    name: str,
    cmd: list[str] | None,
    url: str,
    ready_path: str,
    env: dict[str, str],
    args: argparse.Namespace,
    log_dir: Path,
    *,
    cwd: Path = REPO_ROOT,
    load_path: str = "/v1/analyze",
    texts: Path = LUA_TEXTS,
) -> dict[str, Any]:
    """Start (unless ``cmd`` is None), wait for readiness, sweep, stop; errors land in the result.

    ``ready_s`` counts from the start command to the first 200 of ``ready_path`` (polled every
    0.25 s); ``peak_rss_mb`` is the largest summed RSS of the server's processes while it ran.
    """
    out: dict[str, Any] = {"url": url, "command": shlex.join(cmd) if cmd else None, "levels": []}
    log_path = log_dir / f"{name}.log"
    proc = None
    rss: PeakRss | None = None
    try:
        t0 = time.monotonic()
        if cmd is not None:
            if port_in_use(url):
                raise RuntimeError(f"{url} is already in use; stop that server or pass its URL to bench it")
            proc = start_server(cmd, env, log_path, cwd)
            rss = PeakRss(lambda: _alive(family(proc.pid)) if proc is not None else set()).start()
        out["ready"] = wait_ready(url + ready_path, args.ready_timeout, proc)
        out["ready_s"] = round(time.monotonic() - t0, 1)
        log(f"{name}: ready in {out['ready_s']} s: {out['ready']}")
        out["levels"] = sweep(name, url, args.levels, args.duration, args.warmup, load_path, texts)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["log_tail"] = tail(log_path)
        log(f"{name}: FAILED: {out['error']}\n{out['log_tail']}")
    finally:
        if rss is not None:
            rss.stop()
            out["peak_rss_mb"] = rss.peak_mb
            out["processes_at_peak_rss"] = rss.processes_at_peak
            log(f"{name}: peak RSS {rss.peak_mb} MB over {rss.processes_at_peak} processes")
        if proc is not None:
            left = stop_server(proc, args.stop_grace, args.ray_stop_fallback)
            out["leftover_pids"] = left
            if left:
                log(f"{name}: WARNING processes left: {left}")
    return out


def xz_env(args: argparse.Namespace, topology: str) -> dict[str, str]:
    """The extra environment xz_serve is started with: the env file, DEFAULT_XZ_ENV, --xz-env."""
    extra: dict[str, str] = {}
    if str(args.xz_env_file) not in ("", ".") and args.xz_env_file.exists():
        extra.update(env_file(args.xz_env_file))
    for item in [*DEFAULT_XZ_ENV, *(args.xz_env or [])]:
        key, _, value = item.partition("=")
        extra[key] = value
    extra["XZ_TOPOLOGY"] = topology  # XzSettings.topology; the YAML leaves it to env
    return extra


def bench_peers(args: argparse.Namespace, log_dir: Path, venv_path: str) -> dict[str, Any]:
    """xz_serve's /v1/embeddings (fused) against Infinity's /embeddings on each engine: the same
    texts, one per request, the same wrk sweep, the same model weights."""
    import peer_infinity

    texts = load_texts()
    xz_bodies = peer_infinity.embedding_bodies(texts, log_dir / "embed_xz.lua", None)
    peer_bodies = peer_infinity.embedding_bodies(
        texts, log_dir / "embed_infinity.lua", peer_infinity.SERVED_NAME
    )
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "systems": {}}
    env = {**os.environ, "PATH": venv_path, **(xz_env(args, "fused") if args.xz_url is None else {})}
    cmd = None if args.xz_url else shlex.split(args.xz_cmd)
    res = bench_server(
        "xz_serve_fused_embeddings", cmd, (args.xz_url or DEFAULT_XZ_URL).rstrip("/"), "/readyz", env,
        args, log_dir, load_path="/v1/embeddings", texts=xz_bodies,
    )  # fmt: skip
    res["engine"] = str(res.get("ready", {}).get("detail", "xz_serve"))  # the model id names the runtime
    out["systems"]["xz_serve_fused"] = res
    for engine in args.peer_engines:
        name = f"infinity_{engine}"
        port = free_port()
        try:
            peer = peer_infinity.command(engine, port, args.peer_batch_size, log_dir / f"hf-{engine}")
        except Exception as exc:  # the venv or the ONNX export could not be made
            out["systems"][name] = {"error": f"{type(exc).__name__}: {exc}", "levels": [], "engine": engine}
            log(f"{name}: FAILED before start: {exc}")
            continue
        res = bench_server(
            name, peer.cmd, f"http://127.0.0.1:{port}", "/health", peer.env, args, log_dir,
            cwd=peer.cwd, load_path="/embeddings", texts=peer_bodies,
        )  # fmt: skip
        res["engine"] = engine
        out["systems"][name] = res
    best = {
        name: max((r["ok_rps"] for r in res["levels"]), default=None) for name, res in out["systems"].items()
    }
    xz_best = best.get("xz_serve_fused")
    out["xz_best_rps_over_peer_best"] = {
        name: _ratio(xz_best, value) for name, value in best.items() if name != "xz_serve_fused"
    }
    return out


# ----------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(
    raw: dict[str, Any] | None,
    base: list[dict[str, Any]],
    xz: list[dict[str, Any]],
    raw_served: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The headline ratios; throughput uses ok req/s (non-2xx and timeouts do not count).

    ``raw_served`` is the raw model at the served replicas' thread count: a lone request runs on
    one replica's session, so its c=1 P50 is also set against that session's batch-1 P50."""
    b_by = {r["concurrency"]: r for r in base}
    x_by = {r["concurrency"]: r for r in xz}
    out: dict[str, Any] = {
        "xz_over_baseline_rps_by_concurrency": {
            str(c): _ratio(x_by[c]["ok_rps"], b_by[c]["ok_rps"]) for c in sorted(b_by.keys() & x_by.keys())
        }
    }
    best_b = max(base, key=lambda r: r["ok_rps"], default=None)
    best_x = max(xz, key=lambda r: r["ok_rps"], default=None)
    if best_b and best_x:
        out["best"] = {
            "baseline": {"concurrency": best_b["concurrency"], "ok_rps": best_b["ok_rps"]},
            "xz_serve": {"concurrency": best_x["concurrency"], "ok_rps": best_x["ok_rps"]},
            "xz_over_baseline_rps": _ratio(best_x["ok_rps"], best_b["ok_rps"]),
        }
    if best_b:
        sat = min(c for c, r in b_by.items() if r["ok_rps"] >= SATURATION_FRACTION * best_b["ok_rps"])
        out["baseline_saturation_concurrency"] = sat
        out["saturation_rule"] = f"lowest concurrency with ok req/s >= {SATURATION_FRACTION} x baseline best"
        if sat in x_by:
            out["xz_p99_over_baseline_p99_at_saturation"] = _ratio(
                x_by[sat]["latency_ms"]["p99"], b_by[sat]["latency_ms"]["p99"]
            )
    if raw:
        if 1 in x_by:
            out["xz_p50_c1_over_raw_batch1_p50"] = _ratio(
                x_by[1]["latency_ms"]["p50"], raw["batch1"]["latency_ms"]["p50"]
            )
            if raw_served:
                out["xz_p50_c1_over_raw_batch1_p50_served_threads"] = _ratio(
                    x_by[1]["latency_ms"]["p50"], raw_served["batch1"]["latency_ms"]["p50"]
                )
        batch_key = next(k for k in raw if k.startswith("batch") and k != "batch1")
        if best_x:
            out["xz_best_rps_over_raw_batch_texts_per_s"] = _ratio(
                best_x["ok_rps"], raw[batch_key]["texts_per_s"]
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    """Human-readable summary of the JSON result."""
    lines = [f"# Serving benchmark ({result['meta']['started']}, {result['meta']['cpus']} CPUs)", ""]
    for raw in (result.get("raw"), result.get("raw_served")):
        if raw and "error" not in raw:
            batch_key = next(k for k in raw if k.startswith("batch") and k != "batch1")
            lines += [
                f"(a) raw INT8 model in process ({raw['intra_op_threads'] or 'all'} "
                f"thread{'' if raw['intra_op_threads'] == 1 else 's'}): "
                f"{raw[batch_key]['texts_per_s']:.1f} texts/s at batch {raw[batch_key]['batch_size']}, "
                f"batch-1 P50 {raw['batch1']['latency_ms']['p50']:.2f} ms "
                f"(P99 {raw['batch1']['latency_ms']['p99']:.2f} ms); model {raw['model_id']}, "
                f"artifacts match current build code: {raw.get('artifacts_match_current_code')}",
                "",
            ]
        elif raw:
            lines += [f"(a) raw model FAILED: {raw['error']}", ""]
    lines += [
        "| system | conc | req/s | ok req/s | P50 ms | P90 ms | P99 ms | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sysres in result["systems"].items():
        if "error" in sysres:
            lines.append(f"| {name} | - | FAILED: {sysres['error'][:80]} | | | | | | |")
        for r in sysres["levels"]:
            e = r["errors"]
            sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
            lat = r["latency_ms"]
            lines.append(
                f"| {name} | {r['concurrency']} | {r['rps']:.1f} | {r['ok_rps']:.1f} | {lat['p50']:.2f} | "
                f"{lat['p90']:.2f} | {lat['p99']:.2f} | {r['non2xx']} | {sock} |"
            )
    for system, values in result["ratios"].items():
        lines += ["", f"Ratios for {system}:", ""]
        for key, value in values.items():
            lines.append(f"- {key}: {json.dumps(value)}")
    weights = result["systems"].get("baseline", {}).get("ready", {}).get("weights")
    if weights:
        lines += ["", f"Baseline weights: {json.dumps(weights)}"]
    if result.get("peers"):
        lines += ["", *peers_markdown(result["peers"])]
    return "\n".join(lines) + "\n"


def peers_markdown(peers: dict[str, Any]) -> list[str]:
    """The peer comparison: one row per system and concurrency, with start-up time and peak RSS."""
    lines = [
        f"## Embeddings peer: xz_serve /v1/embeddings against Infinity /embeddings ({peers['started']})",
        "",
        "Same texts (one per request), same wrk sweep, same all-MiniLM-L6-v2 weights; ready = start "
        "command to first 200 of the readiness route; peak RSS = largest sum over the server's processes.",
        "",
        "| system | ready s | peak RSS MB | conc | ok req/s | P50 ms | P99 ms | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in peers["systems"].items():
        head = f"| {name} | {res.get('ready_s', '-')} | {res.get('peak_rss_mb', '-')} |"
        if "error" in res:
            lines.append(f"{head} - | FAILED: {res['error'][:160]} | | | | |")
        for r in res["levels"]:
            e = r["errors"]
            sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
            lat = r["latency_ms"]
            lines.append(
                f"{head} {r['concurrency']} | {r['ok_rps']:.1f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
                f"{r['non2xx']} | {sock} |"
            )
    lines += [
        "",
        f"xz_serve best ok req/s over each peer's best: {json.dumps(peers['xz_best_rps_over_peer_best'])}",
    ]
    return lines


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a shell env file (comments and blanks skipped), as scripts/run.sh loads it."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI; ``--xz-url`` alone benches an already running xz_serve without starting one."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated connection counts")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "serving.json")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded wrk seconds before each sweep")
    p.add_argument("--raw-seconds", type=float, default=None, help="per raw measurement (default: duration)")
    p.add_argument("--raw-threads", type=int, default=0, help="ONNX Runtime threads for (a); 0 = all cores")
    p.add_argument("--baseline-cmd", default=None, help="override (b)'s command; {port} is substituted")
    p.add_argument("--xz-url", default=None, help=f"bench a running xz_serve here (default {DEFAULT_XZ_URL})")
    p.add_argument("--xz-cmd", default=DEFAULT_XZ_CMD, help="command that starts xz_serve (repo root)")
    p.add_argument(
        "--xz-env-file",
        type=Path,
        default=REPO_ROOT / "deployments" / "ray.env",
        help="env file loaded for --xz-cmd, as scripts/run.sh does ('' for none)",
    )
    p.add_argument(
        "--xz-env",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"extra env for --xz-cmd, on top of the env file and {DEFAULT_XZ_ENV}",
    )
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--stop-grace", type=float, default=45.0, help="seconds after SIGINT before SIGTERM")
    p.add_argument(
        "--ray-stop-fallback",
        action="store_true",
        help="run `ray stop --force` if xz_serve processes survive SIGKILL (kills ALL Ray processes)",
    )
    p.add_argument("--skip", default="", help="comma-separated subset of raw,baseline,xz,peers to skip")
    p.add_argument(
        "--only-peers",
        action="store_true",
        help="run only the embeddings peer comparison; the other rows of --out are kept as they are",
    )
    p.add_argument(
        "--peer-engines", default="torch,optimum", help="Infinity engines to bench (bench/peer_infinity.py)"
    )
    p.add_argument(
        "--peer-batch-size", type=int, default=32, help="Infinity's --batch-size (xz: batch.max_batch_size)"
    )
    p.add_argument("--topologies", default="split,fused", help="XzSettings.topology values to bench as (c)")
    args = p.parse_args(argv)
    args.levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    args.peer_engines = [e.strip() for e in args.peer_engines.split(",") if e.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run (a), (b), (c) and the peers in order, write JSON + Markdown, print the table; exit 1 if
    anything failed. ``--only-peers`` runs the peers alone and keeps the rest of ``--out``."""
    args = parse_args(argv)
    write_lua(load_texts())  # deterministic; rewritten so the bodies always match texts.py
    log_dir = Path(tempfile.mkdtemp(prefix="xz_bench_"))
    venv_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if args.only_peers:
        return main_peers(args, argv, log_dir, venv_path)
    result: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.levels,
            "wrk": f"wrk -t1 -c<C> -d{args.duration:g}s --latency --timeout 10s -s bench/wrk_post.lua",
            "texts": str(LUA_TEXTS.relative_to(REPO_ROOT)),
            "git": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip(),
            "logs": str(log_dir),
        },
        "raw": None,
        "systems": {},
    }
    result["meta"]["command"] = command_line("python bench/run.py", argv)

    if "raw" not in args.skip:
        runs = {"raw": args.raw_threads}
        threads = served_threads(args.xz_cmd) if args.xz_url is None else None
        if threads and threads != (args.raw_threads or os.cpu_count()):
            runs["raw_served"] = threads  # (a) again, as one replica's session
        for key, n in runs.items():
            try:
                result[key] = measure_raw(args.raw_seconds or args.duration, n)
            except Exception as exc:
                result[key] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{key}: FAILED: {result[key]['error']}")

    if "baseline" not in args.skip:
        port = free_port()
        cmd_text = (
            args.baseline_cmd or f"{shlex.quote(sys.executable)} bench/baseline_server.py --port {{port}}"
        )
        cmd = shlex.split(cmd_text.format(port=port))
        env = {**os.environ, "PATH": venv_path}
        result["systems"]["baseline"] = bench_server(
            "baseline", cmd, f"http://127.0.0.1:{port}", "/healthz", env, args, log_dir
        )

    topologies = [None] if args.xz_url else args.topologies
    for topology in [] if "xz" in args.skip else topologies:
        name = "xz_serve" if topology in (None, "split") else f"xz_serve_{topology}"
        env = {**os.environ, "PATH": venv_path}
        extra = xz_env(args, str(topology)) if args.xz_url is None else {}
        env.update(extra)
        cmd = None if args.xz_url else shlex.split(args.xz_cmd)
        res = bench_server(
            name, cmd, (args.xz_url or DEFAULT_XZ_URL).rstrip("/"), "/readyz", env, args, log_dir
        )
        res["env"] = extra
        result["systems"][name] = res

    raw_ok = result["raw"] if result["raw"] and "error" not in result["raw"] else None
    served = result.get("raw_served")
    served_ok = served if served and "error" not in served else None
    result["ratios"] = {
        name: ratios(
            raw_ok, result["systems"].get("baseline", {}).get("levels", []), res["levels"], served_ok
        )
        for name, res in result["systems"].items()
        if name.startswith("xz_serve") and "levels" in res
    }
    if "peers" not in args.skip:
        result["peers"] = bench_peers(args, log_dir, venv_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = write_markdown(
        args.out.with_suffix(".md"), markdown(result), result["meta"]["command"], "; about 10 minutes"
    )
    print(md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    failed = (
        (result["raw"] or {}).get("error")
        or (served or {}).get("error")
        or any(
            "error" in s
            for s in [*result["systems"].values(), *result.get("peers", {}).get("systems", {}).values()]
        )
    )
    return 1 if failed else 0


def main_peers(args: argparse.Namespace, argv: list[str] | None, log_dir: Path, venv_path: str) -> int:
    """The peer comparison alone, written into ``--out`` beside the rows already there."""
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.setdefault("meta", {"started": "-", "cpus": os.cpu_count()})
    result.setdefault("raw", None)
    result.setdefault("systems", {})
    result.setdefault("ratios", {})
    peers = bench_peers(args, log_dir, venv_path)
    peers["command"] = command_line("python bench/run.py", argv)
    peers["logs"] = str(log_dir)
    result["peers"] = peers
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    full = result["meta"].get("command", "python bench/run.py")
    md = write_markdown(
        args.out.with_suffix(".md"), markdown(result), full, f"; the peer rows: `{peers['command']}`"
    )
    print(md)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 1 if any("error" in s for s in peers["systems"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
