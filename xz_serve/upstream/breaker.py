"""CircuitBreaker: stop calling an upstream that keeps failing, and probe it again later."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls are refused until the reset time
    HALF_OPEN = "half_open"  # one probe call is in flight; its outcome closes or re-opens


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures; open -> half-open after ``reset_s``.

    In half-open state exactly one caller gets through (the probe); success closes the breaker,
    failure opens it for another ``reset_s``. Others are refused meanwhile, so a dead upstream costs
    one timeout per window rather than one per request.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probe_out = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = False
        return self._state

    def allow(self) -> bool:
        """Whether a call may go now; in half-open state only the first caller (the probe) may."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._probe_out = False

    def abandon(self) -> None:
        """The call let through ended with no verdict on the upstream (its caller's deadline, or the
        caller left): a half-open breaker lets the next caller probe instead."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False

    def failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_out = False
