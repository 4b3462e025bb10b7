"""Redis commands and bytes per request, by route, counted by the Redis servers themselves.

An app with API keys on (as in production) gets a cache and a store redis-server of its own, so
nothing else talks to them. For each case, N requests run one at a time between ``CONFIG RESETSTAT``
and ``INFO commandstats`` / ``INFO stats`` on both servers; the same measurement with no requests
(the idle baseline: the measurement's own commands, background work) is subtracted. The per-request
figures go to bench/results/redis_per_request.json, which docs/capacity.md turns into a capacity
model. The in-process L1 is off, so a repeated text is a hit in Redis, as it is on a replica that did
not compute it (with many replicas, most hits); with the L1 on, a repeat on the same replica costs no
cache command at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import ROOT, deployed, local_args
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N = 40
AT_ONCE = 5  # the concurrent case sends this many times N
RESULT = ROOT / "bench" / "results" / "redis_per_request.json"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, RedisServer]]:
    out = {"cache": RedisServer(), "store": RedisServer(durable=True)}
    for server in out.values():
        server.start()
    yield out
    for server in out.values():
        server.close()


@pytest.fixture(scope="module")
def app_url(serve_url: str, servers: dict[str, RedisServer]) -> Iterator[str]:
    args = local_args()
    args["cache"] = args["cache"] | {"redis_url": servers["cache"].url, "l1_max_entries": 0}
    args["store"] = {"redis_url": servers["store"].url}
    args["access"] = {"auth_enabled": True, "limits_fail_mode": "open"}
    with deployed(serve_url, "redisuse", args) as url:
        yield url


@pytest.fixture(scope="module")
def headers(app_url: str, servers: dict[str, RedisServer]) -> dict[str, str]:
    from xz_serve.access.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--redis-url", servers["store"].url, "--json", "create", "--name", "redis-usage",
              "--rpm", "1000000", "--tpm", "1000000"])  # fmt: skip
    return {"Authorization": f"Bearer {json.loads(out.getvalue())['key']}"}


class Monitor(threading.Thread):
    """``MONITOR`` on one redis-server: every command it runs, each either sent by a client or run
    inside a Lua script (Redis shows those with the client ``lua``)."""

    LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]+)")?')
    SUBCOMMANDS = frozenset({b"script", b"client", b"config", b"cluster", b"object"})

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        assert self.sock.recv(5).startswith(b"+OK"), "MONITOR refused"
        self.sent: Counter[str] = Counter()
        self.in_scripts: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        buffer = b""
        self.sock.settimeout(0.2)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                if self.stopping.is_set():
                    break
                continue
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                match = self.LINE.match(line)
                if not match:
                    continue
                client, name, sub = match.groups()
                name = name.lower()
                command = (
                    f"{name.decode()}|{sub.lower().decode()}"
                    if name in self.SUBCOMMANDS and sub
                    else name.decode()
                )
                (self.in_scripts if client == b"lua" else self.sent)[command] += 1

    def finish(self) -> tuple[Counter[str], Counter[str]]:
        self.stopping.set()
        self.join(timeout=10)
        self.sock.close()
        return self.sent, self.in_scripts


def counters(client: redis.Redis) -> dict[str, float]:
    stats, cpu = client.info("stats"), client.info("cpu")
    return {
        "bytes_in": float(stats["total_net_input_bytes"]),
        "bytes_out": float(stats["total_net_output_bytes"]),
        "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "commands": float(stats["total_commands_processed"]),
    }


Pass = Callable[[int], object]  # runs the case's requests; the argument is the pass (0 or 1)


def measure(servers: dict[str, RedisServer], run: Pass, settle_s: float = 0.5) -> dict[str, Any]:
    """Pass 0 under MONITOR (which commands, sent or inside scripts); pass 1 without it, for the
    server's own counters (bytes, CPU), which MONITOR's output would inflate."""
    monitors = {role: Monitor(s) for role, s in servers.items()}
    for monitor in monitors.values():
        monitor.start()
    run(0)
    time.sleep(settle_s)  # the cache's write-back runs after the response
    seen = {role: m.finish() for role, m in monitors.items()}
    clients = {role: redis.Redis.from_url(s.url) for role, s in servers.items()}
    for client in clients.values():
        client.config_resetstat()  # INFO commandstats counts from here
    before = {role: counters(c) for role, c in clients.items()}
    started = time.monotonic()
    run(1)
    time.sleep(settle_s)
    seconds = time.monotonic() - started
    out = {}
    for role, client in clients.items():
        after = counters(client)
        stats = client.info("commandstats")
        usec = {name.removeprefix("cmdstat_"): float(v["usec"]) for name, v in stats.items()}
        calls = {name.removeprefix("cmdstat_"): float(v["calls"]) for name, v in stats.items()}
        out[role] = {k: after[k] - before[role][k] for k in after} | {
            "seconds": seconds, "sent": seen[role][0], "in_scripts": seen[role][1], "usec": usec,
            "calls": calls,
        }  # fmt: skip
        client.close()
    return out


def per_request(raw: dict[str, Any], idle: dict[str, Any], n: int) -> dict[str, Any]:
    """One role's figures for one case, per request, less the idle baseline scaled to its time."""
    scale = raw["seconds"] / idle["seconds"]

    def net(key: str) -> float:
        return max(0.0, raw[key] - idle[key] * scale) / n

    def commands(counter: Counter[str], idle_counter: Counter[str]) -> dict[str, float]:
        out = {name: (count - idle_counter.get(name, 0) * scale) / n for name, count in counter.items()}
        return {name: round(v, 3) for name, v in sorted(out.items()) if v > 0.01}

    sent = commands(raw["sent"], idle["sent"])
    in_scripts = commands(raw["in_scripts"], idle["in_scripts"])
    # Execution time of the commands the app sent (a script's includes its own commands'): each
    # name's INFO commandstats time, in the share of its calls that were sent rather than run inside
    # a script (a name can be both, e.g. SET).
    execution = 0.0
    for name, per_request in sent.items():
        total = raw["calls"].get(name, 0.0)
        if total:
            share = min(1.0, per_request * n / total)
            execution += raw["usec"].get(name, 0.0) * share / n
    return {
        "commands_sent": round(sum(sent.values()), 3),
        "commands_in_scripts": round(sum(in_scripts.values()), 3),
        "bytes_in": round(net("bytes_in"), 1),
        "bytes_out": round(net("bytes_out"), 1),
        # The server's CPU (user + system: command execution, parsing, network I/O), one request at
        # a time; under concurrent load Redis spends less per command on I/O.
        "cpu_us": round(net("cpu_s") * 1e6, 1),
        "execution_us": round(execution, 1),
        "sent": sent,
        "in_scripts": in_scripts,
    }


def texts(tag: str, n: int) -> list[str]:
    words = ["how", "do", "i", "reset", "my", "card", "pin", "today", "please", "now"]
    return [
        f"{tag} {' '.join(words[(i + j) % 10] for j in range(6))} {uuid.uuid4().hex[:8]}" for i in range(n)
    ]


def test_redis_commands_and_bytes_per_request_by_route(
    app_url: str, headers: dict[str, str], servers: dict[str, RedisServer]
) -> None:
    http = httpx.Client(base_url=app_url, headers=headers, timeout=30)

    def post(path: str, body: dict[str, Any]) -> None:
        r = http.post(path, json=body)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])

    routes = {
        "/v1/analyze": lambda t: {"text": t},
        "/v1/intent": lambda t: {"text": t},
        "/v1/sentiment": lambda t: {"text": t},
        "/v1/embeddings": lambda t: {"input": t},
    }
    post("/v1/analyze", {"text": "warm up the connections"})  # pools open, key verified
    idle = measure(servers, lambda i: time.sleep(2.0))
    cases: dict[str, Any] = {}
    for path, body in routes.items():
        fresh = (texts(path, N), texts(path, N))
        cases[f"{path} miss"] = measure(
            servers, lambda i, p=path, b=body, f=fresh: [post(p, b(t)) for t in f[i]]
        )
        # The same texts again: every one is in the cache Redis now.
        cases[f"{path} hit"] = measure(
            servers, lambda i, p=path, b=body, f=fresh: [post(p, b(t)) for t in f[i]]
        )
    # Hits from 16 clients at once: what Redis spends per command once its I/O is shared.
    pool = ThreadPoolExecutor(16)
    together = texts("/v1/analyze", N)
    for t in together:
        post("/v1/analyze", {"text": t})

    def at_once(i: int) -> None:
        list(pool.map(lambda j: post("/v1/analyze", {"text": together[j % N]}), range(AT_ONCE * N)))

    cases["/v1/analyze hit, 16 at once"] = measure(servers, at_once)
    pool.shutdown()
    batches = (texts("batch", N * 8), texts("batch", N * 8))
    cases["/v1/analyze, 8 texts, miss"] = measure(
        servers, lambda i: [post("/v1/analyze", {"texts": batches[i][j : j + 8]}) for j in range(0, N * 8, 8)]
    )

    def chat(i: int) -> None:
        session = None
        for t in texts(f"chat {i}", N):
            body = {"message": t} | ({"session_id": session} if session else {})
            r = http.post("/v1/chat", json=body)
            assert r.status_code == 200, r.text[:200]
            session = r.json()["session_id"]

    cases["/v1/chat, a turn"] = measure(servers, chat)
    cases["/v1/models"] = measure(
        servers, lambda i: [http.get("/v1/models").raise_for_status() for _ in range(N)]
    )
    cases["/readyz"] = measure(servers, lambda i: [http.get("/readyz").raise_for_status() for _ in range(N)])
    http.close()

    def count(name: str) -> int:
        return AT_ONCE * N if "at once" in name else N

    record: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d"),
        "how": f"{N} requests per case, one at a time (the 16-at-once case: {AT_ONCE * N}), 1 fused "
        "replica, API keys on, the L1 off (a repeat is a Redis hit). Commands from MONITOR (sent by the "
        "app, or run inside its Lua scripts); bytes and CPU from INFO stats / INFO cpu in a second pass "
        "without MONITOR; both less an idle baseline.",
        "cases": {
            name: {"requests": count(name)}
            | {role: per_request(raw[role], idle[role], count(name)) for role in ("cache", "store")}
            for name, raw in cases.items()
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=1) + "\n")

    c = record["cases"]

    def on_request_path(role: dict[str, Any]) -> float:
        # A replica reads the cache's eviction count with one INFO per 15 s, on whichever request
        # comes next: one pass in a few holds one, which is not the route's cost.
        return float(role["commands_sent"] - role["sent"].get("info", 0))

    for path in routes:
        miss, hit = c[f"{path} miss"], c[f"{path} hit"]
        # A miss: one read-and-lease script, then one pipelined write-back (the SET and the lease's
        # release); a hit: one read.
        assert on_request_path(miss["cache"]) <= 3.05, miss
        assert miss["cache"]["sent"].get("info", 0) <= 1.5 / N, miss
        assert on_request_path(hit["cache"]) <= 1.05, hit
        # The store: the limiter's one script, and the key's lookup once per key_cache_ttl_s.
        assert hit["store"]["commands_sent"] <= 1.1, hit
    assert c["/readyz"]["cache"]["commands_sent"] == 0 == c["/readyz"]["store"]["commands_sent"], c["/readyz"]
