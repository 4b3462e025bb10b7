"""The service the way the README runs it: `bash scripts/run.sh` on a free port, with a minimal
environment (PATH and a fresh HOME, as in a newcomer's shell), then stopped the way an operator
or a CI runner stops it: SIGINT to its process group, and SIGTERM to it a few seconds later.

- `serve status` works from another clean shell with what the README says to set
  (`RAY_AUTH_MODE=token`; the token is the one the first `serve run` wrote to ~/.ray/auth_token);
  without it, it fails, as Ray's token authentication stays on.
- The dashboard's API refuses requests without the token, accepts it as a bearer token, and accepts
  the browser's login (POST /api/authenticate sets a cookie).
- The OTLP exporter's bearer token reaches the replicas (spans arrive with it) but is nowhere in
  the dashboard's API nor in the Ray session's logs.
- Stopping leaves no process of the run (by pid, HAProxy included) and no bound port.

The supervisor itself (scripts/supervise.py) is also checked without Ray, on a stand-in for an
orphaned HAProxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OTLP_TOKEN = "otlp-token-5d1e8c2b"
VENV_BIN = ROOT / ".venv" / "bin"


# ----------------------------------------------------------------------------- processes, by pid


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, session, state, start time in ticks) from /proc; None once gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), fields[0], int(fields[19])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def session_members(session: int) -> dict[int, int]:
    """pid -> start time of every live process in ``session``."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[1] == session and st[2] != "Z":
            members[int(entry.name)] = st[3]
    return members


def descendants(root: int) -> dict[int, int]:
    stats = {int(e.name): _stat(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    table = {pid: st for pid, st in stats.items() if st is not None}
    found: dict[int, int] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, st in table.items() if st[0] in frontier and pid not in found}
        found |= {pid: table[pid][3] for pid in frontier if table[pid][2] != "Z"}
    return found


def still_alive(pids: dict[int, int]) -> dict[int, str]:
    """The processes of ``pids`` still running (same pid and start time: not a recycled pid)."""
    alive = {}
    for pid, started in pids.items():
        st = _stat(pid)
        if st is not None and st[2] != "Z" and st[3] == started:
            alive[pid] = _comm(pid)
    return alive


def port_bound(port: int) -> bool:
    """True if a server could not listen on ``port`` now: something still listens there. (With
    SO_REUSEADDR, as servers bind: connections of the run left in TIME_WAIT do not count.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return True
    return False


# ----------------------------------------------------------------------------- an OTLP/HTTP endpoint


class Collector(ThreadingHTTPServer):
    """Records the headers of every OTLP/HTTP export it receives."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


# ----------------------------------------------------------------------------- the service


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path
    pidfile: Path
    ports: dict[str, int]
    collector: Collector
    dashboard: str = ""
    seen: dict[int, int] = field(default_factory=dict)  # every process of the run, pid -> start time

    def clean_env(self, **extra: str) -> dict[str, str]:
        """A newcomer's shell: PATH with the venv (as after `. .venv/bin/activate`) and HOME."""
        return {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home), **extra}

    def session(self) -> int:
        return int(json.loads(self.pidfile.read_text())["session"])

    def snapshot(self) -> dict[int, int]:
        """Record every process of the run now: the supervisor's tree and serve run's session."""
        self.seen |= descendants(self.proc.pid) | session_members(self.session())
        return self.seen


def wait_for(predicate: object, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log else ""
    raise TimeoutError(f"{what} not after {timeout_s:.0f} s\n{tail}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop(service: Service) -> None:
    """The issue's sequence: SIGINT to the process group, SIGTERM to it 3 s later; wait for the end."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGINT)
    time.sleep(3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGTERM)
    service.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("home")  # a fresh HOME: no Ray token yet
    log = tmp_path_factory.mktemp("run") / "run.log"
    ports = {name: free_port() for name in ("http", "cache", "store", "stats", "metrics", "fallback")}
    collector = Collector()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XZ_SKIP_SETUP": "1",  # set up already (the suite runs after scripts/setup.sh)
        "XZ_HTTP_PORT": str(ports["http"]),
        "XZ_REDIS_CACHE_PORT": str(ports["cache"]),
        "XZ_REDIS_STORE_PORT": str(ports["store"]),
        # HAProxy's side listeners off the defaults, so a developer's own run can keep going.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["stats"]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["metrics"]),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports["fallback"]),
        "XZ_MODEL__BUILD_IF_MISSING": "false",  # serve the artifacts the suite built; never retrain here
        "XZ_STOP_GRACE_S": "30",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {OTLP_TOKEN}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    service = Service(proc, f"http://127.0.0.1:{ports['http']}", home, log,
                      ROOT / ".run" / f"serve-{ports['http']}.pid", ports, collector)  # fmt: skip
    try:
        wait_for(lambda: proc.poll() is not None or _ready(service.url), 300, "readiness", log)
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        plain = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # Ray colours its log
        match = re.search(r"dashboard at (?:http://)?([\w.\-]+:\d+)", plain)
        assert match, log.read_text(errors="replace")[-3000:]
        service.dashboard = f"http://{match.group(1)}"
        service.snapshot()
        yield service
    finally:
        if proc.poll() is None:
            stop(service)
        if service.pidfile.exists():  # the supervisor died: sweep its session
            subprocess.run([sys.executable, "scripts/supervise.py", "stop", str(service.pidfile)], cwd=ROOT,
                           check=False, timeout=120)  # fmt: skip
        collector.shutdown()
        # This run's redis-servers: stopped by now unless the run died early; then their directories.
        subprocess.run(["bash", "scripts/redis.sh", "stop"], cwd=ROOT, env=env, check=False, timeout=60)
        for name in ("cache", "store"):
            shutil.rmtree(ROOT / ".run" / f"redis-{name}-{ports[name]}", ignore_errors=True)


def _serve_status(service: Service, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ["serve", "status"]
    if not service.dashboard.endswith(":8265"):  # as written in the README when Ray got its default port
        command += ["--address", service.dashboard]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_serve_status_works_from_a_clean_shell_with_what_the_readme_says(service: Service) -> None:
    assert (service.home / ".ray" / "auth_token").is_file()  # `serve run` made the token
    status = _serve_status(service, service.clean_env(RAY_AUTH_MODE="token"))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "RUNNING" in status.stdout and "xz" in status.stdout, status.stdout
    without = _serve_status(service, service.clean_env())  # token auth stays on: nothing gets in
    assert without.returncode != 0 and "Authentication" in without.stdout + without.stderr


def test_the_dashboard_api_takes_the_token_and_the_browser_login(service: Service) -> None:
    token = subprocess.run(["ray", "get-auth-token"], env=service.clean_env(RAY_AUTH_MODE="token"),
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()  # fmt: skip
    assert token and token == (service.home / ".ray" / "auth_token").read_text().strip()
    api = f"{service.dashboard}/api/serve/applications/"
    assert httpx.get(api, timeout=10).status_code == 401
    assert httpx.get(api, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert httpx.get(api, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    with httpx.Client(base_url=service.dashboard, timeout=10) as browser:  # the dashboard's token prompt
        login = browser.post("/api/authenticate", headers={"Authorization": f"Bearer {token}"})
        assert login.status_code == 200, login.text
        assert browser.get("/api/serve/applications/").status_code == 200  # by cookie alone


def test_the_exporter_token_reaches_replicas_but_no_dashboard_or_log(service: Service) -> None:
    token = (service.home / ".ray" / "auth_token").read_text().strip()
    for i in range(5):
        answer = httpx.post(f"{service.url}/v1/analyze", json={"text": f"lifecycle span {i}"}, timeout=30)
        assert answer.status_code == 200, answer.text
    wait_for(lambda: service.collector.headers, 30, "an OTLP export")
    assert all(h.get("authorization") == f"Bearer {OTLP_TOKEN}" for h in service.collector.headers)

    apps = httpx.get(f"{service.dashboard}/api/serve/applications/",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert apps.status_code == 200 and "OTEL_EXPORTER_OTLP_ENDPOINT" in apps.text  # forwarded, visible
    assert OTLP_TOKEN not in apps.text

    session_dirs = set()
    for pid in service.snapshot():
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            session_dirs |= set(re.findall(r"--session[-_]dir=([^\x00\s]+)", cmdline))
    assert len(session_dirs) == 1, session_dirs
    logs = Path(session_dirs.pop()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files
    leaked = [str(p) for p in files if OTLP_TOKEN.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert OTLP_TOKEN not in service.log.read_text(errors="replace")


def test_stopping_leaves_no_process_and_no_port(service: Service) -> None:
    seen = service.snapshot()
    names = set(still_alive(seen).values())
    assert "haproxy" in names and "raylet" in names, names
    redis_pids = {}
    for name in ("cache", "store"):
        pidfile = ROOT / ".run" / f"redis-{name}-{service.ports[name]}" / "redis.pid"
        pid = int(pidfile.read_text())
        redis_pids[pid] = _stat(pid)[3]  # type: ignore[index]
    session = service.session()
    t0 = time.monotonic()
    stop(service)
    stopped_s = time.monotonic() - t0
    left = still_alive(seen | redis_pids) | still_alive(session_members(session))
    assert not left, f"left running after stop: {left}"
    bound = {name: port for name, port in service.ports.items() if port_bound(port)}
    dashboard_port = int(service.dashboard.rsplit(":", 1)[1])
    if port_bound(dashboard_port):
        bound["dashboard"] = dashboard_port
    assert not bound, f"still bound after stop: {bound}"
    assert not service.pidfile.exists()
    assert stopped_s < 60, stopped_s
    print(f"stopped {len(seen)} processes ({sorted(names)}) in {stopped_s:.1f} s")


# ----------------------------------------------------------------------------- the supervisor alone

ORPHANING_SERVER = r"""
import signal, socket, subprocess, sys, time
port = int(sys.argv[1])
holder = (
    "import signal, socket, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); time.sleep(3600)\n" % port
)
# Like Serve's HAProxyManager: a worker in its own process group starts the port holder, then dies.
worker = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', %r]); time.sleep(3600)" % holder],
    process_group=0)
try:
    time.sleep(3600)
except KeyboardInterrupt:
    worker.kill()
"""


def test_the_supervisor_stops_an_orphan_outside_the_process_group(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(ORPHANING_SERVER)
    pidfile = tmp_path / "serve.pid"
    supervise = [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--pidfile", str(pidfile)]
    command = [*supervise, "--kill-after", "2", "--", sys.executable, str(script), str(port)]
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        wait_for(lambda: port_bound(port) and pidfile.exists(), 20, "the port holder")
        members = session_members(int(json.loads(pidfile.read_text())["session"]))
        assert len(members) == 3  # server, worker, holder
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not still_alive(members) and not port_bound(port) and not pidfile.exists()
