"""Faults under a bounded load (8 clients on 127.0.0.1): a killed model replica costs at most 1% of
requests and is replaced (readiness back to 200); killing both redis-servers (cache and store)
fails nothing (cache and limits fail open) and both recover on restart; a replica being stopped
drains its in-flight requests. Figures go to ``bench/results/faults.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import ROOT, deployed, local_args, wait_ready
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
APP = "faults"
RESULTS = ROOT / "bench" / "results" / "faults.json"
RECORD: dict[str, Any] = {}
DATA = ROOT.parent / "shared" / "data"


def faults_args(replicas: int) -> dict[str, Any]:
    args = local_args()
    args["nlu"] = args["nlu"] | {"min_replicas": replicas, "max_replicas": replicas, "num_cpus": 0.5,
                                 "graceful_shutdown_timeout_s": 20}  # fmt: skip
    args["model"] = args["model"] | {"intra_op_threads": 1}
    args["access"] = {"auth_enabled": True, "limits_fail_mode": "open", "key_stale_s": 300}
    return args


@pytest.fixture(scope="module")
def faults_url(serve_url: str, redis_store: RedisServer) -> Iterator[str]:
    with deployed(serve_url, APP, faults_args(2)) as url:
        yield url
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(RECORD, indent=1) + "\n")


@pytest.fixture(scope="module")
def key(faults_url: str, redis_store: RedisServer) -> dict[str, str]:
    """A real key in the durable store, made with the admin CLI."""
    from xz_serve.access.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--redis-url", redis_store.url, "--json", "create", "--name", "faults",
              "--rpm", "1000000", "--tpm", "1000000"])  # fmt: skip
    return {"Authorization": f"Bearer {json.loads(out.getvalue())['key']}"}


def texts() -> list[str]:
    rows = [json.loads(line)["text"] for line in (DATA / "intent_clinc150" / "val.jsonl").open()]
    random.Random(11).shuffle(rows)
    return rows


async def load(
    url: str, headers: dict[str, str], seconds: float, fault: Callable[[], Awaitable[None]] | None = None
) -> list[tuple[float, int, str]]:
    """8 closed-loop clients for ``seconds``; ``fault`` runs beside them. (time, status, error).

    ``fault`` shares the clients' event loop: anything slow it calls goes through a thread.
    """
    pool = texts()
    done: list[tuple[float, int, str]] = []
    start = time.monotonic()

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        i = worker * 131
        while time.monotonic() - start < seconds:
            i += 1
            try:
                r = await http.post("/v1/analyze", json={"text": pool[i % len(pool)]}, headers=headers)
                error = "" if r.status_code == 200 else r.text[:120]
                done.append((time.monotonic() - start, r.status_code, error))
            except httpx.HTTPError as exc:
                done.append((time.monotonic() - start, 0, repr(exc)[:120]))
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        tasks = [asyncio.create_task(client(w, http)) for w in range(8)]
        if fault is not None:
            await fault()
        await asyncio.gather(*tasks)
    return done


def summary(done: list[tuple[float, int, str]]) -> dict[str, Any]:
    failed = [d for d in done if d[1] != 200]
    return {
        "requests": len(done),
        "failed": len(failed),
        "statuses": dict(Counter(str(d[1]) for d in done)),
        "first_failures": [f"{t:.1f}s {s} {e}" for t, s, e in failed[:5]],
    }


def replicas(state: str = "RUNNING") -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments["xz"]
    return int(status.replica_states.get(state, 0))


def readyz_status(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=5).status_code


def replicas_not_stopped() -> int:
    return replicas() + replicas("STOPPING")


def replica_names() -> list[str]:
    """Named actors of this app's replicas (the dashboard is off, so no state API)."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith(f"SERVE_REPLICA::{APP}#xz#"))


def test_killed_replica_costs_at_most_one_percent_and_is_replaced(
    faults_url: str, key: dict[str, str]
) -> None:
    import ray

    ready_after: list[float] = []

    async def kill_one() -> None:
        await asyncio.sleep(4)
        ours = await asyncio.to_thread(replica_names)
        assert len(ours) == 2, ours
        await asyncio.to_thread(lambda: ray.kill(ray.get_actor(ours[0], namespace="serve"), no_restart=True))
        killed_at = time.monotonic()
        deadline = killed_at + 90
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            now = await asyncio.to_thread(replica_names)
            replaced = len(now) == 2 and ours[0] not in now and await asyncio.to_thread(replicas) == 2
            if replaced and (await asyncio.to_thread(readyz_status, faults_url)) == 200:
                ready_after.append(time.monotonic() - killed_at)
                return

    done = asyncio.run(load(faults_url, key, 20, kill_one))
    result = summary(done) | {"seconds_to_replacement_ready": ready_after[0] if ready_after else None}
    RECORD["replica_kill"] = result
    assert ready_after, f"Serve did not replace the killed replica: {result}"
    assert result["requests"] > 200, result
    assert result["failed"] <= 0.01 * result["requests"], result


def test_redis_kill_fails_nothing_and_recovers(
    faults_url: str, key: dict[str, str], redis_cache: RedisServer, redis_store: RedisServer
) -> None:
    async def kill_both() -> None:
        await asyncio.sleep(3)
        await asyncio.gather(asyncio.to_thread(redis_cache.stop), asyncio.to_thread(redis_store.stop))
        await asyncio.sleep(8)
        await asyncio.gather(asyncio.to_thread(redis_cache.start), asyncio.to_thread(redis_store.start))

    done = asyncio.run(load(faults_url, key, 20, kill_both))
    result = summary(done)
    cache = redis.Redis.from_url(redis_cache.url)
    fresh = [f"recovery check {i} {time.time()}" for i in range(5)]  # texts no one cached before
    for text in fresh:
        answer = httpx.post(f"{faults_url}/v1/analyze", json={"text": text}, headers=key, timeout=30)
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 10  # the cache writes in the background after the answer
    while time.monotonic() < deadline and not cache.dbsize():
        time.sleep(0.2)
    result["cache_keys_after_restart"] = int(cache.dbsize())  # type: ignore[arg-type]
    RECORD["redis_kill"] = result
    assert result["requests"] > 200, result
    assert result["failed"] == 0, result
    assert result["cache_keys_after_restart"] > 0, "the cache did not come back after the restart"


HAPROXY_ERROR_BODY = "Internal Server Error"  # Ray's errorfile for HAProxy's 502/503/504


def test_stopping_replica_drains_in_flight_requests(faults_url: str, key: dict[str, str]) -> None:
    from ray import serve

    from xz_serve.app import build_app

    async def scale_down() -> None:
        await asyncio.sleep(3)
        # serve.run waits for the new config to be running (a minute on a busy node): in a thread,
        # so the load's own event loop keeps sending. Blocking it stalls requests mid-body and
        # the server rightly cuts them at body_timeout_s.
        app = build_app(faults_args(1))
        await asyncio.to_thread(serve.run, app, name=APP, route_prefix=f"/{APP}", blocking=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and await asyncio.to_thread(replicas_not_stopped) > 1:
            await asyncio.sleep(0.5)

    done = asyncio.run(load(faults_url, key, 15, scale_down))
    result = summary(done) | {"running_replicas_after": replicas()}
    RECORD["graceful_scale_down"] = result
    wait_ready(faults_url)
    assert result["running_replicas_after"] == 1, result
    assert result["requests"] > 100, result
    # No request got an error answer from the app while the replica drained (the app's errors are
    # JSON). When HAProxy reloads its config for the new replica set, a request on a keep-alive
    # connection at that moment can be cut: it sees a closed connection (status 0) or HAProxy's own
    # 502, which Ray's template rewrites to a plain-text "500 Internal Server Error" (seen once in
    # 1,234 requests in CI). Those proxy-level losses are counted, bounded and reported.
    proxy_cut = [d for d in done if d[1] == 0 or (d[1] == 500 and d[2] == HAPROXY_ERROR_BODY)]
    answered_errors = [d for d in done if d[1] != 200 and d not in proxy_cut]
    result["proxy_cut"] = len(proxy_cut)
    assert answered_errors == [], result
    assert len(proxy_cut) <= 0.01 * len(done), result
