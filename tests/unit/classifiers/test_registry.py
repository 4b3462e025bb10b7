"""Two registries (two replicas) over one real store: how fast a write spreads, deletes, outages and
the memory bound."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from tests.unit.classifiers.conftest import record_for, small_head
from xz_serve.classifiers.errors import ClassifierNotFoundError, ClassifierStoreError
from xz_serve.classifiers.registry import ClassifierRegistry
from xz_serve.classifiers.store import Loaded, RedisClassifierStore

REFRESH_S = 0.2


async def seen_after(registry: ClassifierRegistry, tenant: str, ref: str, version: int | None) -> float:
    """Seconds until ``registry`` serves ``version`` of ``ref`` (None: until it answers 404)."""
    started = time.monotonic()
    while time.monotonic() - started < 5:
        try:
            loaded = await registry.get(tenant, ref)
            if version is not None and loaded.record.version == version:
                return time.monotonic() - started
        except ClassifierNotFoundError:
            if version is None:
                return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError("never seen")


async def test_a_write_reaches_every_replica_within_the_refresh(
    store: RedisClassifierStore, tenant: str
) -> None:
    writer = ClassifierRegistry(store, REFRESH_S, 10_000_000)
    reader = ClassifierRegistry(store, REFRESH_S, 10_000_000)
    head = small_head()
    record = await store.create(tenant, record_for(head, "spread"), head, max_count=10)
    writer.put(tenant, Loaded(record, head))
    assert (await reader.get(tenant, "spread")).record.version == 1  # and the reader now holds it
    for _ in range(3):
        new_head = small_head(seed=5)
        record = await store.update(tenant, record, new_head, expected=None)
        writer.put(tenant, Loaded(record, new_head))
        assert (await writer.get(tenant, "spread")).record.version == record.version  # the writer at once
        assert await seen_after(reader, tenant, record.id, record.version) <= REFRESH_S + 0.1
    assert await store.delete(tenant, record.id)
    writer.drop(tenant, record.id)
    with pytest.raises(ClassifierNotFoundError):
        await writer.get(tenant, record.id)
    assert await seen_after(reader, tenant, record.id, None) <= REFRESH_S + 0.1
    assert reader.heads == 0 and reader.bytes == 0


async def test_a_renamed_classifier_is_found_by_its_new_name_only(
    store: RedisClassifierStore, tenant: str
) -> None:
    reader = ClassifierRegistry(store, REFRESH_S, 10_000_000)
    head = small_head()
    record = await store.create(tenant, record_for(head, "old"), head, max_count=10)
    await reader.get(tenant, "old")
    import dataclasses

    await store.update(tenant, dataclasses.replace(record, name="new"), head, expected=None)
    assert (await seen_after(reader, tenant, "new", 2)) <= REFRESH_S + 0.1
    with pytest.raises(ClassifierNotFoundError):
        await reader.get(tenant, "old")


async def test_requests_share_one_check_per_tenant(store: RedisClassifierStore, tenant: str) -> None:
    calls = {"epochs": 0}
    original = store.epochs

    async def counted(tenants: list[str]) -> list[int]:
        calls["epochs"] += 1
        return await original(tenants)

    store.epochs = counted  # type: ignore[method-assign]
    registry = ClassifierRegistry(store, REFRESH_S, 10_000_000)
    head = small_head()
    await store.create(tenant, record_for(head, "shared"), head, max_count=10)
    await registry.get(tenant, "shared")
    await asyncio.sleep(REFRESH_S)
    await asyncio.gather(*(registry.get(tenant, "shared") for _ in range(50)))
    assert calls["epochs"] == 1


async def test_an_outage_keeps_serving_held_heads(store_server: RedisServer, tenant: str) -> None:
    client = Redis.from_url(store_server.url, socket_timeout=0.2)
    store = RedisClassifierStore(client, timeout_s=0.2)
    registry = ClassifierRegistry(store, 0.05, 10_000_000)
    head = small_head()
    try:
        held = await store.create(tenant, record_for(head, "held"), head, max_count=10)
        never = await store.create(tenant, record_for(head, "never"), head, max_count=10)
        await registry.get(tenant, "held")
        store_server.pause()
        try:
            await asyncio.sleep(0.1)  # past the refresh: the check fails, the view is kept
            assert (await registry.get(tenant, "held")).record == held
            with pytest.raises(ClassifierStoreError):
                await registry.get(tenant, never.id)  # known by id, never loaded here
            with pytest.raises(ClassifierStoreError):
                await ClassifierRegistry(store, 0.05, 10_000_000).get(tenant, "held")  # a fresh replica
        finally:
            store_server.resume()
        assert (await registry.get(tenant, "never")).record == never
    finally:
        await client.aclose()


async def test_memory_is_bounded_by_bytes(store: RedisClassifierStore, tenant: str) -> None:
    head = small_head()
    registry = ClassifierRegistry(store, REFRESH_S, max_bytes=int(head.nbytes * 3.5))
    ids = []
    for i in range(6):
        ids.append((await store.create(tenant, record_for(head, f"c{i}"), head, max_count=10)).id)
        await registry.get(tenant, f"c{i}")
    assert registry.heads == 3 and registry.bytes == 3 * head.nbytes
    assert (await registry.get(tenant, "c0")).record.id == ids[0]  # dropped heads load again
