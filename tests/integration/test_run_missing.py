"""The missing-modality matrix: one tile per modality subset (none, each single, pairs, all, + clouds).

S2 L2A (10 bands + SCL), S1 RTC (VV, VH) and DEM COGs are written on the run's own grid, each with
valid pixels only over the tiles whose subset holds that modality (nodata elsewhere), and a cloud
patch (SCL 9) over part of the all-modalities tile. A real untrained SGMA checkpoint maps it; every
pixel's ``modality_mask`` must equal the data actually present there, robustness must be 0 for absent
modalities and sum to 1 over present ones, and nothing may be NaN.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401 - registers the .odc accessor used below
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer
from rasterio.features import geometry_mask
from shapely.geometry import Polygon, mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive

from sgma_batch.grid import plan_tiles, target_geobox
from sgma_batch.run import RunSpec, aoi_in_grid_crs, run_mosaic
from sgma_batch.scenes import S2_BANDS
from sgma_batch.store import ROBUSTNESS_SCALE, read_manifest

pytestmark = pytest.mark.integration

EPSG, X0, Y0 = 32633, 600000.0, 5100000.0
TILE, ROWS, COLS = 128, 2, 4
MODS = ("s2", "s1", "dem")
# tile (r, c) -> subset: none, s2, s1, dem, s2+s1, s2+dem, s1+dem, all (all gets the cloud patch)
SUBSETS = [frozenset(c) for n in range(4) for c in itertools.combinations(MODS, n)]
CLOUD = (slice(32, 96), slice(40, 100))  # inside the all-modalities tile's core


def _aoi(path: Path) -> tuple[Path, Polygon]:
    """A GeoJSON polygon whose UTM grid is exactly ROWS x COLS tiles (its corners 2 m inside the grid)."""
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    w, h = COLS * TILE * 10.0, ROWS * TILE * 10.0
    xs = [X0 + 2, X0 + w - 2, X0 + w - 2, X0 + 2]
    ys = [Y0 - 2, Y0 - 2, Y0 - h + 2, Y0 - h + 2]
    lon, lat = tr.transform(xs, ys)
    poly = Polygon(list(zip(lon, lat)))
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(poly)}))
    return path, poly


def _write(path: Path, data: np.ndarray, gbox, nodata: float) -> str:
    h, w = data.shape
    with rasterio.open(path, "w", driver="COG", width=w, height=h, count=1, dtype=data.dtype, crs=gbox.crs.wkt,
                       transform=gbox.transform, nodata=nodata, blocksize=128, compress="deflate") as dst:
        dst.write(data, 1)
    return str(path)


def _item(iid: str, collection: str, dt: str | None, assets: dict, gbox, props: dict | None = None) -> dict:
    tr = Transformer.from_crs(gbox.crs.wkt, 4326, always_xy=True)
    b = gbox.extent.boundingbox
    lon, lat = tr.transform([b.left, b.right, b.right, b.left], [b.top, b.top, b.bottom, b.bottom])
    ring = [[a, c] for a, c in zip(lon, lat)] + [[lon[0], lat[0]]]
    times = {"datetime": dt} if dt else {"datetime": None, "start_datetime": "2010-01-01T00:00:00Z",
                                         "end_datetime": "2030-01-01T00:00:00Z"}
    return {"type": "Feature", "stac_version": "1.1.0", "id": iid, "collection": collection,
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "bbox": [min(lon), min(lat), max(lon), max(lat)],
            "properties": {**times, "proj:code": f"EPSG:{EPSG}", "proj:shape": list(gbox.shape.yx),
                           "proj:transform": list(gbox.transform)[:6], **(props or {})},
            "links": [], "assets": assets}


def build(root: Path, gbox, tasks) -> tuple[Path, dict[str, np.ndarray]]:
    """COGs + items.json; returns the catalogue and the per-pixel availability of each modality."""
    root.mkdir(parents=True)
    avail = {m: np.zeros(gbox.shape.yx, bool) for m in MODS}
    for task in tasks:
        subset = SUBSETS[task.index[0] * COLS + task.index[1]]
        for m in subset:
            avail[m][task.region] = True
    all_tile = next(t for t in tasks if SUBSETS[t.index[0] * COLS + t.index[1]] == frozenset(MODS))
    ys, xs = all_tile.region
    cloud = np.zeros(gbox.shape.yx, bool)
    cloud[ys.start + CLOUD[0].start : ys.start + CLOUD[0].stop, xs.start + CLOUD[1].start : xs.start + CLOUD[1].stop] = True

    rng = np.random.default_rng(0)
    h, w = gbox.shape.yx
    s2_assets = {}
    for i, band in enumerate(S2_BANDS):
        dn = (1200 + 300 * i + rng.normal(0, 80, (h, w))).astype(np.uint16)
        dn[~avail["s2"]] = 0
        s2_assets[band] = {"href": _write(root / f"s2_{band}.tif", dn, gbox, 0), "type": "image/tiff",
                           "roles": ["data"], "raster:bands": [{"nodata": 0}]}
    scl = np.where(avail["s2"], 4, 0).astype(np.uint8)
    scl[cloud & avail["s2"]] = 9  # cloud: optical invalid there
    s2_assets["scl"] = {"href": _write(root / "s2_scl.tif", scl, gbox, 0), "type": "image/tiff", "roles": ["data"]}
    s1_assets = {}
    for pol, base in (("vv", 0.1), ("vh", 0.02)):
        lin = (base * np.exp(rng.normal(0, 0.3, (h, w)))).astype(np.float32)
        lin[~avail["s1"]] = -32768
        s1_assets[pol] = {"href": _write(root / f"s1_{pol}.tif", lin, gbox, -32768), "type": "image/tiff",
                          "roles": ["data"], "raster:bands": [{"nodata": -32768}]}
    dem = (300 + rng.normal(0, 5, (h, w))).astype(np.float32)
    dem[~avail["dem"]] = -9999
    dem_assets = {"data": {"href": _write(root / "dem.tif", dem, gbox, -9999), "type": "image/tiff",
                           "roles": ["data"], "raster:bands": [{"nodata": -9999}]}}
    items = [
        _item("s2-scene", "sentinel-2-c1-l2a", "2024-06-12T10:00:00Z", s2_assets, gbox,
              {"eo:cloud_cover": 5.0, "earthsearch:boa_offset_applied": True}),
        _item("s1-scene", "sentinel-1-rtc", "2024-06-11T05:00:00Z", s1_assets, gbox),
        _item("dem-scene", "cop-dem-glo-30", None, dem_assets, gbox),
    ]
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    avail["s2"] &= ~cloud
    return path, avail


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return run_archive.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=2)


def test_every_modality_subset_is_written_with_its_mask_and_robustness(checkpoint, tmp_path):
    aoi, poly = _aoi(tmp_path / "aoi.geojson")
    gbox = target_geobox(poly, res_m=10.0)
    assert gbox.crs.epsg == EPSG and gbox.shape.yx == (ROWS * TILE, COLS * TILE)
    tasks = plan_tiles(gbox, poly, tile_px=TILE, halo_px=16)
    assert len(tasks) == ROWS * COLS == len(SUBSETS)
    catalog, avail = build(tmp_path / "archive", gbox, tasks)

    out = tmp_path / "matrix.zarr"
    summary = run_mosaic(RunSpec(aoi=str(aoi), out=str(out), start="2024-06-01", end="2024-06-30", catalog=str(catalog),
                                 model=str(checkpoint), tile_px=TILE, halo_px=16, window_px=64, overlap_px=16,
                                 executor="sequential", write_probability=True))
    assert (summary.tiles, summary.computed, summary.nodata, summary.failed, summary.degraded) == (8, 7, 1, 0, 0)

    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    assert ds.odc.geobox == gbox
    in_aoi = geometry_mask([aoi_in_grid_crs(poly, gbox)], out_shape=gbox.shape.yx, transform=gbox.transform,
                           invert=True)
    assert in_aoi.all()
    expected = sum(avail[m].astype(np.uint8) << i for i, m in enumerate(MODS))  # (H, W) bits s2=1, s1=2, dem=4
    mask = ds["modality_mask"].values
    np.testing.assert_array_equal(mask, expected)
    cls = ds["class"].values
    np.testing.assert_array_equal(cls != 255, expected > 0)

    rob = ds["robustness"].values.astype(int)  # (M, H, W) weights x 254, 255 = nodata
    mapped = expected > 0
    for i, m in enumerate(MODS):
        assert (rob[i][~avail[m] & mapped] == 0).all(), f"robustness of absent {m} must be 0"
    assert (rob[:, ~mapped] == 255).all()
    assert (np.abs(rob[:, mapped].sum(0) - ROBUSTNESS_SCALE) <= 3).all()
    single = (expected == 1) | (expected == 2) | (expected == 4)  # one modality: it carries all the weight
    assert (rob.max(0)[single] >= ROBUSTNESS_SCALE - 1).all()
    prob = ds["probability"].values.astype(np.float32)
    assert np.isfinite(prob[:, mapped]).all() and np.isnan(prob[:, ~mapped]).all()
    assert (ds["confidence"].values[~mapped] == 0).all() and (ds["confidence"].values[mapped] > 0).all()

    # per tile: the manifest's status and the subset the core saw
    manifest = read_manifest(out)
    for task in tasks:
        subset = SUBSETS[task.index[0] * COLS + task.index[1]]
        rec = manifest[task.tile_id]
        assert rec.status == ("nodata" if not subset else "computed"), (task.tile_id, subset, rec)
        core_bits = set(np.unique(mask[task.region]).tolist())
        want = sum(1 << MODS.index(m) for m in subset)
        if subset == frozenset(MODS):
            assert core_bits == {want, want & ~1}  # the cloud patch removes S2 there
        else:
            assert core_bits == {want}
        assert set(rec.modalities) >= subset  # the halo may see a neighbour's modality too
