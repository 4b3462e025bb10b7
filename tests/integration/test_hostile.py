"""Hostile and faulty clients against the real Serve app behind Serve's HAProxy.

One key trickles bodies (``content-length: 100000``, one byte every 0.5 s) on as many connections
as the replica admits in all, and reconnects whenever it is cut; a second key's paced load runs at
half the saturation rate meanwhile. The second key must see no refusal, and its P99 must stay
within 2x its P99 without the attack. The app is auth-on, fused, one replica with an admission
bound of 32 (batches of 8, ``queue_batches: 4``), so each key may hold 16
(``api.max_in_flight_per_key`` derived), and bodies must arrive within ``api.body_timeout_s``
(5 s). Load comes from wrk through tests/integration/wrk_paced.lua, with the key's Authorization
header added by a wrapper script.

Also checked here over real Serve: every response carries one ``x-request-id`` (the client's when it
sends one), and HAProxy runs with the client timeout of deployments/ray.env.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC
from redis.asyncio import Redis

from tests.conftest import ray_env
from tests.integration.conftest import ROOT, deployed, local_args
from tests.redis_server import RedisServer
from xz_serve.access.keys import RedisKeyStore, mint
from xz_serve.http.middleware.admission import max_in_flight
from xz_serve.http.middleware.in_flight import max_in_flight_per_key
from xz_serve.settings import XzSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WRK = shutil.which("wrk")
PACED = Path(__file__).with_name("wrk_paced.lua")
DATA = ROOT.parent / "shared" / "data"
# Where the figures go when set (the run's numbers for a report); the test never needs them.
RESULTS = os.environ.get("XZ_HOSTILE_RESULTS")
Sample = dict[str, Any]
WRAPPER = """-- wrk_paced.lua with an Authorization header on every request.
dofile(os.getenv("WRK_PACED"))
local paced_request = request
local auth = "Authorization: Bearer " .. os.getenv("WRK_BEARER") .. "\\r\\n"
function request()
  local req = paced_request()
  local eol = string.find(req, "\\r\\n", 1, true)
  return string.sub(req, 1, eol + 1) .. auth .. string.sub(req, eol + 2)
end
"""


def hostile_args() -> dict[str, Any]:
    args = local_args()
    args["batch"] = args["batch"] | {"max_batch_size": 8, "queue_batches": 4}
    args["model"] = args["model"] | {"intra_op_threads": 1}
    args["cache"] = {"enabled": False}  # every admitted request costs a model pass
    args["access"] = {"auth_enabled": True}
    api = {k: v for k, v in args["api"].items() if k != "max_in_flight_per_key"}  # local.yaml's (auth off)
    args["api"] = api | {"request_timeout_s": 10}  # the default share: half the bound
    return args


async def _put_keys(url: str, count: int) -> list[str]:
    client = Redis.from_url(url)
    try:
        store = RedisKeyStore(client)
        plains = []
        for i in range(count):
            plain, record = mint(f"hostile-{i}", requests_per_minute=1_000_000, texts_per_minute=1_000_000)
            await store.put(record)
            plains.append(plain)
        return plains
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def hostile(serve_url: str, redis_store: RedisServer) -> Iterator[tuple[str, str, str]]:
    """``(url, attacker key, victim key)``: the app above, and two keys of generous rate limits."""
    if WRK is None:
        pytest.skip("wrk is not installed")
    attacker, victim = asyncio.run(_put_keys(redis_store.url, 2))
    with deployed(serve_url, "hostile", hostile_args()) as url:
        yield url, attacker, victim


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text per request, real validation texts in a fixed shuffled order."""
    texts = []
    for task in ("intent_clinc150", "sentiment_tweeteval"):
        texts += [json.loads(line)["text"] for line in (DATA / task / "val.jsonl").open()][:1500]
    random.Random(7).shuffle(texts)
    lines = [f"  [==[{json.dumps({'text': t})}]==]," for t in texts if "]==]" not in t]
    path = tmp_path_factory.mktemp("wrk") / "bodies.lua"
    path.write_text("return {\n" + "\n".join(lines) + "\n}\n")
    (path.parent / "authorized.lua").write_text(WRAPPER)
    return path


def wrk(url: str, key: str, bodies: Path, connections: int, interval_ms: float, seconds: int) -> Sample:
    """wrk_paced.lua as ``key``: its JSON summary."""
    assert WRK is not None
    env = os.environ | {
        "WRK_TEXTS": str(bodies), "WRK_INTERVAL_MS": f"{interval_ms:.3f}", "WRK_PACED": str(PACED),
        "WRK_BEARER": key,
    }  # fmt: skip
    script = bodies.parent / "authorized.lua"
    command = [WRK, f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "--timeout", "15s",
               "-s", str(script), url]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    result["ok_rps"] = round(int(result["statuses"].get("200", 0)) / result["duration_s"], 1)
    return result


class Trickler:
    """``n`` connections of one key, each sending a 100000-byte body one byte every ``every_s``.

    Cut (408) or refused (429), a connection opens again: at once after a cut, after Retry-After
    after a refusal (a client that honours it; a flood of refusals is test_overload's subject).
    """

    def __init__(self, url: str, key: str, n: int, every_s: float = 0.5) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.head = (
            f"POST {parts.path}/v1/analyze HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n"
        ).encode()
        self.n, self.every_s = n, every_s
        self.stopped = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.cut_after_s: list[float] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> Trickler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _record(self, status: str, held_s: float) -> None:
        with self._lock:
            self.statuses[status] += 1
            if status == "408":
                self.cut_after_s.append(round(held_s, 2))

    def _run(self) -> None:
        while not self.stopped.is_set():
            status, held_s, retry_after = self._one()
            self._record(status, held_s)
            if status == "429":
                self.stopped.wait(retry_after)

    def _one(self) -> tuple[str, float, float]:
        started = time.monotonic()
        try:
            with socket.create_connection(self.address, timeout=5) as sock:
                sock.sendall(self.head)
                while not self.stopped.is_set():
                    readable, _, _ = select.select([sock], [], [], self.every_s)
                    if readable:
                        answer = sock.recv(4096).decode("latin-1")
                        held_s = time.monotonic() - started
                        if not answer:
                            return "closed", held_s, 0.0
                        retry = re.search(r"(?im)^retry-after:\s*(\d+)", answer)
                        return answer.split(" ", 2)[1], held_s, float(retry.group(1)) if retry else 1.0
                    sock.sendall(b" ")
                return "held", time.monotonic() - started, 0.0
        except OSError as exc:
            return f"error:{type(exc).__name__}", time.monotonic() - started, 0.0


def baseline_and_attack(url: str, attacker: str, victim: str, bodies: Path, rps: float, n: int) -> Sample:
    """The victim's paced load alone, then again while the attacker trickles on ``n`` connections."""
    interval_ms = 1000 * 16 / rps
    alone = wrk(url, victim, bodies, 16, interval_ms, 20)
    with Trickler(url, attacker, n) as trickler:
        time.sleep(2)  # every trickle connected: the key's share is held, the rest refused
        attacked = wrk(url, victim, bodies, 16, interval_ms, 20)
        time.sleep(0.5)
    ratio = attacked["ok_latency_ms"]["p99"] / alone["ok_latency_ms"]["p99"]
    return {
        "victim_alone": alone,
        "victim_attacked": attacked,
        "attacker": {"statuses": dict(trickler.statuses), "cut_after_s": sorted(trickler.cut_after_s)[:5]},
        "p99_ratio": round(ratio, 2),
    }


def test_one_key_cannot_starve_another(hostile: tuple[str, str, str], bodies: Path) -> None:
    url, attacker, victim = hostile
    settings = XzSettings.model_validate(hostile_args())
    bound, share = max_in_flight(settings), max_in_flight_per_key(settings)
    assert (bound, share) == (32, 16)
    wrk(url, victim, bodies, 16, 0, 3)  # warm-up: model, HAProxy connections, key cache
    saturation = wrk(url, victim, bodies, share, 0, 8)  # closed loop at the key's share
    rps = 0.5 * saturation["ok_rps"]
    # A P99 over 20 s on a shared 2-core node moves with its neighbours: another sample (up to
    # three, all recorded) only while the last one misses. Refusals and cuts are checked on the last.
    samples = [baseline_and_attack(url, attacker, victim, bodies, rps, n=bound)]
    while len(samples) < 3 and (
        samples[-1]["p99_ratio"] > 2 or set(samples[-1]["victim_attacked"]["statuses"]) != {"200"}
    ):
        samples.append(baseline_and_attack(url, attacker, victim, bodies, rps, n=bound))
    record = {"saturation_closed_loop_at_share": saturation, "half_load_rps": rps, "samples": samples}
    if RESULTS:
        Path(RESULTS).write_text(json.dumps(record, indent=1) + "\n")
    last = samples[-1]
    for run in (last["victim_alone"], last["victim_attacked"]):
        assert set(run["statuses"]) == {"200"}, run  # no refusal: not 429, not 503
        assert not any(run["socket_errors"].values()), run["socket_errors"]
    # The attacker held its share and was refused the rest; each trickle was cut at body_timeout_s.
    assert last["attacker"]["statuses"].get("429", 0) > 0, last["attacker"]
    assert last["attacker"]["statuses"].get("408", 0) >= share, last["attacker"]
    assert all(4.5 <= s <= 8 for s in last["attacker"]["cut_after_s"]), last["attacker"]
    assert last["p99_ratio"] <= 2, f"victim P99 under attack is {last['p99_ratio']}x its P99 alone"


def test_one_request_id_per_response(hostile: tuple[str, str, str]) -> None:
    url, _, victim = hostile
    headers = {"Authorization": f"Bearer {victim}"}
    fresh = httpx.post(f"{url}/v1/analyze", json={"text": "hi"}, headers=headers, timeout=30)
    assert fresh.status_code == 200 and len(fresh.headers.get_list("x-request-id")) == 1
    mine = httpx.post(
        f"{url}/v1/analyze", json={"text": "hi"}, headers=headers | {"x-request-id": "client-7"}, timeout=30
    )
    assert mine.headers.get_list("x-request-id") == ["client-7"]
    refused = httpx.post(f"{url}/v1/analyze", json={"text": "hi"}, timeout=30)  # 401: errors too
    assert refused.status_code == 401 and len(refused.headers.get_list("x-request-id")) == 1


def test_haproxy_runs_with_the_client_timeout_of_ray_env(serve_url: str) -> None:
    expected = int(ray_env()["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"])
    port = urlsplit(serve_url).port
    where = Path(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC)  # one config per node, in a folder of its own
    configs = [p for p in where.parent.glob(f"*/{where.name}") if f":{port}\n" in p.read_text()]
    assert configs, "no HAProxy config binds the test's port"
    text = configs[0].read_text()
    assert re.search(rf"^\s*timeout client {expected}s$", text, re.M), text
