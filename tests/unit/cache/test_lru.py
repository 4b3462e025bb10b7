"""The L1 keeps at most max_entries, drops the least recently used first and expires by deadline."""

from __future__ import annotations

from xz_serve.cache.lru import LruTtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_order_and_bound() -> None:
    cache = LruTtlCache(2, 60, clock=Clock())
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"  # a is now more recent than b
    cache.put("c", b"3")
    assert cache.get("b") is None and cache.get("a") == b"1" and cache.get("c") == b"3"
    assert len(cache) == 2 and cache.stats.l1_evictions == 1
    assert cache.stats.l1_hits == 3 and cache.stats.l1_misses == 1


def test_ttl_expires_and_is_capped_by_l1_ttl() -> None:
    clock = Clock()
    cache = LruTtlCache(10, 5, clock=clock)
    cache.put("short", b"x", ttl_s=1)
    cache.put("long", b"y", ttl_s=3600)  # L1 keeps it only for its own 5 s
    clock.now = 1.5
    assert cache.get("short") is None and cache.get("long") == b"y"
    clock.now = 5.5
    assert cache.get("long") is None and len(cache) == 0
    assert cache.stats.l1_evictions == 0  # expiry is not an eviction


def test_disabled() -> None:
    cache = LruTtlCache(0, 5)
    cache.put("a", b"1")
    assert cache.get("a") is None and len(cache) == 0


def test_a_stream_of_fresh_keys_holds_one_ttl_of_them_not_the_bound() -> None:
    # 10 new keys a second with a 5 s TTL: about 50 live at a time. Dead values must not sit
    # in memory until the entry bound (1,000) pushes them out.
    clock = Clock()
    cache = LruTtlCache(1_000, 5, clock=clock)
    for i in range(600):
        clock.now = i / 10
        cache.put(f"k{i}", b"v" * 100)
    assert 49 <= len(cache) <= 51
    assert cache.get("k599") == b"v" * 100 and cache.get("k0") is None
    assert cache.stats.l1_evictions == 0  # expiry is not an eviction


def test_a_live_entry_at_the_old_end_stops_the_sweep_without_losing_it() -> None:
    clock = Clock()
    cache = LruTtlCache(100, 60, clock=clock)
    cache.put("kept", b"1")  # lives 60 s
    cache.put("short", b"2", ttl_s=1)
    clock.now = 2
    cache.put("new", b"3")
    assert cache.get("kept") == b"1" and cache.get("new") == b"3"


def test_at_the_bound_a_dead_entry_makes_room_before_a_live_one_is_evicted() -> None:
    clock = Clock()
    cache = LruTtlCache(2, 60, clock=clock)
    cache.put("dead", b"1", ttl_s=1)
    cache.put("live", b"2")
    clock.now = 2
    cache.put("new", b"3")  # the expired entry goes; nothing live had to
    assert cache.get("live") == b"2" and cache.get("new") == b"3" and len(cache) == 2
    assert cache.stats.l1_evictions == 0  # only live entries pushed out by the bound count
    cache.put("newer", b"4")
    assert cache.stats.l1_evictions == 1 and cache.get("live") is None
