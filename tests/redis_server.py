"""RedisServer (bench/local_servers.py): a real redis-server subprocess on a free 127.0.0.1 port,
that tests may kill, pause and restart; and ``redis_or_skip``, the body of the tests' fixtures.

The class lives in bench/ because the benchmarks start the same servers and import no test code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.local_servers import REDIS_SERVER, RedisServer

__all__ = ["REDIS_SERVER", "RedisServer", "redis_or_skip"]


def redis_or_skip() -> Iterator[RedisServer]:
    """Body of a fixture that yields a started RedisServer and closes it (by pid) afterwards; the
    test is skipped where redis-server is not installed."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
