"""A real durable redis-server for the store and registry tests, and small trained heads."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from tests.unit.classifiers.clusters import Clusters
from xz_serve.classifiers.fit import train
from xz_serve.classifiers.head import Head
from xz_serve.classifiers.spec import ClassifierSpec
from xz_serve.classifiers.store import Record, RedisClassifierStore


@pytest.fixture(scope="module")
def store_server() -> Iterator[RedisServer]:
    server = RedisServer(durable=True)
    server.start()
    yield server
    server.close()


@pytest.fixture
async def redis_client(store_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(store_server.url, socket_timeout=0.5)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis_client: Redis) -> RedisClassifierStore:
    return RedisClassifierStore(redis_client, timeout_s=0.5)


@pytest.fixture
def tenant() -> str:
    """A tenant of its own per test: tests share the module's server but never each other's keys."""
    return "t" + secrets.token_hex(4)


def small_head(labels: tuple[str, ...] = ("a", "b", "c"), seed: int = 0) -> Head:
    x, y = Clusters.make(len(labels), dim=16, noise=0.8, seed=seed).sample(6, seed=seed + 1)
    return train(x, y, labels, ClassifierSpec()).head


def record_for(head: Head, name: str, classifier_id: str | None = None) -> Record:
    now = time.time()
    return Record(
        id=classifier_id or "clf_" + secrets.token_hex(8), name=name, version=1,
        labels={label: 6 for label in head.labels}, validation={}, model_id="fake@0",
        created_at=now, updated_at=now,
    )  # fmt: skip
