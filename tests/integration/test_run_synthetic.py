"""The CLI on synthetic archives (S2 L2A + S1 RTC + DEM): a small generated one, and the default demo one.

The model is untrained (the demo checkpoint is trained elsewhere), so agreement with the ground truth
is meaningless here; what is checked is the bookkeeping: every modality is found and read, and
``status --labels`` counts exactly the confusion matrix that the store and the label raster give.
"""

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

from sgma_batch.synthetic import demo_archive_info, generate_archive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


_cli = run_archive.cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=4)


def _inset_aoi(info, margin_m: float, path: Path) -> Path:
    from odc.geo import geom
    from shapely.geometry import box, mapping

    b = info.geobox.extent.boundingbox
    poly = geom.Geometry(box(b.left + margin_m, b.bottom + margin_m, b.right - margin_m, b.top - margin_m),
                         info.geobox.crs).to_crs("EPSG:4326")
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(poly.geom)}))
    return path


def test_cli_on_a_generated_archive_with_label_agreement(checkpoint, tmp_path):
    info = generate_archive(tmp_path / "archive", seed=3, size_km=(2.5, 2.5), dates=2)
    aoi = _inset_aoi(info, 250.0, tmp_path / "aoi.geojson")
    out = tmp_path / "synthetic.zarr"
    common = ["--aoi", str(aoi), "--start", "2024-05-01", "--end", "2024-05-31", "--catalog", str(info.catalog_path),
              "--model", str(checkpoint), "--out", str(out), "--tile-px", "128", "--halo-px", "32"]

    r = _cli("plan", *common, "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert not out.exists() and plan["compute"] == plan["tiles"] >= 4
    assert plan["scenes"]["s2"] == 2 and plan["scenes"]["s1"] >= 1 and plan["scenes"]["dem"] == 1

    r = _cli("run", *common, "--sequential", "--json")
    assert r.returncode in (0, 3), r.stderr
    summary = json.loads(r.stdout)
    assert summary["scenes"] == plan["scenes"] and summary["failed"] == 0 and summary["degraded"] == 0
    assert summary["computed"] + summary["nodata"] == summary["tiles"] == plan["tiles"]

    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    cls, mask = ds["class"].values, ds["modality_mask"].values
    mapped = cls != 255
    assert mapped.mean() > 0.5
    assert (mask[mapped] & 0b100).all()  # the DEM covers everything
    assert (mask[mapped] & 0b001).any() and (mask[mapped] & 0b010).any()  # S2 and S1 somewhere

    r = _cli("status", str(out), "--labels", str(info.label_path), "--json")
    assert r.returncode == 0, r.stderr
    agreement = json.loads(r.stdout)["agreement"]

    # The same bookkeeping, independently: the label raster's window under the store grid.
    gbox = ds.odc.geobox
    with rasterio.open(info.label_path) as src:
        win = from_bounds(*gbox.extent.boundingbox, transform=src.transform)
        truth = src.read(1, window=win.round_offsets().round_lengths(), boundless=True, fill_value=255)
    assert truth.shape == cls.shape
    labelled = truth != 255
    k = len(agreement["per_class"])
    both = labelled & mapped
    confusion = np.bincount(truth[both].astype(int) * k + cls[both], minlength=k * k).reshape(k, k)
    assert agreement["confusion"] == confusion.tolist()
    assert agreement["pixels"] == int(both.sum()) and agreement["unmapped"] == int((labelled & ~mapped).sum())
    assert agreement["overall"] == pytest.approx(np.trace(confusion) / both.sum(), abs=1e-6)
    for i, (name, c) in enumerate(agreement["per_class"].items()):
        assert (c["truth"], c["predicted"], c["correct"]) == (confusion[i].sum(), confusion[:, i].sum(), confusion[i, i])
        assert c["producer"] is None if c["truth"] == 0 else c["producer"] == pytest.approx(c["correct"] / c["truth"], abs=1e-6)
    assert sum(c["truth"] for c in agreement["per_class"].values()) == agreement["pixels"]
    assert len({n for n, c in agreement["per_class"].items() if c["truth"]}) >= 3  # a varied landscape

    from sgma_batch.run import RunSpec, plan_run

    again = plan_run(RunSpec(aoi=str(aoi), start="2024-05-01", end="2024-05-31", catalog=str(info.catalog_path),
                             model=str(checkpoint), out=str(out), tile_px=128, halo_px=32), measure=False)
    assert (again.reuse, again.compute) == (summary["tiles"], 0)


def test_defaults_are_the_demo_archive_and_the_shipped_model_which_maps_the_truth(demo_cache_home, tmp_path):
    from sgma_batch.agreement import label_agreement

    cache = demo_cache_home  # the session's demo archive (tests/conftest.py): generated once, found here
    out = tmp_path / "demo.zarr"
    r = _cli("run", "--aoi", str(REPO / "examples" / "demo-aoi.geojson"), "--out", str(out),
             "--sequential", "--json", env_extra={"XDG_CACHE_HOME": str(cache)})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["scenes"]["s2"] >= 2 and summary["scenes"]["s1"] >= 1 and summary["scenes"]["dem"] >= 1
    assert summary["computed"] == summary["tiles"] >= 1
    demo_catalog = demo_archive_info(cache / "sgma-batch").catalog_path  # the generator-versioned cache folder
    assert demo_catalog.is_file()
    ds = xr.open_zarr(out, decode_coords="all")
    assert ds.odc.crs.epsg == 32633 and ds.attrs["sgma:catalog"].endswith(f"{demo_catalog.parent.name}/catalog.json")
    # the shipped demo model against the archive's ground truth: far above chance (the majority class)
    agreement = label_agreement(out, demo_archive_info(cache / "sgma-batch").label_path)
    majority = max(c["truth"] for c in agreement["per_class"].values()) / agreement["pixels"]
    assert agreement["pixels"] > 100_000 and agreement["overall"] > max(0.85, 2 * majority), (agreement, majority)
