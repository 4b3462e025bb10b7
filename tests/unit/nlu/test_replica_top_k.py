"""top_k is served as asked, up to its documented bound (20), whatever the deployment's default:
the replica keeps the bound's worth of alternatives and the route slices them, cached or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from xz_serve.http.app import create_api
from xz_serve.http.schemas import TextsRequest
from xz_serve.kernel.types import MAX_TOP_K
from xz_serve.models.base import Labels
from xz_serve.models.fake import FakeModel
from xz_serve.nlu.local import LocalNluClient
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import AccessSpec, ApiSpec, BatchSpec, ModelSpec, XzSettings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("fresh_batch_queue")]


class ManyIntents(FakeModel):
    """FakeModel with 30 intents, more than the bound."""

    def __init__(self) -> None:
        super().__init__()
        intents = (*(f"intent_{i:02d}" for i in range(29)), "oos")
        self.labels = Labels(intents=intents, sentiments=self.labels.sentiments)


def test_the_bound_is_the_documented_one() -> None:
    assert MAX_TOP_K == 20
    assert ApiSpec.model_fields["top_k"].metadata[-1].le == MAX_TOP_K  # type: ignore[attr-defined]
    limits = {type(m).__name__: m for m in TextsRequest.model_fields["top_k"].metadata}
    assert limits["Le"].le == MAX_TOP_K  # type: ignore[attr-defined]


async def test_the_replica_keeps_the_bounds_worth_whatever_the_default() -> None:
    settings = XzSettings()
    replica = NluReplica(ModelSpec(), BatchSpec(), settings.api.top_k, model_factory=ManyIntents)
    result = await replica.predict(["hello there"])
    assert len(result.predictions[0].intents) == MAX_TOP_K


@pytest.fixture(params=[False, True], ids=["uncached", "cached"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The fused path: the app over its in-process replica, built as FusedServer builds it."""
    settings = XzSettings(access=AccessSpec(auth_enabled=False), cache={"enabled": request.param})
    replica = NluReplica(settings.model, settings.batch, settings.api.top_k, model_factory=ManyIntents)
    app = create_api(LocalNluClient(replica, settings.batch.max_batch_size), settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


async def test_each_request_gets_the_top_k_it_asked_for(client: httpx.AsyncClient) -> None:
    for asked, served in [(None, 3), (1, 1), (3, 3), (10, 10), (20, 20), (3, 3)]:
        body = {"text": "what is my balance"} | ({} if asked is None else {"top_k": asked})
        response = await client.post("/v1/analyze", json=body)
        assert response.status_code == 200, response.text
        alternatives = response.json()["results"][0]["intent"]["top_k"]
        assert len(alternatives) == served, (asked, len(alternatives))
        confidences = [a["confidence"] for a in alternatives]
        assert confidences == sorted(confidences, reverse=True)
    too_many = await client.post("/v1/intent", json={"text": "hi", "top_k": MAX_TOP_K + 1})
    assert too_many.status_code == 400
