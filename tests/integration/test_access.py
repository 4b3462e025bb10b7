"""API keys and limits in the real cluster: an auth-on app with two replicas on the durable store Redis.

Keys come from the real ``xz-keys`` console script; limits must hold across replicas (one limit,
not one per replica), and keys must survive restarts of Redis and of the app.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import deployed, local_args
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

XZ_KEYS = str(Path(sys.executable).parent / "xz-keys")
TTL_S = 1.0  # access.key_cache_ttl_s of the apps here: the revocation bound


def auth_args(replicas: int) -> dict[str, Any]:
    args = local_args()
    nlu = {**args["nlu"], "min_replicas": replicas, "max_replicas": replicas, "num_cpus": 0.5}
    model = {**args["model"], "intra_op_threads": 1}
    return args | {"nlu": nlu, "model": model, "access": {"auth_enabled": True, "key_cache_ttl_s": TTL_S}}


def xz_keys(store: RedisServer, *argv: str) -> dict[str, Any]:
    """Run the real CLI against the store; its JSON answer."""
    env = {**os.environ, "XZ_STORE__REDIS_URL": store.url}
    done = subprocess.run([XZ_KEYS, "--json", *argv], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def bearer(created: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {created['key']}"}


@pytest.fixture(scope="module")
def auth_url(serve_url: str, redis_store: RedisServer) -> Iterator[str]:
    """Auth on, fused topology with two replicas behind HAProxy, keys and limits in the store Redis."""
    with deployed(serve_url, "auth", auth_args(replicas=2)) as url:
        yield url


def test_health_is_open_and_v1_needs_a_key(auth_url: str) -> None:
    assert httpx.get(f"{auth_url}/healthz", timeout=10).status_code == 200
    response = httpx.post(f"{auth_url}/v1/analyze", json={"text": "hello"}, timeout=10)
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


async def _burst(url: str, headers: dict[str, str], total: int, concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)  # fresh connections
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> httpx.Response:
            async with gate:
                body = {"text": f"burst text {i}"}
                return await client.post(f"{url}/v1/analyze", json=body, headers=headers)

        return list(await asyncio.gather(*(one(i) for i in range(total))))


def test_limit_is_cluster_wide(auth_url: str, redis_store: RedisServer) -> None:
    """A key with N requests/min, 3N requests spread over both replicas: N admitted (within 5%)."""
    n = 40
    key = xz_keys(redis_store, "create", "--name", "cluster-limit", "--rpm", str(n))
    started = time.monotonic()
    responses = asyncio.run(_burst(auth_url, bearer(key), total=3 * n, concurrency=12))
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in responses]
    admitted = codes.count(200)
    print(f"\n{3 * n} requests over {elapsed:.1f} s: {admitted} admitted, {codes.count(429)} refused (429)")
    assert set(codes) <= {200, 429}, codes
    assert abs(admitted - n) <= 0.05 * n
    refused = next(r for r in responses if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == str(n) and refused.headers["x-ratelimit-remaining"] == "0"
    # Both replicas enforced the limit: each opened its own connection to the store (named by pid).
    with redis.Redis.from_url(redis_store.url) as store:
        names = {c["name"] for c in store.client_list() if c["name"].startswith("xz-store-")}
    print(f"store clients of the access layer: {sorted(names)}")
    assert len(names) >= 2


def _codes(url: str, headers: dict[str, str], count: int = 6) -> list[int]:
    return [httpx.post(f"{url}/v1/analyze", json={"text": f"revoke {i}"}, headers=headers,
                       timeout=10).status_code for i in range(count)]  # fmt: skip


def test_cli_create_use_revoke(auth_url: str, redis_store: RedisServer) -> None:
    key = xz_keys(redis_store, "create", "--name", "lifecycle", "--scopes", "nlu")
    assert _codes(auth_url, bearer(key)) == [200] * 6
    embeddings = httpx.post(f"{auth_url}/v1/embeddings", json={"input": "x"}, headers=bearer(key), timeout=10)
    assert (embeddings.status_code, embeddings.json()["error"]["code"]) == (403, "insufficient_scope")
    listed = xz_keys(redis_store, "list")["data"]
    assert key["id"] in {k["id"] for k in listed} and key["key"] not in json.dumps(listed)
    assert xz_keys(redis_store, "revoke", key["id"])["status"] == "revoked"
    time.sleep(TTL_S + 0.2)  # the revocation bound: each replica re-reads the record after it
    assert _codes(auth_url, bearer(key)) == [401] * 6


def _wait_for_200(url: str, headers: dict[str, str], timeout_s: float = 10) -> float:
    started = time.monotonic()
    while True:
        body = {"text": "after restart"}
        response = httpx.post(f"{url}/v1/analyze", json=body, headers=headers, timeout=10)
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 503, response.text  # store still reconnecting: never a 401
        assert time.monotonic() - started < timeout_s
        time.sleep(0.2)


def test_keys_survive_restarts(serve_url: str, auth_url: str, redis_store: RedisServer) -> None:
    """Keys the app never saw before a restart work after it: they came from the AOF, not memory."""
    before_redis = xz_keys(redis_store, "create", "--name", "survives-redis")
    before_app = xz_keys(redis_store, "create", "--name", "survives-app")
    redis_store.restart()  # SIGKILL and start again on the same data directory
    waited = _wait_for_200(auth_url, bearer(before_redis))
    print(f"\nafter the store restart, the first 200 took {waited:.2f} s")
    with deployed(serve_url, "auth-restarted", auth_args(replicas=1)) as fresh_app:  # a new app, no memory
        assert _wait_for_200(fresh_app, bearer(before_app)) < 10
        assert _wait_for_200(fresh_app, bearer(before_redis)) < 10
