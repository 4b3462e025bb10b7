"""Sessions: one conversation's turns, slots, last intent and sentiment trend, kept in the durable Redis.

A session is user data, so it lives in the store Redis (AOF, noeviction; ``settings.store``), never
in the cache Redis that evicts under memory pressure. Each session is one JSON value under
``xz:v1:session:{tenant}:{id}`` with a TTL renewed on every turn, so an abandoned conversation
disappears by itself; ``DELETE /v1/sessions/{id}`` removes it at once. Turns are bounded (oldest
dropped). Unlike the cache, a store failure is an error (503), not a silent miss: dropping a
conversation's history without telling anyone is worse than asking the client to retry.

A turn holds the session's turn lock from reading the session to saving it, and the save is fenced
by the lock's token: one script checks that the token still holds the lock and writes, so a turn
whose lock expired (and may have been taken by a later turn) can never overwrite that later turn.
Deleting a session removes its lock with it and, while that lock would have lived, leaves a
tombstone: the running turn's save is refused and the session does not come back.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from xz_serve.kernel.errors import XzError
from xz_serve.kernel.redis import STORE_FAILURES, call_durable, connect

T = TypeVar("T")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
TREND = 10  # sentiment labels kept for the trend


def session_for_user(user: str) -> str:
    """The session id a caller's own stable conversation name maps to (OpenAI's ``user`` field).

    Hashed rather than used as is: any string is a valid name (an e-mail address, a UUID with
    braces), the id always matches ``SESSION_ID``, and the ``u_`` prefix keeps named sessions apart
    from random ones (``token_urlsafe`` ids are 22 characters, these 42).
    """
    return "u_" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class StoreUnavailableError(XzError):
    """The session store did not answer in time: retry shortly; nothing was changed or lost."""

    status = 503
    code = "store_unavailable"


class SessionNotFoundError(XzError):
    """No such session for this tenant (never existed, expired, or deleted)."""

    status = 404
    code = "session_not_found"


class TurnLockLostError(XzError):
    """The turn's lock expired before its save, and another turn may have saved since: this turn's
    reply was not saved (the session keeps what the later turn wrote)."""

    status = 409
    code = "turn_lock_expired"


class Turn(BaseModel):
    """One message of the conversation, with what the NLU and the policy made of it."""

    role: Literal["user", "assistant"]
    text: str
    at: float = Field(description="Epoch seconds.")
    intent: str | None = None
    confidence: float | None = None
    sentiment: str | None = None
    policy: str | None = None


class SessionUsage(BaseModel):
    """LLM spend of one session (per-session counters)."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    saved_tokens: int = 0


class Session(BaseModel):
    """A conversation's state."""

    id: str
    tenant: str = "default"
    created_at: float
    updated_at: float
    turns: list[Turn] = Field(default_factory=list)
    slots: dict[str, str] = Field(default_factory=dict)
    last_intent: str | None = None
    sentiment_trend: list[str] = Field(
        default_factory=list, description="Latest user sentiments, oldest first."
    )
    negative_streak: int = 0
    escalated: bool = False
    usage: SessionUsage = Field(default_factory=SessionUsage)

    @classmethod
    def new(cls, tenant: str, now: float | None = None, *, session_id: str | None = None) -> Session:
        """A fresh session: a random id unless the caller names one (``session_for_user``)."""
        now = time.time() if now is None else now
        sid = secrets.token_urlsafe(16) if session_id is None else session_id
        return cls(id=sid, tenant=tenant, created_at=now, updated_at=now)

    def add(self, turn: Turn, max_turns: int) -> None:
        """Append a turn, keeping the newest ``max_turns``."""
        self.turns.append(turn)
        del self.turns[: max(0, len(self.turns) - max_turns)]
        self.updated_at = turn.at

    def record_sentiment(self, label: str) -> None:
        """Update the trend and the run of negative user turns (what escalation looks at)."""
        self.sentiment_trend = [*self.sentiment_trend, label][-TREND:]
        self.negative_streak = self.negative_streak + 1 if label == "negative" else 0


class SessionStore(Protocol):
    async def get(self, tenant: str, session_id: str) -> Session | None: ...
    async def save(self, session: Session, token: str) -> None:
        """Write the session if ``token`` still holds its turn lock.

        Raises:
            TurnLockLostError: the lock expired or belongs to another turn; nothing was written.
            SessionNotFoundError: the session was deleted during the turn; nothing was written.
        """
        ...

    async def delete(self, tenant: str, session_id: str) -> bool:
        """Remove the session and its turn lock (a running turn's save is then refused); True if
        there was a session or a turn in progress."""
        ...

    async def lock(self, tenant: str, session_id: str, ttl_s: float) -> str | None:
        """Take the session's turn lock: a token to unlock with, or None if another turn holds it."""
        ...

    async def unlock(self, tenant: str, session_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it (an expired lock may have a new holder)."""
        ...

    async def close(self) -> None: ...


def session_key(tenant: str, session_id: str) -> str:
    return f"xz:v1:session:{tenant}:{session_id}"


def lock_key(tenant: str, session_id: str) -> str:
    return f"xz:v1:session-lock:{tenant}:{session_id}"


def tombstone_key(tenant: str, session_id: str) -> str:
    return f"xz:v1:session-deleted:{tenant}:{session_id}"


def _deleted_during_turn(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(
        f"session {session_id!r} was deleted while this turn ran; the turn was not saved"
    )


def _lock_lost(session_id: str) -> TurnLockLostError:
    return TurnLockLostError(
        f"the turn lock of session {session_id!r} expired before this turn was saved; "
        "the reply was not saved",
        retry_after_s=1,
    )


# Take the lock, or find it already ours: `_call` retries a command whose connection died, and a
# first SET that reached Redis before the reply was lost must not make our own lock look busy.
LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# Delete the lock only if it still holds our token: compare and delete in one step.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Save fenced by the lock: KEYS session, lock, tombstone; ARGV token, value, TTL (s). -1 deleted
# during the turn, 0 the lock is not ours (expired, maybe retaken), 1 written. Run again after a
# lost reply, it writes the same value again.
SAVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# Delete the session and its lock; a tombstone lives as long as the lock would have, so the turn
# holding it learns why its save is refused. KEYS session, lock, tombstone.
DELETE = """
local removed = redis.call('DEL', KEYS[1])
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[3], '1', 'PX', left)
  return 1
end
return removed
"""


class RedisSessionStore:
    """Sessions as JSON values with a TTL in the durable Redis."""

    def __init__(self, client: Redis, ttl_s: int, timeout_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s

    @classmethod
    def from_url(cls, url: str, ttl_s: int, timeout_s: float) -> RedisSessionStore:
        """A store over its own client (tools and tests; the app shares the process's store client)."""
        client = connect(url, "store", timeout_ms=timeout_s * 1000)
        assert client is not None
        return cls(client, ttl_s, timeout_s)

    async def _call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await call_durable(op, self.timeout_s)
        except STORE_FAILURES as exc:
            raise StoreUnavailableError(f"the session store failed to {what}", retry_after_s=1) from exc

    async def get(self, tenant: str, session_id: str) -> Session | None:
        raw = await self._call(lambda: self.client.get(session_key(tenant, session_id)), "read")
        return None if raw is None else Session.model_validate_json(raw)

    async def save(self, session: Session, token: str) -> None:
        tenant, sid = session.tenant, session.id
        keys = (session_key(tenant, sid), lock_key(tenant, sid), tombstone_key(tenant, sid))
        value = session.model_dump_json()
        written = await self._call(
            lambda: self.client.eval(SAVE, 3, *keys, token, value, self.ttl_s),  # type: ignore[misc]
            "write",
        )
        if written == -1:
            raise _deleted_during_turn(sid)
        if written != 1:
            raise _lock_lost(sid)

    async def delete(self, tenant: str, session_id: str) -> bool:
        keys = (
            session_key(tenant, session_id),
            lock_key(tenant, session_id),
            tombstone_key(tenant, session_id),
        )
        removed = await self._call(lambda: self.client.eval(DELETE, 3, *keys), "delete")  # type: ignore[misc]
        return bool(removed)

    async def lock(self, tenant: str, session_id: str, ttl_s: float) -> str | None:
        token, key, ms = secrets.token_hex(8), lock_key(tenant, session_id), max(1, int(ttl_s * 1000))
        taken = await self._call(lambda: self.client.eval(LOCK, 1, key, token, ms), "lock")  # type: ignore[misc]
        return token if taken else None

    async def unlock(self, tenant: str, session_id: str, token: str) -> None:
        key = lock_key(tenant, session_id)
        await self._call(lambda: self.client.eval(UNLOCK, 1, key, token), "unlock")  # type: ignore[misc]

    async def close(self) -> None:
        return None  # the client is the process's store client: its guard's owner closes it


class MemorySessionStore:
    """Process-memory sessions (development only: lost on restart, not shared across replicas)."""

    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, tuple[float, str]] = {}  # key -> (expires, token)
        self._tombstones: dict[str, float] = {}  # key -> expires

    async def get(self, tenant: str, session_id: str) -> Session | None:
        item = self._data.get(session_key(tenant, session_id))
        if item is None or item[0] <= self._clock():
            return None
        return Session.model_validate_json(item[1])

    async def save(self, session: Session, token: str) -> None:
        tenant, sid, now = session.tenant, session.id, self._clock()
        if self._tombstones.get(tombstone_key(tenant, sid), 0.0) > now:
            raise _deleted_during_turn(sid)
        held = self._locks.get(lock_key(tenant, sid))
        if held is None or held[0] <= now or held[1] != token:
            raise _lock_lost(sid)
        self._data[session_key(tenant, sid)] = (now + self.ttl_s, session.model_dump_json())

    async def delete(self, tenant: str, session_id: str) -> bool:
        now = self._clock()
        self._tombstones = {k: t for k, t in self._tombstones.items() if t > now}
        item = self._data.pop(session_key(tenant, session_id), None)
        held = self._locks.pop(lock_key(tenant, session_id), None)
        if held is not None and held[0] > now:
            self._tombstones[tombstone_key(tenant, session_id)] = held[0]
            return True
        return item is not None and item[0] > now

    async def lock(self, tenant: str, session_id: str, ttl_s: float) -> str | None:
        key, now = lock_key(tenant, session_id), self._clock()
        held = self._locks.get(key)
        if held is not None and held[0] > now:
            return None
        token = secrets.token_hex(8)
        self._locks[key] = (now + ttl_s, token)
        return token

    async def unlock(self, tenant: str, session_id: str, token: str) -> None:
        key = lock_key(tenant, session_id)
        if self._locks.get(key, (0.0, ""))[1] == token:
            del self._locks[key]

    async def close(self) -> None:
        self._data.clear()


def open_store(client: Redis | None, ttl_s: int, timeout_s: float) -> SessionStore:
    """Sessions on the durable store's client when there is one, else in process memory."""
    if client is not None:
        return RedisSessionStore(client, ttl_s, timeout_s)
    return MemorySessionStore(ttl_s)
