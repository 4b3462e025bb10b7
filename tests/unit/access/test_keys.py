"""API keys: format, hashing (the secret is never stored), expiry and revocation, the stores, the CLI."""

from __future__ import annotations

import hmac
import json
import time

import pytest
from redis.asyncio import Redis

from tests.redis_server import RedisServer
from xz_serve.access import cli
from xz_serve.access.keys import ApiKey, MemoryKeyStore, RedisKeyStore, hash_secret, mint, parse_key


def test_key_format_round_trips() -> None:
    plain, record = mint("svc")
    parsed = parse_key(plain)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == record.id and len(secret) == 43
    assert record.matches(secret)
    assert not record.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    for garbage in ["", "xz_", "Bearer x", f"xz_{key_id}", f"yz_{key_id}_{secret}", plain + "x"]:
        assert parse_key(garbage) is None


def test_two_keys_never_share_id_or_secret() -> None:
    keys = [mint("a")[0] for _ in range(200)]
    assert len({parse_key(k)[0] for k in keys}) == 200  # type: ignore[index]
    assert len(set(keys)) == 200


def test_only_the_hash_is_kept() -> None:
    plain, record = mint("svc")
    _, secret = parse_key(plain)  # type: ignore[misc]
    stored = json.dumps(record.to_redis()) + json.dumps(record.public())
    assert secret not in stored and plain not in stored
    assert record.secret_hash == hash_secret(secret) and "secret_hash" not in record.public()


def test_secrets_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    plain, record = mint("svc")
    assert record.matches(parse_key(plain)[1])  # type: ignore[index]
    assert calls == [(record.secret_hash, record.secret_hash)]


def test_status_expiry_and_revocation() -> None:
    _, record = mint("svc", expires_at=time.time() + 10)
    assert record.status() == "active"
    assert record.status(now=time.time() + 11) == "expired"
    revoked = ApiKey(**{**record.__dict__, "revoked_at": time.time()})
    assert revoked.status() == "revoked"


@pytest.mark.parametrize(
    "kwargs", [{"scopes": ["nlu", "root"]}, {"scopes": []}, {"expires_at": 1.0}, {"requests_per_minute": 0}]
)
def test_mint_refuses_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        mint("svc", **kwargs)  # type: ignore[arg-type]


async def _round_trip(store: RedisKeyStore | MemoryKeyStore) -> None:
    _, record = mint("svc", tenant="acme", scopes=["nlu"], requests_per_minute=7, texts_per_minute=70,
                     expires_at=time.time() + 3600)  # fmt: skip
    await store.put(record)
    assert await store.get(record.id) == record
    assert await store.get("0" * 16) is None
    assert [r.id for r in await store.all()] == [record.id]
    revoked = await store.revoke(record.id)
    assert revoked is not None and revoked.status() == "revoked"
    again = await store.revoke(record.id)
    assert again is not None and again.revoked_at == revoked.revoked_at  # idempotent
    fetched = await store.get(record.id)
    assert fetched is not None and fetched.revoked_at == pytest.approx(revoked.revoked_at)
    assert await store.revoke("0" * 16) is None


async def test_memory_store() -> None:
    await _round_trip(MemoryKeyStore())


async def test_redis_store(store_client: Redis) -> None:
    await _round_trip(RedisKeyStore(store_client))


async def test_redis_holds_no_secret(store_client: Redis) -> None:
    plain, record = mint("svc")
    await RedisKeyStore(store_client).put(record)
    _, secret = parse_key(plain)  # type: ignore[misc]
    dump = b""
    async for name in store_client.scan_iter("*"):
        kind = await store_client.type(name)
        if kind == b"hash":
            dump += b"".join(k + v for k, v in (await store_client.hgetall(name)).items())
        elif kind == b"set":
            dump += b"".join(await store_client.smembers(name))
    assert record.id.encode() in dump and record.secret_hash.encode() in dump
    assert secret.encode() not in dump


async def test_keys_survive_a_redis_restart(store_server: RedisServer) -> None:
    client = Redis.from_url(store_server.url)
    _, record = mint("durable")
    await RedisKeyStore(client).put(record)
    await client.aclose()
    store_server.restart()  # SIGKILL, then the same data directory: AOF with appendfsync always
    client = Redis.from_url(store_server.url)
    assert await RedisKeyStore(client).get(record.id) == record
    await client.aclose()


def test_cli_create_list_revoke(store_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--redis-url", store_server.url, "--json"]
    assert cli.main([*base, "create", "--name", "ci", "--scopes", "nlu,admin", "--rpm", "5",
                     "--expires-in-days", "1"]) == 0  # fmt: skip
    created = json.loads(capsys.readouterr().out)
    assert parse_key(created["key"]) is not None
    assert created["scopes"] == ["admin", "nlu"] and created["requests_per_minute"] == 5
    assert created["expires_at"] == pytest.approx(time.time() + 86400, abs=60)
    assert cli.main([*base, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [r["id"] for r in listed] == [created["id"]] and "key" not in listed[0]
    assert created["key"] not in json.dumps(listed)
    assert cli.main([*base, "revoke", created["key"]]) == 0  # by the key itself, or by id
    assert json.loads(capsys.readouterr().out)["status"] == "revoked"
    assert cli.main([*base, "revoke", "0" * 16]) == 1
    assert cli.main([*base, "create", "--name", "x", "--scopes", "root"]) == 1
    assert cli.main(["--redis-url", "redis://127.0.0.1:1/0", "list"]) == 1  # unreachable: clear error
    assert "unreachable" in capsys.readouterr().err


def test_cli_prints_the_plain_key_once(store_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--redis-url", store_server.url, "create", "--name", "human"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert parse_key(key) is not None and "not shown again" in out.err
    assert cli.main(["--redis-url", store_server.url, "list"]) == 0
    assert key not in capsys.readouterr().out


@pytest.mark.parametrize("tenant", ["a:b", "acme corp", "", "x" * 65, "ünïcode", "a/b"])
def test_mint_refuses_a_tenant_the_cache_and_sessions_cannot_key(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        mint("svc", tenant=tenant)


@pytest.mark.parametrize("tenant", ["default", "acme", "acme-1.eu_west", "x" * 64])
def test_mint_accepts_the_tenant_alphabet(tenant: str) -> None:
    assert mint("svc", tenant=tenant)[1].tenant == tenant


def test_cli_refuses_a_bad_tenant_before_touching_the_store(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on port 1: a refusal about the tenant proves it came first, from ``mint``."""
    argv = ["--redis-url", "redis://127.0.0.1:1/0", "create", "--name", "svc", "--tenant", "acme corp"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "tenant" in err and "unreachable" not in err
