"""The gate's key cache: made-up keys never push real ones out, so a store outage that follows a
key-guessing flood still finds the real keys inside their stale-grace window."""

from __future__ import annotations

import secrets

from tests.redis_server import RedisServer
from xz_serve.access.gate import AccessGate
from xz_serve.access.keys import mint
from xz_serve.access.spec import AccessSpec
from xz_serve.kernel.redis import RedisGuard


def bearer(plain: str) -> str:
    return f"Bearer {plain}"


def made_up() -> str:
    return f"xz_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


async def test_a_flood_of_unknown_keys_does_not_evict_real_ones(store_server: RedisServer) -> None:
    spec = AccessSpec(key_cache_ttl_s=0, key_stale_s=60, key_cache_max_entries=10, store_backoff_ms=200)
    guard = RedisGuard.connect(store_server.url, "store", timeout_ms=200, backoff_ms=200)
    gate = AccessGate(spec, guard)
    try:
        real = []
        for i in range(3):
            plain, record = mint(f"real-{i}")
            await gate.store.put(record)
            real.append(plain)
        for plain in real:
            assert (await gate.authenticate(bearer(plain), "/v1/analyze")).key is not None
        for _ in range(300):
            verdict = await gate.authenticate(bearer(made_up()), "/v1/analyze")
            assert (verdict.status, verdict.code) == (401, "invalid_api_key")
        store_server.stop()
        for plain in real:  # verified a moment ago: the stale grace keeps them working
            verdict = await gate.authenticate(bearer(plain), "/v1/analyze")
            assert verdict.key is not None, verdict
        verdict = await gate.authenticate(bearer(made_up()), "/v1/analyze")
        assert (verdict.status, verdict.code) == (503, "auth_unavailable")
        assert gate.cached_keys() <= 2 * spec.key_cache_max_entries  # records and unknown ids, each bounded
    finally:
        await gate.close()


async def test_an_unknown_key_is_remembered_for_the_cache_ttl(store_server: RedisServer) -> None:
    """A client stuck on a wrong key costs the store one lookup per TTL, not one per request."""
    spec = AccessSpec(key_cache_ttl_s=60)
    guard = RedisGuard.connect(store_server.url, "store", timeout_ms=200, backoff_ms=200)
    gate = AccessGate(spec, guard)
    lookups = 0
    real_get = gate.store.get

    async def counting_get(key_id: str):  # type: ignore[no-untyped-def]
        nonlocal lookups
        lookups += 1
        return await real_get(key_id)

    gate.store.get = counting_get  # type: ignore[method-assign]
    try:
        wrong = made_up()
        for _ in range(5):
            assert (await gate.authenticate(bearer(wrong), "/v1/analyze")).status == 401
        assert lookups == 1
    finally:
        await gate.close()
