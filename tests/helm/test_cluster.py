"""cluster/: the plain RayCluster manifest validates against the KubeRay CRD, the `ray up` config passes
Ray's own config checks, and both carry deployments/ray.env; the Dockerfile builds the models in."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.helm.chart import ROOT, env_of, ray_env
from tests.helm.kube_schema import errors

CLUSTER = ROOT / "cluster"


def test_raycluster_validates_against_the_crd() -> None:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "raycluster.yaml").read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", "RayCluster")]
    assert errors(docs[0]) == []


def test_raycluster_shape() -> None:
    spec = yaml.safe_load((CLUSTER / "raycluster.yaml").read_text())["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (worker,) = spec["workerGroupSpecs"]
    assert (worker["minReplicas"], worker["maxReplicas"]) == (1, 10)
    containers: list[dict[str, Any]] = [spec["autoscalerOptions"]]
    containers += spec["headGroupSpec"]["template"]["spec"]["containers"]
    containers += worker["template"]["spec"]["containers"]
    for container in containers:
        env = env_of(container)
        assert {key: env.get(key) for key in ray_env()} == ray_env()


def test_ray_up_config_passes_rays_checks() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    assert config["provider"]["type"] == "local"
    validate_config(prepare_config(copy.deepcopy(config)))
    # Ray's flags come from the image's copy of deployments/ray.env, on every node.
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert ". /app/deployments/ray.env" in command and "ray start" in command
    assert "--num-cpus=0" in config["head_start_ray_commands"][1]


def test_dockerfile_builds_models_into_the_image() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "COPY --from=data . /app/data" in dockerfile  # docker build --build-context data=../shared/data
    assert "RUN xz-build --artifacts-dir /app/artifacts --data-dir /app/data" in dockerfile
    # deployments/prod.yaml reads the models from where the image puts them.
    (app,) = yaml.safe_load((ROOT / "deployments" / "prod.yaml").read_text())["applications"]
    assert app["args"]["model"]["artifacts_dir"] == "/app/artifacts"
    assert app["args"]["model"]["build_if_missing"] is False
