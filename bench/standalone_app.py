"""The app a fused replica serves, on plain uvicorn in one process: no Ray, no Serve, no HAProxy.

Why: at c=1 a request through the service takes about twice the bare model's batch-1 time. Timing
the same app (the same ``create_app``, batcher, model and middleware) with nothing of Ray around it,
beside the service itself, splits that gap into what our code costs and what the hops around it
cost: HAProxy, then Serve's per-request wrapper in the replica (its direct-ingress HTTP server
listens on 127.0.0.1:30000 and up, so it can be called without HAProxy). Auth and the cache are
off, as in ``bench/run.py``.

    python bench/standalone_app.py --port 8100 &
    wrk -t1 -c1 -d6s --latency -s bench/wrk_post.lua http://127.0.0.1:8100/v1/analyze
"""

from __future__ import annotations

import argparse

import ray.serve.batching
import uvicorn

from xz_serve.http.app import create_app
from xz_serve.nlu.local import LocalNluClient
from xz_serve.nlu.replica import NluReplica
from xz_serve.settings import XzSettings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (local.yaml: 1)")
    args = parser.parse_args()
    # @serve.batch asks Serve for the replica's max_ongoing_requests to warn about a batch larger
    # than it; outside a replica there is none to ask, and nothing to warn about.
    ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None  # type: ignore[method-assign]
    settings = XzSettings.model_validate(
        {
            "access": {"auth_enabled": False},
            "cache": {"enabled": False},
            "model": {"intra_op_threads": args.threads, "build_if_missing": False},
        }
    )
    replica = NluReplica(settings.model, settings.batch, settings.api.top_k)
    app = create_app(LocalNluClient(replica, settings.batch.max_batch_size), settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")  # fmt: skip


if __name__ == "__main__":
    main()
