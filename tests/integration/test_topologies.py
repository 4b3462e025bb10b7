"""The fused topology (HTTP + model in one replica) answers exactly like the split one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import local_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fused_url(serve_url: str) -> Iterator[str]:
    from ray import serve

    from xz_serve.app import build_app

    args = local_args() | {"topology": "fused"}
    serve.run(build_app(args), name="xz-fused", route_prefix="/fused", blocking=False)
    url = f"{serve_url}/fused"
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "fused app not ready"
        time.sleep(0.5)
    yield url
    serve.delete("xz-fused")


def test_fused_and_split_agree(serve_url: str, fused_url: str) -> None:
    texts = ["how do i reset my pin", "i am so happy today", "what's the weather in paris"]
    split = httpx.post(f"{serve_url}/v1/analyze", json={"texts": texts}, timeout=30).json()
    fused = httpx.post(f"{fused_url}/v1/analyze", json={"texts": texts}, timeout=30).json()
    assert split["model"] == fused["model"]
    for a, b in zip(split["results"], fused["results"], strict=True):
        assert a["intent"]["label"] == b["intent"]["label"]
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert abs(a["intent"]["confidence"] - b["intent"]["confidence"]) < 1e-3


def test_fused_errors_are_json(fused_url: str) -> None:
    response = httpx.post(f"{fused_url}/v1/analyze", json={"texts": []})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_input"
