"""The deadline stage: header parsing and clamping, 400 on a bad header, 504 at the deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.unit.fakes import FakeNluClient
from xz_serve.http.app import create_api
from xz_serve.kernel.deadline import TIMEOUT_HEADER, remaining_s, request_timeout_s
from xz_serve.kernel.errors import DeadlineExceededError, InvalidInputError
from xz_serve.kernel.types import CallMeta, PredictResult
from xz_serve.settings import ApiSpec, XzSettings

API = ApiSpec(request_timeout_s=5, max_request_timeout_s=20)
LIMITS = (API.request_timeout_s, API.max_request_timeout_s)


def test_default_override_and_cap() -> None:
    assert request_timeout_s(None, *LIMITS) == 5
    assert request_timeout_s("250", *LIMITS) == 0.25
    assert request_timeout_s(" 1500.5 ", *LIMITS) == pytest.approx(1.5005)
    assert request_timeout_s("999999999", *LIMITS) == 20


@pytest.mark.parametrize("raw", ["", "abc", "0", "-5", "nan", "inf", "1e400", "12ms"])
def test_bad_header_values_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError):
        request_timeout_s(raw, *LIMITS)


def test_remaining_raises_once_passed() -> None:
    assert remaining_s(None) is None
    assert 0 < (remaining_s(time.time() + 2) or 0) <= 2
    with pytest.raises(DeadlineExceededError):
        remaining_s(time.time() - 0.001)


class SlowClient(FakeNluClient):
    """Answers after ``delay_s`` and keeps the deadline each call carried."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.deadlines: list[float | None] = []

    async def predict(self, texts: list[str], meta: CallMeta | None = None) -> PredictResult:
        self.deadlines.append(meta.deadline if meta else None)
        try:
            async with asyncio.timeout(remaining_s(meta.deadline if meta else None)):
                await asyncio.sleep(self.delay_s)
        except TimeoutError:
            raise DeadlineExceededError("too late") from None
        return await super().predict(texts, meta)


async def post(client: SlowClient, headers: dict[str, str]) -> httpx.Response:
    app = create_api(client, XzSettings(api=API, access={"auth_enabled": False}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        body: dict[str, Any] = {"text": "what is my balance"}
        return await http.post("/v1/analyze", json=body, headers=headers)


async def test_every_call_carries_the_deadline() -> None:
    client = SlowClient(0)
    before = time.time()
    assert (await post(client, {})).status_code == 200
    # 2 s, not less: a busy CI machine once took over 300 ms to build and answer this in-process app.
    assert (await post(client, {TIMEOUT_HEADER: "2000"})).status_code == 200
    default, short = client.deadlines
    assert default is not None and before + 4.9 < default < time.time() + 5
    assert short is not None and short < time.time() + 2


async def test_bad_header_is_a_json_400_before_any_model_call() -> None:
    client = SlowClient(0)
    response = await post(client, {TIMEOUT_HEADER: "soon"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_timeout"
    assert client.deadlines == []


async def test_a_request_past_its_deadline_is_a_504() -> None:
    started = time.perf_counter()
    response = await post(SlowClient(2.0), {TIMEOUT_HEADER: "100"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert time.perf_counter() - started < 1.0
