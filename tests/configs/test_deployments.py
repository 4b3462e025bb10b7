"""Every Serve config in deployments/ builds a valid XzSettings, and settings reject nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from xz_serve.settings import DeploymentSpec, XzSettings

CONFIGS = sorted((Path(__file__).parents[2] / "deployments").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_args_validate(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        assert app["import_path"] == "xz_serve.app:build_app"
        settings = XzSettings(**app.get("args", {}))
        assert settings.nlu.max_ongoing_requests >= settings.batch.max_batch_size


def test_batches_must_be_able_to_fill() -> None:
    with pytest.raises(ValidationError, match="batches never fill"):
        XzSettings(batch={"max_batch_size": 64}, nlu={"max_ongoing_requests": 8})


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        XzSettings(batch={"max_batch": 8})


def test_replica_bounds() -> None:
    with pytest.raises(ValidationError):
        DeploymentSpec(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError):
        DeploymentSpec(max_replicas=11)
    scaled = DeploymentSpec(min_replicas=1, max_replicas=10).serve_options()
    assert scaled["autoscaling_config"]["max_replicas"] == 10 and "num_replicas" not in scaled
    assert DeploymentSpec(min_replicas=2, max_replicas=2).serve_options()["num_replicas"] == 2


def test_env_fills_what_args_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XZ_BATCH__MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("XZ_API__MAX_TEXTS", "7")
    settings = XzSettings(api={"max_texts": 9})
    assert settings.batch.max_batch_size == 16
    assert settings.api.max_texts == 9  # YAML args win over env


def test_the_environment_picks_the_model_and_policy_of_a_local_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's path to serving your own intents: the same local.yaml, another artifacts dir and
    # policy from the environment. Args would win over env, so local.yaml must leave these out.
    local = next(p for p in CONFIGS if p.name == "local.yaml")
    args = yaml.safe_load(local.read_text())["applications"][0]["args"]
    monkeypatch.setenv("XZ_MODEL__ARTIFACTS_DIR", "artifacts/hwu64")
    monkeypatch.setenv("XZ_DIALOG__POLICY_PATH", "deployments/dialog/policy_hwu64.yaml")
    settings = XzSettings(**args)
    assert settings.model.artifacts_dir == Path("artifacts/hwu64")
    assert settings.dialog.policy_path.name == "policy_hwu64.yaml" and settings.dialog.policy_path.exists()
    # The rest of args still apply.
    assert settings.model.intra_op_threads == args["model"]["intra_op_threads"]


def test_model_replica_scaling_target_defaults_to_one_batch() -> None:
    from xz_serve.app import build_app  # noqa: F401 - the builder must import without Ray running

    settings = XzSettings(batch={"max_batch_size": 24}, nlu={"min_replicas": 1, "max_replicas": 10})
    options = settings.nlu.serve_options(default_target=settings.batch.max_batch_size)
    autoscaling = options["autoscaling_config"]
    assert autoscaling["target_ongoing_requests"] == 24
    assert autoscaling["downscale_delay_s"] > autoscaling["upscale_delay_s"]
    explicit = DeploymentSpec(min_replicas=1, max_replicas=3, target_ongoing_requests=5)
    assert explicit.serve_options(default_target=24)["autoscaling_config"]["target_ongoing_requests"] == 5
