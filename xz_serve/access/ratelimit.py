"""Per-key sliding-window limits, enforced cluster-wide by one atomic Lua script in the store Redis.

Each (key, kind) has a sorted set of the units it was granted in the last window (score: grant
time in ms, member: ``<cost>:<nonce>``) and a running total. One script call trims what left the
window, admits the request if ``total + cost <= limit`` and answers remaining and reset. Every
replica asks the same Redis and the script runs atomically, so N replicas admit N units in total,
not N each; the clock is Redis's own (``TIME``), so replica clocks do not matter. A refused
request is not recorded: retrying after 429 does not push the window further out.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from redis.asyncio import Redis

Kind = Literal["requests", "texts"]
WINDOW_S = 60.0  # "per minute"

SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local cutoff = now - window
local function cost_of(member) return tonumber(string.match(member, '^(%d+):')) end

local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #expired > 0 then
  for _, m in ipairs(expired) do used = used - cost_of(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
end
if used < 0 or redis.call('ZCARD', KEYS[1]) == 0 then used = 0 end

local allowed = 0
if used + cost <= limit then
  allowed = 1
  used = used + cost
  redis.call('ZADD', KEYS[1], now, cost .. ':' .. ARGV[4])
end

local reset = 0
local retry = 0
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if #entries > 0 then
  reset = tonumber(entries[2]) + window - now
  redis.call('SET', KEYS[2], used, 'PX', window)
  redis.call('PEXPIRE', KEYS[1], window)
else
  redis.call('DEL', KEYS[2])
end
if allowed == 0 then
  if cost > limit then
    retry = -1
  else
    local need = used + cost - limit
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + cost_of(entries[i])
      if freed >= need then
        retry = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  end
end
return {allowed, limit - used, reset, retry}
"""


@dataclass(frozen=True)
class Decision:
    """One limit check: admitted or not, and what the x-ratelimit-* headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # until the oldest grant leaves the window (capacity frees up)
    retry_after_s: float | None = None  # when refused; None: the cost can never fit the limit

    def headers(self, kind: Kind) -> dict[str, str]:
        """``x-ratelimit-*`` for requests; the texts limit adds ``-texts`` to each name."""
        suffix = "" if kind == "requests" else "-texts"
        return {
            f"x-ratelimit-limit{suffix}": str(self.limit),
            f"x-ratelimit-remaining{suffix}": str(max(0, self.remaining)),
            f"x-ratelimit-reset{suffix}": str(math.ceil(self.reset_s)),
        }


class Limiter(Protocol):
    async def hit(self, bucket: str, limit: int, cost: int = 1) -> Decision: ...


class RedisLimiter:
    """The sliding window in the store Redis: one atomic script call per check, shared by all replicas.

    Redis errors propagate (the access gate applies ``limits_fail_mode``). After a Redis restart the
    script cache is empty; redis-py's Script reloads it on NOSCRIPT by itself.
    """

    def __init__(self, client: Redis, window_s: float = WINDOW_S) -> None:
        self.script = client.register_script(SLIDING_WINDOW)
        self.window_ms = int(window_s * 1000)

    async def hit(self, bucket: str, limit: int, cost: int = 1) -> Decision:
        keys = [f"xz:rl:{{{bucket}}}:log", f"xz:rl:{{{bucket}}}:used"]
        allowed, remaining, reset_ms, retry_ms = await self.script(
            keys=keys, args=[limit, cost, self.window_ms, uuid.uuid4().hex]
        )
        return Decision(
            allowed=bool(allowed),
            limit=limit,
            remaining=int(remaining),
            reset_s=int(reset_ms) / 1000,
            retry_after_s=None if allowed else (None if int(retry_ms) < 0 else int(retry_ms) / 1000),
        )


class MemoryLimiter:
    """The same sliding window in this process (no store URL: development). Per replica: with N
    replicas a key gets N times its limit."""

    def __init__(self, window_s: float = WINDOW_S, clock: object = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.grants: dict[str, deque[tuple[float, int]]] = {}

    async def hit(self, bucket: str, limit: int, cost: int = 1) -> Decision:
        now: float = self.clock()  # type: ignore[operator]
        log = self.grants.setdefault(bucket, deque())
        while log and log[0][0] <= now - self.window_s:
            log.popleft()
        used = sum(c for _, c in log)
        allowed = used + cost <= limit
        if allowed:
            log.append((now, cost))
            used += cost
        reset = log[0][0] + self.window_s - now if log else 0.0
        retry: float | None = None
        if not allowed and cost <= limit:
            need, freed = used + cost - limit, 0
            for at, c in log:
                freed += c
                if freed >= need:
                    retry = at + self.window_s - now
                    break
        if not log:
            self.grants.pop(bucket, None)
        return Decision(allowed, limit, limit - used, reset, retry)
