"""Peak resident memory of a server and everything it started, sampled while it runs.

Why a sum over processes: xz_serve is a Ray cluster (GCS, raylet, dashboard, HAProxy, replicas)
and Infinity one uvicorn process; what a host must provision is their total. Pages two processes
share are counted in each, so the sum is an upper bound for the multi-process server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB (0 when it is gone or a kernel thread)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakRss:
    """Samples the summed RSS of ``members()`` every ``interval_s`` in a thread; ``peak_mb`` is
    the largest sum seen between ``start`` and ``stop``."""

    def __init__(self, members: Callable[[], set[int]], interval_s: float = 0.5) -> None:
        self.members = members
        self.interval_s = interval_s
        self.peak_kb = 0
        self.processes_at_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        pids = self.members()
        total = sum(rss_kb(pid) for pid in pids)
        if total > self.peak_kb:
            self.peak_kb, self.processes_at_peak = total, len(pids)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)
