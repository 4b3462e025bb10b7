"""Real local servers as subprocesses on free 127.0.0.1 ports, started and killed by pid.

- ``RedisServer``: a redis-server that callers may kill, pause and restart. Cache-like by default
  (bounded, allkeys-lru, no persistence); ``durable=True`` gives the store's settings (AOF,
  noeviction) in a data directory that survives restarts.
- ``StandinServer``: bench/openai_standin.py (an OpenAI-compatible chat-completions server); faults
  are injected through its admin endpoint.

The benchmarks use them directly; the tests re-export them (tests/redis_server.py, tests/standin.py)
and add their pytest fixtures there. Nothing here imports pytest or test code.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop`` kills it by pid, ``start`` brings it back on the same port."""

    def __init__(self, port: int | None = None, *, durable: bool = False) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="xz-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        common = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no",
                  "--dir", str(self.dir), "--save", ""]  # fmt: skip
        if self.durable:
            return [*common, "--appendonly", "yes", "--appendfsync", "always",
                    "--maxmemory-policy", "noeviction"]  # fmt: skip
        return [*common, "--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL, by pid): the abrupt way a Redis pod dies."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused server must die too
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers, like a hung or partitioned Redis."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class StandinServer:
    """bench/openai_standin.py in a subprocess (``python -m bench.openai_standin``, from the repo root)."""

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "bench.openai_standin", "--port", str(self.port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/models", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the OpenAI stand-in did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def faults(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/admin/faults", json=faults, timeout=2).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/admin/reset", timeout=2).raise_for_status()

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{self.url}/admin/stats", timeout=2).json()
        return stats
