"""Requests in flight per caller on one replica, against a cap: no caller holds every slot.

The replica's admission gate bounds its requests in flight, whoever sends them; a caller whose
requests stay long (a body trickled byte by byte, a long chat turn, a stream) could otherwise take
all of them and keep every other tenant at 503. Each caller (an API key; with auth off, a client
address) may hold at most ``cap`` of them; the rest of the gate stays free for others. The count
is this replica's own, like the gate it shares out.
"""

from __future__ import annotations


def caller_of(key_id: str | None, address: str | None) -> str:
    """Who a request counts against: its API key, else (auth off) its client address."""
    return f"key:{key_id}" if key_id is not None else f"addr:{address or 'unknown'}"


class InFlight:
    """Counts each caller's requests in flight; ``acquire`` refuses past ``cap``.

    Only callers with a request in flight have an entry, so the table is bounded by the replica's
    admission bound whatever the number of keys or addresses seen.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the in-flight cap must be >= 1")
        self.cap = cap
        self._held: dict[str, int] = {}

    def acquire(self, caller: str) -> bool:
        """Take a slot for ``caller``; False (nothing taken) when it already holds ``cap``."""
        held = self._held.get(caller, 0)
        if held >= self.cap:
            return False
        self._held[caller] = held + 1
        return True

    def release(self, caller: str) -> None:
        """Give back a slot ``acquire`` took."""
        held = self._held.get(caller, 0) - 1
        if held > 0:
            self._held[caller] = held
        else:
            self._held.pop(caller, None)

    def held(self, caller: str) -> int:
        """Requests ``caller`` has in flight."""
        return self._held.get(caller, 0)

    def callers(self) -> int:
        """Callers with at least one request in flight."""
        return len(self._held)
