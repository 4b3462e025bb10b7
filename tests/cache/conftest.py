"""A real redis-server per test, on a free 127.0.0.1 port, that a test may pause, kill and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.conftest import free_port
from xz_serve.cache.guard import RedisGuard
from xz_serve.cache.spec import CacheSpec

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One redis-server subprocess: no persistence, bounded memory with allkeys-lru, like production."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--maxmemory", "64mb",
                "--maxmemory-policy", "allkeys-lru",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
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
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers, like a hung or partitioned Redis."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make_spec(redis_server: RedisServer) -> AsyncIterator[Callable[..., CacheSpec]]:
    def make(**overrides: object) -> CacheSpec:
        args: dict[str, object] = {
            "redis_url": redis_server.url, "timeout_ms": 100, "backoff_ms": 200, **overrides
        }  # fmt: skip
        return CacheSpec(**args)  # type: ignore[arg-type]

    yield make


@pytest.fixture
async def make_guard(make_spec: Callable[..., CacheSpec]) -> AsyncIterator[Callable[..., RedisGuard]]:
    """A fresh client per call, as each replica has its own; all closed at teardown."""
    guards: list[RedisGuard] = []

    def make(**overrides: object) -> RedisGuard:
        guards.append(RedisGuard.from_spec(make_spec(**overrides)))
        return guards[-1]

    yield make
    for guard in guards:
        await guard.close()
