"""Fixtures shared by unit suites: the OpenAI stand-in server (a real HTTP subprocess)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin import StandinServer


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
