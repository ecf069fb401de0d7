"""``status --labels`` with real-world label rasters: a 0/1 water mask with -1 = nodata and no nodata tag
(a clean error without a class map; with ``--label-map`` water is scored as the store's water and dry as
"other"), the raster's own nodata tag, and ``--label-nodata``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401 - the .odc accessor
import pytest
import rasterio
import xarray as xr
from rasterio.windows import from_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.synthetic import generate_archive

pytestmark = pytest.mark.integration
_cli = run_archive.cli


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    ckpt = run_archive.tiny_checkpoint(tmp / "tiny", seed=4)
    info = generate_archive(tmp / "archive", seed=3, size_km=(1.5, 1.5), dates=1)
    out = tmp / "m.zarr"
    b = info.geobox.extent.to_crs("EPSG:4326").boundingbox
    r = _cli("run", "--aoi", f"{b.left},{b.bottom},{b.right},{b.top}", "--start", "2024-05-01", "--end", "2024-05-31",
             "--catalog", str(info.catalog_path), "--model", str(ckpt), "--out", str(out), "--tile-px", "128",
             "--halo-px", "16", "--sequential", "--json")
    assert r.returncode in (0, 3), r.stderr
    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    with rasterio.open(info.label_path) as src:
        profile = dict(src.profile)
        win = from_bounds(*ds.odc.geobox.extent.boundingbox, transform=src.transform).round_offsets().round_lengths()
        raw = src.read(1)
        truth = src.read(1, window=win, boundless=True, fill_value=255)
    # a user's flood mask: 1 = water (class 0 of the store), 0 = dry, -1 = no label; no nodata tag
    mask = np.where(raw == 255, -1, (raw == 0).astype(np.int16)).astype(np.int16)
    mask[:, :20] = -1
    plain = tmp / "water_mask.tif"
    with rasterio.open(plain, "w", **{**profile, "dtype": "int16", "nodata": None}) as dst:
        dst.write(mask, 1)
    tagged = tmp / "ids_tagged.tif"  # store class ids, -1 = nodata declared in the file
    ids = np.where(raw == 255, -1, raw).astype(np.int16)
    ids[:, :20] = -1
    with rasterio.open(tagged, "w", **{**profile, "dtype": "int16", "nodata": -1}) as dst:
        dst.write(ids, 1)
    with rasterio.open(plain) as src:
        sub = src.read(1, window=win, boundless=True, fill_value=-1)
    return {"out": out, "plain": plain, "tagged": tagged, "cls": ds["class"].values, "truth": truth, "mask": sub}


def test_a_water_mask_without_a_class_map_is_a_clean_error(mapped):
    r = _cli("status", str(mapped["out"]), "--labels", str(mapped["plain"]))
    assert r.returncode == 40, r.stderr
    assert "Traceback" not in r.stderr and "--label-map" in r.stderr and "-1" in r.stderr


def test_label_map_scores_water_by_name_and_dry_as_other(mapped):
    r = _cli("status", str(mapped["out"]), "--labels", str(mapped["plain"]), "--label-map", "0:dry,1:water,-1:nodata",
             "--json")
    assert r.returncode == 0, r.stderr
    ag = json.loads(r.stdout)["agreement"]
    cls, m = mapped["cls"], mapped["mask"]
    scored = (m >= 0) & (cls != 255)
    water = ag["per_class"]["water"]
    assert water["truth"] == int(((m == 1) & scored).sum())
    assert water["correct"] == int(((m == 1) & scored & (cls == 0)).sum())
    assert water["predicted"] == int((scored & (cls == 0)).sum())
    assert ag["other"]["pixels"] == int(((m == 0) & scored).sum())
    assert ag["pixels"] == int(scored.sum())
    assert sum(c["truth"] for c in ag["per_class"].values()) == water["truth"]  # no other store class labelled


def test_the_rasters_own_nodata_and_label_nodata(mapped):
    r = _cli("status", str(mapped["out"]), "--labels", str(mapped["tagged"]), "--json")
    assert r.returncode == 0, r.stderr
    ag = json.loads(r.stdout)["agreement"]
    t, cls = mapped["truth"], mapped["cls"]
    t = t.copy()
    t[:, :] = np.where(mapped["mask"] < 0, 255, t)  # the tagged raster's -1 columns
    scored = (t != 255) & (cls != 255)
    assert ag["pixels"] == int(scored.sum()) and ag["label_nodata"] == -1
    r2 = _cli("status", str(mapped["out"]), "--labels", str(mapped["plain"]), "--label-nodata", "-1", "--json")
    assert r2.returncode == 0, r2.stderr  # 0/1 are class ids 0/1 once -1 is nodata
    assert json.loads(r2.stdout)["agreement"]["pixels"] == int(((mapped["mask"] >= 0) & (cls != 255)).sum())
