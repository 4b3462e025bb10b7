"""Traces, metrics and alerts end to end on the real local cluster.

A split-topology app (ingress replica -> nlu replica through a DeploymentHandle) exports OTLP/HTTP
to a receiver in this process; this process starts each trace and sends ``traceparent``. A real
Prometheus scrapes Ray's metrics agent and evaluates deployments/monitoring/alerts.yml (only the
``for:`` durations shortened); a real Alertmanager delivers to a webhook receiver in this process.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.integration.conftest import deployed, local_args
from tests.integration.telemetry_receivers import (
    Daemon,
    OtlpReceiver,
    ReceivedSpan,
    WebhookReceiver,
    binary,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MONITORING = ROOT / "deployments" / "monitoring"
APP = "tel"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s}s")
        time.sleep(every_s)


class TrackedClient:
    """Posts to the app and counts answers by (route, status): what Prometheus must report."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.counts: Counter[tuple[str, str]] = Counter()
        self.model_calls = 0  # answered requests that needed the model (some text missed the cache)

    def post(self, route: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        response = httpx.post(f"{self.base_url}{route}", json=body, headers=headers, timeout=30)
        self.counts[(route, str(response.status_code))] += 1
        if response.status_code == 200:
            sent = len(body.get("texts") or [body.get("text")])
            self.model_calls += int(response.headers.get("x-cache-computed", sent)) > 0
        return response


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver  # type: ignore[misc]


@pytest.fixture(scope="module")
def app(serve_url: str, otlp: OtlpReceiver) -> Iterator[TrackedClient]:
    """The split app, its replicas configured only by standard OTEL_* variables of this process."""
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # flush within 0.2 s instead of 5 s
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    saved = {k: os.environ.get(k) for k in otel}
    os.environ.update(otel)
    args = copy.deepcopy(local_args())
    args["topology"] = "split"
    args["api"]["request_timeout_s"] = 3.0  # a request to a dead replica fails fast
    try:
        with deployed(serve_url, APP, args) as url:
            yield TrackedClient(url)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_tracer(otlp: OtlpReceiver) -> Any:
    """This test process as the first of the trace's processes: its own provider and exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": "xz-test-client", "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp.endpoint}/v1/traces")))
    return provider.get_tracer("tests.telemetry")


def trace_spans(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    return [s for s in otlp.spans() if s.trace_id == trace_id]


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[str]:
    names = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_one_request_is_one_trace_across_three_processes(app: TrackedClient, otlp: OtlpReceiver) -> None:
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind

    tracer = client_tracer(otlp)
    with tracer.start_as_current_span("xz.test.request", kind=SpanKind.CLIENT) as root:
        headers: dict[str, str] = {}
        inject(headers)
        response = app.post("/v1/analyze", {"text": f"what is my balance {uuid.uuid4().hex}"}, headers)
    assert response.status_code == 200
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert response.headers["x-trace-id"] == trace_id

    wanted = {
        "xz.test.request",
        "POST /v1/analyze",
        "xz.ingress.predict",
        "xz.replica.predict",
        "xz.replica.batch",
    }
    spans = wait_for(
        "complete trace",
        lambda: (found := trace_spans(otlp, trace_id)) and wanted <= {s.name for s in found} and found,
        timeout_s=20,
    )
    by_name = {s.name: s for s in spans}
    by_id = {s.span_id: s for s in spans}
    print("span tree:", {s.name: (s.resource.get("xz.component"), ancestors(s, by_id)) for s in spans})

    # One trace; every span but the client's root has its parent in the trace.
    roots = [s for s in spans if s.parent_id not in by_id]
    assert [s.name for s in roots] == ["xz.test.request"]
    server = by_name["POST /v1/analyze"]
    assert server.parent_id == by_name["xz.test.request"].span_id
    assert server.kind == 2  # SPAN_KIND_SERVER
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/analyze"
    assert server.attributes["http.response.status_code"] == 200
    assert "POST /v1/analyze" in ancestors(by_name["xz.ingress.predict"], by_id)
    replica = by_name["xz.replica.predict"]
    assert replica.parent_id == by_name["xz.ingress.predict"].span_id
    assert replica.attributes["xz.batch.size"] >= 1 and "xz.queue_wait_ms" in replica.attributes
    assert by_name["xz.replica.batch"].parent_id == replica.span_id

    # One server span (ours, named by route template; FastAPI's own is off).
    assert [s.name for s in spans if s.kind == 2 and s.resource.get("xz.component") == "ingress"] == [
        "POST /v1/analyze"
    ]
    # Three processes: the client, the ingress replica, the nlu replica.
    pids = {s.resource["process.pid"] for s in spans}
    assert len(pids) >= 3
    assert by_name["xz.test.request"].resource["process.pid"] == os.getpid()
    assert server.resource["xz.component"] == "ingress"
    assert replica.resource["xz.component"] == "nlu"
    assert server.resource["process.pid"] != replica.resource["process.pid"]


def test_a_batch_span_links_every_request_it_served(app: TrackedClient, otlp: OtlpReceiver) -> None:
    def burst() -> set[str]:
        bodies = [{"text": f"book a table for {i} {uuid.uuid4().hex}"} for i in range(24)]
        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(lambda b: app.post("/v1/analyze", b), bodies))
        failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
        assert not failed, failed
        return {r.headers["x-trace-id"] for r in responses}

    def merged_batch(traces: set[str]) -> ReceivedSpan | None:
        batches = [
            s
            for s in otlp.spans()
            if s.name == "xz.replica.batch" and len(s.links) >= 2 and s.trace_id in traces
        ]
        return max(batches, key=lambda s: len(s.links)) if batches else None

    traces: set[str] = set()
    batch = None
    for _ in range(3):  # batches form when calls arrive during a pass: almost always on the first burst
        traces.update(burst())
        try:
            batch = wait_for("merged batch span", lambda t=traces: merged_batch(t), timeout_s=10)
            break
        except TimeoutError:
            continue
    assert batch is not None, "24 concurrent requests never shared a batch"

    def call_spans() -> dict[tuple[str, str], ReceivedSpan]:
        return {(s.trace_id, s.span_id): s for s in otlp.spans() if s.name == "xz.replica.predict"}

    # A call span ends after its batch span, so it may reach the receiver in a later export: read
    # the received spans afresh on every poll (a snapshot taken once made this flaky in CI).
    linked = wait_for(
        "linked request spans", lambda: all(k in call_spans() for k in batch.links) and batch.links, 10
    )
    calls = call_spans()
    n = len(linked)
    assert n == batch.attributes["xz.batch.calls"]
    assert len({trace for trace, _ in linked}) == n, "each link is a different request's trace"
    assert {trace for trace, _ in linked} <= traces
    for key in linked:
        request_span = calls[key]
        assert request_span.attributes["xz.batch.calls"] == n
        assert request_span.attributes["xz.batch.size"] == batch.attributes["xz.batch.size"]
        assert request_span.attributes["xz.queue_wait_ms"] >= 0
    print(f"batch span links {n} request spans, {batch.attributes['xz.batch.size']} texts")


# --- Prometheus and Alertmanager -------------------------------------------------------------------


def rules_for_test(tmp: Path) -> Path:
    """alerts.yml with every `for:` shortened to 1 s: the same expressions, a test-sized wait."""
    text = re.sub(r"(?m)^(\s+for:) \S+$", r"\1 1s", (MONITORING / "alerts.yml").read_text())
    path = tmp / "alerts.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def monitoring(
    app: TrackedClient, ray_metrics_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, WebhookReceiver]]:
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager", "alertmanager")
    if prometheus is None or alertmanager is None:
        pytest.fail("prometheus / prometheus-alertmanager missing: scripts/setup.sh installs them")
    tmp = tmp_path_factory.mktemp("monitoring")
    with WebhookReceiver() as webhook:
        am_config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
        am_config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
        am_config["receivers"][0]["webhook_configs"][0]["url"] = webhook.url  # type: ignore[attr-defined]
        (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        am_port = free_port()
        am = Daemon(
            [
                alertmanager,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            am_port,
            "/-/ready",
            tmp / "alertmanager.log",
        )
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        # A scrape of Ray's agent returns about 10,000 samples: 1.1 s on 2 cores before the alert
        # test's fault, and past a 1 s timeout (the interval caps it) all through it, so `up` went to
        # 0 and the alert never saw a 5xx. Every 2 s still catches the gauges Ray's agent exports
        # only between refreshes (below); at 5 s the nlu deployment's went missing for 30 s.
        config["global"] = {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(rules_for_test(tmp))]
        config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
        config["scrape_configs"] = [
            {"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{ray_metrics_port}"]}]}
        ]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        try:
            prom = Daemon(
                [
                    prometheus,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                prom_port,
                "/-/ready",
                tmp / "prometheus.log",
            )
        except BaseException:
            am.stop()
            raise
        try:
            yield prom, webhook  # type: ignore[misc]
        finally:
            prom.stop()
            am.stop()


def eventually(prom: Daemon, query: str, expected: dict[str, float], timeout_s: float) -> dict[str, float]:
    """Poll ``query`` until it returns ``expected``; on timeout, fail showing what it returned."""
    deadline = time.monotonic() + timeout_s
    while (seen := promql(prom, query)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == expected, f"{query}: {seen} != {expected}"
    return seen


def promql(prom: Daemon, query: str) -> dict[str, float]:
    """Instant query; {label set as text: value}."""
    body = httpx.get(f"{prom.url}/api/v1/query", params={"query": query}, timeout=5).json()
    assert body["status"] == "success", body
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
        for r in body["data"]["result"]
    }


def test_prometheus_sees_the_xz_series_with_the_right_counts(
    app: TrackedClient, otlp: OtlpReceiver, monitoring: tuple[Daemon, WebhookReceiver]
) -> None:
    prom, _ = monitoring
    for i in range(5):
        assert (
            app.post("/v1/analyze", {"texts": [f"hello {i} {uuid.uuid4().hex}", "and one more"]}).status_code
            == 200
        )
    bad = app.post("/v1/analyze", {"texts": []})
    assert bad.status_code == 400
    code = bad.json()["error"]["code"]

    expected = {
        f"route={route},status={status}": float(n)
        for (route, status), n in app.counts.items()
        if route == "/v1/analyze"
    }
    requests = (
        f'sum by (route, status) (ray_xz_http_requests_total{{application="{APP}",route="/v1/analyze"}})'
    )
    seen = eventually(prom, requests, expected, 40)
    print("PromQL", requests, "->", seen)

    latency = f'sum(ray_xz_http_request_duration_ms_count{{application="{APP}",route="/v1/analyze"}})'
    assert promql(prom, latency) == {"": sum(expected.values())}
    errors = f'sum by (code) (ray_xz_http_errors_total{{application="{APP}",route="/v1/analyze"}})'
    assert promql(prom, errors) == {f"code={code}": float(app.counts[("/v1/analyze", "400")])}

    # Each request that needed the model made one predict call (one chunk); each batch is one
    # observation of the batch-size and inference histograms and one exported batch span.
    ok_calls = f'sum(ray_xz_replica_calls_total{{application="{APP}",outcome="ok"}})'
    eventually(prom, ok_calls, {"": float(app.model_calls)}, 20)

    def batch_spans() -> int:
        return len([s for s in otlp.spans() if s.name == "xz.replica.batch"])

    # Spans and metrics arrive on their own schedules: compare the two live counts until they agree.
    for histogram in ("ray_xz_replica_batch_size_texts_count", "ray_xz_replica_inference_duration_ms_count"):
        query = f'sum({histogram}{{application="{APP}"}})'
        agreed = wait_for(
            f"{histogram} equal to the exported batch spans",
            lambda q=query: (n := batch_spans()) > 0 and promql(prom, q) == {"": float(n)} and n,
            timeout_s=30,
        )
        print(f"{histogram}: {agreed} observations = {agreed} batch spans")
    # The queue depth gauge is exported (Ray sends a gauge when it was set since the last report,
    # so look back a minute); its last value is 0: nothing is in flight between our requests.
    depth = f'last_over_time(sum(ray_xz_replica_queue_depth_calls{{application="{APP}"}})[1m:1s])'

    def depth_series() -> dict[str, float]:
        # Keep the gauge fresh: Ray only reports a gauge that was set since its last report.
        app.post("/v1/analyze", {"text": f"depth {uuid.uuid4().hex}"})
        return promql(prom, depth)

    assert wait_for("queue depth series", depth_series, 40, every_s=1.0) == {"": 0.0}

    # Serve's own series, through the same agent: one healthy replica per deployment. Ray's agent
    # drops a gauge series between refreshes of its emitter, so an instant query can catch one
    # deployment's series in a gap (seen in CI); the alert rules look back a minute, and so does this.
    gauge = f'ray_serve_deployment_replica_healthy{{application="{APP}"}}'
    healthy = f"sum by (deployment) (max_over_time({gauge}[1m]))"
    eventually(prom, healthy, {"deployment=ingress": 1.0, "deployment=nlu": 1.0}, 30)


def alert_trail(prom: Daemon, webhook: WebhookReceiver, app: TrackedClient) -> str:
    """Where an alert that never reached the webhook stopped: the answers the client saw, what
    Prometheus holds of the alert's inputs, its own alert state, and what the webhook received."""
    status = 'status=~"5.."'
    queries = {
        "scrape targets up": "up",
        "5xx counted": f'sum(ray_xz_http_requests_total{{application="{APP}",{status}}})',
        "all counted": f'sum(ray_xz_http_requests_total{{application="{APP}"}})',
        "5xx rate": f'sum(rate(ray_xz_http_requests_total{{application="{APP}",{status}}}[5m]))',
        "all rate": f'sum(rate(ray_xz_http_requests_total{{application="{APP}"}}[5m]))',
        "alert state": 'ALERTS{alertname="XzHighErrorRate"}',
    }
    seen = {name: promql(prom, query) for name, query in queries.items()}
    return f"answers: {dict(app.counts)}; prometheus: {seen}; webhook: {webhook.alerts()}"


def test_a_failing_model_replica_fires_an_alert_delivered_by_alertmanager(
    app: TrackedClient, monitoring: tuple[Daemon, WebhookReceiver]
) -> None:
    import ray

    prom, webhook = monitoring
    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in a["name"] and f"{APP}#nlu" in a["name"]
    ]
    assert replicas, "the nlu replica's actor was not found"

    def kill_model_replicas() -> None:
        # The induced fault: the model replica dies, and so does each replacement Serve starts,
        # so the outage lasts until the alert fires (a fast replacement could end it first).
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if "SERVE_REPLICA" in actor["name"] and f"{APP}#nlu" in actor["name"]:
                with contextlib.suppress(ValueError):
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)

    def fired() -> list[dict[str, Any]]:
        kill_model_replicas()
        app.post(
            "/v1/analyze", {"text": f"are you there {uuid.uuid4().hex}"}, {"x-request-timeout-ms": "2000"}
        )
        return [
            a
            for a in webhook.alerts()
            if a["status"] == "firing"
            and a["labels"].get("alertname") == "XzHighErrorRate"
            and a["labels"].get("application") == APP
        ]

    try:
        # One probe a second: killing five times a second kept the node busy starting replicas.
        alerts = wait_for("XzHighErrorRate at the webhook", fired, timeout_s=120, every_s=1.0)
    except TimeoutError as exc:
        raise AssertionError(alert_trail(prom, webhook, app)) from exc
    print("alert delivered:", alerts[0]["labels"], alerts[0]["annotations"])
    failures = sum(n for (route, status), n in app.counts.items() if status.startswith("5"))
    assert failures >= 1
    assert alerts[0]["annotations"]["summary"].endswith(f"of requests to {APP} fail with 5xx")
