"""Every xz_* metric a spec description or a monitoring file names is one our code defines.

The names are defined once, in the ``ray.util.metrics`` constructors; a description that points an
operator at a metric, or a rule that reads one, must not name a series that never appears.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
FAMILIES = "http|replica|cache|access|dialog|llm"
DEFINED = re.compile(r'(?:Counter|Gauge|Histogram)\(\s*"(xz_[a-z0-9_]+)"')
MENTIONED = re.compile(rf"\b(?:ray_)?(xz_(?:{FAMILIES})_[a-z0-9_]+)")


def defined_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "xz_serve").rglob("*.py"):
        names |= set(DEFINED.findall(path.read_text(encoding="utf-8")))
    return names


def mentioned_names(path: Path) -> set[str]:
    """Metric names in ``path``, without Ray's ``ray_`` prefix or a histogram's series suffix."""
    found = MENTIONED.findall(path.read_text(encoding="utf-8"))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in found}


def referring_files() -> list[Path]:
    monitoring = ROOT / "deployments" / "monitoring"
    specs = (ROOT / "xz_serve").rglob("spec.py")
    return sorted([*specs, *monitoring.glob("*.yml"), *monitoring.glob("*.json")])


def test_the_definitions_are_found() -> None:
    names = defined_names()
    assert {"xz_http_requests_total", "xz_access_store_errors_total", "xz_llm_breaker_state"} <= names


def test_every_mentioned_metric_is_defined() -> None:
    known = defined_names()
    known |= {f"{name}_total" for name in known}  # Prometheus may add _total to a counter
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in referring_files()
        for name in mentioned_names(path)
        if name not in known
    }
    assert not unknown, f"names no metric defines: {sorted(unknown)}"
