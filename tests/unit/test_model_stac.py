"""``sgma-batch model info CKPT --stac``: a STAC Item with the MLM extension, valid offline against the
vendored schemas, that says what the checkpoint takes (bands, normalisation), gives (classes) and is (hashes)."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stac_schemas import assert_valid, errors

from sgma_model import ModelCard, create_model, save_checkpoint
from sgma_model.stac import mlm_item
from sgma_model.testing import CLASSES, MODALITIES, card_modalities

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from cli.app import main; main()", *args], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, ModelCard, int]:
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities=MODALITIES, num_classes=len(CLASSES))
    training = {"run_name": "unit run", "data": {"source": {"start": "2024-05-03", "end": "2024-05-18"}},
                "history": [{"epoch": 0, "finished_at": 1795296898.5}, {"epoch": 1, "finished_at": 1795297106.25}]}
    card = ModelCard.for_model(model, card_modalities(), CLASSES, training=training)
    path = tmp_path_factory.mktemp("m") / "ckpt"
    saved = save_checkpoint(model, path, card)
    return path, saved, sum(p.numel() for p in model.state_dict().values())


@pytest.mark.integration  # the CLI in a subprocess
def test_model_info_stac_prints_a_valid_mlm_item(checkpoint):
    path, card, n_params = checkpoint
    proc = _cli("model", "info", str(path), "--stac")
    assert proc.returncode == 0, proc.stderr
    item = json.loads(proc.stdout)
    assert_valid(item)
    assert item == mlm_item(path)  # the CLI prints the library's item
    p = item["properties"]
    assert (p["mlm:name"], p["mlm:architecture"], p["mlm:tasks"]) == ("unit run", "sgma_tiny", ["semantic-segmentation"])
    assert p["mlm:framework"] == "PyTorch"
    assert p["mlm:framework_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert p["mlm:total_parameters"] == n_params
    assert (p["start_datetime"], p["end_datetime"], p["created"]) == (
        "2024-05-03T00:00:00Z", "2024-05-18T23:59:59Z", "2026-11-21T21:38:26.250000Z")
    # one input per modality: its bands in model order with the card's statistics
    assert [i["name"] for i in p["mlm:input"]] == list(MODALITIES)
    for inp, m in zip(p["mlm:input"], card.modalities, strict=True):
        assert inp["bands"] == [b.name for b in m.bands]
        assert inp["value_scaling"] == [{"type": "z-score", "mean": b.mean, "stddev": b.std} for b in m.bands]
        assert inp["input"]["shape"] == [-1, len(m.bands), -1, -1]
    assert {b["name"] for b in p["bands"]} == {b for i in p["mlm:input"] for b in i["bands"]}
    (out,) = p["mlm:output"]
    assert [(c["value"], c["description"], "#" + c["color_hint"].lower()) for c in out["classification:classes"]] == \
        [(i, c.name, c.color.lower()) for i, c in enumerate(card.classes)]
    assert out["result"]["shape"] == [-1, len(CLASSES), -1, -1]
    # the weights: role, artifact type, size and sha256 (multihash), the one the card records
    w = item["assets"]["weights"]
    data = (path / "model.safetensors").read_bytes()
    assert "mlm:model" in w["roles"] and w["mlm:artifact_type"] == "safetensors.torch.save_file"
    assert w["file:size"] == len(data)
    assert w["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest() == "1220" + card.weights_sha256
    assert w["href"] == (path / "model.safetensors").resolve().as_uri()
    assert item["id"] == f"sgma-model-unit_run-{card.model_hash[:12]}"


def test_the_validator_rejects_a_broken_mlm_item(checkpoint):
    item = mlm_item(checkpoint[0])
    assert_valid(item)
    for change in (lambda i: i["properties"].pop("mlm:input"),
                   lambda i: i["properties"].update({"mlm:accelerator": "cpu"}),  # not in the enum: amd64
                   lambda i: i["properties"].pop("bands"),  # inputs name bands nothing describes
                   lambda i: i["properties"]["mlm:input"][0]["value_scaling"][0].pop("stddev"),
                   lambda i: i["properties"]["mlm:input"][0]["input"].update({"dim_order": ["batch", "height"]}),
                   lambda i: i["assets"]["weights"].pop("mlm:artifact_type"),
                   lambda i: i["assets"]["weights"].update({"file:checksum": "sha256:abc"}),
                   lambda i: i["properties"]["mlm:output"][0]["classification:classes"][0].pop("description")):
        broken = copy.deepcopy(item)
        change(broken)
        assert errors(broken), change


@pytest.mark.integration  # the CLI in a subprocess
def test_weights_that_are_not_the_cards_are_refused(checkpoint, tmp_path):
    path, _, _ = checkpoint
    other = tmp_path / "ckpt"
    other.mkdir()
    (other / "card.json").write_bytes((path / "card.json").read_bytes())
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (other / "model.safetensors").write_bytes(bytes(data))
    proc = _cli("model", "info", str(other), "--stac")
    assert proc.returncode == 31 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "does not match the sha256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
