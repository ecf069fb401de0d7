"""``deploy/ray-cluster-aws.yaml`` against Ray's own cluster-config schema (shipped inside the ray package)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "ray-cluster-aws.yaml"


def _schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_validates_against_rays_schema_and_rays_own_checker() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load()
    jsonschema.validate(config, _schema())
    validate_config(prepare_config(copy.deepcopy(config)))  # Ray's checks after filling its defaults


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(max_worker=4),  # misspelt top-level key
        lambda c: c["docker"].update(worker_imag="x"),  # misspelt nested key
        lambda c: c["available_node_types"]["gpu_spot"].update(min_worker=0),
        lambda c: c["auth"].update(ssh_usr="ubuntu"),
    ],
)
def test_a_misspelt_field_fails(mutate) -> None:
    config = _load()
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _schema())


def test_spot_gpu_workers_with_the_same_images_as_kuberay() -> None:
    config = _load()
    workers = config["available_node_types"]["gpu_spot"]
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert workers["resources"]["GPU"] >= 1 and workers["min_workers"] == 0
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and "InstanceMarketOptions" not in head["node_config"]
    assert config["provider"]["cache_stopped_nodes"] is False
    prod = yaml.safe_load((REPO / "deploy" / "kuberay" / "overlays" / "production" / "kustomization.yaml").read_text())
    images = {f"{i['newName']}:{i['newTag']}" for i in prod["images"] if i["name"].startswith("sgma-batch-")}
    assert {config["docker"]["head_image"], config["docker"]["worker_image"]} == images
    assert config["docker"]["head_image"].endswith("-cpu") and config["docker"]["worker_image"].endswith("-gpu")
    # dashboard bound to localhost on the head: reach it through `ray dashboard` (SSH tunnel) only
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in config["head_start_ray_commands"])


def _docker_env(config: dict) -> dict[str, str]:
    opts = " ".join(config["docker"]["run_options"]).split()
    return dict(opts[i + 1].split("=", 1) for i, o in enumerate(opts) if o == "--env")


def _shared_mount(config: dict) -> str:
    opts = " ".join(config["docker"]["run_options"]).split()
    (volume,) = [opts[i + 1] for i, o in enumerate(opts) if o == "--volume"]
    host, container = volume.split(":")
    assert any(host in cmd and "mount -t nfs4" in cmd for cmd in config["initialization_commands"])  # EFS
    return container


def test_demo_archive_and_auth_token_live_on_the_shared_file_system() -> None:
    """Every GPU worker must read the archive the driver generated, and every node the same Ray token."""
    config = _load()
    env, shared = _docker_env(config), _shared_mount(config)
    assert env["XDG_CACHE_HOME"].startswith(shared + "/")  # sgma_batch.synthetic.default_cache_dir follows it
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"].startswith(shared + "/")
    token_dir = env["RAY_AUTH_TOKEN_PATH"].removeprefix(shared).rsplit("/", 1)[0]
    assert any("openssl rand" in cmd and "chmod 600" in cmd and token_dir in cmd
               for cmd in config["initialization_commands"])


def test_hosts_log_in_to_the_registry_of_the_images_before_pulling() -> None:
    config = _load()
    registry = config["docker"]["worker_image"].split("/", 1)[0]
    logins = [c for c in config["initialization_commands"] if "docker login" in c]
    assert logins and all(registry in c and "--password-stdin" in c for c in logins)
    assert config["docker"]["pull_before_run"] is True
