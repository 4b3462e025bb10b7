"""Run a command (``serve run ...``) so that stopping it leaves no process behind and no port bound.

    python scripts/supervise.py [--pidfile F] [--grace S] [--on-exit CMD] -- serve run deployments/local.yaml
    python scripts/supervise.py stop F

Why: ``serve run`` starts a local Ray cluster whose processes are not its children alone. HAProxy
is a child of Serve's HAProxyManager actor, in that actor's own process group; when the worker dies
before Serve has stopped HAProxy (a SIGTERM during shutdown, a crash), HAProxy is orphaned and keeps
the HTTP port. Signals to ``serve run``'s process group never reach it.

So this supervisor:

- starts the command in a new session: every process Ray starts for it (daemons, workers, HAProxy)
  carries that session id, even after its parent is gone;
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): orphans of the tree are re-parented to it, not
  to init, so it also finds a descendant that started a session of its own, and reaps them all;
- on the first SIGINT, SIGTERM or SIGHUP sends SIGINT to the command (Serve's own orderly shutdown)
  and waits up to ``--grace`` seconds; when the command has exited, or the grace has run out, or a
  second signal comes, it sends SIGTERM to every process of the session and every descendant, then
  SIGKILL to what is left after ``--kill-after`` seconds, by pid, never by name;
- then runs the ``--on-exit`` commands (e.g. stopping the redis-servers that this run started) and
  exits with the command's status.

``stop F`` (``bash scripts/run.sh stop``) signals the supervisor named in pidfile ``F`` and waits for
it; if the supervisor itself is gone (killed with SIGKILL), it sweeps the session named there.
Linux only (``/proc``, ``prctl``); standard library only, so it runs before the venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def log(message: str) -> None:
    print(f"[supervise] {message}", file=sys.stderr, flush=True)


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, session id, state) of ``pid`` from /proc, or None once it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), fields[0]


def processes() -> dict[int, tuple[int, int, str]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = st
    return table


def tree(session: int, root: int | None) -> set[int]:
    """Live (non-zombie) processes in ``session`` or descending from ``root``, ``root`` excluded."""
    table = processes()
    members = {pid for pid, (_, sid, _) in table.items() if sid == session}
    if root is not None:
        frontier = {root}
        while frontier:
            frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - members
            members |= frontier
    members.discard(root if root is not None else -1)
    members.discard(os.getpid())
    return {pid for pid in members if table.get(pid, (0, 0, "Z"))[2] != "Z"}


def reap() -> list[tuple[int, int]]:
    """Collect every exited child (ours, and orphans re-parented to us); (pid, wait status) each."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def sweep(
    session: int,
    root: int | None,
    kill_after_s: float,
    on_reaped: Callable[[list[tuple[int, int]]], None] | None = None,
) -> set[int]:
    """SIGTERM the session and the tree, SIGKILL what is left after ``kill_after_s``; what survived."""
    for sig, wait_s in ((signal.SIGTERM, kill_after_s), (signal.SIGKILL, 5.0)):
        left = tree(session, root)
        if not left:
            return set()
        log(f"sending {sig.name} to {len(left)} processes: {sorted(left)}")
        signal_all(left, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if on_reaped is not None:
                on_reaped(reap())
            if not tree(session, root):
                return set()
            time.sleep(0.1)
    return tree(session, root)


class Supervisor:
    def __init__(self, command: list[str], grace_s: float, kill_after_s: float, pidfile: Path | None) -> None:
        self.command = command
        self.pidfile = pidfile
        self.grace_s = grace_s
        self.kill_after_s = kill_after_s
        self.stops = 0
        self.returncode: int | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stops += 1

    def _note(self, reaped: list[tuple[int, int]]) -> None:
        assert self.child is not None
        for pid, status in reaped:
            if pid == self.child.pid and self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.child.returncode = self.returncode  # reaped here: Popen must not wait for it

    def run(self) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log("could not become a child subreaper; orphans of other sessions may be missed")
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        self.child = subprocess.Popen(self.command, start_new_session=True)
        session = self.child.pid
        if self.pidfile is not None:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.pidfile.write_text(json.dumps({"supervisor": os.getpid(), "session": session}) + "\n")
        stop_sent_at: float | None = None
        while True:
            self._note(reap())
            if self.returncode is not None:
                break
            if self.stops and stop_sent_at is None:
                log(f"stopping: SIGINT to {session} ({self.grace_s:g} s for an orderly shutdown)")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(session, signal.SIGINT)
                stop_sent_at = time.monotonic()
            if stop_sent_at is not None and (
                self.stops > 1 or time.monotonic() - stop_sent_at > self.grace_s
            ):
                log("no orderly shutdown in time" if self.stops == 1 else "second stop signal")
                break
            time.sleep(0.1)
        left = sweep(session, os.getpid(), self.kill_after_s, self._note)
        self._note(reap())
        if left:
            log(f"WARNING: still alive after SIGKILL: {sorted(left)}")
        if self.returncode is None:
            self.returncode = 128 + signal.SIGKILL
        return self.returncode


def stop(pidfile: Path, timeout_s: float) -> int:
    """Stop the supervisor of ``pidfile`` (or, if it is gone, the session it supervised)."""
    try:
        record = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        log(f"nothing to stop: no {pidfile}")
        return 0
    supervisor, session = int(record["supervisor"]), int(record["session"])
    if (st := _stat(supervisor)) is not None and st[2] != "Z":
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _stat(supervisor) is not None:
            time.sleep(0.2)
        if _stat(supervisor) is not None:
            os.kill(supervisor, signal.SIGTERM)  # a second signal: no more grace
            time.sleep(15)
    left = sweep(session, None, 10.0)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return 1 if left else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["stop"]:
        return stop(Path(argv[1]), float(argv[2]) if len(argv) > 2 else 60.0)
    parser = argparse.ArgumentParser(prog="supervise.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pidfile", type=Path, help="where to write the supervisor and session pids")
    parser.add_argument("--grace", type=float, default=float(os.environ.get("XZ_STOP_GRACE_S", "30")),
                        help="seconds for the command's own shutdown after SIGINT (default 30)")  # fmt: skip
    parser.add_argument("--kill-after", type=float, default=10.0, help="SIGTERM to SIGKILL, seconds")
    parser.add_argument("--on-exit", action="append", default=[], help="shell command to run at the end")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    supervisor = Supervisor(command, args.grace, args.kill_after, args.pidfile)
    try:
        status = supervisor.run()
    finally:
        for command_line in args.on_exit:
            subprocess.run(command_line, shell=True, check=False)
        if args.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                args.pidfile.unlink()
    log(f"stopped (exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
