"""helm/xz-serve renders with Helm's own engine, every object validates against its schema (the KubeRay
CRDs, Kubernetes' OpenAPI), and what it deploys is deployments/prod.yaml with deployments/ray.env."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import CHART, RAY_ENV, ROOT, env_of, one, ray_env, render, user_values
from tests.helm.kube_schema import errors
from xz_serve.settings import XzSettings

PROD = ROOT / "deployments" / "prod.yaml"
CI_VALUES = CHART / "ci" / "ci-values.yaml"

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    # ci-values plus --set and --set-file overrides, as `helm template -f ... --set ... --set-file ...`
    "ci": {
        "values_files": [CI_VALUES],
        "sets": ["worker.maxReplicas=8,rayService.rayClusterDeletionDelaySeconds=30", "image.tag=2026.11.1"],
        "set_files": [f"serveConfigV2={PROD}"],
    },
    "external-redis-secret": {
        "values_files": [CI_VALUES],
        "sets": [
            "redis.enabled=false,redis.external.existingSecret=shared-redis,redis.external.existingSecretKey=url"
        ],
    },
    "external-redis-url": {
        "sets": [
            "redis.enabled=false,redis.external.url=rediss://redis.example.com:6380/2,metrics.haproxy=false"
        ],
    },
    "external-gcs-redis": {
        "sets": [
            "gcsFaultTolerance.redis.enabled=false,gcsFaultTolerance.redis.address=gcs.example.com:6379",
            "gcsFaultTolerance.redis.auth.existingSecret=gcs-redis,gcsFaultTolerance.redis.auth.existingSecretKey=pw",
            "gcsFaultTolerance.externalStorageNamespace=xz-prod,worker.podDisruptionBudget.enabled=false",
            "worker.topologySpread.enabled=false",
        ],
    },
}
MULTINODE = ROOT / "bench" / "results" / "multinode_timeline.json"


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = user_values(**SCENARIOS[request.param])
    return request.param, values, render(values)


@pytest.fixture(scope="module")
def defaults() -> list[dict[str, Any]]:
    return render({})


@pytest.fixture(scope="module")
def ci() -> list[dict[str, Any]]:
    return render(user_values(**SCENARIOS["ci"]))


def ray_pods(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    (worker,) = cluster["workerGroupSpecs"]
    return {"head": cluster["headGroupSpec"]["template"], "worker": worker["template"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- the chart itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, CI_VALUES], ids=["defaults", "ci-values"])
def test_chart_lints_clean(values_file: Path | None) -> None:
    values = helm.values_from_yaml(values_file.read_text()) if values_file else None
    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_chart_ships_prod_config_and_ray_flags_verbatim() -> None:
    # Sync with: cp deployments/prod.yaml helm/xz-serve/files/serve-config.yaml (and ray.env likewise)
    assert (CHART / "files" / "serve-config.yaml").read_text() == PROD.read_text()
    assert (CHART / "files" / "ray.env").read_text() == RAY_ENV.read_text()


def documented_values() -> list[str]:
    """Dotted keys of values.yaml that carry a helm-docs ``# --`` comment."""
    keys: list[str] = []
    stack: list[tuple[int, str]] = []
    documented = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented = True
        elif stripped and not stripped.startswith("#") and ":" in stripped:
            indent = len(line) - len(line.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, stripped.split(":", 1)[0]))
            if documented:
                keys.append(".".join(key for _, key in stack))
            documented = False
    return keys


def test_every_value_is_documented_in_the_readme() -> None:
    keys = documented_values()
    readme = (CHART / "README.md").read_text()
    assert "image.repository" in keys and "redis.external.existingSecretKey" in keys
    assert [key for key in keys if f"| {key} |" not in readme] == []


def test_every_rendered_object_validates(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objects = scenario
    assert objects
    problems = {f"{o['kind']}/{o['metadata']['name']}": errors(o) for o in objects}
    assert {name: found for name, found in problems.items() if found} == {}


def test_default_objects(defaults: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in defaults)
    assert kinds == [
        ("Deployment", "xz-xz-serve-cache"),
        ("PodDisruptionBudget", "xz-xz-serve-worker"),
        ("RayService", "xz-xz-serve"),
        ("Secret", "xz-xz-serve-gcs"),
        ("Secret", "xz-xz-serve-redis"),
        ("Service", "xz-xz-serve-cache"),
        ("Service", "xz-xz-serve-dashboard"),
        ("Service", "xz-xz-serve-gcs"),
        ("Service", "xz-xz-serve-redis"),
        ("StatefulSet", "xz-xz-serve-gcs"),
        ("StatefulSet", "xz-xz-serve-redis"),
    ]


# --- the RayService ---------------------------------------------------------------------------------


def test_serve_config_is_prod_yaml(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objects = scenario
    embedded = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load(PROD.read_text())
    for app in embedded["applications"]:
        assert app["import_path"] == "xz_serve.app:build_app"
        XzSettings(**app["args"])


def test_prod_yaml_is_a_valid_serve_config() -> None:
    with warnings.catch_warnings():  # Ray's own pydantic deprecation warnings, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(PROD.read_text())
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "0.0.0.0"
    (app,) = config["applications"]
    settings = XzSettings(**app["args"])
    assert (settings.nlu.min_replicas, settings.nlu.max_replicas) == (1, 10)
    assert (settings.ingress.min_replicas, settings.ingress.max_replicas) == (1, 4)
    assert "autoscaling_config" in settings.nlu.serve_options()
    assert "autoscaling_config" in settings.ingress.serve_options()


def test_ray_cluster_shape(defaults: list[dict[str, Any]]) -> None:
    spec = one(defaults, "RayService")["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray")
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (worker,) = cluster["workerGroupSpecs"]
    assert (worker["minReplicas"], worker["replicas"], worker["maxReplicas"]) == (1, 1, 10)
    for template in ray_pods(one(defaults, "RayService")).values():
        (container,) = template["spec"]["containers"]
        assert container["image"] == "xz-serve:0.1.0"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        # A chart bump alone must not change the cluster spec (KubeRay would roll out a new cluster).
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(template["metadata"]["labels"])


def test_values_reach_the_rayservice(ci: list[dict[str, Any]]) -> None:
    spec = one(ci, "RayService")["spec"]
    assert spec["rayClusterDeletionDelaySeconds"] == 30
    (worker,) = spec["rayClusterConfig"]["workerGroupSpecs"]
    assert (worker["minReplicas"], worker["replicas"], worker["maxReplicas"]) == (2, 2, 8)
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "8Gi"}
    assert worker["rayStartParams"]["num-cpus"] == "3"  # worker.sizing.replicasPerPod x 1 CPU
    assert spec["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    for template in ray_pods(one(ci, "RayService")).values():
        (container,) = template["spec"]["containers"]
        assert container["image"] == "registry.example.com/xiaozhua/xz-serve:2026.11.1"
        assert container["imagePullPolicy"] == "Always"
        assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
        assert container["envFrom"] == [{"secretRef": {"name": "xz-extra-secrets"}}]
    assert spec["serveService"]["spec"]["type"] == "LoadBalancer"


def test_ray_flags_on_every_ray_container(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    rayservice = one(objects, "RayService")
    expected = ray_env() | {k: str(v) for k, v in values.get("rayEnv", {}).items()}
    containers = [c for t in ray_pods(rayservice).values() for c in t["spec"]["containers"]]
    containers.append(rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"])
    assert expected["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for container in containers:
        env = env_of(container)
        assert {key: env.get(key) for key in expected} == expected


def test_app_env_redis_url_from_secret_and_otlp(ci: list[dict[str, Any]]) -> None:
    secret = one(ci, "Secret", "-redis")
    for template in ray_pods(one(ci, "RayService")).values():
        env = env_of(template["spec"]["containers"][0])
        assert env["XZ_STORE__REDIS_URL"] == {
            "secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-url"}
        }
        assert env["XZ_CACHE__REDIS_URL"] == "redis://xz-xz-serve-cache.prod.svc:6379/0"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {
            "secretKeyRef": {"name": "otlp-credentials", "key": "otlp-headers"}
        }
        assert env["XZ_MODEL__INTRA_OP_THREADS"] == "1" and env["XZ_API__TOP_K"] == "5"
    url = urlparse(secret["stringData"]["redis-url"])
    assert url.scheme == "redis" and url.port == 6379
    assert url.hostname == "xz-xz-serve-redis.prod.svc"
    assert url.password == quote("s3cret/with:chars", safe="")
    assert secret["stringData"]["redis-password"] == "s3cret/with:chars"


def test_no_otlp_env_unless_configured(defaults: list[dict[str, Any]]) -> None:
    for template in ray_pods(one(defaults, "RayService")).values():
        env = env_of(template["spec"]["containers"][0])
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env and "OTEL_EXPORTER_OTLP_HEADERS" not in env


# --- Redis ------------------------------------------------------------------------------------------


def test_redis_statefulset_persists_with_aof(
    defaults: list[dict[str, Any]], ci: list[dict[str, Any]]
) -> None:
    for objects in (defaults, ci):
        sts = one(objects, "StatefulSet", "-redis")
        service = one(objects, "Service", "-redis")
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--dir") + 1] == "/data"
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # a store never drops keys
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert container["volumeMounts"] == [{"name": claim["metadata"]["name"], "mountPath": "/data"}]
        assert sts["spec"]["serviceName"] == service["metadata"]["name"]
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels)
        assert selects(service["spec"]["selector"], pod_labels)
    assert one(defaults, "StatefulSet", "-redis")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {
        "requests": {"storage": "2Gi"}
    }
    ci_sts = one(ci, "StatefulSet", "-redis")
    assert ci_sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    args = ci_sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert (
        "--requirepass"
        not in one(defaults, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    )


@pytest.mark.parametrize("name", ["external-redis-secret", "external-redis-url"])
def test_external_redis(name: str) -> None:
    objects = render(user_values(**SCENARIOS[name]))
    store_objects = [o for o in objects if o["metadata"]["name"].endswith("-redis")]
    assert not [o for o in store_objects if o["kind"] in ("StatefulSet", "Service")]
    env = env_of(ray_pods(one(objects, "RayService"))["worker"]["spec"]["containers"][0])
    if name == "external-redis-secret":
        assert env["XZ_STORE__REDIS_URL"] == {"secretKeyRef": {"name": "shared-redis", "key": "url"}}
        assert not [o for o in store_objects if o["kind"] == "Secret"]
    else:
        secret = one(objects, "Secret", "-redis")
        assert secret["stringData"] == {"redis-url": "rediss://redis.example.com:6380/2"}
        assert env["XZ_STORE__REDIS_URL"] == {
            "secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-url"}
        }


def test_cache_redis_evicts_and_keeps_nothing(
    defaults: list[dict[str, Any]], ci: list[dict[str, Any]]
) -> None:
    for objects, maxmemory in ((defaults, "256mb"), (ci, "1gb")):
        deployment = one(objects, "Deployment", "-cache")
        service = one(objects, "Service", "-cache")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--maxmemory") + 1] == maxmemory
        assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
        assert args[args.index("--appendonly") + 1] == "no"
        assert "volumes" not in deployment["spec"]["template"]["spec"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(service["spec"]["selector"], pod_labels)
        assert not selects(
            service["spec"]["selector"],
            one(objects, "StatefulSet", "-redis")["spec"]["template"]["metadata"]["labels"],
        )


def test_cache_redis_external_or_none() -> None:
    external = render(
        user_values(sets=["cacheRedis.enabled=false,cacheRedis.external.url=redis://c.example:6379/1"])
    )
    assert not [o for o in external if o["kind"] == "Deployment"]
    env = env_of(ray_pods(one(external, "RayService"))["worker"]["spec"]["containers"][0])
    assert env["XZ_CACHE__REDIS_URL"] == "redis://c.example:6379/1"
    none = render(user_values(sets=["cacheRedis.enabled=false"]))
    env = env_of(ray_pods(one(none, "RayService"))["worker"]["spec"]["containers"][0])
    assert "XZ_CACHE__REDIS_URL" not in env and "XZ_STORE__REDIS_URL" in env


# --- worker pods: the autoscaler, sizing, spread, disruptions -----------------------------------------


def _worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (worker,) = one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return worker


def test_autoscaler_scales_worker_pods(defaults: list[dict[str, Any]]) -> None:
    cluster = one(defaults, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    worker = _worker(defaults)
    # Serve's nlu autoscaling (1..10 replicas in prod.yaml) fits in the group at its largest.
    nlu = XzSettings(**yaml.safe_load(PROD.read_text())["applications"][0]["args"]).nlu
    per_pod = float(worker["rayStartParams"]["num-cpus"]) / nlu.num_cpus
    assert worker["maxReplicas"] * per_pod >= nlu.max_replicas
    fixed = one(render(user_values(sets=["autoscaler.enabled=false"])), "RayService")["spec"]
    assert fixed["rayClusterConfig"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in fixed["rayClusterConfig"]


def test_workers_are_sized_from_the_replicas(defaults: list[dict[str, Any]]) -> None:
    """num-cpus is what the pod's replicas reserve; requests = limits add Ray's own processes, and the
    memory per replica covers the RSS measured for a fused replica (bench/results/multinode.md)."""
    worker = _worker(defaults)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]["sizing"]
    nlu = XzSettings(**yaml.safe_load(PROD.read_text())["applications"][0]["args"]).nlu
    assert worker["rayStartParams"]["num-cpus"] == str(int(values["replicasPerPod"] * nlu.num_cpus))
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    cpu_m = int(values["replicasPerPod"] * nlu.num_cpus * 1000) + values["overheadMilliCpu"]
    memory_mi = values["replicasPerPod"] * values["replicaMemoryMi"] + values["overheadMemoryMi"]
    assert resources["requests"] == resources["limits"] == {"cpu": f"{cpu_m}m", "memory": f"{memory_mi}Mi"}
    measured = json.loads(MULTINODE.read_text())["memory"]
    assert values["replicaMemoryMi"] >= 1.25 * measured["replica_rss_mib_max"], measured
    # Ray's processes on a worker, and the proxy that proxy_location: EveryNode puts on every pod.
    pod_overhead = measured["worker_node_overhead_rss_mib_max"] + measured["head_proxy_rss_mib_max"]
    assert values["overheadMemoryMi"] >= 1.25 * pod_overhead, measured


def test_worker_sizing_follows_the_serve_config(tmp_path: Path) -> None:
    config = yaml.safe_load(PROD.read_text())
    config["applications"][0]["args"]["nlu"]["num_cpus"] = 0.5
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    sets = ["worker.sizing.replicasPerPod=4,worker.sizing.replicaMemoryMi=600",
            "worker.sizing.overheadMemoryMi=900"]  # fmt: skip
    worker = _worker(render(user_values(sets=sets, set_files=[f"serveConfigV2={path}"])))
    assert worker["rayStartParams"]["num-cpus"] == "2"
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2500m", "memory": "3300Mi"}
    with pytest.raises(helm.HelmError, match="must be whole CPUs"):
        render(user_values(sets=["worker.sizing.replicasPerPod=3"], set_files=[f"serveConfigV2={path}"]))
    explicit = _worker(render(user_values(sets=["worker.rayStartParams.num-cpus=1"])))
    assert explicit["rayStartParams"]["num-cpus"] == "1"


def test_worker_pods_spread_across_zones_and_nodes(
    defaults: list[dict[str, Any]], ci: list[dict[str, Any]]
) -> None:
    for objects, zones in ((defaults, "ScheduleAnyway"), (ci, "DoNotSchedule")):
        pods = ray_pods(one(objects, "RayService"))
        constraints = {c["topologyKey"]: c for c in pods["worker"]["spec"]["topologySpreadConstraints"]}
        assert set(constraints) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == zones
        assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "ScheduleAnyway"
        for constraint in constraints.values():
            assert constraint["maxSkew"] == 1
            selector = constraint["labelSelector"]["matchLabels"]
            assert selects(selector, pods["worker"]["metadata"]["labels"])
            assert not selects(selector, pods["head"]["metadata"]["labels"])
        assert "topologySpreadConstraints" not in pods["head"]["spec"]
    external = ray_pods(one(render(user_values(**SCENARIOS["external-gcs-redis"])), "RayService"))
    assert "topologySpreadConstraints" not in external["worker"]["spec"]


def test_worker_disruption_budget(defaults: list[dict[str, Any]], ci: list[dict[str, Any]]) -> None:
    for objects, budget in ((defaults, {"maxUnavailable": 1}), (ci, {"minAvailable": 1})):
        pdb = one(objects, "PodDisruptionBudget")
        assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == budget
        pods = ray_pods(one(objects, "RayService"))
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selects(selector, pods["worker"]["metadata"]["labels"])
        assert not selects(selector, pods["head"]["metadata"]["labels"])
        for sts in (o for o in objects if o["kind"] == "StatefulSet"):
            assert not selects(selector, sts["spec"]["template"]["metadata"]["labels"])
    external = render(user_values(**SCENARIOS["external-gcs-redis"]))
    assert not [o for o in external if o["kind"] == "PodDisruptionBudget"]


# --- GCS fault tolerance ----------------------------------------------------------------------------


def test_gcs_fault_tolerance_uses_its_own_redis_with_a_secret_password(
    defaults: list[dict[str, Any]], ci: list[dict[str, Any]]
) -> None:
    for objects in (defaults, ci):
        cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
        options = cluster["gcsFaultToleranceOptions"]
        secret = one(objects, "Secret", "-gcs")
        sts = one(objects, "StatefulSet", "-gcs")
        service = one(objects, "Service", "-gcs")
        assert options["redisAddress"] == f"{service['metadata']['name']}.prod.svc:6379"
        assert options["redisPassword"] == {
            "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "password"}}
        }
        assert "externalStorageNamespace" not in options  # KubeRay: the RayCluster's UID, one per cluster
        assert "redis-password" not in cluster["headGroupSpec"]["rayStartParams"]
        # Durable and password-protected, from the same Secret.
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        assert env_of(container)["REDIS_PASSWORD"] == options["redisPassword"]["valueFrom"]
        # Not the cache, not the store: its own pods, Service and address.
        gcs_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert selects(service["spec"]["selector"], gcs_labels)
        for other in (one(objects, "StatefulSet", "-redis"), one(objects, "Deployment", "-cache")):
            assert not selects(service["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"])
        for other in (one(objects, "Service", "-redis"), one(objects, "Service", "-cache")):
            assert not selects(other["spec"]["selector"], gcs_labels)
        app_env = env_of(ray_pods(one(objects, "RayService"))["worker"]["spec"]["containers"][0])
        assert options["redisAddress"].split(":")[0] not in str(app_env)
    assert len(one(defaults, "Secret", "-gcs")["stringData"]["password"]) == 32  # generated at install
    assert one(ci, "Secret", "-gcs")["stringData"]["password"] == "gcs/pass:word"
    claim = one(ci, "StatefulSet", "-gcs")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd" and claim["resources"]["requests"]["storage"] == "1Gi"


def test_gcs_fault_tolerance_with_an_external_redis_or_off() -> None:
    objects = render(user_values(**SCENARIOS["external-gcs-redis"]))
    assert not [o for o in objects if o["metadata"]["name"].endswith("-gcs")]
    options = one(objects, "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options == {
        "redisAddress": "gcs.example.com:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "gcs-redis", "key": "pw"}}},
        "externalStorageNamespace": "xz-prod",
    }
    sets = "gcsFaultTolerance.redis.enabled=false,gcsFaultTolerance.redis.address=gcs.example.com:6379"
    with_password = render(user_values(sets=[f"{sets},gcsFaultTolerance.redis.auth.password=pw"]))
    assert [o["kind"] for o in with_password if o["metadata"]["name"].endswith("-gcs")] == ["Secret"]
    no_password = one(render(user_values(sets=[sets])), "RayService")["spec"]["rayClusterConfig"]
    assert no_password["gcsFaultToleranceOptions"] == {"redisAddress": "gcs.example.com:6379"}
    off = render(user_values(sets=["gcsFaultTolerance.enabled=false"]))
    assert "gcsFaultToleranceOptions" not in one(off, "RayService")["spec"]["rayClusterConfig"]
    assert not [o for o in off if o["metadata"]["name"].endswith("-gcs")]


# --- Services and metrics ---------------------------------------------------------------------------


def test_services(defaults: list[dict[str, Any]]) -> None:
    rayservice = one(defaults, "RayService")
    pods = ray_pods(rayservice)
    serve_svc = rayservice["spec"]["serveService"]
    assert serve_svc["metadata"]["name"] == "xz-xz-serve-serve"
    assert serve_svc["spec"]["ports"] == [
        {"name": "serve", "port": 8000, "targetPort": 8000, "protocol": "TCP"}
    ]
    for template in pods.values():
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == 8000 and ports["metrics"] == 8080
    dashboard = one(defaults, "Service", "-dashboard")
    assert selects(dashboard["spec"]["selector"], pods["head"]["metadata"]["labels"])
    assert not selects(dashboard["spec"]["selector"], pods["worker"]["metadata"]["labels"])
    head_ports = {p["name"]: p["containerPort"] for p in pods["head"]["spec"]["containers"][0]["ports"]}
    assert dashboard["spec"]["ports"][0]["targetPort"] == "dashboard" and head_ports["dashboard"] == 8265


def test_serve_port_follows_the_serve_config(tmp_path: Path) -> None:
    config = yaml.safe_load(PROD.read_text())
    config["http_options"]["port"] = 9000
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    rayservice = one(render(user_values(set_files=[f"serveConfigV2={path}"])), "RayService")
    assert rayservice["spec"]["serveService"]["spec"]["ports"][0]["targetPort"] == 9000
    for template in ray_pods(rayservice).values():
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == 9000


def test_prometheus_scraping(defaults: list[dict[str, Any]], ci: list[dict[str, Any]]) -> None:
    assert not [o for o in defaults if o["kind"] == "PodMonitor"]
    for objects in (defaults, ci):
        for template in ray_pods(one(objects, "RayService")).values():
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert annotations["prometheus.io/port"] == "8080"
    head = ray_pods(one(ci, "RayService"))["head"]
    assert head["metadata"]["annotations"]["example.com/owner"] == "xiaozhua"
    cluster = one(ci, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    assert cluster["workerGroupSpecs"][0]["rayStartParams"]["metrics-export-port"] == "8080"

    monitor = one(ci, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]
    (expression,) = selector["matchExpressions"]
    for template in ray_pods(one(ci, "RayService")).values():
        labels = template["metadata"]["labels"]
        assert selects(selector["matchLabels"], labels) and labels[expression["key"]] in expression["values"]
        port_names = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    redis_labels = one(ci, "StatefulSet", "-redis")["spec"]["template"]["metadata"]["labels"]
    assert redis_labels[expression["key"]] not in expression["values"]


# --- values the chart refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ("worker.minReplicas=5,worker.maxReplicas=2,worker.replicas=2", "minReplicas must not exceed"),
        ("worker.replicas=11", "worker.replicas must lie within"),
        ("rayService.upgradeStrategy.type=Recreate", "upgradeStrategy.type must be"),
        ("redis.enabled=false", "set redis.external.url or redis.external.existingSecret"),
        ("gcsFaultTolerance.redis.enabled=false", "set gcsFaultTolerance.redis.address"),
        ("head.rayStartParams.redis-password=x", "KubeRay refuses both"),
        ("worker.podDisruptionBudget.minAvailable=1", "set only one of maxUnavailable and minAvailable"),
        ("worker.podDisruptionBudget.maxUnavailable=", "set maxUnavailable or minAvailable"),
        ("worker.sizing.replicasPerPod=0", "replicasPerPod must be at least 1"),
    ],
)
def test_bad_values_fail_to_render(sets: str, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(user_values(sets=[sets]))


def test_long_release_names_stay_valid() -> None:
    name = "a-very-long-release-name-for-the-xiaozhua-serving-cluster"
    objects = render({}, name=name)
    for obj in objects:
        assert errors(obj) == []
    # KubeRay derives <name>-<5 chars> cluster names and <name>-head-svc / -serve-svc from it.
    assert len(one(objects, "RayService")["metadata"]["name"]) <= 40


# --- the validation catches what the API server would refuse ----------------------------------------


def _head(o: dict[str, Any]) -> dict[str, Any]:
    return o["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["spec"].update(upgradeStrategyy={}), "'upgradeStrategyy' was unexpected"),
        (lambda o: _head(o).update(imagee="x"), "'imagee' was unexpected"),
        (
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas="1"),
            "not of type",
        ),
        (lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas=2**40), "int32"),
        (
            lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
                {"num-cpus": 0}
            ),
            "type",
        ),
        (lambda o: _head(o)["ports"].append({"name": "again", "containerPort": 8000}), "duplicate entry"),
        (lambda o: _head(o)["resources"]["limits"].update(cpu="2 cores"), "does not match"),
        (lambda o: o["metadata"]["labels"].update(team="Xiao Zhua"), "bad value"),
    ],
)
def test_validation_catches_mistakes(defaults: list[dict[str, Any]], mutate: Any, message: str) -> None:
    rayservice = copy.deepcopy(one(defaults, "RayService"))
    mutate(rayservice)
    assert any(message in problem for problem in errors(rayservice)), errors(rayservice)


def test_validation_of_core_objects_is_strict(defaults: list[dict[str, Any]]) -> None:
    service = copy.deepcopy(one(defaults, "Service", "-redis"))
    service["spec"]["portz"] = []
    assert any("'portz' was unexpected" in problem for problem in errors(service))
