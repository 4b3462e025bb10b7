"""Render helm/xz-serve with Helm itself (Helm v4's Go engine, from the helm-python-sdk wheel: no helm
binary, no cluster), taking values the way ``helm template -f ... --set ... --set-file ...`` does."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "xz-serve"
RAY_ENV = ROOT / "deployments" / "ray.env"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(
    values_files: Iterable[Path] = (), sets: Iterable[str] = (), set_files: Iterable[str] = ()
) -> dict[str, Any]:
    """``-f`` files, then ``--set``, then ``--set-file`` (later wins), parsed by Helm's own parsers."""
    values: dict[str, Any] = {}
    for path in values_files:
        values = merge(values, helm.values_from_yaml(Path(path).read_text()))
    for expression in sets:
        values = merge(values, helm.parse_set_string(expression))
    for expression in set_files:
        values = merge(values, helm.parse_set_file(expression))
    return values


def render_manifests(values: dict[str, Any], name: str = "xz", namespace: str = "prod") -> dict[str, str]:
    """Template path -> rendered text, as ``helm template`` renders it for an install."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def render(values: dict[str, Any], name: str = "xz", namespace: str = "prod") -> list[dict[str, Any]]:
    """Every object the chart renders, parsed."""
    objects = []
    for path, text in sorted(render_manifests(values, name, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    """The single object of ``kind`` (whose name ends with ``name_suffix``)."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}*{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env as name -> value (or valueFrom)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def ray_env() -> dict[str, str]:
    """deployments/ray.env, the Ray process flags, as a dict."""
    lines = [line for line in RAY_ENV.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, _, value in (line.partition("=") for line in lines)}
