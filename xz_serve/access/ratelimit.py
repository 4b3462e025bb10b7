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
-- KEYS: (log, total) per limit; ARGV: window_ms, nonce, then (limit, cost) per limit.
-- Admits all charges or none: a request refused by one limit uses nothing of the others.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cutoff = now - window
local n = #KEYS / 2
local function cost_of(member) return tonumber(string.match(member, '^(%d+):')) end

local used, limit, cost = {}, {}, {}
local admit = true
for j = 1, n do
  local log, total = KEYS[2 * j - 1], KEYS[2 * j]
  limit[j] = tonumber(ARGV[1 + 2 * j])
  cost[j] = tonumber(ARGV[2 + 2 * j])
  local u = tonumber(redis.call('GET', total) or '0')
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #expired > 0 then
    for _, m in ipairs(expired) do u = u - cost_of(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
  end
  if u < 0 or redis.call('ZCARD', log) == 0 then u = 0 end
  used[j] = u
  if u + cost[j] > limit[j] then admit = false end
end

local out = {}
for j = 1, n do
  local log, total = KEYS[2 * j - 1], KEYS[2 * j]
  local fits = used[j] + cost[j] <= limit[j]
  if admit then
    used[j] = used[j] + cost[j]
    redis.call('ZADD', log, now, cost[j] .. ':' .. ARGV[2])
  end
  local reset = 0
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #oldest > 0 then
    reset = tonumber(oldest[2]) + window - now
    redis.call('SET', total, used[j], 'PX', window)
    redis.call('PEXPIRE', log, window)
  else
    redis.call('DEL', total)
  end
  local retry = 0
  if not fits then
    if cost[j] > limit[j] then
      retry = -1
    else
      -- walk from the oldest grant until enough units have left the window (a prefix, in chunks)
      local need = used[j] + cost[j] - limit[j]
      local freed = 0
      local start = 0
      while retry == 0 do
        local chunk = redis.call('ZRANGE', log, start, start + 99, 'WITHSCORES')
        if #chunk == 0 then break end
        for i = 1, #chunk, 2 do
          freed = freed + cost_of(chunk[i])
          if freed >= need then
            retry = tonumber(chunk[i + 1]) + window - now
            break
          end
        end
        start = start + 100
      end
    end
  end
  table.insert(out, fits and 1 or 0)
  table.insert(out, limit[j] - used[j])
  table.insert(out, reset)
  table.insert(out, retry)
end
return out
"""

Charge = tuple[str, int, int]
"""One limit to charge: ``(bucket, limit, cost)``."""


@dataclass(frozen=True)
class Decision:
    """One limit check: admitted or not, and what the x-ratelimit-* headers say."""

    allowed: bool  # this limit had room; the request was admitted only if every limit had room
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
    async def hit_all(self, charges: list[Charge]) -> list[Decision]: ...


def _keys(bucket: str) -> tuple[str, str]:
    """The grant log and running total of ``bucket`` ("<key id>:<kind>"); the hash tag is the key id,
    so one request's limits share a Redis Cluster slot and one script can charge them together."""
    tag = bucket.partition(":")[0]
    return f"xz:rl:{{{tag}}}:{bucket}:log", f"xz:rl:{{{tag}}}:{bucket}:used"


class RedisLimiter:
    """The sliding window in the store Redis: one atomic script call per check, shared by all replicas.

    Redis errors propagate (the access gate applies ``limits_fail_mode``). After a Redis restart the
    script cache is empty; redis-py's Script reloads it on NOSCRIPT by itself.
    """

    def __init__(self, client: Redis, window_s: float = WINDOW_S) -> None:
        self.script = client.register_script(SLIDING_WINDOW)
        self.window_ms = int(window_s * 1000)

    async def hit_all(self, charges: list[Charge]) -> list[Decision]:
        """Charge every limit or none, atomically; one decision per charge, in order."""
        keys = [key for bucket, _, _ in charges for key in _keys(bucket)]
        args: list[int | str] = [self.window_ms, uuid.uuid4().hex]
        for _, limit, cost in charges:
            args += [limit, cost]
        flat = await self.script(keys=keys, args=args)
        return [
            Decision(
                allowed=bool(flat[4 * i]),
                limit=limit,
                remaining=int(flat[4 * i + 1]),
                reset_s=int(flat[4 * i + 2]) / 1000,
                retry_after_s=None if int(flat[4 * i + 3]) <= 0 else int(flat[4 * i + 3]) / 1000,
            )
            for i, (_, limit, _) in enumerate(charges)
        ]


class MemoryLimiter:
    """The same sliding window in this process (no store URL: development). Per replica: with N
    replicas a key gets N times its limit."""

    def __init__(self, window_s: float = WINDOW_S, clock: object = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.grants: dict[str, deque[tuple[float, int]]] = {}

    async def hit_all(self, charges: list[Charge]) -> list[Decision]:
        now: float = self.clock()  # type: ignore[operator]
        logs = []
        for bucket, _, _ in charges:
            log = self.grants.setdefault(bucket, deque())
            while log and log[0][0] <= now - self.window_s:
                log.popleft()
            logs.append(log)
        used = [sum(c for _, c in log) for log in logs]
        admit = all(u + cost <= limit for u, (_, limit, cost) in zip(used, charges, strict=True))
        decisions = []
        for log, u, (bucket, limit, cost) in zip(logs, used, charges, strict=True):
            fits = u + cost <= limit
            if admit:
                log.append((now, cost))
                u += cost
            reset = log[0][0] + self.window_s - now if log else 0.0
            retry: float | None = None
            if not fits and cost <= limit:
                need, freed = u + cost - limit, 0
                for at, c in log:
                    freed += c
                    if freed >= need:
                        retry = at + self.window_s - now
                        break
            if not log:
                self.grants.pop(bucket, None)
            decisions.append(Decision(fits, limit, limit - u, reset, retry))
        return decisions
