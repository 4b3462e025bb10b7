"""Where classifiers live: the durable store Redis (AOF, noeviction), versioned; process memory in dev.

Per tenant, five keys (``xz:v1:clf:{tenant}:...``):

- ``epoch``: a counter every create, update and delete increments: what replicas poll to notice a
  change in one GET (``registry.py``);
- ``versions``: hash id -> current version; ``names``: hash name -> id; ``meta``: hash id -> the
  record as JSON (what GET and list answer);
- ``head:{id}``: the current version's head (``Head.to_bytes``).

Each write is one Lua script, so a record, its head, its name and the epoch change together or not
at all. An update is a compare-and-set on the version it was built from: two concurrent updates
never both become version n + 1 (the loser re-reads and becomes n + 2, or with ``If-Match`` is
refused 412), and an update racing a delete finds the classifier gone (404). A store failure is an
error (503), never a silent loss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis

from xz_serve.classifiers.errors import (
    ClassifierExistsError,
    ClassifierLimitError,
    ClassifierNotFoundError,
    ClassifierStoreError,
    VersionMismatchError,
)
from xz_serve.classifiers.head import Head
from xz_serve.kernel.redis import STORE_FAILURES, call_durable

T = TypeVar("T")
CAS_RETRIES = 8  # concurrent updates without If-Match: each loser re-reads the version this often


@dataclass(frozen=True)
class Record:
    """What the API shows of one classifier version (everything but the head's arrays)."""

    id: str
    name: str
    version: int
    labels: dict[str, int]  # label -> examples
    validation: dict[str, Any]
    model_id: str  # the encoder whose embeddings trained the head
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    training_s: float = 0.0
    head_bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Loaded:
    """A classifier's current record and head, read together."""

    record: Record
    head: Head


class ClassifierStore(Protocol):
    """Classifier records and heads per tenant. Every method may raise ClassifierStoreError (503)."""

    async def create(self, tenant: str, record: Record, head: Head, max_count: int) -> Record: ...

    async def update(self, tenant: str, record: Record, head: Head, expected: int | None) -> Record:
        """Store ``record`` and ``head`` as the next version of ``record.id``, returned with it.

        Raises:
            ClassifierNotFoundError, ClassifierExistsError (the new name is another's),
            VersionMismatchError (``expected`` is not the current version).
        """
        ...

    async def delete(self, tenant: str, classifier_id: str) -> bool: ...

    async def record(self, tenant: str, ref: str) -> Record | None:
        """The current record of a classifier named by id or name."""
        ...

    async def records(self, tenant: str) -> list[Record]: ...

    async def load(self, tenant: str, classifier_id: str) -> Loaded | None: ...

    async def state(self, tenant: str) -> tuple[int, dict[str, int], dict[str, str]]:
        """``(epoch, id -> version, name -> id)`` of the tenant, read together."""
        ...

    async def epochs(self, tenants: list[str]) -> list[int]: ...

    async def count(self, tenant: str) -> int: ...

    async def put_job(self, tenant: str, job_id: str, status: dict[str, Any], ttl_s: int) -> None: ...

    async def job(self, tenant: str, job_id: str) -> dict[str, Any] | None: ...


def tenant_keys(tenant: str, classifier_id: str = "") -> list[str]:
    """KEYS of the write scripts: epoch, versions, names, meta, head."""
    base = f"xz:v1:clf:{tenant}"
    return [
        f"{base}:epoch",
        f"{base}:versions",
        f"{base}:names",
        f"{base}:meta",
        f"{base}:head:{classifier_id}",
    ]


def job_key(tenant: str, job_id: str) -> str:
    return f"xz:v1:clf:{tenant}:job:{job_id}"


# KEYS epoch, versions, names, meta, head; ARGV id, name, record, head, max. -1 name taken, -2 full.
CREATE = """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return -1 end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('SET', KEYS[5], ARGV[4])
return redis.call('INCR', KEYS[1])
"""

# KEYS as CREATE; ARGV id, base version, new name, old name, record, head.
# -1 gone, -2 the version moved on from base, -3 the new name is another classifier's.
UPDATE = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current then return -1 end
if tonumber(current) ~= tonumber(ARGV[2]) then return -2 end
local owner = redis.call('HGET', KEYS[3], ARGV[3])
if owner and owner ~= ARGV[1] then return -3 end
if ARGV[3] ~= ARGV[4] then redis.call('HDEL', KEYS[3], ARGV[4]) end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tonumber(ARGV[2]) + 1)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
redis.call('SET', KEYS[5], ARGV[6])
return redis.call('INCR', KEYS[1])
"""

# KEYS as CREATE; ARGV id, its name. 0 when there is no such classifier.
DELETE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[2]) end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return redis.call('INCR', KEYS[1])
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisClassifierStore:
    """Classifiers in the durable Redis, on the process's store client."""

    def __init__(self, client: Redis, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def _call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await call_durable(op, self.timeout_s)
        except STORE_FAILURES as exc:
            raise ClassifierStoreError(f"the classifier store failed to {what}", retry_after_s=1) from exc

    async def create(self, tenant: str, record: Record, head: Head, max_count: int) -> Record:
        keys = tenant_keys(tenant, record.id)
        args = (record.id, record.name, record.to_json(), head.to_bytes(), max_count)
        done = await self._call(lambda: self.client.eval(CREATE, 5, *keys, *args), "create")  # type: ignore[misc]
        if done == -1:
            raise ClassifierExistsError(f"a classifier named {record.name!r} exists; update it with PUT")
        if done == -2:
            raise ClassifierLimitError(
                f"this tenant holds {max_count} classifiers, the most it may; delete one"
            )
        return record

    async def update(self, tenant: str, record: Record, head: Head, expected: int | None) -> Record:
        blob = head.to_bytes()
        for _ in range(CAS_RETRIES):
            current = await self.record(tenant, record.id)
            if current is None:
                raise ClassifierNotFoundError(f"no classifier {record.id!r}")
            if expected is not None and current.version != expected:
                raise _mismatch(expected, current.version)
            new = replace(record, version=current.version + 1, created_at=current.created_at)
            keys = tenant_keys(tenant, record.id)
            args = (record.id, current.version, new.name, current.name, new.to_json(), blob)
            done = await self._call(lambda: self.client.eval(UPDATE, 5, *keys, *args), "update")  # type: ignore[misc]  # noqa: B023
            if done == -1:
                raise ClassifierNotFoundError(f"classifier {record.id!r} was deleted during the update")
            if done == -3:
                raise ClassifierExistsError(f"another classifier is named {new.name!r}")
            if done != -2:
                return new
            if expected is not None:  # moved on between our read and the script
                raise _mismatch(expected, None)
        raise ClassifierStoreError("too many concurrent updates of this classifier; retry", retry_after_s=1)

    async def delete(self, tenant: str, classifier_id: str) -> bool:
        current = await self.record(tenant, classifier_id)
        if current is None or current.id != classifier_id:
            return False
        keys = tenant_keys(tenant, classifier_id)
        args = (classifier_id, current.name)
        done = await self._call(lambda: self.client.eval(DELETE, 5, *keys, *args), "delete")  # type: ignore[misc]
        return bool(done)

    async def record(self, tenant: str, ref: str) -> Record | None:
        _, _, names, meta, _ = tenant_keys(tenant)

        async def read() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, ref)
                pipe.hget(names, ref)
                by_id, owner = await pipe.execute()
                if by_id is None and owner is not None:
                    by_id = await self.client.hget(meta, _text(owner))
                return by_id

        raw = await self._call(read, "read")
        return None if raw is None else Record.from_json(raw)

    async def records(self, tenant: str) -> list[Record]:
        meta = tenant_keys(tenant)[3]
        raw = await self._call(lambda: self.client.hgetall(meta), "list")  # type: ignore[arg-type,return-value]
        return sorted((Record.from_json(v) for v in raw.values()), key=lambda r: (r.created_at, r.id))

    async def load(self, tenant: str, classifier_id: str) -> Loaded | None:
        meta, head = tenant_keys(tenant, classifier_id)[3:]

        async def read() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(meta, classifier_id)
                pipe.get(head)
                return await pipe.execute()

        raw_record, raw_head = await self._call(read, "read")
        if raw_record is None or raw_head is None:
            return None
        return Loaded(Record.from_json(raw_record), Head.from_bytes(raw_head))

    async def state(self, tenant: str) -> tuple[int, dict[str, int], dict[str, str]]:
        epoch, versions, names = tenant_keys(tenant)[:3]

        async def read() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(epoch)
                pipe.hgetall(versions)
                pipe.hgetall(names)
                return await pipe.execute()

        raw_epoch, raw_versions, raw_names = await self._call(read, "read")
        return (
            int(raw_epoch or 0),
            {_text(k): int(v) for k, v in raw_versions.items()},
            {_text(k): _text(v) for k, v in raw_names.items()},
        )

    async def epochs(self, tenants: list[str]) -> list[int]:
        keys = [tenant_keys(t)[0] for t in tenants]
        raw = await self._call(lambda: self.client.mget(keys), "read")
        return [int(v or 0) for v in raw]

    async def count(self, tenant: str) -> int:
        versions = tenant_keys(tenant)[1]
        return int(await self._call(lambda: self.client.hlen(versions), "read"))  # type: ignore[arg-type]

    async def put_job(self, tenant: str, job_id: str, status: dict[str, Any], ttl_s: int) -> None:
        value = json.dumps(status, ensure_ascii=False)
        await self._call(lambda: self.client.set(job_key(tenant, job_id), value, ex=ttl_s), "write")

    async def job(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        raw = await self._call(lambda: self.client.get(job_key(tenant, job_id)), "read")
        return None if raw is None else dict(json.loads(raw))


def _mismatch(expected: int, current: int | None) -> VersionMismatchError:
    now = f"; it is now {current}" if current is not None else ""
    return VersionMismatchError(
        f"If-Match names version {expected}, not the current one{now}; nothing was written"
    )


@dataclass
class _Tenant:
    epoch: int = 0
    items: dict[str, Loaded] = field(default_factory=dict)
    jobs: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)


class MemoryClassifierStore:
    """Classifiers in this process only (no store URL: development). Per replica, lost on restart."""

    def __init__(self) -> None:
        self._tenants: dict[str, _Tenant] = {}

    def _of(self, tenant: str) -> _Tenant:
        return self._tenants.setdefault(tenant, _Tenant())

    def _find(self, tenant: str, ref: str) -> Loaded | None:
        items = self._of(tenant).items
        return items.get(ref) or next((i for i in items.values() if i.record.name == ref), None)

    async def create(self, tenant: str, record: Record, head: Head, max_count: int) -> Record:
        state = self._of(tenant)
        if any(i.record.name == record.name for i in state.items.values()):
            raise ClassifierExistsError(f"a classifier named {record.name!r} exists; update it with PUT")
        if len(state.items) >= max_count:
            raise ClassifierLimitError(
                f"this tenant holds {max_count} classifiers, the most it may; delete one"
            )
        state.items[record.id] = Loaded(record, head)
        state.epoch += 1
        return record

    async def update(self, tenant: str, record: Record, head: Head, expected: int | None) -> Record:
        state = self._of(tenant)
        current = state.items.get(record.id)
        if current is None:
            raise ClassifierNotFoundError(f"no classifier {record.id!r}")
        if expected is not None and current.record.version != expected:
            raise _mismatch(expected, current.record.version)
        if any(i.record.name == record.name and k != record.id for k, i in state.items.items()):
            raise ClassifierExistsError(f"another classifier is named {record.name!r}")
        new = replace(record, version=current.record.version + 1, created_at=current.record.created_at)
        state.items[record.id] = Loaded(new, head)
        state.epoch += 1
        return new

    async def delete(self, tenant: str, classifier_id: str) -> bool:
        state = self._of(tenant)
        if state.items.pop(classifier_id, None) is None:
            return False
        state.epoch += 1
        return True

    async def record(self, tenant: str, ref: str) -> Record | None:
        found = self._find(tenant, ref)
        return None if found is None else found.record

    async def records(self, tenant: str) -> list[Record]:
        return sorted((i.record for i in self._of(tenant).items.values()), key=lambda r: (r.created_at, r.id))

    async def load(self, tenant: str, classifier_id: str) -> Loaded | None:
        return self._of(tenant).items.get(classifier_id)

    async def state(self, tenant: str) -> tuple[int, dict[str, int], dict[str, str]]:
        state = self._of(tenant)
        versions = {k: i.record.version for k, i in state.items.items()}
        return state.epoch, versions, {i.record.name: k for k, i in state.items.items()}

    async def epochs(self, tenants: list[str]) -> list[int]:
        return [self._of(t).epoch for t in tenants]

    async def count(self, tenant: str) -> int:
        return len(self._of(tenant).items)

    async def put_job(self, tenant: str, job_id: str, status: dict[str, Any], ttl_s: int) -> None:
        self._of(tenant).jobs[job_id] = (time.time() + ttl_s, status)

    async def job(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        item = self._of(tenant).jobs.get(job_id)
        return None if item is None or item[0] <= time.time() else item[1]


def open_store(client: Redis | None, timeout_s: float) -> ClassifierStore:
    """Classifiers on the durable store's client when there is one, else in process memory."""
    return RedisClassifierStore(client, timeout_s) if client is not None else MemoryClassifierStore()
