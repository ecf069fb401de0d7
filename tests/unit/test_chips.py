"""Chip store: blocked splits with a guard gap, train-only statistics, Sen1Floods11 loader."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio

from sgma_batch import chips
from sgma_batch.errors import ChipStoreError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
S1F11 = SHARED / "data" / "sen1floods11"


def _gap(a: chips.ChipWindow, b: chips.ChipWindow, px: int) -> int:
    """Chebyshev pixel gap between two chip footprints (0 if they touch or overlap)."""
    dr = max(a.row - (b.row + px), b.row - (a.row + px), 0)
    dc = max(a.col - (b.col + px), b.col - (a.col + px), 0)
    return max(dr, dc)


def test_chip_windows_keep_a_guard_gap_between_splits():
    wins = chips.chip_windows(500, 500, chip_px=32, block_px=144, guard_px=16, seed=3)
    # 3x3 blocks of (144 - 16) // 32 = 4x4 chips
    assert len(wins) == 9 * 16
    codes = {w.split for w in wins}
    assert codes == {0, 1, 2}
    for a, b in itertools.combinations(wins, 2):
        if a.block != b.block:
            assert _gap(a, b, 32) >= 16
        if a.split != b.split:
            assert a.block != b.block
    for w in wins:  # chips never leave their block
        by, bx = w.block
        assert by * 144 <= w.row and w.row + 32 <= (by + 1) * 144
        assert bx * 144 <= w.col and w.col + 32 <= (bx + 1) * 144


def test_assign_splits_is_seeded_and_proportional():
    a = chips.assign_splits(10, (0.6, 0.2, 0.2), seed=1)
    assert np.array_equal(a, chips.assign_splits(10, (0.6, 0.2, 0.2), seed=1))
    assert sorted(a.tolist()) == [0] * 6 + [1] * 2 + [2] * 2
    assert sorted(chips.assign_splits(3, (0.8, 0.1, 0.1)).tolist()) == [0, 1, 2]
    with pytest.raises(ChipStoreError):
        chips.assign_splits(2, (0.0, 0.5, 0.5))
    with pytest.raises(ChipStoreError):
        chips.chip_windows(100, 100, chip_px=64, block_px=64, guard_px=16)


def test_store_round_trip_and_stats_over_train_only(tmp_path):
    rng = np.random.default_rng(0)
    writer = chips.ChipWriter(
        tmp_path / "c.zarr", modalities={"s1": ("vv", "vh")}, classes=[{"name": "a", "color": "#000000"}],
        chip_px=4,
    )
    train_vals, samples = [], []
    for i, split in enumerate([0, 0, 1, 2]):
        x = rng.normal(size=(2, 4, 4)).astype(np.float32) + (100 if split else 0)  # val/test far away
        mask = rng.random((4, 4)) > 0.3
        if split == 0:
            train_vals.append(x[:, mask])
        win = chips.ChipWindow(row=0, col=4 * i, block=(0, i), split=split)
        samples.append(chips.ChipSample(win, {"s1": x}, {"s1": mask}, np.full((4, 4), i, np.uint8)))
    writer.append(samples)
    store = chips.ChipStore(writer.close())
    t = np.concatenate(train_vals, axis=1)
    np.testing.assert_allclose(store.stats["s1"]["mean"], t.mean(1), rtol=1e-5)
    np.testing.assert_allclose(store.stats["s1"]["std"], t.std(1), rtol=1e-5)
    assert store.attrs["counts"] == {"train": 2, "val": 1, "test": 1}
    test = store.load("test")
    assert test["label"].shape == (1, 4, 4) and int(test["label"][0, 0, 0]) == 3
    # invalid pixels are stored as 0 and normalised to 0
    assert np.all(test["s1"][0][:, ~test["s1_mask"][0]] == 0)
    norm = chips.normalise(test, store.stats, ["s1"])
    assert np.all(norm["s1"][0][:, ~test["s1_mask"][0]] == 0)
    m = test["s1_mask"][0]
    want = (test["s1"][0][0][m] - store.stats["s1"]["mean"][0]) / store.stats["s1"]["std"][0]
    np.testing.assert_allclose(norm["s1"][0][0][m], want, rtol=1e-5)
    with pytest.raises(ChipStoreError, match="exists"):
        chips.ChipWriter(tmp_path / "c.zarr", modalities={"s1": ("vv",)}, classes=[], chip_px=4)


def test_open_rejects_non_chip_store(tmp_path):
    with pytest.raises(ChipStoreError):
        chips.ChipStore(tmp_path / "missing.zarr")


def test_sen1floods11_loader_maps_bands_and_nodata():
    (cid,) = chips.sen1floods11_ids(S1F11)
    chip = chips.load_sen1floods11(S1F11, cid)
    with rasterio.open(S1F11 / "S2Hand" / f"{cid}_S2Hand.tif") as src:
        b8a = src.read(9).astype(np.float32)  # file band 9 = B8A
        b2 = src.read(2).astype(np.float32)
    np.testing.assert_allclose(chip.s2[list(chips.S2_L1C_TO_CANONICAL.values()).index("nir08")], b8a / 1e4)
    np.testing.assert_allclose(chip.s2[0], b2 / 1e4)  # blue = B2
    assert chip.s2.shape == (10, 512, 512) and chip.s1.shape == (2, 512, 512)
    with rasterio.open(S1F11 / "LabelHand" / f"{cid}_LabelHand.tif") as src:
        raw = src.read(1)
    assert np.array_equal(chip.label == 255, raw == -1)
    assert np.array_equal(chip.label[raw >= 0], raw[raw >= 0])
    assert set(np.unique(chip.label)) <= {0, 1, 255}
    # VV is brighter than VH on average (dB), as SAR physics says
    assert chip.s1[0][chip.s1_mask].mean() > chip.s1[1][chip.s1_mask].mean()


def test_sen1floods11_store_holds_out_one_quadrant(tmp_path):
    store = chips.ChipStore(chips.sen1floods11_chip_store(S1F11, tmp_path / "s.zarr", test_quadrant=1))
    origin = np.asarray(store.group["origin"][:])
    test = origin[store.indices("test")]
    train = origin[store.indices("train")]
    assert len(test) == 9 and len(train) == 27
    assert np.all(test[:, 0] < 256) and np.all(test[:, 1] >= 256)  # NE quadrant
    assert not np.any((train[:, 0] < 256) & (train[:, 1] >= 256))
    # train-only stats: differ from the test chips' own mean
    t = store.load("test")
    assert not np.allclose(store.stats["s1"]["mean"][0], t["s1"][:, 0][t["s1_mask"]].mean(), rtol=1e-3)
