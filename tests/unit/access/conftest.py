"""A real durable redis-server (AOF) per test for the key store and the limiter, and key helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture
def store_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(durable=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def store_client(store_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(store_server.url)
    yield client
    await client.aclose()
