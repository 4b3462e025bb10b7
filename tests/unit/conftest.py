"""Fixtures shared by unit suites: the OpenAI stand-in server (a real HTTP subprocess) and a fresh
@serve.batch queue for modules that share one event loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin import StandinServer
from xz_serve.nlu.replica import NluReplica


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandinServer]:
    server = StandinServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def standin(standin_server: StandinServer) -> StandinServer:
    """The module's stand-in with faults and counters reset for this test."""
    standin_server.reset()
    return standin_server


@pytest.fixture(scope="module")
def fresh_batch_queue() -> Iterator[None]:
    """@serve.batch keeps one queue per decorated method, bound to the event loop that first used
    it; each test module has its own loop, so start and leave the module with no queue. Opt in with
    ``pytest.mark.usefixtures("fresh_batch_queue")``."""
    lazy = NluReplica._batched._get_max_batch_size.__self__  # type: ignore[attr-defined]
    lazy._queue = None
    yield
    lazy._queue = None
