"""One mosaic order per run: two overlapping S2 scenes of different dates across a tile border.

Scene A (5 June) covers columns 0-268 of the area, scene B (17 June) columns 100-383; both are equally
cloudy and B covers more of the AOI, so B ranks first for the whole AOI. The two
tiles split at column 192. Ranked per tile, the left tile would take A (it covers all of it) and the right
tile B: the acquisition date would change exactly at the tile border. Ranked once, every pixel B has comes
from B and A fills only where B has no data: the date changes at B's edge (column 100), not at 192.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.transform import from_origin
from shapely.geometry import box

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_archive as ra

from sgma_batch.colocate import plan_cell, rank_scenes
from sgma_batch.read import read_modality_report
from sgma_batch.search import search_scenes
from sgma_batch.sensors import get_profile

pytestmark = pytest.mark.integration

NAMES = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
A_X0, A_W = 0, 269  # columns 0-268
B_X0, B_W = 100, ra.W - 100  # columns 100-383: more of the AOI than A
BORDER = 192


def _s2_item(root: Path, iid: str, day: int, col0: int, width: int, dn: int) -> dict:
    """One 10-band COG (all bands in one file, named in eo:bands) over columns col0..col0+width."""
    x0 = ra.X0 + col0 * ra.RES
    path = root / f"{iid}.tif"
    data = np.full((len(NAMES), ra.H, width), dn, np.uint16)
    with rasterio.open(path, "w", driver="COG", width=width, height=ra.H, count=len(NAMES), dtype="uint16",
                       crs=f"EPSG:{ra.EPSG}", transform=from_origin(x0, ra.Y0, ra.RES, ra.RES), nodata=0,
                       blocksize=128, compress="deflate") as dst:
        dst.write(data)
    item = ra._item(iid, "sentinel-2-l2a", f"2024-06-{day:02d}T10:00:00Z",
                    {"data": {"href": path.name, "type": "image/tiff; application=geotiff", "roles": ["data"],
                              "eo:bands": [{"name": n} for n in NAMES]}}, x0=x0, w=width)
    item["properties"].update({"eo:cloud_cover": 10.0, "s2:processing_baseline": "05.10"})
    return item


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    catalog = ra.write_items(root, [_s2_item(root, "s2-a", 5, A_X0, A_W, 3000), _s2_item(root, "s2-b", 17, B_X0, B_W, 5000)])
    _, bbox = ra._footprint(ra.X0, ra.Y0, ra.W, ra.H)
    return search_scenes(str(catalog), box(*bbox), "2024-06-01", "2024-06-30", modalities=["s2"])


def _date_map(scenes, keep_order: bool) -> np.ndarray:
    """Day of month each pixel came from, tile by tile (two tiles split at column BORDER); 0 = none."""
    found = scenes["s2"]
    aoi = box(*ra._footprint(ra.X0, ra.Y0, ra.W, ra.H)[1])
    order = rank_scenes(aoi, {"s2": found}, "2024-06-01", "2024-06-30") if keep_order else {"s2": found}
    out = np.zeros((ra.H, ra.W), np.int16)
    for c0, c1 in ((0, BORDER), (BORDER, ra.W)):
        gbox = GeoBox((ra.H, c1 - c0), Affine(ra.RES, 0, ra.X0 + c0 * ra.RES, 0, -ra.RES, ra.Y0), f"EPSG:{ra.EPSG}")
        cell = gbox.extent.to_crs("EPSG:4326").geom
        cands = plan_cell(cell, order, "2024-06-01", "2024-06-30", keep_order=keep_order).candidates["s2"]
        res = read_modality_report(cands, gbox, get_profile("s2-l2a"))
        assert not res.errors
        days = np.array([0] + [s.datetime.day for s in cands], np.int16)
        out[:, c0:c1] = days[res.source + 1]
    return out


def test_no_tile_border_in_the_acquisition_date_map(scenes):
    dates = _date_map(scenes, keep_order=True)
    row = dates[ra.H // 2]
    assert (row[:B_X0] == 5).all() and (row[B_X0:] == 17).all(), np.unique(row, return_counts=True)
    assert (dates == row).all()  # the same in every row
    assert row[BORDER - 1] == row[BORDER]  # nothing happens at the tile border


def test_ranking_per_tile_would_put_a_seam_at_the_border(scenes):
    """The check above can fail: ranking each tile on its own changes the date exactly at the border."""
    row = _date_map(scenes, keep_order=False)[ra.H // 2]
    assert (row[:BORDER] == 5).all() and (row[BORDER:] == 17).all()


def test_the_store_holds_the_acquisition_date_map_without_a_tile_border(scenes, tmp_path):
    """Through ``run``: the ``acquired`` variable (days since 1970 per modality) changes where B's data
    begins, at no tile border, on every row."""
    import reliability_helpers as rh
    import xarray as xr

    from sgma_batch.run import RunSpec, run_mosaic

    catalog = Path(scenes["s2"][0].assets["blue"].href).parent / "items.json"
    ckpt = rh.make_checkpoint(tmp_path / "ckpt", modalities={"s2": 10})
    _, (lo0, la0, lo1, la1) = ra._footprint(ra.X0 + 200, ra.Y0 - 200, ra.W - 40, ra.H - 40)
    out = tmp_path / "order.zarr"
    s = run_mosaic(RunSpec(aoi=[lo0, la0, lo1, la1], out=str(out), start="2024-06-01", end="2024-06-30",
                           catalog=str(catalog), model=str(ckpt), tile_px=64, halo_px=16, executor="sequential"))
    assert s.exit_code == 0 and s.tiles >= 9, s
    ds = xr.open_zarr(out, decode_coords="all", decode_times=False, mask_and_scale=False)
    days = ds["acquired"].sel(modality="s2").values.astype(int)  # (y, x)
    x = ds["x"].values  # pixel centres
    a_day, b_day = 19879, 19891  # 2024-06-05, 2024-06-17
    b_edge = ra.X0 + B_X0 * ra.RES
    inside = days > 0
    assert set(np.unique(days[inside])) == {a_day, b_day}
    cols = np.broadcast_to(x, days.shape)
    assert (days[inside & (cols < b_edge)] == a_day).all() and (days[inside & (cols > b_edge)] == b_day).all()
    tile_edges = {ds["x"].values[0] - 5 + k * 64 * ra.RES for k in range(1, days.shape[1] // 64 + 1)}
    assert b_edge not in tile_edges  # the only change is B's edge, and it is no tile border
