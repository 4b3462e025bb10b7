"""The monitoring files: promtool checks and unit-tests the alert rules, the configs load, and the
Grafana dashboard is importable JSON whose queries parse and name series our code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
MONITORING = ROOT / "deployments" / "monitoring"
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) not installed")


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def exported_metric_names() -> set[str]:
    """Every ray.util.metrics name in xz_serve, as Prometheus sees it (Ray adds `ray_`)."""
    names = set()
    for path in (ROOT / "xz_serve").rglob("*.py"):
        names |= set(
            re.findall(r'"(xz_[a-z0-9_]+_(?:total|ms|texts|calls|keys|state|usd_total))"', path.read_text())
        )
    return {f"ray_{n}" for n in names}


def series_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (ours and Serve's)."""
    names = set(re.findall(r"\b(ray_(?:xz|serve)_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return data


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 6 rules found" in run(str(PROMTOOL), "check", "rules", "alerts.yml")


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in run(str(PROMTOOL), "test", "rules", "alerts_test.yml")


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    run(str(PROMTOOL), "check", "config", "--syntax-only", "prometheus.yml")


@pytest.mark.skipif(AMTOOL is None, reason="amtool (Debian prometheus-alertmanager) not installed")
def test_alertmanager_config_is_valid() -> None:
    run(str(AMTOOL), "check-config", "alertmanager.yml")


def test_every_required_alert_exists() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "XzLatencyP99OverObjective",
        "XzHighErrorRate",
        "XzCacheHitRateCollapse",
        "XzQueueSaturated",
        "XzReplicasAtMax",
        "XzDeploymentUnhealthy",
    }
    ours = exported_metric_names()
    for rule in rules:
        for name in series_in(rule["expr"]):
            assert name.startswith("ray_serve_") or name in ours, f"{rule['alert']} reads unknown {name}"


def test_dashboard_is_importable_json(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys() and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "requests per second", "batch size", "cache", "error", "replicas"):
        assert topic in titles, f"no panel about {topic}"


def test_dashboard_queries_read_exported_series(dashboard: dict[str, Any]) -> None:
    ours = exported_metric_names()
    for expr in dashboard_exprs(dashboard):
        for name in series_in(expr):
            assert name.startswith("ray_serve_") or name in ours, f"dashboard reads unknown {name}"


@needs_promtool
def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (template variables filled in)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$application", ".*")}
        for i, expr in enumerate(dashboard_exprs(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run(str(PROMTOOL), "check", "rules", str(path))
