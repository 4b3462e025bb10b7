"""A real multi-node Ray cluster on this machine, from cluster/multinode.sh (the same script a person
runs): a head with no CPUs whose GCS is backed by a redis-server of its own, two workers with
fractional CPUs and a custom resource each, the cache and store redis-servers shared by all, and the
app deployed with `serve deploy`, reached through HAProxy on the head. Under paced wrk load:

- the two replicas sit on different workers, and one key's rate limit is one budget across them;
- a worker's raylet is killed (the node dies with its replica): at most 1% of requests fail, each
  failure is classified, Serve re-places the lost replica on the surviving worker (time measured),
  and ``/readyz`` keeps answering 200 through it all;
- the GCS is killed and started again: the data plane answers throughout (0 failures), the app is
  the same one afterwards (same replicas, not redeployed), and Serve scales up again.

A timeline (replicas per node, req/s, P99, failures per second) goes to
bench/results/multinode_timeline.{json,png}, and bench/results/multinode.md summarises the run.
``XZ_MULTINODE_LOAD_S`` sets each load phase's length (CI's default is short).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]
SCRIPT = ROOT / "cluster" / "multinode.sh"
RESULTS = ROOT / "bench" / "results"
LOAD_S = float(os.environ.get("XZ_MULTINODE_LOAD_S", "25"))
CONNECTIONS, INTERVAL_MS = 8, 200  # paced: 8 connections, one request each every 200 ms: ~40 req/s
GCS_DOWN_S = 10.0
REPLACE_BOUND_S = 120.0  # the re-placement must finish within this; the measured time is recorded
CUT = {"RemoteProtocolError", "ReadError"}  # a probe whose connection broke unanswered
RECORD: dict[str, Any] = {"events": []}


class Cluster:
    """cluster/multinode.sh on one run directory, and what the test asks the cluster."""

    def __init__(self, run_dir: Path) -> None:
        self.env = os.environ | {"XZ_MN_DIR": str(run_dir)}
        self.run_dir = run_dir
        self.state: dict[str, str] = {}
        self.t0 = time.monotonic()

    def sh(self, *args: str, timeout: float = 600) -> str:
        out = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)  # fmt: skip
        assert out.returncode == 0, f"multinode.sh {' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-4000:]}"
        return out.stdout

    def read_state(self) -> None:
        for line in (self.run_dir / "cluster.env").read_text().splitlines():
            key, _, value = line.partition("=")
            self.state[key] = value.strip('"')

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.state['HTTP_PORT']}"

    def api(self, path: str, timeout: float = 3) -> Any:
        headers = {"Authorization": f"Bearer {self.state['RAY_AUTH_TOKEN']}"}
        r = httpx.get(f"http://127.0.0.1:{self.state['DASH_PORT']}{path}", headers=headers, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def nodes(self) -> dict[str, dict[str, Any]]:
        """node id -> {name (the xz-node label), state}."""
        data = self.api("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        return {n["node_id"]: {"name": n["labels"].get("xz-node", "?"), "state": n["state"]} for n in data}

    def app(self) -> dict[str, Any]:
        return dict(self.api("/api/serve/applications/")["applications"]["xz"])

    def replicas(self, app: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list((app or self.app())["deployments"]["xz"]["replicas"])

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, name: str) -> float:
        t = self.now()
        RECORD["events"].append({"t": round(t, 2), "event": name})
        return t

    def load(self, seconds: float, connections: int, interval_ms: int, headers: str) -> subprocess.Popen[str]:
        args = ["bash", str(SCRIPT), "load", str(int(seconds)), str(connections), str(interval_ms), headers]
        return subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


Event = tuple[float, float, int, str]  # (done, s since t0; latency ms; status; class)


def wrk_events(cluster: Cluster, proc: subprocess.Popen[str], timeout: float) -> list[Event]:
    out, err = proc.communicate(timeout=timeout)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith("WRK_"))
    assert "WRK_EVENTS" in lines, f"wrk printed no events: {out[-2000:]} {err[-2000:]}"
    base = cluster.t0 * 1000
    return [((t - base) / 1000, lat, status, cls) for t, lat, status, cls in json.loads(lines["WRK_EVENTS"])]


def summary(events: list[Event]) -> dict[str, Any]:
    failed = [e for e in events if e[2] != 200]
    latencies = [e[1] for e in events if e[2] == 200]
    return {
        "requests": len(events),
        "failed": len(failed),
        "failed_share": round(len(failed) / max(1, len(events)), 5),
        # Every failure in one class: the app's JSON error code, "proxy" (HAProxy's own error page,
        # which Ray rewrites to a plain-text 500), "socket" (the connection broke before any answer).
        "failures_by_class": dict(Counter(f"{e[2]} {e[3]}" for e in failed)),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "first_failures": [f"{e[0]:.1f}s {e[2]} {e[3]}" for e in failed[:5]],
    }


class Sampler:
    """Replicas per node, once a second (the dashboard's Serve API; None while it cannot answer), and
    the status of ``/readyz`` through HAProxy, twice a second, each in a thread of its own."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[dict[str, Any]] = []
        self.readyz: list[tuple[float, str]] = []
        self.stop = threading.Event()
        # Set while the GCS is down: the dashboard cannot answer then, and asking it only adds to
        # the CPU its own GCS reconnects take (measured by the GCS test).
        self.paused = threading.Event()
        self.names: dict[str, str] = {}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._replicas, self._readyz)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _replicas(self) -> None:
        while not self.stop.is_set():
            sample: dict[str, Any] = {"t": round(self.cluster.now(), 2)}
            if self.paused.is_set():
                sample["replicas"] = None
                self.samples.append(sample)
                self.stop.wait(1.0)
                continue
            try:
                running = [r["node_id"] for r in self.cluster.replicas() if r["state"] == "RUNNING"]
                if set(running) - set(self.names):
                    self.names |= {k: v["name"] for k, v in self.cluster.nodes().items()}
                sample["replicas"] = dict(Counter(self.names.get(n, "?") for n in running))
            except (httpx.HTTPError, KeyError, ValueError):
                sample["replicas"] = None
            self.samples.append(sample)
            self.stop.wait(1.0)

    def _readyz(self) -> None:
        while not self.stop.is_set():
            t = round(self.cluster.now(), 2)
            try:
                status = str(httpx.get(f"{self.cluster.url}/readyz", timeout=2).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.readyz.append((t, status))
            self.stop.wait(0.5)

    def readyz_between(self, start: float, end: float) -> dict[str, int]:
        return dict(Counter(status for t, status in self.readyz if start <= t <= end))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def raylet_pid(cluster: Cluster, node: str) -> int:
    flag = f"--node_manager_port={cluster.state[f'NM_PORT_{node}']}".encode()
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            if args[0].endswith(b"/raylet") and flag in args:
                return int(d)
    raise LookupError(f"no raylet for node {node}")


ROLES = [("gcs_server", b"/gcs_server"), ("raylet", b"/raylet"), ("replica", b"ServeReplica"),
         ("controller", b"ServeController"), ("proxy", b"HAProxyManager"), ("proxy", b"ProxyActor"),
         ("proxy", b"/haproxy"), ("dashboard", b"dashboard/dashboard.py"),
         ("dashboard_agent", b"dashboard/agent.py"), ("runtime_env_agent", b"runtime_env/agent"),
         ("log_monitor", b"log_monitor.py"), ("autoscaler_monitor", b"autoscaler/_private/monitor.py"),
         ("idle_worker", b"ray::IDLE"), ("idle_worker", b"default_worker.py")]  # fmt: skip


def cpu_ticks(cluster: Cluster) -> dict[int, tuple[str, int]]:
    """pid -> (role, user + system clock ticks) for every process of the cluster; a process of no
    known role is named by the start of its command line."""
    needle = cluster.state["RAY_TMP"].encode()
    roots = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{d}/cmdline").read_bytes():
                roots.append(int(d))
    out = {}
    for pid in set().union(*(descendants(r) for r in roots)) if roots else set():
        with contextlib.suppress(OSError, IndexError, ValueError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            role = next((name for name, mark in ROLES if mark in cmd), None)
            if role is None:  # the dashboard's modules run as processes "ray-dashboard-<Module>-0"
                module = re.match(rb"ray-dashboard-(\w+?)(Head)?-\d", cmd)
                label = module.group(1) if module else cmd.split(b"\0")[0].split(b"/")[-1][:40]
                role = ("dashboard:" if module else "") + label.decode(errors="replace")
            role = role.strip()
            out[pid] = (role, int(fields[11]) + int(fields[12]))
    return out


def cpu_delta(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds per role between two cpu_ticks snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    roles: Counter[str] = Counter()
    for pid, (role, ticks) in after.items():
        roles[role] += ticks - before.get(pid, (role, 0))[1]
    return {role: round(t / hz, 2) for role, t in roles.most_common() if t}


def memory_sample(cluster: Cluster) -> dict[str, float]:
    """RSS of each running replica, and of Ray's own processes on a worker node (raylet, agents,
    idle workers: all of the raylet's process tree but the replicas) and on the head's proxy."""
    replicas = [r for r in cluster.replicas() if r["state"] == "RUNNING"]
    replica_pids = {int(r["pid"]) for r in replicas}
    out: dict[str, float] = {"replica_rss_mib": max((rss_mib(p) for p in replica_pids), default=0.0)}
    overheads = []
    for node in ("a", "b"):
        with contextlib.suppress(LookupError, OSError):
            tree = descendants(raylet_pid(cluster, node)) - replica_pids
            overheads.append(sum(rss_mib(p) for p in tree if Path(f"/proc/{p}").exists()))
    out["worker_node_overhead_rss_mib"] = max(overheads, default=0.0)
    head_tree = descendants(raylet_pid(cluster, "head"))
    proxy = 0.0
    for pid in head_tree:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"HAProxyManager" in cmd or b"ProxyActor" in cmd or cmd.split(b"\0")[0].endswith(b"/haproxy"):
                proxy += rss_mib(pid)
    out["proxy_rss_mib"] = proxy
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("multinode"))
    started = time.monotonic()
    try:
        c.sh("up", timeout=300)
        c.read_state()
        c.sh("deploy", timeout=420)
        RECORD["seconds_to_up_and_ready"] = round(time.monotonic() - started, 1)
        c.t0 = time.monotonic()
        yield c
    finally:
        with contextlib.suppress(Exception):
            RECORD["gcs_redis"] = gcs_redis_usage(c)
        with contextlib.suppress(Exception):
            c.sh("down", timeout=120)
        write_results()


def gcs_redis_usage(cluster: Cluster) -> dict[str, Any]:
    """What the GCS asked of its Redis over the whole run (3 nodes, the app, the faults)."""
    import redis

    port, password = int(cluster.state["GCS_REDIS_PORT"]), cluster.state["GCS_REDIS_PASSWORD"]
    client = redis.Redis(port=port, password=password)
    stats, memory, server = client.info("stats"), client.info("memory"), client.info("server")
    keys = int(client.dbsize())  # type: ignore[arg-type]
    client.close()
    seconds = int(server["uptime_in_seconds"])
    return {
        "seconds": seconds,
        "commands": int(stats["total_commands_processed"]),
        "commands_per_s": round(int(stats["total_commands_processed"]) / max(1, seconds), 1),
        "keys": keys,
        "used_memory_mib": round(int(memory["used_memory"]) / 2**20, 2),
        "bytes_in_per_s": round(int(stats["total_net_input_bytes"]) / max(1, seconds)),
    }


@pytest.fixture(scope="module")
def sampler(cluster: Cluster) -> Iterator[Sampler]:
    s = Sampler(cluster)
    s.start()
    yield s
    s.join()
    RECORD["samples"] = s.samples
    RECORD["readyz_samples"] = s.readyz


def create_key(cluster: Cluster, **limits: int) -> str:
    from xz_serve.access.cli import main

    out = io.StringIO()
    args = ["--redis-url", f"redis://127.0.0.1:{cluster.state['STORE_PORT']}/0", "--json", "create",
            "--name", f"multinode-{time.time_ns()}"]  # fmt: skip
    for flag, value in limits.items():
        args += [f"--{flag}", str(value)]
    with contextlib.redirect_stdout(out):
        main(args)
    return str(json.loads(out.getvalue())["key"])


@pytest.fixture(scope="module")
def load_headers(cluster: Cluster) -> str:
    """A key with room for the whole run; no-cache, so each request runs the model."""
    key = create_key(cluster, rpm=1_000_000, tpm=1_000_000)
    return f"Authorization: Bearer {key}|Cache-Control: no-cache"


def replicas_per_node(cluster: Cluster, names: dict[str, str]) -> dict[str, int]:
    replicas = cluster.replicas()
    return dict(Counter(names.get(r["node_id"], "?") for r in replicas if r["state"] == "RUNNING"))


def test_replicas_spread_across_workers_and_one_rate_limit_spans_them(
    cluster: Cluster, sampler: Sampler
) -> None:
    names = {k: v["name"] for k, v in cluster.nodes().items()}
    assert sorted(names.values()) == ["a", "b", "head"]
    placement = replicas_per_node(cluster, names)
    RECORD["placement_at_start"] = placement
    assert placement == {"a": 1, "b": 1}, placement  # Serve spreads replicas; none on the head (0 CPUs)

    # One key, one budget: 30 requests a minute across both replicas, on both nodes, exactly.
    limit, sent = 30, 45
    key = create_key(cluster, rpm=limit, tpm=1_000_000)
    pid_node = {int(r["pid"]): names[r["node_id"]] for r in cluster.replicas()}
    headers = {"Authorization": f"Bearer {key}"}

    def one(i: int) -> tuple[int, str]:
        r = httpx.post(f"{cluster.url}/v1/analyze", json={"text": f"rate limit check {i}"}, headers=headers,
                       timeout=30)  # fmt: skip
        replica = r.headers.get("x-replica", "")
        node = pid_node.get(int(replica.rsplit("-", 1)[1]), "?") if replica else "?"
        return r.status_code, node

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(sent)))
    statuses = Counter(status for status, _ in answers)
    admitted_by = Counter(node for status, node in answers if status == 200)
    RECORD["rate_limit"] = {"limit_per_minute": limit, "sent": sent, "statuses": dict(statuses),
                            "admitted_by_node": dict(admitted_by)}  # fmt: skip
    assert statuses == {200: limit, 429: sent - limit}, RECORD["rate_limit"]
    assert set(admitted_by) == {"a", "b"}, RECORD["rate_limit"]  # both nodes drew on the one budget


def test_node_loss_under_load(cluster: Cluster, sampler: Sampler, load_headers: str) -> None:
    names = {k: v["name"] for k, v in cluster.nodes().items()}
    victim = "a"
    proc = cluster.load(LOAD_S, CONNECTIONS, INTERVAL_MS, load_headers)
    start = cluster.event("node-loss load starts")
    time.sleep(min(8.0, LOAD_S / 4))
    memory = [memory_sample(cluster)]
    cluster.sh("kill-node", victim)
    killed = cluster.event(f"worker {victim}'s raylet killed")
    dead_at = replaced_at = None
    deadline = time.monotonic() + REPLACE_BOUND_S
    while time.monotonic() < deadline and replaced_at is None:
        time.sleep(0.5)
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if dead_at is None:
                victims = [n for n in cluster.nodes().values() if n["name"] == victim]
                if victims and all(n["state"] == "DEAD" for n in victims):
                    dead_at = cluster.event(f"worker {victim} marked dead")
            if replicas_per_node(cluster, names) == {"b": 2}:
                replaced_at = cluster.event("replica re-placed on worker b, running")
        if len(memory) < 20 and cluster.now() - start > 3 * len(memory):
            with contextlib.suppress(Exception):
                memory.append(memory_sample(cluster))
    events = wrk_events(cluster, proc, timeout=LOAD_S + 120)
    cluster.event("node-loss load ends")
    memory.append(memory_sample(cluster))
    result = summary(events) | {
        "victim": victim,
        "seconds_to_node_dead": None if dead_at is None else round(dead_at - killed, 1),
        "seconds_to_replica_replaced": None if replaced_at is None else round(replaced_at - killed, 1),
        "readyz": sampler.readyz_between(start, cluster.now()),
        "placement_after": replicas_per_node(cluster, names),
    }
    RECORD["node_loss"] = result
    RECORD["load_events"] = RECORD.get("load_events", []) + events
    RECORD["memory"] = {
        "replica_rss_mib_max": round(max(m["replica_rss_mib"] for m in memory), 1),
        "worker_node_overhead_rss_mib_max": round(max(m["worker_node_overhead_rss_mib"] for m in memory), 1),
        "head_proxy_rss_mib_max": round(max(m["proxy_rss_mib"] for m in memory), 1),
        "samples": len(memory),
    }
    assert replaced_at is not None, f"the lost replica was not re-placed within {REPLACE_BOUND_S} s: {result}"
    assert result["requests"] > LOAD_S * 20, result
    assert result["failed"] <= 0.01 * result["requests"], result
    assert sum(result["failures_by_class"].values()) == result["failed"]
    # /readyz answered 200 throughout: a replica somewhere was always ready. A probe in flight on the
    # dying replica is cut like any request there (no answer at all), only at the kill itself.
    assert set(result["readyz"]) <= {"200", *CUT}, result
    cut = [t for t, status in sampler.readyz if status in CUT and start <= t]
    assert all(killed <= t <= killed + 5 for t in cut) and len(cut) <= 1, (cut, killed)


def test_gcs_restart_under_load(cluster: Cluster, sampler: Sampler, load_headers: str) -> None:
    before = cluster.app()
    seconds = max(LOAD_S, 2 * GCS_DOWN_S + 10)  # a quiet span, the outage, and time after it
    proc = cluster.load(seconds, CONNECTIONS, INTERVAL_MS, load_headers)
    start = cluster.event("GCS load starts")
    time.sleep(1.0)
    ticks = cpu_ticks(cluster)
    time.sleep(GCS_DOWN_S)
    cpu_before = cpu_delta(ticks, cpu_ticks(cluster))  # the same load, the same span, the GCS up
    sampler.paused.set()
    cluster.sh("kill-gcs")
    killed = cluster.event("GCS killed")
    ticks = cpu_ticks(cluster)
    time.sleep(GCS_DOWN_S)
    cpu_down = cpu_delta(ticks, cpu_ticks(cluster))
    cluster.sh("restart-gcs")
    restarted = cluster.event("GCS restarted")
    sampler.paused.clear()
    back_at = None
    deadline = time.monotonic() + 120
    while back_at is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if cluster.app()["status"] == "RUNNING":
                back_at = cluster.event("Serve API answers again")
                break
        time.sleep(0.5)
    events = wrk_events(cluster, proc, timeout=seconds + 120)
    cluster.event("GCS load ends")
    after = cluster.app()
    same = {r["replica_id"]: r["pid"] for r in cluster.replicas(before) if r["state"] == "RUNNING"}
    now = {r["replica_id"]: r["pid"] for r in cluster.replicas(after) if r["state"] == "RUNNING"}
    result = summary(events) | {
        "gcs_down_s": round(restarted - killed, 1),
        "seconds_from_restart_to_serve_api": None if back_at is None else round(back_at - restarted, 1),
        "app_status_after": after["status"],
        "redeployed": after["last_deployed_time_s"] != before["last_deployed_time_s"],
        "same_replicas": same == now,
        "readyz": sampler.readyz_between(start, cluster.now()),
        "cpu_seconds_before_kill": cpu_before,
        "cpu_seconds_while_down": cpu_down,
    }
    RECORD["gcs_restart"] = result
    RECORD["load_events"] = RECORD.get("load_events", []) + events
    assert back_at is not None, result
    assert result["requests"] > seconds * 20, result
    assert result["failed"] == 0, result  # the data plane never needs the GCS
    assert after["status"] == "RUNNING" and not result["redeployed"] and result["same_replicas"], result
    assert set(result["readyz"]) == {"200"}, result

    # Autoscaling works again: a closed-loop burst makes Serve add a third replica, which the
    # restarted GCS must create and place.
    names = {k: v["name"] for k, v in cluster.nodes().items()}
    burst = cluster.load(90, 24, 0, load_headers)
    burst_start = cluster.event("burst starts (closed loop, 24 connections)")
    scaled_at = asked_at = None
    deadline = time.monotonic() + 90
    memory = []
    while scaled_at is None and time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            replicas = cluster.replicas()
            if asked_at is None and len([r for r in replicas if r["state"] != "STOPPING"]) >= 3:
                asked_at = cluster.event("Serve asks for a third replica")
            if sum(r["state"] == "RUNNING" for r in replicas) >= 3:
                scaled_at = cluster.event("third replica running")
        with contextlib.suppress(Exception):
            if len(memory) < 10 and cluster.now() - burst_start > 3 * len(memory) + 2:
                memory.append(memory_sample(cluster))
    burst.send_signal(signal.SIGINT)  # wrk stops on SIGINT and still prints its report
    burst_events = wrk_events(cluster, burst, timeout=60)
    RECORD["load_events"] += burst_events
    ended = cluster.event("burst ends")
    # Two replicas saturated: the burst from its second second until Serve asked for a third.
    window_end = asked_at or scaled_at or ended
    two = [e for e in burst_events if burst_start + 1 <= e[0] < window_end]
    ok_rps = sum(e[2] == 200 for e in two) / max(1.0, window_end - burst_start - 1)
    RECORD["autoscale_after_gcs"] = {
        "seconds_to_third_replica": None if scaled_at is None else round(scaled_at - burst_start, 1),
        "seconds_to_scale_decision": None if asked_at is None else round(asked_at - burst_start, 1),
        "placement": replicas_per_node(cluster, names),
        "two_replicas_saturated": summary(two) | {"ok_rps": round(ok_rps, 1)},
    }
    if memory:
        mem = RECORD.setdefault("memory", {})
        burst_max = round(max(m["replica_rss_mib"] for m in memory), 1)
        mem["replica_rss_mib_max_in_burst"] = burst_max
        mem["replica_rss_mib_max"] = max(mem.get("replica_rss_mib_max", 0), burst_max)
    assert scaled_at is not None, RECORD["autoscale_after_gcs"]


def timeline(
    events: list[Event], samples: list[dict[str, Any]], readyz: list[tuple[float, str]]
) -> list[dict[str, Any]]:
    """Per second: replicas per node (the last sample), /readyz answers, requests done, failures
    (by class) and the P99 of the 200s."""
    if not samples:
        return []
    rows = []
    end = int(max([s["t"] for s in samples] + [e[0] for e in events])) + 1
    for second in range(end):
        done = [e for e in events if second <= e[0] < second + 1]
        ok = [e[1] for e in done if e[2] == 200]
        sample = next((s for s in reversed(samples) if s["t"] < second + 1), samples[0])
        rows.append({
            "t": second,
            "replicas": sample.get("replicas"),
            "readyz": dict(Counter(status for t, status in readyz if second <= t < second + 1)),
            "rps": len(done),
            "ok_rps": len(ok),
            "failures": len(done) - len(ok),
            "failures_by_class": dict(Counter(f"{e[2]} {e[3]}" for e in done if e[2] != 200)),
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
        })  # fmt: skip
    return rows


def write_results() -> None:
    events = RECORD.pop("load_events", [])
    samples = RECORD.pop("samples", [])
    readyz = RECORD.pop("readyz_samples", [])
    if not events:
        return
    record = {k: RECORD[k] for k in RECORD if k != "events"} | {
        "setup": {
            "nodes": "head (0 CPUs, GCS on its own redis-server, HAProxy), worker a (1 CPU), "
            "worker b (2 CPUs), on one 2-core machine; cache and store redis-servers shared",
            "app": "fused, 2..3 replicas of 0.5 CPU, API keys on (cluster/multinode.sh config)",
            "load": f"wrk, {CONNECTIONS} connections, one request each every {INTERVAL_MS} ms "
            f"(~{CONNECTIONS * 1000 // INTERVAL_MS} req/s), {int(LOAD_S)} s per phase, no-cache, 1 text",
        },
        "events": RECORD["events"],
        "timeline": timeline(events, samples, readyz),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multinode_timeline.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(record, RESULTS / "multinode_timeline.png")
    write_markdown(record)


def plot(record: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = record["timeline"]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(9, 9))
    for node in ("a", "b"):
        axes[0].step(t, [(r["replicas"] or {}).get(node, 0) if r["replicas"] is not None else np.nan
                         for r in rows], where="post", label=f"worker {node}")  # fmt: skip
    axes[0].set_ylabel("replicas")
    axes[0].legend(loc="upper right")
    axes[1].plot(t, [r["ok_rps"] for r in rows], label="ok")
    axes[1].set_ylabel("req/s")
    axes[2].bar(t, [r["failures"] for r in rows], color="tab:red")
    axes[2].set_ylim(0, max([1] + [r["failures"] for r in rows]) * 1.2)
    axes[2].set_ylabel("failures/s")
    axes[3].plot(t, [r["p99_ms"] or np.nan for r in rows])
    axes[3].set_ylabel("P99 ms")
    axes[3].set_xlabel("seconds")
    for event in record["events"]:
        if any(word in event["event"] for word in ("killed", "restarted", "marked dead", "running")):
            for ax in axes:
                ax.axvline(event["t"], color="grey", linestyle="--", linewidth=0.8)
            axes[0].annotate(event["event"], (event["t"], 0.1), rotation=90, fontsize=7, va="bottom")
    loss, gcs = record.get("node_loss", {}), record.get("gcs_restart", {})
    fig.suptitle(f"xz_serve on 3 Ray nodes: node loss {loss.get('failed')}/{loss.get('requests')} failed, "
                 f"GCS restart {gcs.get('failed')}/{gcs.get('requests')} failed")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_markdown(record: dict[str, Any]) -> None:
    from bench.results_md import write_markdown as write

    loss = record.get("node_loss", {})
    gcs = record.get("gcs_restart", {})
    scale = record.get("autoscale_after_gcs", {})
    rate = record.get("rate_limit", {})
    memory = record.get("memory", {})
    saturated = scale.get("two_replicas_saturated", {})
    gcs_redis = record.get("gcs_redis", {})

    def top(cpu: dict[str, float] | None, n: int = 5) -> str:
        items = sorted((cpu or {}).items(), key=lambda kv: -kv[1])
        rest = sum(v for _, v in items[n:])
        return ", ".join(f"{k} {v}" for k, v in items[:n]) + (f", the rest {rest:.2f}" if rest else "")

    def pct(part: dict[str, Any]) -> str:
        return f"{part.get('failed')} ({100 * part.get('failed_share', 0):.2f}%)"

    def row(*cells: Any) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    loss_after = (
        f"node marked dead after {loss.get('seconds_to_node_dead')} s; its replica re-placed on worker b "
        f"and running after **{loss.get('seconds_to_replica_replaced')} s**"
    )
    gcs_after = (
        f"Serve API back {gcs.get('seconds_from_restart_to_serve_api')} s after the restart; app "
        f"{gcs.get('app_status_after')}, redeployed: {gcs.get('redeployed')}, same replicas: "
        f"{gcs.get('same_replicas')}"
    )
    table = "\n".join([
        row("phase", "requests", "failed", "failures by class", "P50 / P99 ms", "`/readyz` samples", "after"),
        "|---|---:|---:|---|---|---|---|",
        row("worker a's raylet killed", loss.get("requests"), pct(loss), loss.get("failures_by_class"),
            f"{loss.get('p50_ms')} / {loss.get('p99_ms')}", loss.get("readyz"), loss_after),
        row(f"GCS killed, down {gcs.get('gcs_down_s')} s, restarted", gcs.get("requests"), pct(gcs),
            gcs.get("failures_by_class"), f"{gcs.get('p50_ms')} / {gcs.get('p99_ms')}", gcs.get("readyz"),
            gcs_after),
    ])  # fmt: skip
    setup = record["setup"]
    body = f"""# Multi-node: node loss and GCS restart under load

Setup: {setup["nodes"]}. App: {setup["app"]}. Load: {setup["load"]}.
Start-up (3 redis-servers, 3 Ray nodes, `serve deploy`, ready): {record.get("seconds_to_up_and_ready")} s.

{table}

- Placement at start: {record.get("placement_at_start")}; after the node loss: {loss.get("placement_after")}.
- Rate limit across nodes: a key of {rate.get("limit_per_minute")} requests/minute, {rate.get("sent")} sent
  concurrently: {rate.get("statuses")}; the admitted ones by node: {rate.get("admitted_by_node")}.
- CPU seconds by process while the GCS was down ({gcs.get("gcs_down_s")} s):
  {top(gcs.get("cpu_seconds_while_down"))}; over as long just before the kill:
  {top(gcs.get("cpu_seconds_before_kill"))}.
- The GCS's Redis over the whole run ({gcs_redis.get("seconds")} s): {gcs_redis.get("commands")} commands
  ({gcs_redis.get("commands_per_s")}/s), {gcs_redis.get("keys")} keys, {gcs_redis.get("used_memory_mib")} MiB.
- Autoscaling after the GCS restart: a closed-loop burst (24 connections) made Serve ask for a third
  replica after {scale.get("seconds_to_scale_decision")} s, running after
  {scale.get("seconds_to_third_replica")} s ({scale.get("placement")}). Until then the two replicas,
  saturated, answered {saturated.get("ok_rps")} req/s (P50 {saturated.get("p50_ms")} ms, P99
  {saturated.get("p99_ms")} ms, {saturated.get("failed")} failed).
- Memory (RSS, max of {memory.get("samples")} samples under paced load and more in the burst): a
  fused replica {memory.get("replica_rss_mib_max")} MiB ({memory.get("replica_rss_mib_max_in_burst")}
  in the burst); Ray's own processes on a worker node (raylet, agents,
  idle workers) {memory.get("worker_node_overhead_rss_mib_max")} MiB; the head's proxy (HAProxy, its
  manager, Serve's proxy actor) {memory.get("head_proxy_rss_mib_max")} MiB. These size the chart's
  worker pods (`worker.sizing` in helm/xz-serve/values.yaml).

Timeline (replicas per node, req/s, failures/s, P99 per second): `multinode_timeline.json`.

![replicas per node, req/s, failures and P99 over time](multinode_timeline.png)
"""
    command = f"XZ_MULTINODE_LOAD_S={int(LOAD_S)} python -m pytest tests/integration/test_multinode.py"
    write(RESULTS / "multinode.md", body, command, extra=", `multinode_timeline.{json,png}`")
