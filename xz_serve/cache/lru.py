"""LruTtlCache: the bounded in-process L1 that answers repeats without a network round trip."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from xz_serve.cache.stats import CacheStats


class LruTtlCache:
    """Least-recently-used dict with a per-entry deadline and a hard entry bound.

    Single-threaded by design: the ingress runs on one asyncio loop, so no lock is needed. Expired
    entries are dropped when read, and each ``put`` also drops expired ones from the least recently
    used end, so the cache holds about what arrived within one TTL rather than filling up to
    ``max_entries`` with dead values (memory follows the working set); the bound still caps it.
    """

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        stats: CacheStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.stats = stats if stats is not None else CacheStats()
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        """The live value, marked as recently used; None if absent or expired (counted either way)."""
        item = self._data.get(key)
        if item is not None:
            if item[0] > self._clock():
                self._data.move_to_end(key)
                self.stats.l1_hits += 1
                return item[1]
            del self._data[key]
        self.stats.l1_misses += 1
        return None

    def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Keep ``value`` for ``min(ttl_s, self.ttl_s)``; the least recently used go beyond the bound."""
        if self.max_entries <= 0:
            return
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        now = self._clock()
        self._data[key] = (now + ttl, value)
        self._data.move_to_end(key)
        # The least recently used entries are mostly the oldest: drop those already dead first, so
        # that the bound below evicts (and ``l1_evictions`` counts) live entries only. A live one
        # at the front stops the sweep, so a put costs O(1) amortised.
        while self._data:
            oldest = next(iter(self._data.values()))
            if oldest[0] > now:
                break
            self._data.popitem(last=False)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            self.stats.l1_evictions += 1

    def clear(self) -> None:
        """Forget everything (tests, or a model switch that should free memory at once)."""
        self._data.clear()
