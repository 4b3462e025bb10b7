"""NluReplica admission and deadlines: refuse at once past the bound, free slots on cancel, drop
calls whose deadline passed while queued without computing them."""

from __future__ import annotations

import asyncio
import time

import pytest

from xz_serve.http.fused import LocalNluClient
from xz_serve.kernel.errors import DeadlineExceededError, OverloadedError
from xz_serve.kernel.types import CallMeta
from xz_serve.models.base import NluOutputs
from xz_serve.models.fake import FakeModel
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import BatchSpec, ModelSpec

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("fresh_batch_queue")]


class SlowModel(FakeModel):
    """FakeModel whose every pass takes ``pass_s`` (runs on the replica's inference thread)."""

    def __init__(self, pass_s: float) -> None:
        super().__init__()
        self.pass_s = pass_s

    def predict(self, texts: list[str]) -> NluOutputs:
        time.sleep(self.pass_s)
        return super().predict(texts)


def make_replica(model: FakeModel, max_batch_size: int = 4, queue_batches: float = 1) -> NluReplica:
    spec = BatchSpec(max_batch_size=max_batch_size, batch_wait_timeout_s=0.0, queue_batches=queue_batches)
    return NluReplica(ModelSpec(), spec, top_k=2, model_factory=lambda: model)


async def test_calls_past_the_bound_are_refused_at_once_with_retry_after() -> None:
    replica = make_replica(SlowModel(0.2))  # bound: 1 batch of 4 texts
    first = asyncio.create_task(replica.predict(["a", "b", "c"]))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(replica.predict(["d"]))  # 3 + 1 = 4 texts: still admitted
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    with pytest.raises(OverloadedError) as refused:
        await replica.predict(["e"])
    assert time.perf_counter() - started < 0.05
    assert refused.value.status == 503 and refused.value.retry_after_s == 1
    assert len((await first).predictions) == 3 and len((await second).predictions) == 1
    assert len((await replica.predict(["e"])).predictions) == 1  # room again


async def test_a_lone_call_larger_than_the_bound_still_runs_on_an_idle_replica() -> None:
    replica = make_replica(FakeModel(), max_batch_size=4, queue_batches=1)
    result = await replica.predict(["a", "b", "c", "d"])
    assert len(result.predictions) == 4


async def test_a_cancelled_call_frees_its_slot() -> None:
    model = SlowModel(0.3)
    replica = make_replica(model)
    waiting = [asyncio.create_task(replica.predict([f"t{i}"])) for i in range(4)]
    await asyncio.sleep(0.02)
    with pytest.raises(OverloadedError):
        await replica.predict(["full"])
    for task in waiting:  # the clients disconnect: Serve cancels their request tasks
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    result = await replica.predict(["after"])  # admitted at once, not refused
    assert len(result.predictions) == 1


async def test_a_call_whose_deadline_passed_in_the_queue_is_dropped_unrun() -> None:
    model = SlowModel(0.25)
    replica = make_replica(model, queue_batches=4)
    busy = asyncio.create_task(replica.predict(["keeps the model busy"]))
    await asyncio.sleep(0.02)
    late_meta = CallMeta(deadline=time.time() + 0.05)
    seen_before = model.texts_seen
    late = asyncio.create_task(replica.predict(["too late"], late_meta))
    ok = asyncio.create_task(replica.predict(["in time"], CallMeta(deadline=time.time() + 5)))
    with pytest.raises(DeadlineExceededError):
        await late
    assert len((await ok).predictions) == 1
    await busy
    # The late text never reached the model; its batch-mate did.
    assert model.texts_seen - seen_before == 2  # the busy pass (counted at its end) + "in time"


async def test_local_client_answers_504_at_the_deadline() -> None:
    replica = make_replica(SlowModel(0.5))
    client = LocalNluClient(replica, max_batch_size=4)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceededError):
        await client.predict(["slow"], CallMeta(deadline=time.time() + 0.1))
    assert time.perf_counter() - started < 0.3
