"""The import contract beyond what import-linter can say: where ``ray.serve`` may be imported.

import-linter (``[tool.importlinter]`` in pyproject.toml, run by scripts/test.sh) keeps the layers
one-way and FastAPI in ``http/``; it sees external packages only as a whole (``ray``), so this test
names the modules that may import the Serve API itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import xz_serve

PACKAGE = Path(xz_serve.__file__).parent
SERVE_MODULES = {
    "app.py",  # binds the deployments
    "http/ingress.py",  # the Serve HTTP deployments
    "http/fused.py",
    "nlu/replica.py",  # @serve.batch
    "nlu/remote.py",  # the handle and Serve's exceptions
    "telemetry/metrics.py",  # the replica's Serve context, for metric tags
}


def _imports_serve(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.startswith("ray.serve") for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.module is not None:
        from_ray = node.module == "ray" and any(a.name == "serve" for a in node.names)
        return from_ray or node.module.startswith("ray.serve")
    return False


def serve_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import ``ray.serve`` (or ``serve`` from ``ray``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sorted(node.lineno for node in ast.walk(tree) if _imports_serve(node))  # type: ignore[attr-defined]


def test_ray_serve_is_imported_only_by_the_deployment_modules() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := serve_imports(path))
    }
    assert set(found) <= SERVE_MODULES, {k: v for k, v in found.items() if k not in SERVE_MODULES}
    assert {"app.py", "nlu/replica.py", "http/fused.py"} <= set(found)  # the check sees real imports


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import ray.serve\nfrom ray import serve\nfrom ray.serve.handle import X\nimport ray\n")
    assert serve_imports(module) == [1, 2, 3]
