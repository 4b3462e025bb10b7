"""The classifier store in a real redis-server (AOF): versions, concurrent updates, delete, tenants,
restarts and outages."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from tests.unit.classifiers.conftest import record_for, small_head
from xz_serve.classifiers.errors import (
    ClassifierExistsError,
    ClassifierLimitError,
    ClassifierNotFoundError,
    ClassifierStoreError,
    VersionMismatchError,
)
from xz_serve.classifiers.registry import ClassifierRegistry
from xz_serve.classifiers.store import MemoryClassifierStore, RedisClassifierStore


async def test_create_read_list(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    record = await store.create(tenant, record_for(head, "lights"), head, max_count=10)
    assert record.version == 1
    assert await store.record(tenant, record.id) == record
    assert await store.record(tenant, "lights") == record  # by name too
    assert await store.records(tenant) == [record]
    loaded = await store.load(tenant, record.id)
    assert loaded is not None and loaded.record == record
    np.testing.assert_array_equal(loaded.head.weights, head.weights)
    epoch, versions, names = await store.state(tenant)
    assert epoch == 1 and versions == {record.id: 1} and names == {"lights": record.id}


async def test_names_are_unique_and_tenants_bounded(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    await store.create(tenant, record_for(head, "one"), head, max_count=2)
    with pytest.raises(ClassifierExistsError):
        await store.create(tenant, record_for(head, "one"), head, max_count=2)
    await store.create(tenant, record_for(head, "two"), head, max_count=2)
    with pytest.raises(ClassifierLimitError):
        await store.create(tenant, record_for(head, "three"), head, max_count=2)
    assert await store.count(tenant) == 2


async def test_updates_bump_the_version_and_if_match_guards(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    first = await store.create(tenant, record_for(head, "x"), head, max_count=10)
    second = await store.update(tenant, dataclasses.replace(first, name="y"), small_head(seed=3), expected=1)
    assert second.version == 2 and second.created_at == first.created_at
    assert await store.record(tenant, "x") is None and await store.record(tenant, "y") == second
    with pytest.raises(VersionMismatchError) as caught:
        await store.update(tenant, second, head, expected=1)
    assert caught.value.status == 412
    assert (await store.record(tenant, first.id)).version == 2  # type: ignore[union-attr]
    other = await store.create(tenant, record_for(head, "z"), head, max_count=10)
    with pytest.raises(ClassifierExistsError):
        await store.update(tenant, dataclasses.replace(other, name="y"), head, expected=None)


async def test_concurrent_updates_lose_no_version(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    first = await store.create(tenant, record_for(head, "busy"), head, max_count=10)
    heads = [small_head(seed=10 + i) for i in range(6)]
    done = await asyncio.gather(*(store.update(tenant, first, h, expected=None) for h in heads))
    assert sorted(r.version for r in done) == [2, 3, 4, 5, 6, 7]
    loaded = await store.load(tenant, first.id)
    assert loaded is not None and loaded.record.version == 7
    last = heads[[r.version for r in done].index(7)]  # the head stored is the one that got 7
    np.testing.assert_array_equal(loaded.head.weights, last.weights)
    # With If-Match, of several updates from the same version exactly one wins.
    results = await asyncio.gather(
        *(store.update(tenant, first, h, expected=7) for h in heads[:4]), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, VersionMismatchError) for r in results) == 3


async def test_delete_removes_everything_and_beats_a_late_update(store: RedisClassifierStore, tenant: str,
                                                                 redis_client: Redis) -> None:  # fmt: skip
    head = small_head()
    record = await store.create(tenant, record_for(head, "gone"), head, max_count=10)
    assert await store.delete(tenant, record.id)
    assert not await store.delete(tenant, record.id)
    assert await store.record(tenant, record.id) is None and await store.load(tenant, record.id) is None
    with pytest.raises(ClassifierNotFoundError):
        await store.update(tenant, record, head, expected=None)
    assert await store.count(tenant) == 0
    assert sorted(k.decode() for k in await redis_client.keys(f"xz:v1:clf:{tenant}:*")) == [
        f"xz:v1:clf:{tenant}:epoch"
    ]
    await store.create(tenant, record_for(head, "gone"), head, max_count=10)  # the name is free again


async def test_tenants_are_apart(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    record = await store.create(tenant, record_for(head, "mine"), head, max_count=10)
    other = tenant + "x"
    assert await store.record(other, record.id) is None and await store.record(other, "mine") is None
    assert await store.records(other) == [] and await store.load(other, record.id) is None
    assert not await store.delete(other, record.id)
    await store.create(other, record_for(head, "mine"), head, max_count=10)  # same name, other tenant


async def test_heads_survive_a_store_restart(store_server: RedisServer, tenant: str) -> None:
    """A fresh registry (a restarted replica) over a restarted Redis reads what was stored."""
    head = small_head()
    client = Redis.from_url(store_server.url, socket_timeout=0.5)
    try:
        store = RedisClassifierStore(client, timeout_s=1.0)
        record = await store.create(tenant, record_for(head, "durable"), head, max_count=10)
        store_server.restart()  # SIGKILL, then start from the AOF
        loaded = await ClassifierRegistry(store, 0.25, 10_000_000).get(tenant, "durable")
        assert loaded.record == record
        np.testing.assert_array_equal(loaded.head.centers, head.centers)
    finally:
        await client.aclose()


async def test_an_outage_is_a_503(store_server: RedisServer, tenant: str) -> None:
    client = Redis.from_url(store_server.url, socket_timeout=0.2)
    store = RedisClassifierStore(client, timeout_s=0.2)
    head = small_head()
    try:
        store_server.pause()
        try:
            with pytest.raises(ClassifierStoreError) as caught:
                await store.create(tenant, record_for(head, "x"), head, max_count=10)
            assert caught.value.status == 503 and caught.value.retry_after_s
            with pytest.raises(ClassifierStoreError):
                await store.delete(tenant, "clf_x")
        finally:
            store_server.resume()
        assert await store.count(tenant) == 0  # nothing was written
    finally:
        await client.aclose()


async def test_the_memory_store_keeps_the_same_rules(tenant: str) -> None:
    store = MemoryClassifierStore()
    head = small_head()
    first = await store.create(tenant, record_for(head, "x"), head, max_count=1)
    with pytest.raises(ClassifierLimitError):
        await store.create(tenant, record_for(head, "y"), head, max_count=1)
    second = await store.update(tenant, first, head, expected=1)
    assert second.version == 2
    with pytest.raises(VersionMismatchError):
        await store.update(tenant, first, head, expected=1)
    assert (await store.state(tenant))[1] == {first.id: 2}
    assert await store.delete(tenant, first.id) and await store.record(tenant, "x") is None
