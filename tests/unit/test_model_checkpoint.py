"""Checkpoint format: safetensors + card.json round trip, refusals with named errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sgma_model import ModelCard, check_inputs, create_model, load_checkpoint, read_card, save_checkpoint
from sgma_model.errors import BandMismatchError, CardMismatchError, CheckpointError, UnknownModelError
from sgma_model.testing import BANDS, CLASSES, MODALITIES, card_modalities, make_inputs

torch.set_num_threads(1)


def _save(tmp_path, name="sgma_tiny", **kwargs):
    torch.manual_seed(0)
    model = create_model(name, modalities=MODALITIES, num_classes=len(CLASSES), **kwargs)
    card = ModelCard.for_model(model, card_modalities(), CLASSES, training={"metrics": {"miou_all": 0.5}})
    saved = save_checkpoint(model, tmp_path / "ckpt", card)
    return model, saved, tmp_path / "ckpt"


def test_round_trip_is_bitwise(tmp_path):
    model, saved, path = _save(tmp_path, dropout=0.0)
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.safetensors"]
    loaded, card = load_checkpoint(path)
    assert load_checkpoint(path / "card.json")[1] == card
    assert card == saved and card.model_hash == saved.model_hash and len(card.model_hash) == 64
    assert loaded.architecture == "sgma_tiny" and loaded.arguments == model.arguments
    inputs = make_inputs(("s2", "dem"), 2, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(inputs), loaded(inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.robustness, b.robustness)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_card_contents_and_helpers(tmp_path):
    _, _, path = _save(tmp_path)
    data = json.loads((path / "card.json").read_text())
    assert data["architecture"] == "sgma_tiny"
    assert data["arguments"]["modalities"] == MODALITIES
    assert [c["name"] for c in data["classes"]] == [c[0] for c in CLASSES]
    assert data["modalities"][0]["bands"][0] == {
        "name": "blue",
        "common_name": "blue",
        "mean": 0.0,
        "std": 1.0,
    }
    card = read_card(path)
    assert card.band_names("s1") == BANDS["s1"]
    x = np.ones((2, 4, 4), dtype=np.float32)
    norm = card.normalise("s1", x)  # s1 bands: mean 0, 0.1; std 1, 2
    assert norm.dtype == np.float32 and np.allclose(norm[1], (1 - 0.1) / 2.0)
    assert torch.allclose(card.normalise("s1", torch.ones(2, 4, 4))[1], torch.full((4, 4), 0.45))
    with pytest.raises(BandMismatchError, match="s1"):
        card.normalise("s1", np.ones((3, 4, 4)))
    text = card.summary()
    assert "sgma_tiny" in text and "vv, vh" in text and "miou_all" in text
    # a changed card changes the hash
    other = ModelCard.from_dict({**data, "training": {"note": "x"}})
    assert other.model_hash != card.model_hash


def test_check_inputs_names_modality_and_bands(tmp_path):
    _, card, _ = _save(tmp_path)
    check_inputs(card, {"s1": ["vv", "vh"], "dem": ["elevation"]})
    with pytest.raises(BandMismatchError, match=r"'s1'.*vh, vv"):
        check_inputs(card, {"s1": ["vh", "vv"]})
    with pytest.raises(BandMismatchError, match="lidar"):
        check_inputs(card, {"lidar": ["z"]})


def test_weights_from_another_save_are_refused(tmp_path):
    _, _, path = _save(tmp_path)
    other = create_model("sgma_tiny", modalities=MODALITIES, num_classes=len(CLASSES))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path / "model.safetensors"))
    with pytest.raises(CardMismatchError, match="sha256"):
        load_checkpoint(path)


def _refused(exc_type, match, path):
    """load_checkpoint fails with ``exc_type``, one line, naming ``match``."""
    with pytest.raises(exc_type, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def _rewrite(path, **changes):
    data = json.loads((path / "card.json").read_text())
    data.update(changes)
    data["weights_sha256"] = None  # skip the hash check to reach the structural checks
    (path / "card.json").write_text(json.dumps(data))
    return data


def test_card_describing_other_architecture_names_the_tensor(tmp_path):
    _, _, path = _save(tmp_path)
    _rewrite(path, architecture="mean_fusion_tiny")
    _refused(CardMismatchError, r"tensor 'fusions\.0\.", path)


def test_card_with_other_band_count_names_the_tensor(tmp_path):
    _, _, path = _save(tmp_path)
    data = json.loads((path / "card.json").read_text())
    mods = data["modalities"]
    mods[1]["bands"].append({"name": "hh", "common_name": None, "mean": 0.0, "std": 1.0})
    _rewrite(path, modalities=mods)  # the band list disagrees with the arguments (2 bands for s1)
    _refused(CardMismatchError, r"3 bands for 's1'.*takes 2", path)
    _rewrite(
        path, arguments={**data["arguments"], "modalities": {"s2": 10, "s1": 3, "dem": 1}}, modalities=mods
    )
    _refused(CardMismatchError, r"encoder\.stems\.s1\.conv\.weight", path)


def test_card_inconsistent_with_its_arguments(tmp_path):
    _, _, path = _save(tmp_path)
    data = json.loads((path / "card.json").read_text())
    _rewrite(path, classes=data["classes"][:5])
    _refused(CardMismatchError, "5 classes", path)
    _rewrite(path, classes=data["classes"], modalities=data["modalities"][::-1])
    _refused(CardMismatchError, r"\(dem, s1, s2\)", path)
    _rewrite(path, modalities=data["modalities"], arguments={**data["arguments"], "depth": 3})
    _refused(CardMismatchError, "depth", path)


def test_missing_tensor_is_named(tmp_path):
    _, _, path = _save(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    del state["decoder.classifier.bias"]
    save_file(state, str(path / "model.safetensors"))
    _rewrite(path)
    _refused(CardMismatchError, "decoder.classifier.bias", path)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="card.json"):
        read_card(tmp_path)
    _, _, path = _save(tmp_path)
    marker = tmp_path / "unpickled"

    class Payload:  # runs a command if anything ever unpickles the weights file
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (path / "model.safetensors").write_bytes(pickle.dumps({"state_dict": Payload()}))
    _rewrite(path)
    _refused(CheckpointError, "safetensors", path)
    assert not marker.exists()
    _rewrite(path, format=2)
    with pytest.raises(CheckpointError, match="format 2"):
        read_card(path)
    (path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        read_card(path)
    _, _, path2 = _save(tmp_path / "b")
    _rewrite(path2, architecture="sgma_enormous")
    with pytest.raises(UnknownModelError):
        load_checkpoint(path2)


def test_card_must_match_model_when_saving(tmp_path):
    model = create_model("sgma_tiny", modalities=MODALITIES, num_classes=len(CLASSES))
    with pytest.raises(CardMismatchError):
        ModelCard.for_model(model, card_modalities(), CLASSES[:3])
    card = ModelCard.for_model(model, card_modalities(), CLASSES)
    other = create_model("sgf_only_tiny", modalities=MODALITIES, num_classes=len(CLASSES))
    with pytest.raises(CardMismatchError):
        save_checkpoint(other, tmp_path / "x", card)
