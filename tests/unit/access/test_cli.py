"""``xz-keys`` never prints the store's password: the URL it names is redacted, and so is any echo
of the password in a Redis error."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import pytest

from tests.conftest import free_port
from tests.redis_server import REDIS_SERVER, RedisServer
from xz_serve.access.cli import main

PASSWORD = "pw-7c1f0a9e"


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0",
        f"redis://admin:{PASSWORD}@127.0.0.1:{{port}}/0",
        f"redis://127.0.0.1:{{port}}/0?password={PASSWORD}",
    ],
)
def test_an_unreachable_store_is_named_without_its_password(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("XZ_STORE__REDIS_URL", url.format(port=port))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and f"127.0.0.1:{port}" in err
    assert PASSWORD not in err and "***" in err


class _GuardedRedis(RedisServer):
    """A redis-server that requires a password other than the one the CLI is given."""

    def args(self) -> list[str]:
        return [*super().args(), "--requirepass", "the-right-one"]

    def start(self) -> None:  # the base class's readiness PING would be refused
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")


def test_a_refused_password_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = _GuardedRedis()
    server.start()
    try:
        url = server.url.replace("redis://", f"redis://:{PASSWORD}@")
        assert main(["--redis-url", url, "list"]) == 1
    finally:
        server.close()
    err = capsys.readouterr().err
    assert err.startswith("xz-keys: ") and PASSWORD not in err and "***" in err
