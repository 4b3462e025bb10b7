"""A real redis-server per test, on a free 127.0.0.1 port, that a test may pause, kill and restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.redis_server import RedisServer, redis_or_skip
from xz_serve.cache.guard import cache_guard
from xz_serve.cache.spec import CacheSpec
from xz_serve.kernel.redis import RedisGuard


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from redis_or_skip()


@pytest.fixture
async def make_spec(redis_server: RedisServer) -> AsyncIterator[Callable[..., CacheSpec]]:
    def make(**overrides: object) -> CacheSpec:
        args: dict[str, object] = {
            # 500 ms: a busy CI machine (Ray tearing down beside) once took over 100 ms to answer
            # a local MGET, and the cache then rightly served a miss. Tests of timeouts set their own.
            "redis_url": redis_server.url, "timeout_ms": 500, "backoff_ms": 200, **overrides
        }  # fmt: skip
        return CacheSpec(**args)  # type: ignore[arg-type]

    yield make


@pytest.fixture
async def make_guard(make_spec: Callable[..., CacheSpec]) -> AsyncIterator[Callable[..., RedisGuard]]:
    """A fresh client per call, as each replica has its own; all closed at teardown."""
    guards: list[RedisGuard] = []

    def make(**overrides: object) -> RedisGuard:
        guards.append(cache_guard(make_spec(**overrides)))
        return guards[-1]

    yield make
    for guard in guards:
        await guard.close()
