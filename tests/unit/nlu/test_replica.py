"""NluReplica batching without Ray: ordering, dedupe, failure isolation, reconfigure."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from xz_serve.kernel.errors import ModelFailureError
from xz_serve.models.base import NluOutputs
from xz_serve.models.fake import FAIL_MARKER, FakeModel
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import BatchSpec, ModelSpec

# @serve.batch keeps one queue per decorated method, bound to the loop that first used it (one
# loop per replica process in Serve), so these tests share one loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def make_replica(model: FakeModel, max_batch_size: int = 16, wait_s: float = 0.05) -> NluReplica:
    return NluReplica(
        ModelSpec(),
        BatchSpec(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s),
        top_k=2,
        model_factory=lambda: model,
    )


async def test_shuffled_concurrent_callers_each_get_their_own_result() -> None:
    model = FakeModel()
    replica = make_replica(model)
    requests = [[f"text {i}", f"other {i}"] for i in range(40)]
    order = list(range(40))
    random.Random(3).shuffle(order)
    results = await asyncio.gather(*(replica.predict(requests[i]) for i in order))
    passes_for_requests = model.calls - 1  # one warm-up pass in the constructor
    assert passes_for_requests < 40, "concurrent calls were not batched"
    for i, result in zip(order, results, strict=True):
        expected = model.predict(requests[i])
        for pred, emb in zip(result.predictions, expected.embeddings, strict=True):
            np.testing.assert_allclose(pred.embedding, emb)
        assert (
            result.predictions[0].intents[0][0]
            == model.labels.intents[int(np.argmax(expected.intent_probs[0]))]
        )


async def test_identical_texts_in_a_batch_are_computed_once() -> None:
    model = FakeModel()
    replica = make_replica(model)
    seen_before = model.texts_seen
    results = await asyncio.gather(*(replica.predict(["same question"]) for _ in range(10)))
    assert model.texts_seen - seen_before == 1
    first = results[0].predictions[0].embedding
    assert all(np.array_equal(r.predictions[0].embedding, first) for r in results)
    assert results[0].stats.batch_calls == 10


async def test_a_failing_call_does_not_fail_its_batch_mates() -> None:
    model = FakeModel()
    replica = make_replica(model)
    calls = [replica.predict([f"fine {i}"]) for i in range(5)]
    calls.insert(2, replica.predict([f"bad {FAIL_MARKER}"]))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failures) == 1 and isinstance(outcomes[2], ModelFailureError)
    assert all(len(o.predictions) == 1 for o in outcomes if not isinstance(o, Exception))


async def test_reconfigure_changes_batch_size_without_restart() -> None:
    model = FakeModel()
    replica = make_replica(model, max_batch_size=16)
    replica.reconfigure({"max_batch_size": 2, "batch_wait_timeout_s": 0.05})
    results = await asyncio.gather(*(replica.predict([f"t{i}"]) for i in range(6)))
    assert max(r.stats.batch_texts for r in results) <= 2


async def test_health_check_fails_when_the_model_breaks() -> None:
    model = FakeModel()
    replica = make_replica(model)
    await replica.check_health()
    model.dim = 8  # a different model behind the same replica: outputs no longer match
    with pytest.raises(Exception):  # noqa: B017 - shape mismatch or drift, either must fail
        await replica.check_health()


async def test_a_lone_call_does_not_wait_for_batch_mates() -> None:
    model = FakeModel()
    replica = make_replica(model, wait_s=0.5)
    result = await asyncio.wait_for(replica.predict(["alone"]), timeout=0.25)
    assert result.stats.queue_ms < 100


async def test_an_idle_model_skips_serves_batch_queue_and_a_busy_one_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = SlowModel(pass_s=0.1)
    replica = make_replica(model)
    # Serve's queue for the batch method (one per method, created on first use in this loop).
    queue = NluReplica._batched._get_max_batch_size.__self__.queue  # type: ignore[attr-defined]
    calls: list[int] = []
    put = queue.put
    monkeypatch.setattr(queue, "put", lambda request: (calls.append(1), put(request))[1])
    alone = await replica.predict(["alone"])
    assert calls == [] and alone.stats.batch_calls == 1  # no batch to form: straight to the model
    model.sizes.clear()
    burst = await asyncio.gather(*(replica.predict([f"burst {i}"]) for i in range(6)))
    assert calls == [] and model.sizes == [6]  # a burst on an idle model: one pass, no Serve hop
    first = asyncio.create_task(replica.predict(["first"]))
    await asyncio.sleep(0.03)  # its pass is running
    during = await asyncio.gather(*(replica.predict([f"during {i}"]) for i in range(4)))
    await first
    assert len(calls) == 4 and model.sizes[1:] == [1, 4], (calls, model.sizes)  # gathered by Serve
    for i, result in enumerate(burst):
        np.testing.assert_allclose(
            result.predictions[0].embedding, model.predict([f"burst {i}"]).embeddings[0]
        )
    assert all(len(r.predictions) == 1 for r in during)


async def test_a_call_on_an_idle_model_does_not_overtake_calls_serve_still_holds() -> None:
    model = SlowModel(pass_s=0.1)
    replica = make_replica(model, wait_s=0.5)
    replica._text_s = 1.0  # the estimate errs long: Serve holds the calls past the pass's end
    model.sizes.clear()
    first = asyncio.create_task(replica.predict(["first"]))
    await asyncio.sleep(0.03)  # its pass is running
    held = [asyncio.create_task(replica.predict([f"held {i}"])) for i in range(3)]
    await asyncio.sleep(0.15)  # the pass has ended; Serve's batch waits out its 0.5 s
    assert model.sizes == [1] and not replica._passes.busy
    late = asyncio.create_task(replica.predict(["late"]))
    await asyncio.gather(first, *held, late)
    assert model.sizes == [1, 4], model.sizes  # late joined the held calls, and went no earlier


class SlowModel(FakeModel):
    """A FakeModel whose pass takes ``pass_s`` (in the inference thread) and records its size."""

    def __init__(self, pass_s: float) -> None:
        super().__init__()
        self.pass_s = pass_s
        self.sizes: list[int] = []

    def predict(self, texts: list[str]) -> NluOutputs:
        time.sleep(self.pass_s)
        self.sizes.append(len(texts))
        return super().predict(texts)


async def test_calls_arriving_during_a_long_pass_share_the_next_pass() -> None:
    # The pass (0.3 s) outlasts the longest wait (0.02 s): Serve cuts several small batches while
    # it runs, and they must still go to the model as one pass.
    model = SlowModel(pass_s=0.3)
    replica = make_replica(model, max_batch_size=32, wait_s=0.02)
    model.sizes.clear()
    first = asyncio.create_task(replica.predict(["first"]))
    await asyncio.sleep(0.05)
    later = []
    for i in range(12):
        later.append(asyncio.create_task(replica.predict([f"later {i}"])))
        await asyncio.sleep(0.015)
    results = await asyncio.gather(first, *later)
    assert model.sizes[0] == 1
    assert len(model.sizes) <= 3, f"passes of {model.sizes}: batches cut during a pass were not merged"
    assert sum(model.sizes) == 13
    assert [r.predictions[0].embedding.shape for r in results] == [(16,)] * 13
