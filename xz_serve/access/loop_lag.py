"""How far behind this replica's event loop runs: the wait a request sees before the app does.

A replica's HTTP server parses requests on the same event loop as the app. When that loop is
saturated (2 shared cores, the GIL), requests wait in socket buffers and in the loop's ready queue
before any in-app bound can count them, so a bound on requests in flight alone lets latency grow
without limit. The loop's lag measures that hidden wait: a probe sleeps a few milliseconds and
records how late it woke.

Like CoDel, the admission stage acts on a *standing* lag, the smallest lag of the last window,
so one slow callback or a GC pause does not shed traffic, while a queue that persists does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque


class LoopLag:
    """Probes the running event loop every ``period_s``; ``standing_ms`` is the lag to act on."""

    def __init__(self, period_s: float = 0.005, window_s: float = 0.1) -> None:
        self.period_s = period_s
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when it completed, lag in s)
        self._probe_started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ensure_running(self) -> None:
        """Start probing the running loop (once per loop; a replica's loop never changes)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._samples.clear()
        self._task = loop.create_task(self._probe(), name="xz-loop-lag")

    async def _probe(self) -> None:
        while True:
            self._probe_started = started = time.perf_counter()
            await asyncio.sleep(self.period_s)
            done = time.perf_counter()
            self._samples.append((done, max(0.0, done - started - self.period_s)))
            while self._samples and done - self._samples[0][0] > self.window_s:
                self._samples.popleft()

    def standing_ms(self) -> float:
        """The smallest lag seen in the last window, or the lag of a probe still overdue if larger.

        An overdue probe bounds the current lag from below: when the loop is so far behind that
        no probe completed within the window, that bound is what we know.
        """
        now = time.perf_counter()
        recent = [lag for done, lag in self._samples if now - done <= self.window_s]
        overdue = 0.0
        if self._probe_started is not None:
            overdue = max(0.0, now - self._probe_started - self.period_s)
        floor = min(recent) if recent else overdue
        return 1000 * max(floor, overdue)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
