"""The ceiling: the INT8 OnnxNluModel called in process, with no HTTP, Ray or queueing in the way.

Why: serving can only lose against the bare model. Batch-32 texts/s bounds xz_serve's req/s (one
text per request), and batch-1 P50 bounds its latency at concurrency 1; run.py reports both ratios.

    python bench/raw_model.py --seconds 5          # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from texts import DATA_DIR, REPO_ROOT, load_texts  # bench/ is sys.path[0] when run as a script

from xz_serve.models.loading import load_onnx_model
from xz_serve.settings import ModelSpec


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    """P50/P90/P99/mean in milliseconds."""
    a = np.asarray(samples_s) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


def artifacts_current(spec: ModelSpec) -> bool | None:
    """Whether the built artifacts' fingerprint matches today's build inputs (None if unknown).

    A stale build is still the same architecture, so speed numbers hold; labels may differ.
    """
    try:
        from xz_serve.artifacts.build import fingerprint, read_manifest

        manifest = read_manifest(Path(spec.artifacts_dir))
        return manifest is not None and manifest.fingerprint == fingerprint(spec)
    except Exception:
        return None


def bench_spec(artifacts: Path, threads: int) -> ModelSpec:
    """The shipped model's spec over ``artifacts`` with ``threads`` ONNX Runtime threads."""
    return ModelSpec(
        artifacts_dir=artifacts.resolve(),
        data_dir=DATA_DIR,
        build_if_missing=False,  # never train inside a benchmark
        intra_op_threads=threads,
    )


def measure(
    seconds: float, batch_size: int, threads: int, artifacts: Path, n_texts: int = 500
) -> dict[str, Any]:
    """Batch-``batch_size`` throughput, then batch-1 latency, each for about ``seconds``."""
    texts = load_texts(n_texts)
    spec = bench_spec(artifacts, threads)
    t0 = time.perf_counter()
    model = load_onnx_model(spec)
    load_s = time.perf_counter() - t0
    batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    for batch in batches[:2]:  # warm-up: first runs pay for allocation and kernel selection
        model.predict(batch)
    model.predict(texts[:1])

    done_texts, n_batches, batch_times = 0, 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or n_batches < 5:
        batch = batches[n_batches % len(batches)]
        b0 = time.perf_counter()
        model.predict(batch)
        batch_times.append(time.perf_counter() - b0)
        done_texts += len(batch)
        n_batches += 1
    batch_elapsed = time.perf_counter() - start

    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 20:
        text = texts[len(latencies) % len(texts)]
        b0 = time.perf_counter()
        model.predict([text])
        latencies.append(time.perf_counter() - b0)

    return {
        "model_id": model.model_id,
        "artifacts_match_current_code": artifacts_current(spec),
        "intra_op_threads": threads,
        "cpu_count": os.cpu_count(),
        "load_s": round(load_s, 2),
        "texts": len(texts),
        f"batch{batch_size}": {
            "batch_size": batch_size,
            "batches": n_batches,
            "texts_per_s": round(done_texts / batch_elapsed, 2),
            "batch_latency_ms": percentiles_ms(batch_times),
        },
        "batch1": {
            "calls": len(latencies),
            "texts_per_s": round(len(latencies) / sum(latencies), 2),
            "latency_ms": percentiles_ms(latencies),
        },
    }


def main() -> None:
    """Print the measurement as one JSON line (run.py parses the last line of stdout)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (batch-32, batch-1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = all cores")
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts")
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.batch_size, args.threads, args.artifacts)))


if __name__ == "__main__":
    main()
