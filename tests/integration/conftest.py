"""A real local Ray cluster running the real Serve app with the built INT8 model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).parents[2]


def local_args() -> dict[str, Any]:
    """The args of deployments/local.yaml: tests run the app newcomers run."""
    config = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    args: dict[str, Any] = config["applications"][0]["args"]
    return args


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
def serve_url() -> Iterator[str]:
    """Start Ray + Serve with deployments/local.yaml's args; shut both down afterwards."""
    import ray
    from ray import serve

    from xz_serve.app import build_app

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
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
