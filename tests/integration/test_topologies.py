"""The split topology (Ingress -> NLU replicas) answers exactly like the default fused one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import local_args, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def split_url(serve_url: str) -> Iterator[str]:
    from ray import serve

    from xz_serve.app import build_app

    args = local_args() | {"topology": "split"}
    serve.run(build_app(args), name="xz-split", route_prefix="/split", blocking=False)
    url = f"{serve_url}/split"
    wait_ready(url)
    yield url
    serve.delete("xz-split")


def test_fused_and_split_agree(serve_url: str, split_url: str) -> None:
    texts = ["how do i reset my pin", "i am so happy today", "what's the weather in paris"]
    fresh = {"cache-control": "no-cache"}  # both computed by their own model, not read from the cache
    fused = httpx.post(f"{serve_url}/v1/analyze", json={"texts": texts}, headers=fresh, timeout=30).json()
    split = httpx.post(f"{split_url}/v1/analyze", json={"texts": texts}, headers=fresh, timeout=30).json()
    assert split["model"] == fused["model"]
    for a, b in zip(split["results"], fused["results"], strict=True):
        assert a["intent"]["label"] == b["intent"]["label"]
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert abs(a["intent"]["confidence"] - b["intent"]["confidence"]) < 1e-3


def test_split_errors_are_json(split_url: str) -> None:
    response = httpx.post(f"{split_url}/v1/analyze", json={"texts": []})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_input"
