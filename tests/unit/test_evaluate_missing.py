"""`evaluate` on data that lacks some of the model's modalities: every protocol runs on the subsets the
data can score, the report says which, and the numbers equal those on the same data with the modality
explicitly absent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgma_batch import chips
from sgma_batch import evaluate as ev
from sgma_model import ModelCard, create_model, save_checkpoint
from sgma_model.testing import BANDS, card_modalities

CLASSES = [("dry", "#d9d9d9"), ("water", "#1f78b4")]


def _store(path, modalities, n=6, px=32, seed=0):
    rng = np.random.default_rng(seed)
    w = chips.ChipWriter(path, modalities={m: BANDS[m] for m in modalities},
                         classes=[{"name": a, "color": b} for a, b in CLASSES], chip_px=px)
    samples = []
    for i in range(n):
        win = chips.ChipWindow(0, i * px, (0, i), 0 if i < 2 else 2)
        arrays = {m: rng.normal(size=(len(BANDS[m]), px, px)).astype(np.float32) for m in modalities}
        masks = {m: np.ones((px, px), bool) for m in modalities}
        samples.append(chips.ChipSample(win, arrays, masks, (rng.random((px, px)) < 0.4).astype(np.uint8)))
    w.append(samples)
    return w.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("sgma_tiny", modalities={"s2": 10, "s1": 2}, num_classes=2)
    mods = [m for m in card_modalities() if m["name"] in ("s2", "s1")]
    card = ModelCard.for_model(model, mods, CLASSES)
    out = tmp_path_factory.mktemp("m") / "model"
    save_checkpoint(model, out, card)
    return out


def test_sar_only_data_scores_the_s1_subset_with_every_protocol(tmp_path, model_dir):
    data = _store(tmp_path / "sar.zarr", ["s1"])
    rep = ev.evaluate_checkpoint(model_dir, data, protocols=ev.PROTOCOLS, conventions=ev.CONVENTIONS)
    assert rep.available == ("s1",)
    assert rep.scored_subsets == [("s1",)]
    assert rep.unscored_subsets == [("s2", "s1"), ("s2",)]
    protos = {(r.protocol, r.convention, r.level) for r in rep.results}
    assert ("emm", "dropped", None) in protos and ("rmm", "zero-filled", "r=0.5") in protos and ("nm", "n/a", "high") in protos
    for r in rep.results:
        assert list(r.scores) == [("s1",)] and not math.isnan(r.scores[("s1",)])
    js = rep.to_json()
    assert js["unscored_subsets"] == ["s2+s1", "s2"] and js["summary_over"] == "scored subsets only"
    assert "The data lacks s2" in rep.to_markdown()


def test_missing_modality_equals_an_all_absent_one(tmp_path, model_dir):
    """SAR-only chips score exactly as the same chips with an S2 array that is all masked."""
    sar = _store(tmp_path / "sar.zarr", ["s1"])
    both = tmp_path / "both.zarr"
    w = chips.ChipWriter(both, modalities={"s2": BANDS["s2"], "s1": BANDS["s1"]},
                         classes=[{"name": a, "color": b} for a, b in CLASSES], chip_px=32)
    src = chips.ChipStore(sar)
    g = src.group
    samples = []
    for i in range(len(src.split)):
        win = chips.ChipWindow(0, i * 32, (0, i), int(src.split[i]))
        samples.append(chips.ChipSample(
            win, {"s2": np.full((10, 32, 32), 7.0, np.float32), "s1": np.asarray(g["s1"][i])},
            {"s2": np.zeros((32, 32), bool), "s1": np.asarray(g["s1_mask"][i])}, np.asarray(g["label"][i])))
    w.append(samples)
    w.close()
    a = ev.evaluate_checkpoint(model_dir, sar, protocols=("emm",), conventions=("dropped",))
    b = ev.evaluate_checkpoint(model_dir, both, protocols=("emm",), conventions=("dropped",))
    assert b.available == ("s1",)  # no valid S2 pixel in the split = unavailable
    assert a.find("emm", "dropped").scores == b.find("emm", "dropped").scores


def test_full_data_is_unchanged(tmp_path, model_dir):
    data = _store(tmp_path / "full.zarr", ["s2", "s1"])
    rep = ev.evaluate_checkpoint(model_dir, data, protocols=("emm",), conventions=("dropped",))
    assert rep.unscored_subsets == [] and len(rep.find("emm", "dropped").scores) == 3
    assert rep.to_json()["summary_over"] == "all subsets"
