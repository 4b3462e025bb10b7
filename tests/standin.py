"""StandinServer (bench/local_servers.py): bench/openai_standin.py as a real subprocess on a free
127.0.0.1 port; tests inject faults through its admin endpoint and kill it by pid.

The class lives in bench/ because the benchmarks start the same server and import no test code."""

from __future__ import annotations

from bench.local_servers import StandinServer

__all__ = ["StandinServer"]
