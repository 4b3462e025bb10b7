"""PassQueue: groups that wait while a pass runs go into the next pass together."""

from __future__ import annotations

import asyncio

import pytest

from xz_serve.nlu.passes import PassQueue


class SlowModel:
    """Records each pass's items; a pass takes ``pass_s`` and answers each item doubled."""

    def __init__(self, pass_s: float = 0.05, fail_on: int | None = None) -> None:
        self.pass_s = pass_s
        self.fail_on = fail_on
        self.passes: list[list[int]] = []

    async def run(self, items: list[int]) -> list[int]:
        self.passes.append(items)
        await asyncio.sleep(self.pass_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("broken pass")
        return [2 * i for i in items]


async def test_groups_waiting_behind_a_pass_run_as_one_pass() -> None:
    model = SlowModel()
    queue = PassQueue(model.run, lambda _: 1, max_texts=32)
    first = asyncio.create_task(queue.submit([0]))
    await asyncio.sleep(0.01)  # the first pass is running
    rest = [asyncio.create_task(queue.submit([i, i + 100])) for i in range(1, 6)]
    assert await first == [0]
    assert [await r for r in rest] == [[2 * i, 2 * (i + 100)] for i in range(1, 6)]
    assert model.passes == [[0], [1, 101, 2, 102, 3, 103, 4, 104, 5, 105]]


async def test_a_pass_never_exceeds_max_texts_and_keeps_arrival_order() -> None:
    model = SlowModel()
    queue = PassQueue(model.run, lambda _: 1, max_texts=4)
    first = asyncio.create_task(queue.submit([0]))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(queue.submit([i, i + 100])) for i in range(1, 4)]
    await asyncio.gather(first, *rest)
    assert model.passes == [[0], [1, 101, 2, 102], [3, 103]]


async def test_an_idle_model_runs_a_lone_call_at_once() -> None:
    model = SlowModel(pass_s=0.0)
    queue = PassQueue(model.run, lambda _: 1, max_texts=32)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await queue.submit([7]) == [14]
    assert loop.time() - started < 0.05
    assert await queue.submit([8]) == [16]
    assert model.passes == [[7], [8]]


async def test_a_pass_that_raises_fails_its_groups_only() -> None:
    model = SlowModel(fail_on=1)
    queue = PassQueue(model.run, lambda _: 1, max_texts=2)
    first = asyncio.create_task(queue.submit([0]))
    await asyncio.sleep(0.01)
    broken = asyncio.create_task(queue.submit([1, 2]))
    fine = asyncio.create_task(queue.submit([3]))
    assert await first == [0]
    with pytest.raises(RuntimeError, match="broken pass"):
        await broken
    assert await fine == [6]


async def test_a_caller_that_left_takes_no_place_in_the_next_pass() -> None:
    model = SlowModel()
    queue = PassQueue(model.run, lambda _: 1, max_texts=32)
    first = asyncio.create_task(queue.submit([0]))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(queue.submit([1]))
    kept = asyncio.create_task(queue.submit([2]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == [0]
    assert await kept == [4]
    assert model.passes == [[0], [2]]


async def test_busy_holds_while_a_pass_runs_and_ends_with_it_even_when_it_fails() -> None:
    model = SlowModel(fail_on=7)
    queue = PassQueue(model.run, lambda _: 1, max_texts=32)
    assert not queue.busy
    running = asyncio.create_task(queue.submit([7]))
    await asyncio.sleep(0.01)
    assert queue.busy
    with pytest.raises(RuntimeError):
        await running
    assert not queue.busy
    assert await queue.submit([1]) == [2] and not queue.busy
