"""Ray Serve reads its process flags when ``ray.serve`` is first imported, in the driver too, so the
flags of deployments/ray.env (HAProxy ingress) are put into the environment here, before any test
module imports Ray. Unit tests never start Ray and are unaffected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.local_servers import free_port  # one definition, shared with the benchmarks; tests import it here

ROOT = Path(__file__).parents[1]


def ray_env() -> dict[str, str]:
    """deployments/ray.env as a dict: the Ray flags the app runs with."""
    env = {}
    for line in (ROOT / "deployments" / "ray.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


os.environ.update(ray_env())
# HAProxy's side listeners on free ports, so a developer's own Serve on :8000 can keep running.
for _name in ("STATS", "METRICS"):
    os.environ.setdefault(f"RAY_SERVE_HAPROXY_{_name}_PORT", str(free_port()))
os.environ.setdefault("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", str(free_port()))


@pytest.fixture(autouse=True)
def _no_xz_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that are not integration tests never read XZ_* settings from the environment.

    The integration session exports the URLs of its redis-servers as XZ_CACHE__REDIS_URL /
    XZ_STORE__REDIS_URL (the way production passes them); a unit test that ran after it would
    otherwise share that cache and see other tests' entries.
    """
    if request.node.get_closest_marker("integration") is None:
        for name in [n for n in os.environ if n.startswith("XZ_")]:
            monkeypatch.delenv(name)
