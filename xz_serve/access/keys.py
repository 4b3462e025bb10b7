"""API keys: format, hashing, records and where they are kept (the durable Redis, or memory in dev).

A key is ``xz_<id>_<secret>``: the id (16 hex) names the record, the secret (256 random bits) proves
possession. Only SHA-256 of the secret is stored: with 256 bits of entropy nobody can brute-force
it, so a slow password hash would buy nothing but latency. The plain key exists once, in the
answer to ``create``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from redis.asyncio import Redis

SCOPES = ("nlu", "embeddings", "chat", "classifiers", "admin")
"""What a key may call: see ``auth.ROUTE_SCOPES`` for which routes need which scope."""
Scope = Literal["nlu", "embeddings", "chat", "classifiers", "admin"]
DEFAULT_SCOPES = ("nlu", "embeddings", "chat")
"""A new key's scopes unless it names its own. Not ``classifiers``: a classifier belongs to the
tenant, so that scope lets a key replace or delete what every other key of the tenant classifies
with, and spend training time; it is granted on purpose, like ``admin``. Classifying needs ``nlu``."""

PREFIX = "xz"
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""What a tenant may be: it is a field of cache keys and session keys (``cache.keys``), which
allow this alphabet only, so a key for any other tenant would fail on every cached call."""
_TENANT = re.compile(TENANT_PATTERN)
_KEY = re.compile(r"^xz_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_RECORD = "xz:apikey:{}"  # hash per key
_INDEX = "xz:apikeys"  # set of all key ids, for listing


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of the secret: what is stored instead of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """A fresh ``(plain_key, key_id, secret)``."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 43 characters of [A-Za-z0-9_-]
    return f"{PREFIX}_{key_id}_{secret}", key_id, secret


def parse_key(plain: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None (no store lookup for garbage)."""
    match = _KEY.match(plain)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True)
class ApiKey:
    """One key's record as stored: everything but the secret itself."""

    id: str
    name: str
    secret_hash: str
    tenant: str = "default"
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_SCOPES))
    requests_per_minute: int | None = None  # None: AccessSpec.default_requests_per_minute
    texts_per_minute: int | None = None  # None: AccessSpec.default_texts_per_minute
    created_at: float = 0.0  # epoch seconds
    expires_at: float | None = None
    revoked_at: float | None = None

    def matches(self, secret: str) -> bool:
        """Constant-time check that ``secret`` is this key's (its hash equals the stored one)."""
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)

    def status(self, now: float | None = None) -> Literal["active", "revoked", "expired"]:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """The record as shown to admins: no hash."""
        data = asdict(self)
        del data["secret_hash"]
        data["scopes"] = sorted(self.scopes)
        data["status"] = self.status()
        return data

    def to_redis(self) -> dict[str, str]:
        def text(value: object) -> str:
            return "" if value is None else str(value)

        return {
            "name": self.name,
            "secret_hash": self.secret_hash,
            "tenant": self.tenant,
            "scopes": ",".join(sorted(self.scopes)),
            "requests_per_minute": text(self.requests_per_minute),
            "texts_per_minute": text(self.texts_per_minute),
            "created_at": text(self.created_at),
            "expires_at": text(self.expires_at),
            "revoked_at": text(self.revoked_at),
        }

    @classmethod
    def from_redis(cls, key_id: str, raw: dict[Any, Any]) -> ApiKey:
        data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}  # fmt: skip

        def opt_int(name: str) -> int | None:
            return int(data[name]) if data.get(name) else None

        def opt_float(name: str) -> float | None:
            return float(data[name]) if data.get(name) else None

        return cls(
            id=key_id,
            name=data.get("name", ""),
            secret_hash=data["secret_hash"],
            tenant=data.get("tenant") or "default",
            scopes=frozenset(s for s in data.get("scopes", "").split(",") if s),
            requests_per_minute=opt_int("requests_per_minute"),
            texts_per_minute=opt_int("texts_per_minute"),
            created_at=float(data.get("created_at") or 0),
            expires_at=opt_float("expires_at"),
            revoked_at=opt_float("revoked_at"),
        )


def mint(
    name: str,
    *,
    tenant: str = "default",
    scopes: Iterable[str] = DEFAULT_SCOPES,
    requests_per_minute: int | None = None,
    texts_per_minute: int | None = None,
    expires_at: float | None = None,
) -> tuple[str, ApiKey]:
    """A new key and its record; ValueError for a tenant outside ``TENANT_PATTERN``, an unknown scope
    or an expiry in the past. The one place keys are made (the admin API and ``xz-keys`` alike)."""
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise ValueError(
            f"tenant must be 1 to 64 of A-Z a-z 0-9 _ . - (it keys the cache and sessions); got {tenant!r}"
        )
    scope_set = frozenset(scopes)
    unknown = scope_set - set(SCOPES)
    if unknown or not scope_set:
        raise ValueError(f"scopes must be a non-empty subset of {list(SCOPES)}; got {sorted(scope_set)}")
    now = time.time()
    if expires_at is not None and expires_at <= now:
        raise ValueError("expires_at is in the past")
    for limit in (requests_per_minute, texts_per_minute):
        if limit is not None and limit < 1:
            raise ValueError("limits must be >= 1 (or unset for the defaults)")
    plain, key_id, secret = new_key()
    record = ApiKey(
        id=key_id,
        name=name,
        secret_hash=hash_secret(secret),
        tenant=tenant,
        scopes=scope_set,
        requests_per_minute=requests_per_minute,
        texts_per_minute=texts_per_minute,
        created_at=now,
        expires_at=expires_at,
    )
    return plain, record


class KeyStore(Protocol):
    """Where key records live. Errors (a dead Redis) propagate: callers decide how to degrade."""

    async def put(self, record: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def all(self) -> list[ApiKey]: ...

    async def revoke(self, key_id: str) -> ApiKey | None: ...


class RedisKeyStore:
    """Records as Redis hashes in the durable store (AOF): they survive restarts of Redis and the app."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def put(self, record: ApiKey) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(_RECORD.format(record.id), mapping=record.to_redis())
            pipe.sadd(_INDEX, record.id)
            await pipe.execute()

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self.client.hgetall(_RECORD.format(key_id))
        return ApiKey.from_redis(key_id, raw) if raw else None

    async def all(self) -> list[ApiKey]:
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in await self.client.smembers(_INDEX))
        async with self.client.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(_RECORD.format(key_id))
            raws = await pipe.execute()
        records = [ApiKey.from_redis(key_id, raw) for key_id, raw in zip(ids, raws, strict=True) if raw]
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKey | None:
        record = await self.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = replace(record, revoked_at=time.time())
            await self.client.hset(_RECORD.format(key_id), "revoked_at", str(record.revoked_at))
        return record


class MemoryKeyStore:
    """Records in this process only (no store URL: development). Per replica, lost on restart."""

    def __init__(self) -> None:
        self.records: dict[str, ApiKey] = {}

    async def put(self, record: ApiKey) -> None:
        self.records[record.id] = record

    async def get(self, key_id: str) -> ApiKey | None:
        return self.records.get(key_id)

    async def all(self) -> list[ApiKey]:
        return sorted(self.records.values(), key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKey | None:
        record = self.records.get(key_id)
        if record is not None and record.revoked_at is None:
            record = self.records[key_id] = replace(record, revoked_at=time.time())
        return record
