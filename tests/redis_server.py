"""RedisServer: a real redis-server subprocess on a free 127.0.0.1 port, that tests may kill,
pause and restart. Cache-like by default (bounded, allkeys-lru, no persistence); ``durable=True``
gives the store's settings (AOF, noeviction) in a data directory that survives restarts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server")


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


def redis_or_skip() -> Iterator[RedisServer]:
    """Body of a fixture that yields a started RedisServer and closes it (by pid) afterwards; the
    test is skipped where redis-server is not installed."""
    import pytest  # here, not at the top: the benchmarks import this module without pytest

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
