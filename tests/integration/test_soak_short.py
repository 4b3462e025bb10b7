"""The soak (bench/soak.py) in short: 2 minutes at half of saturation with the full mix of routes,
API keys on, a cache Redis restart and a replica kill, started and stopped through scripts/run.sh.

Short windows are noisy on a shared 2-core node, so the targets of the 20-minute soak are asserted
loosely here: no app 5xx (as there), RSS growth at most 25% (10% there), last-window P99 at most
3x the first's (1.3x there: a P99 over 30 s on a shared node moved from 0.67x to 1.97x in six
runs), fd and connection counts within the first and the last window within
max(10, 25%) (max(5, 10%) there), and nothing left running after the stop. The figures go to a
temporary file, not bench/results/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_keeps_memory_latency_and_fds_flat(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    out = tmp_path / "soak"
    command = [sys.executable, "bench/soak.py", "--minutes", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert out.with_suffix(".json").exists(), done.stderr[-4000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert "verdict" in record, done.stderr[-4000:]
    print(json.dumps(record["verdict"], indent=1))

    assert record["soak"]["requests"] > 500, record["soak"]
    assert {"analyze_hit", "analyze_miss", "embed_hit", "embed_miss", "chat_template", "chat_cached",
            "chat_llm"} <= set(record["soak"]["by_route"])  # fmt: skip
    kill = next(f for f in record["faults"] if "replica" in f["fault"])
    assert "recovered_s" in kill, record["faults"]  # Serve replaced the killed replica
    assert any("redis" in f["fault"] for f in record["faults"]), record["faults"]

    statuses = record["soak"]["statuses"]
    # 409 session_busy is the documented answer to overlapping turns of one session: wrk gives up
    # on a turn slower than its timeout and sends the next on the same session while the first
    # still holds the lock, which a loaded node makes common. Bounded, but apart from bad input.
    busy = statuses.get("409", 0)
    refused = sum(n for status, n in statuses.items() if status.startswith("4")) - busy
    assert refused <= 0.01 * record["soak"]["requests"], statuses  # the mix is valid
    assert busy <= 0.05 * record["soak"]["requests"], statuses
    assert record["http_5xx"]["app"] == 0, record["http_5xx"]
    # Proxy-level cuts only where the replica died (its in-flight requests).
    assert record["http_5xx"]["outside_fault_windows"] == 0, record["http_5xx"]

    window = record["soak"]["window_s"]
    old_enough = [p for p in record["processes"] if p["to_s"] - p["baseline_s"] >= 0.8 * window]
    judged = [p for p in old_enough if not p["name"].startswith("redis-server")]
    assert any(p["name"].startswith("ray::ServeReplica") and p["whole_run"] for p in judged)
    assert any(p["name"] == "haproxy" for p in judged)
    for p in judged:
        assert p["rss_growth"] <= 0.25, {k: v for k, v in p.items() if k != "series"}
        for start, end in p["fds_windows"] + p["conns_windows"]:  # within the first and the last window
            assert end - start <= max(10, 0.25 * start), {k: v for k, v in p.items() if k != "series"}
    ratio = record["verdict"]["p99_last_over_first"]["measured"]
    assert ratio is not None and ratio <= 3.0, (record["first_window"], record["last_window"])

    assert record["stop"]["left_running"] == {}, record["stop"]
    assert record["stop"]["http_port_still_bound"] is False, record["stop"]
