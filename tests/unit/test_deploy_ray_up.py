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
    images = {f"{i['newName']}:{i['newTag']}" for i in prod["images"]}
    assert {config["docker"]["head_image"], config["docker"]["worker_image"]} == images
    assert config["docker"]["head_image"].endswith("-cpu") and config["docker"]["worker_image"].endswith("-gpu")
    # dashboard bound to localhost on the head: reach it through `ray dashboard` (SSH tunnel) only
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in config["head_start_ray_commands"])
