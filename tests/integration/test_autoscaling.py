"""A step of load scales the model deployment from 1 to >= 3 replicas and back, failing nothing.

The timeline (replicas, req/s, P99 per second) goes to bench/results/autoscaling_timeline.json
(and a PNG when matplotlib is installed) as the measured record of scaling.

The autoscaling settings must be valid as Ray defines them: Ray's warning that they are not (it
says it will raise in a future release) is an error here, both when the app is deployed and in a
check of the settings themselves.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ROOT, local_args, wait_ready

# Ray's "look_back_period_s must be greater than metrics_interval_s" (a FutureWarning) fails the test.
INVALID_AUTOSCALING = "error:.*look_back_period_s.*:FutureWarning"
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.filterwarnings(INVALID_AUTOSCALING)]
APP = "xz-scale"
RESULTS = ROOT / "bench" / "results"


def scale_args() -> dict[str, Any]:
    args = local_args() | {"topology": "split"}  # scale the model deployment on its own
    args["nlu"] = args["nlu"] | {
        "min_replicas": 1,
        "max_replicas": 4,
        "num_cpus": 0.25,  # fractional CPUs: several replicas fit on a 2-core machine
        "target_ongoing_requests": 4,
        "upscale_delay_s": 2,
        "downscale_delay_s": 8,
        # Serve averages over this window the replica metrics it receives every metrics interval
        # (10 s, its default: the field is deprecated for an environment variable): the window must
        # be longer than the interval, or it may hold no report at all.
        "look_back_period_s": 12,
    }
    args["api"] = args["api"] | {"request_timeout_s": 30}
    # The load cycles through a fixed text set: with the cache on, repeats would be hits and the
    # model load this test scales on would vanish after the first pass.
    args["cache"] = {"enabled": False}
    return args


def autoscaling_configs() -> dict[str, dict[str, Any]]:
    """Every autoscaling config the app is deployed with: this test's, prod.yaml's deployments'."""
    import yaml

    from xz_serve.settings import XzSettings

    prod = yaml.safe_load((ROOT / "deployments" / "prod.yaml").read_text())["applications"][0]["args"]
    settings = {"test": XzSettings(**scale_args()), "prod": XzSettings(**prod)}
    return {
        f"{name}.{role}": getattr(s, role).serve_options()["autoscaling_config"]
        for name, s in settings.items()
        for role in ("nlu", "ingress")
        if "autoscaling_config" in getattr(s, role).serve_options()
    }


@pytest.mark.parametrize("name", ["test.nlu", "prod.nlu", "prod.ingress"])
def test_autoscaling_settings_are_valid_as_ray_defines_them(name: str) -> None:
    from ray.serve.config import AutoscalingConfig

    config = autoscaling_configs()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning Ray gives about these settings
        parsed = AutoscalingConfig(**config)
    assert parsed.look_back_period_s > parsed.metrics_interval_s


@pytest.fixture(scope="module")
def scale_url(serve_url: str) -> Iterator[str]:
    from ray import serve

    from xz_serve.app import build_app

    serve.run(build_app(scale_args()), name=APP, route_prefix="/scale", blocking=False)
    url = f"{serve_url}/scale"
    wait_ready(url)
    yield url
    serve.delete(APP)


def running_replicas() -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments["nlu"]
    return int(status.replica_states.get("RUNNING", 0))


async def test_step_load_scales_up_and_back_down(scale_url: str) -> None:
    val = ROOT.parent / "shared" / "data" / "intent_clinc150" / "val.jsonl"
    texts = [json.loads(line)["text"] for line in val.open()]
    samples: list[dict[str, Any]] = []
    done: list[tuple[float, float, int]] = []  # (finish time, latency s, status)
    start = time.monotonic()
    stop_load = asyncio.Event()
    finished = asyncio.Event()

    async def client(worker: int, client_http: httpx.AsyncClient, pause_s: float) -> None:
        i = worker
        while not stop_load.is_set() if pause_s == 0 else not finished.is_set():
            t0 = time.monotonic()
            try:
                r = await client_http.post("/v1/analyze", json={"text": texts[i % len(texts)]})
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            done.append((time.monotonic() - start, time.monotonic() - t0, status))
            i += 37
            if pause_s:
                await asyncio.sleep(pause_s)

    async def sampler() -> None:
        while not finished.is_set():
            samples.append({"t": time.monotonic() - start, "replicas": running_replicas()})
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=scale_url, timeout=60, limits=limits) as http:
        sampling = asyncio.create_task(sampler())
        trickle = asyncio.create_task(client(0, http, pause_s=0.5))  # runs through scale-down too
        load = [asyncio.create_task(client(w, http, pause_s=0)) for w in range(1, 33)]
        await asyncio.sleep(45)
        stop_load.set()
        await asyncio.gather(*load)
        load_end = time.monotonic() - start
        deadline = time.monotonic() + 90
        while running_replicas() > 1 and time.monotonic() < deadline:
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        finished.set()
        await asyncio.gather(sampling, trickle)

    timeline = build_timeline(samples, done)
    peak = max(s["replicas"] for s in samples)
    first_up = next((s["t"] for s in samples if s["replicas"] >= 3), None)
    back_down = next((s["t"] for s in samples if s["t"] > load_end and s["replicas"] == 1), None)
    failures = [d for d in done if d[2] != 200]
    record = {
        "load": "32 closed-loop clients, 1 text per request, 45 s; plus 2 req/s throughout",
        "peak_replicas": peak,
        "seconds_to_3_replicas": first_up,
        "load_ended_at_s": round(load_end, 1),
        "seconds_from_load_end_to_1_replica": None if back_down is None else round(back_down - load_end, 1),
        "requests": len(done),
        "failed_requests": len(failures),
        "timeline": timeline,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "autoscaling_timeline.json").write_text(json.dumps(record, indent=1))
    plot(record, RESULTS / "autoscaling_timeline.png")
    assert peak >= 3, record["timeline"]
    assert back_down is not None, "did not scale back to 1 replica"
    assert not failures, failures[:5]


Done = list[tuple[float, float, int]]


def build_timeline(samples: list[dict[str, Any]], done: Done) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        second = [d for d in done if sample["t"] - 1 < d[0] <= sample["t"]]
        latencies = [d[1] for d in second]
        rows.append(
            {
                "t": round(sample["t"], 1),
                "replicas": sample["replicas"],
                "rps": len(second),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None,
            }
        )
    return rows


def plot(record: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = record["timeline"]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    axes[0].step(t, [r["replicas"] for r in rows], where="post")
    axes[0].set_ylabel("nlu replicas")
    axes[1].plot(t, [r["rps"] for r in rows])
    axes[1].set_ylabel("req/s")
    axes[2].plot(t, [r["p99_ms"] or 0 for r in rows])
    axes[2].set_ylabel("P99 ms")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        ax.axvline(record["load_ended_at_s"], color="grey", linestyle="--")
    fig.suptitle(f"xz_serve autoscaling: {record['failed_requests']} failed of {record['requests']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
