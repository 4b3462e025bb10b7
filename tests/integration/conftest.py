"""A real local Ray cluster running the real Serve app with the built INT8 model, and two real
redis-servers (the cache's and the durable store's) that tests may kill and restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.redis_server import RedisServer
from tests.standin import StandinServer

ROOT = Path(__file__).parents[2]


def local_args() -> dict[str, Any]:
    """The args of deployments/local.yaml: tests run the app newcomers run.

    Except that replicas load the artifacts that are there and never build: scripts/test.sh builds
    them before the suite, and a replica that found its fingerprint changed (an edited build
    module) would otherwise train for a quarter of an hour inside a test.

    One model replica, too: the tests that count per-replica state (admission, a key's in-flight
    share, the L1 caches, the replica killed in the fault tests) are written for one, and the
    tests of several replicas (autoscaling, multinode) set their own counts.
    """
    config = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    args: dict[str, Any] = config["applications"][0]["args"]
    args["model"] = {**args.get("model", {}), "build_if_missing": False}
    args["nlu"] = {**args.get("nlu", {}), "min_replicas": 1, "max_replicas": 1, "num_cpus": 1}
    return args


def chat_args(standin: StandinServer) -> dict[str, Any]:
    """local_args() with the OpenAI-protocol stand-in as the dialog's only upstream, priced."""
    args = local_args()
    args["dialog"] = {
        **args.get("dialog", {}),
        "upstreams": [
            {
                "name": "standin",
                "base_url": standin.base_url,
                "model": "standin-chat-1",
                "backoff_base_s": 0.05,
            }
        ],
        "prices": {"standin-chat-1": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
    }
    return args


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinServer]:
    """The OpenAI-protocol stand-in upstream (bench/openai_standin.py) over HTTP, one per module."""
    server = StandinServer()
    server.start()
    yield server
    server.stop()


def wait_ready(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


@pytest.fixture(scope="session")
def redis_cache() -> Iterator[RedisServer]:
    """The shared cache's redis-server (allkeys-lru, no persistence), as in production."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_store() -> Iterator[RedisServer]:
    """The durable store's redis-server (AOF, noeviction): keys, sessions, rate limits."""
    server = RedisServer(durable=True)
    server.start()
    yield server
    server.close()


@contextmanager
def deployed(base_url: str, name: str, args: dict[str, Any]) -> Iterator[str]:
    """Run one more app with ``args`` at ``/{name}`` beside the default one; delete it afterwards."""
    from ray import serve

    from xz_serve.app import build_app

    serve.run(build_app(args), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{base_url}/{name}"
    try:
        wait_ready(url)
        yield url
    finally:
        serve.delete(name)


@pytest.fixture(scope="session")
def ray_metrics_port() -> int:
    """Where Ray's metrics agent serves every process's metrics (xz_* and ray_serve_*) for Prometheus."""
    return free_port()


@pytest.fixture(scope="session")
def serve_url(redis_cache: RedisServer, redis_store: RedisServer, ray_metrics_port: int) -> Iterator[str]:
    """Start Ray + Serve with deployments/local.yaml's args; shut both down afterwards.

    The Redis URLs reach the app the way they do in production: as XZ_* environment variables.
    """
    import ray
    from ray import serve

    from xz_serve.app import build_app

    os.environ["XZ_CACHE__REDIS_URL"] = redis_cache.url
    os.environ["XZ_STORE__REDIS_URL"] = redis_store.url
    port = free_port()
    # Metrics reach the agent every 2 s instead of Ray's default 10 s: tests/integration/test_telemetry.py
    # waits for Prometheus to see them.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _metrics_export_port=ray_metrics_port)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False},
        )
        serve.run(build_app(local_args()), name="xz", route_prefix="/", blocking=False)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url)
        yield base_url
    finally:
        serve.shutdown()
        ray.shutdown()
