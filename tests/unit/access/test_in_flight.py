"""InFlight: each caller's requests in flight against one cap; released slots come back, and only
callers with something in flight are kept."""

from __future__ import annotations

import pytest

from xz_serve.access.inflight import InFlight, caller_of


def test_each_caller_gets_the_cap_and_no_more() -> None:
    table = InFlight(cap=2)
    assert table.acquire("a") and table.acquire("a")
    assert not table.acquire("a")  # refused: nothing taken
    assert table.held("a") == 2
    assert table.acquire("b") and table.acquire("b")  # others are unaffected
    table.release("a")
    assert table.acquire("a")
    assert not table.acquire("a")


def test_the_table_forgets_idle_callers() -> None:
    table = InFlight(cap=1)
    for i in range(1000):
        assert table.acquire(f"caller-{i}")
        table.release(f"caller-{i}")
    assert table.callers() == 0
    table.release("never-acquired")  # harmless
    assert table.callers() == 0 and table.held("never-acquired") == 0


def test_keys_and_addresses_never_collide() -> None:
    assert caller_of("10.0.0.1", None) != caller_of(None, "10.0.0.1")
    assert caller_of("abc", "10.0.0.1") == "key:abc"
    assert caller_of(None, None) == "addr:unknown"


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        InFlight(cap=0)
